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
