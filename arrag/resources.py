"""Host memory a job declares (Snakemake `mem_mb`, SLURM's --mem), computed from what it reads.

One function per kind of job, all from the same model of what a job holds (`mem_mb` dispatches; the rules
call it through `job_mem_mb` in workflow/rules/common/resources.smk, so the local and the SLURM profiles ask for the
same amounts):

- every job: BASE_MB for Python, torch, transformers, FAISS and a CUDA context (about 0.9 GB measured on CPU);
- a model: its weights on the host once, in float32 (`model_bytes`), before they move to a GPU;
- tokenisation and CLIP embedding: one batch of decoded images (uint8 and float32 copies) and the largest
  source image being decoded; the outputs are spooled to disk (arrag.data.sources.encode_shard), so nothing
  grows with the shard except about PER_IMAGE_BYTES of ids per image;
- building the database: the index and the uint16 token grids it writes (bytes per entry of the backend),
  plus one chunk of transients; the code shards are read one at a time;
- searching the database (generation, sweeps, FAiD's training set, Figure 6, benchmarks): the database is
  memory-mapped, so it is page cache shared by every job of the machine and not counted per job; the job
  holds its model and a batch;
- training: weights, gradients and AdamW's two moments in float32 on the host (a CPU run; on a GPU they
  live on the device and the host holds the loading copy);
- RA-CM3's image index (`image_index_mb`): the model (for its codebook), the CLIP model, a few ids per corpus
  image and one code and one embedding shard at a time (the index is written into memory-mapped files);
- fidelity (`fidelity_mb`: FID, CMMD, FWD, and the scorers' benchmark): the feature network, both sets'
  features, one FWD batch at the images' own size and the wavelet packets' float64 statistics of both sets;
- the mini feature network's training (`features_mb`): its whole split of images and their held-out tenth as
  float32;
- scorers (`scorer_mb`: GenEval, DPG-Bench): the scoring model and one batch of images;
- the contamination check (`contamination_mb`): every reference image's hashes plus one source shard's;
- everything else (`light_mb`: downloads, prompt lists, tables, grids, over-copying, generation records): its
  records (a few hundred bytes of JSON each, as Python objects) and a few decoded images at a time.

HEADROOM multiplies the sum (allocator slack, fragmentation) and a retried job (`attempt` > 1) asks for
twice as much each time.
"""

from __future__ import annotations

import math

BASE_MB = 2000
HEADROOM = 1.25
PER_IMAGE_BYTES = 1024  # image id, source id and metadata a shard keeps per image (about 0.4 KB measured)
LARGEST_SOURCE_PX = 4096  # the largest source image decoded at once (RGBA float copies during resizing)
CHUNK_MB = 512  # one chunk of neighbour ids, packed codes and float keys while building (262,144 entries)


def model_bytes(parameters: float) -> float:
    """Weights as loaded on the host: float32."""
    return 4.0 * parameters


def entry_bytes(index: str, num_codes: int, neighbours: int) -> float:
    """Bytes a built database keeps per entry: its key code, an IVF's int64 label and the uint16 value."""
    compact = math.ceil(neighbours * max(1, int(num_codes).bit_length()) / 8)
    keys = {
        "flat": 4 * 8 * neighbours,  # float32 keys of neighbours x D (8 for Janus and the mini profile)
        "compact": compact,
        "torch_compact": 2 * neighbours,
        "ivf_compact": compact + 8,
        "ivf_flat": 4 * 8 * neighbours + 8,
        "ivf_pq": neighbours + 8,
        "opq_ivf_pq": 8 + 8,
    }
    if index not in keys:
        raise ValueError(f"unknown index {index!r} for the memory estimate: one of {sorted(keys)}")
    return keys[index] + (2 if num_codes <= 65536 else 4)


def encode_mb(parameters: float, batch_size: int, image_size: int, images: int) -> float:
    """Tokenisation or CLIP embedding of one source shard of `images` images."""
    batch = batch_size * image_size**2 * 3 * (1 + 4 + 4)  # uint8 stack, float32 pixels, normalised copy
    decode = LARGEST_SOURCE_PX**2 * 4 * 4 * 2  # float RGBA during resampling, source and target
    return (model_bytes(parameters) + batch + decode + PER_IMAGE_BYTES * images) / 2**20


def build_database_mb(entries: int, index: str, num_codes: int, neighbours: int) -> float:
    """`arrag build-db` over code shards holding `entries` patches in all."""
    return entries * entry_bytes(index, num_codes, neighbours) / 2**20 + CHUNK_MB


