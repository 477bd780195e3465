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
  live on the device and the host holds the loading copy).

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


KINDS = {"encode": encode_mb, "build_database": build_database_mb, "search": search_mb, "train": train_mb}


def mem_mb(kind: str, attempt: int = 1, **sizes) -> int:
    """The mem_mb a job of `kind` (one of KINDS) asks for, given the sizes its function takes."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r} for the memory estimate: one of {sorted(KINDS)}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    need = (BASE_MB + KINDS[kind](**sizes)) * HEADROOM * 2 ** (attempt - 1)
    return int(math.ceil(need / 100) * 100)  # whole hundreds of MB
