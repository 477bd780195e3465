# Host memory (mem_mb) of the jobs that hold data or a model, from arrag.resources (one function per kind of
# job; see its docstring for what each holds). The sizes come from the config: the model's parameters (the
# hub's Janus-Pro-1B or the mini spec), batch sizes, the token grid, and the corpus sizes (a source's
# `limit`, or DEFAULT_SHARD_IMAGES per shard where the config does not say).
import arrag.resources as _res

JANUS_PRO_1B_PARAMETERS = 2.1e9  # Janus-Pro-1B: about 4.1 GB of bfloat16 safetensors
CLIP_PARAMETERS = 1.5e8  # open_clip ViT-B/32 (image and text towers)
DEFAULT_SHARD_IMAGES = 200_000  # images per tokenisation shard where no `limit` says (paper shards: 89-131K)
_HUB = config["model"]["source"] == "hub"
_SPEC = config["model"]["spec"]
MODEL_PARAMETERS = JANUS_PRO_1B_PARAMETERS if _HUB else 4 * 1e6  # the mini model: 1.93M (docs/measurements.md), x2 headroom
IMAGE_SIZE = 384 if _HUB else _SPEC["image_size"]
GRID = 24 if _HUB else _SPEC["image_size"] // _SPEC["patch_size"]
NUM_CODES = 16384 if _HUB else _SPEC["codebook_size"]
_RING = (2 * RETRIEVAL["hops"] + 1) ** 2 - 1  # neighbours within the hop distance
NEIGHBOURS = _RING // 2 if RETRIEVAL["causal"] else _RING


def shard_images(name):
    """Images in one tokenisation shard of source `name` (corpora, pairs, held-out or a mini-world split)."""
    entry = TOKENISED.get(name) or {"source": None, "num_shards": 1}
    limit = (entry.get("source") or {}).get("limit")
    if entry.get("source") is None and name in config["world"]["splits"]:
        limit = config["world"]["splits"][name]
    return -(-limit // entry["num_shards"]) if limit else DEFAULT_SHARD_IMAGES


def corpus_entries():
    """Patch entries of the retrieval database: every corpus shard's images x the token grid."""
    images = sum(shard_images(name) * entry["num_shards"] for name, entry in CORPORA.items())
    return images * GRID * GRID


def job_mem_mb(kind, **sizes):
    """A resources callable: arrag.resources.mem_mb(kind, attempt, **sizes); a size may be f(wildcards)."""

    def mem_mb(wildcards, attempt):
        resolved = {k: (v(wildcards) if callable(v) else v) for k, v in sizes.items()}
        return _res.mem_mb(kind, attempt, **resolved)

    return mem_mb


# the two sizes most jobs share: a job that loads the model and searches the database (generation, sweeps,
# FAiD's training set, Figure 6, benchmarks), and a training job
SEARCH_MEM_MB = job_mem_mb("search", parameters=MODEL_PARAMETERS, batch_size=config["generation"]["batch_size"])
TRAIN_MEM_MB = job_mem_mb("train", parameters=MODEL_PARAMETERS)
# The other jobs' sizes (arrag.resources: image_index, fidelity, features, scorer, contamination, light). Parameter
# counts of the networks the paper's scorers load are their published sizes, not measured here.
MJHQ_IMAGES, MJHQ_PX = 30_000, 1024  # MJHQ-30K: 30K real images of 1024 px
INCEPTION_PARAMETERS = 2.4e7  # FID's Inception-v3 (2048-d pool features)
CMMD_CLIP_PARAMETERS = 4.3e8  # open_clip ViT-L/14@336, both towers (768-d embeddings)
MINI_FEATURE_PARAMETERS, MINI_FEATURE_DIM = 1e6, 1024  # MiniFeatureNet: far below both (64-d features by default)
CLIP_EMBED_DIM = 512  # RA-CM3's ViT-B/32
GENEVAL_PARAMETERS = 5e8  # GenEval: Mask2Former Swin-S (69M) and CLIP ViT-L/14 (428M)
MPLUG_PARAMETERS = 1e9  # DPG-Bench's mPLUG-large VQA (ViT-L/14 and BERT-base-sized encoder, fusion and decoder)
_PAPER_FIDELITY = FIDELITY["benchmark"] != "mini"
FIDELITY_IMAGES = (
    (FIDELITY["mjhq_prompts"] or MJHQ_IMAGES)
    if _PAPER_FIDELITY
    else max(config["generation"]["reference_prompts"], config["world"]["splits"].get("reference", 0))
)
FIDELITY_PX = max(IMAGE_SIZE, MJHQ_PX if _PAPER_FIDELITY else config["world"]["image_size"])


def fidelity_mem_mb(images, paper_networks):
    """mem_mb of an `arrag fidelity` job over `images` images a set: FID and CMMD's networks (paper_networks:
    Inception and CLIP ViT-L/14@336, else the mini network), FWD at the evaluation's level and size."""
    networks = (INCEPTION_PARAMETERS + CMMD_CLIP_PARAMETERS, 2048 + 768) if paper_networks else (
        MINI_FEATURE_PARAMETERS, MINI_FEATURE_DIM
    )
    return job_mem_mb(
        "fidelity",
        network_parameters=networks[0],
        images=images,
        feature_dim=networks[1],
        image_size=FIDELITY_PX,
        fwd_level=FWD["level"],
        fwd_size=FWD["size"],
    )


def scorer_mem_mb(model, parameters):
    """mem_mb of a GenEval or DPG-Bench scorer: the paper's model (`parameters`) unless the mini stand-in
    (`shapes`), which holds no network worth counting; one image at a time."""
    return job_mem_mb("scorer", parameters=0 if model == "shapes" else parameters, batch_size=1, image_size=IMAGE_SIZE)


# images the contamination check holds the hashes of: every evaluation reference set's
REFERENCE_IMAGES = sum(
    FIDELITY_IMAGES if name == "mjhq" else shard_images(name) * entry["num_shards"]
    for name, entry in REFERENCE_SETS.items()
)
LIGHT_MEM_MB = job_mem_mb("light")
IMAGE_INDEX_MEM_MB = job_mem_mb(
    "image_index",
    parameters=MODEL_PARAMETERS,
    clip_parameters=CLIP_PARAMETERS,
    images=sum(shard_images(name) * CORPORA[name]["num_shards"] for name in RACM3_CORPORA),
    shard_images=max(shard_images(name) for name in RACM3_CORPORA),
    grid=GRID,
    embed_dim=CLIP_EMBED_DIM,
)  # downloads, tables: a few records, no images