def search_mb(parameters: float, batch_size: int) -> float:
    """A job that loads a model and searches the (memory-mapped) database: the model and a batch's work."""
    return (model_bytes(parameters) + batch_size * 64 * 2**20 / 32) / 2**20  # 64 MB of activations per 32 rows


def train_mb(parameters: float, trainable: float | None = None) -> float:
    """Training: all weights, plus gradients and AdamW's two moments of the trained ones (float32)."""
    trainable = parameters if trainable is None else trainable
    return (model_bytes(parameters) + 3 * model_bytes(trainable)) / 2**20


def image_index_mb(
    parameters: float, clip_parameters: float, images: int, shard_images: int, grid: int, embed_dim: int
) -> float:
    """`arrag build-image-index` over `images` corpus images of grid x grid tokens in shards of at most
    `shard_images`: the model (for its codebook) and the CLIP model, about eight int64 ids per corpus image
    while the rows are planned, and one code shard and one embedding shard at a time (read, then their kept
    rows copied): the index itself is written into memory-mapped files."""
    ids = images * 8 * 8
    shard = shard_images * (grid * grid * 2 + embed_dim * 2) * 2
    return (model_bytes(parameters) + model_bytes(clip_parameters) + ids + shard) / 2**20


FEATURE_BATCH = 64  # arrag.evaluation.fidelity: images per feature batch
FWD_BATCH = 256  # arrag.evaluation.fidelity.packet_statistics: images per wavelet batch


def fidelity_mb(
    network_parameters: float, images: int, feature_dim: int, image_size: int, fwd_level: int, fwd_size: int
) -> float:
    """`arrag fidelity` (or `arrag bench scoring`) of `images` generated images against as many reference images
    of at most `image_size` px: the feature networks (float32), both sets' float32 features, a feature batch, and
    FWD: one batch decoded at its own size (uint8, then float64) and resized, the packet tree (one copy per
    level), and the float64 mean and covariance of every packet for both sets (sums and the result)."""
    features = 2 * images * feature_dim * 4 + FEATURE_BATCH * 3 * 336**2 * 4 * 2
    batch = FWD_BATCH * 3 * image_size**2 * (1 + 8) + FWD_BATCH * 3 * fwd_size**2 * 8 * (fwd_level + 2)
    packets, dim = 4**fwd_level, 3 * (fwd_size // 2**fwd_level) ** 2
    statistics = 2 * 2 * packets * (dim * dim + dim) * 8
    return (model_bytes(network_parameters) + features + batch + statistics) / 2**20


def features_mb(images: int, image_size: int) -> float:
    """`arrag train-features`: the split's uint8 images loaded whole, and its held-out tenth as float32 for the
    heads' accuracy (the network and a batch are small: MiniFeatureNet at 32 px)."""
    return images * image_size**2 * 3 * (1 + 0.1 * 4) / 2**20


def scorer_mb(parameters: float, batch_size: int, image_size: int) -> float:
    """A GenEval or DPG-Bench scorer: its models (float32) and one batch of images as float32."""
    return (model_bytes(parameters) + batch_size * 3 * image_size**2 * 4) / 2**20


HASH_BYTES = 216 + 128  # arrag.data.contamination: hashes per image, and its source id kept in the shard's json


def contamination_mb(reference_images: int, shard_images: int) -> float:
    """`arrag contamination`: every reference set's hashes, and one source shard's at a time."""
    return (reference_images + shard_images) * HASH_BYTES / 2**20


RECORD_BYTES = 2048  # a JSON record (prompt, metadata, scores) as Python objects


def light_mb(records: int = 0, image_size: int = 0, images: int = 1) -> float:
    """A job that reads JSON records and decodes a few images at a time (downloads, prompt lists, tables, grids,
    tiles, over-copying, generation records): its records and `images` decoded RGB images of `image_size` px
    as float32."""
    return (records * RECORD_BYTES + images * 3 * image_size**2 * 4) / 2**20


KINDS = {
    "encode": encode_mb,
    "build_database": build_database_mb,
    "search": search_mb,
    "train": train_mb,
    "image_index": image_index_mb,
    "fidelity": fidelity_mb,
    "features": features_mb,
    "scorer": scorer_mb,
    "contamination": contamination_mb,
    "light": light_mb,
}


def mem_mb(kind: str, attempt: int = 1, **sizes) -> int:
    """The mem_mb a job of `kind` (one of KINDS) asks for, given the sizes its function takes."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r} for the memory estimate: one of {sorted(KINDS)}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    need = (BASE_MB + KINDS[kind](**sizes)) * HEADROOM * 2 ** (attempt - 1)
    return int(math.ceil(need / 100) * 100)  # whole hundreds of MB
