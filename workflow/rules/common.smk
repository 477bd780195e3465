# Helpers shared by every stage: config validation (fills defaults), paths, and CLI flag builders.

import json
import os
import re
from shlex import quote

import pandas as pd
from snakemake.utils import Paramspace, validate

from arrag.validation import check_config_finite


validate(config, schema="../schemas/config.schema.yaml")
check_config_finite(config)  # YAML's .nan and .inf pass the schema's minimum and maximum

# Config strings reach a shell only as one quoted word: through flag() here, or `{params.x:q}` in a rule (names
# that become paths are restricted by the schema's patterns instead).
def flag(option, value):
    """`--option 'value'`: whatever the value holds (quotes, spaces, `;`, `$()`), the command gets one argument."""
    return f"{option} {quote(str(value))}"


RESULTS = f"results/{config['profile']}"
if config["model"]["source"] == "hub" and not config["model"]["revision"]:
    raise ValueError(
        f"model.source is hub but model.revision is not set: pin {config['model']['hub_id']} to a commit (the "
        "40-hex-digit id on its Hugging Face page, 'Files and versions' -> history), or set it to main: the download "
        f"then resolves it once and locks it in {config['downloads']['locks']}/{config['profile']}/model.json"
    )
SPLITS = list(config["world"]["splits"])
if SPLITS and sorted(SPLITS) != ["corpus", "finetune", "reference", "train"]:
    raise ValueError(f"world.splits has {sorted(SPLITS)}: give all of corpus, train, finetune and reference, or none")


def lock_path(name):
    """The lock file of download `name` (arrag.data.locks): commit it beside the config, as a package lock."""
    return os.path.join(config["downloads"]["locks"], config["profile"], f"{name}.json")


# Only download rules reach the network (they run on the login node, as localrules); every job loads local files,
# and the `arrag` CLI sets the hubs' offline switches for every command but `download` (arrag.data.downloads).
RETRIEVAL = config["retrieval"]
NUM_SHARDS = RETRIEVAL["num_shards"]


# The image sources tokenised into the retrieval database: the configured corpora (name -> {source: an
# arrag.data.sources spec, num_shards}), or else the mini world's split `retrieval.source`; and the held-out
# source of Figure 6's queries (`retrieval.heldout`, else the mini world's reference split).
CORPORA = RETRIEVAL["corpora"] or {RETRIEVAL["source"]: {"source": None, "num_shards": NUM_SHARDS}}
HELDOUT_NAME = "heldout" if RETRIEVAL["heldout"] else "reference"
# FAiD's and RA-CM3's fine-tuning pairs (`finetune.pairs`: captioned sources), tokenised like the corpora
FINETUNE_PAIRS = config["finetune"]["pairs"]
TOKENISED = CORPORA | FINETUNE_PAIRS | {HELDOUT_NAME: RETRIEVAL["heldout"] or {"source": None, "num_shards": 1}}
_clashes = sorted((set(CORPORA) | {HELDOUT_NAME}) & set(FINETUNE_PAIRS))
if _clashes:
    raise ValueError(f"finetune.pairs names {_clashes} are also retrieval sources: give the pairs their own names")
for _name, _entry in TOKENISED.items():
    _spec = _entry.get("source") or {}
    if _spec.get("type") == "hf_dataset":  # it would stream from the hub inside a job, where there is no internet
        raise ValueError(
            f"source {_name!r} is a Hugging Face dataset read at job time: fetch its files with downloads.datasets "
            f"(repo {_spec.get('name')}, a revision and file patterns) and read them as a parquet or webdataset "
            "source with download: <that name>"
        )
# Hub datasets fetched by rule download_dataset into <downloads.dir>/<name>/; a corpus or pairs entry with
# `download: <name>` reads from there, so its tokenisation waits for the download.
DATASETS = config["downloads"]["datasets"]
for _name, _entry in TOKENISED.items():
    if _entry.get("download") and _entry["download"] not in DATASETS:
        raise ValueError(
            f"{_name!r} has download: {_entry['download']!r}, which is not in downloads.datasets {list(DATASETS)}"
        )


def dataset_dir(name):
    return os.path.join(config["downloads"]["dir"], name)


def source_data(wildcards):
    """The downloaded dataset a configured source reads, when it names one."""
    name = (TOKENISED.get(wildcards.split) or {}).get("download")
    return {"data": dataset_dir(name)} if name else {}


# RA-CM3's image retriever: CLIP over `racm3.corpora` (default: every corpus) when corpora are configured, the
# mini world's caption retriever otherwise
RACM3 = config["racm3"]
RACM3_CORPORA = RACM3["corpora"] or list(CORPORA)
_unknown = sorted(set(RACM3_CORPORA) - set(CORPORA))
if RETRIEVAL["corpora"] and _unknown:
    raise ValueError(f"racm3.corpora names {_unknown}, which are not retrieval.corpora: use some of {list(CORPORA)}")


# CLIP weights: the tag `openai` of an open_clip model stands for the safetensors file that downloads.clip names
# for it, fetched by rule download_clip into <results>/downloads/clip/<model>/; anything else is a local file.
CLIP_WEIGHTS = config["downloads"]["clip"]
CLIP_FILE = "open_clip_model.safetensors"


def clip_input(model, pretrained):
    """What a job using the CLIP `model` declares as input: the download folder of its OpenAI weights, or the file."""
    if pretrained != "openai":
        return pretrained
    if model not in CLIP_WEIGHTS and f"{model}-quickgelu" in CLIP_WEIGHTS:  # open_clip would only warn
        raise ValueError(
            f"{model} is built with standard GELU, but OpenAI's weights were trained with QuickGELU: use the model "
            f"name {model}-quickgelu (e.g. racm3.clip.model)"
        )
    if model not in CLIP_WEIGHTS:
        raise ValueError(
            f"no download of the OpenAI weights of {model}: add it to downloads.clip ({sorted(CLIP_WEIGHTS)}), or give "
            "a local weights file as pretrained"
        )
    return f"{RESULTS}/downloads/clip/{model}"


def clip_file(model, pretrained):
    """The weights file a job loads (never an open_clip tag: a tag would download at job time)."""
    return f"{clip_input(model, pretrained)}/{CLIP_FILE}" if pretrained == "openai" else pretrained


def clip_sha256(model, pretrained):
    return CLIP_WEIGHTS[model]["sha256"] if pretrained == "openai" else RACM3["clip"]["sha256"]


def clip_flags():
    clip = RACM3["clip"]
    flags = f"{flag('--clip-model', clip['model'])} {flag('--clip-pretrained', clip_file(clip['model'], clip['pretrained']))}"
    sha256 = clip_sha256(clip["model"], clip["pretrained"])
    return flags + (f" {flag('--clip-sha256', sha256)}" if sha256 else "")


def racm3_clip_input(wildcards):
    """The CLIP weights of RA-CM3's retriever (configured corpora only)."""
    return {"clip": clip_input(RACM3["clip"]["model"], RACM3["clip"]["pretrained"])} if RETRIEVAL["corpora"] else {}


def image_index_inputs(wildcards):
    """RA-CM3's index is built from the corpus's code shards plus CLIP embedding shards, or captions (mini)."""
    if not RETRIEVAL["corpora"]:
        return {
            "codes": corpus_codes(),
            "captions": f"{RESULTS}/world/{RETRIEVAL['source']}/metadata.jsonl",
            "exclusions": EXCLUSIONS,
        }
    shards = source_shards({name: CORPORA[name] for name in RACM3_CORPORA})
    return {
        "codes": [code_shard(*shard) for shard in shards],
        "embeddings": [f"{RESULTS}/clip/{name}/clip-{s:05d}-of-{n:05d}.npz" for name, s, n in shards],
        "exclusions": EXCLUSIONS,
    } | racm3_clip_input(wildcards)


def image_index_flags(wildcards, input):
    """The retriever's inputs, without the benchmark images the contamination check found."""
    if not RETRIEVAL["corpora"]:
        return f"{flag('--captions', input.captions)} {flag('--exclude', input.exclusions)}"
    return f"--embeddings {' '.join(map(quote, input.embeddings))} {clip_flags()} {flag('--exclude', input.exclusions)}"


def source_shards(entries):
    """(name, shard, num_shards) of every tokenisation shard of the given sources (name -> {source, num_shards})."""
    counts = {name: entry.get("num_shards", 1) for name, entry in entries.items()}
    return [(name, s, n) for name, n in counts.items() for s in range(n)]


def corpus_codes():
    """Every code shard of the retrieval corpus (all configured corpora)."""
    return [code_shard(*shard) for shard in source_shards(CORPORA)]


def finetune_codes():
    """Every code shard of the fine-tuning pairs (`finetune.pairs`)."""
    return [code_shard(*shard) for shard in source_shards(FINETUNE_PAIRS)]


def pairs_inputs(wildcards):
    """What the fine-tuning pairs are read from: code shards of `finetune.pairs`, else the mini world's split."""
    if FINETUNE_PAIRS:
        return {"pairs": finetune_codes(), "exclusions": EXCLUSIONS}
    return {"pairs": f"{RESULTS}/world/{FAID['trainset_split']}/images.npy", "exclusions": EXCLUSIONS}


def pairs_flags(wildcards, input):
    """`--codes SHARDS` or `--world DIR --split NAME`: the pairs of `arrag faid-trainset` and `train-racm3`,
    without the benchmark images the contamination check found (`--exclude`)."""
    if FINETUNE_PAIRS:
        return f"--codes {' '.join(map(quote, input.pairs))} {flag('--exclude', input.exclusions)}"
    world = f"{flag('--world', world_dir(input.pairs))} {flag('--split', FAID['trainset_split'])}"
    return f"{world} {flag('--exclude', input.exclusions)}"


def heldout_codes():
    return [code_shard(*shard) for shard in source_shards({HELDOUT_NAME: TOKENISED[HELDOUT_NAME]})]


def retrieval_accuracy_inputs(wildcards):
    """Figure 6's queries: FAiD's training set (`retrieval.accuracy.queries: train`) or held-out code shards."""
    if RETRIEVAL["accuracy"]["queries"] == "train":
        return {"trainset": f"{RESULTS}/retrieval/faid_trainset"}
    return {"codes": heldout_codes()}


def retrieval_accuracy_flags(wildcards, input):
    if RETRIEVAL["accuracy"]["queries"] == "train":
        return f"--queries train --trainset {input.trainset}"
    return f"--queries heldout --codes {input.codes}"


def tokenise_inputs(wildcards):
    """The model, plus the mini world's split when the tokenised source is one."""
    inputs = {"model": f"{RESULTS}/models/base"} | source_data(wildcards)
    if (TOKENISED.get(wildcards.split) or {}).get("source") is None:
        inputs["images"] = f"{RESULTS}/world/{wildcards.split}/images.npy"
    return inputs


def tokenise_source(wildcards, input):
    """The JSON source spec `arrag tokenise` reads: a configured source, or a mini-world split (quote it: `:q`)."""
    configured = (TOKENISED.get(wildcards.split) or {}).get("source")
    return json.dumps(configured or {"type": "mini_world", "path": os.path.dirname(input.images)})


def attribution_corpus(wildcards, input):
    """Where `arrag attribution` finds the retrieved images: the database's source table for configured
    corpora, the mini world's split otherwise."""
    if RETRIEVAL["corpora"]:
        return flag("--db", input.db)
    source = {"type": "mini_world", "path": f"{RESULTS}/world/{RETRIEVAL['source']}"}
    return flag("--source", json.dumps(source))


# Thumbnail side of the retrieved images in the attribution figure: the mini world's native size, or 128 px for
# real corpora (images of any size, shown beside the generated ones).
ATTRIBUTION_SIZE = 128 if RETRIEVAL["corpora"] else config["world"]["image_size"]


def code_shard(split, shard, num_shards):
    """results/<profile>/codes/<split>/codes-SSSSS-of-TTTTT.npz (format: arrag.data.code_shards)"""
    return f"{RESULTS}/codes/{split}/codes-{shard:05d}-of-{num_shards:05d}.npz"


def world_dir(split_file):
    """results/<profile>/world/<split>/images.npy -> results/<profile>/world"""
    return os.path.dirname(os.path.dirname(split_file))


def log_path(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark_path(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


def mirror_flag(subfolder=""):
    """--mirror for the download commands when `downloads.mirror` is set (clusters without internet)."""
    mirror = config["downloads"]["mirror"]
    return flag("--mirror", os.path.join(mirror, subfolder) if subfolder else mirror) if mirror else ""


def table_outputs(name, caption):
    """A table's three files (tables/<name>.csv, .md, .tex); the Markdown goes into the HTML report."""
    stem = f"{RESULTS}/tables/{name}"
    return dict(
        csv=f"{stem}.csv",
        md=report(f"{stem}.md", caption=caption, category="Tables"),
        tex=f"{stem}.tex",
    )


def table_prefix(output):
    """The --out prefix of `arrag table` from a rule's table outputs."""
    return os.path.splitext(output.csv)[0]


def table_inputs(score_file, prompts):
    """A table's inputs: each method's score file, and the generation.json of the images it scored (the Params
    column: `arrag generate-benchmark` records the generating model's parameter count there)."""
    return {
        "results": expand(f"{RESULTS}/scores/{{method}}/{score_file}", method=METHODS),
        "generations": expand(f"{RESULTS}/images/{{method}}/{prompts}/generation.json", method=METHODS),
    }


def table_flags(wildcards, input):
    """`--result R --label METHOD --params GENERATION` per method, for `arrag table`."""
    return " ".join(
        f"--result {r} --label {m} --params {g}" for r, m, g in zip(input.results, METHODS, input.generations)
    )


# The paper's published rows beside ours (paper profile): `arrag table ... --paper-rows`.
PAPER_ROWS = "--paper-rows" if config["tables"]["paper_rows"] else ""


def settings_flags(option, settings):
    """{'steps': 800} -> "--set steps=800" (option='--set'); the CLI converts each value to the field's type."""
    return " ".join(flag(option, f"{key}={value}") for key, value in sorted(settings.items()))


def sampling_flags():
    g = config["generation"]
    flags = (
        f"--guidance-scale {g['guidance_scale']} --temperature {g['temperature']} "
        f"--seed {g['seed']} --batch-size {g['batch_size']} {flag('--device', config['device'])}"
    )
    return flags + (f" --top-k {g['top_k']}" if g["top_k"] else "")


METHODS = config["methods"]


wildcard_constraints:
    method="vanilla|daid|faid|racm3",

RETRIEVAL_METHODS = [m for m in METHODS if m in ("daid", "faid", "racm3")]  # methods whose retrievals have provenance


# Prompt sets that `generate` makes images for: prompt file, images per prompt, prompt field, first N prompts.
PROMPT_SETS = {
    "geneval": {  # the mini world's GenEval-schema prompts, or GenEval's own 553 (vendored)
        "file": (
            f"{RESULTS}/world/geneval/evaluation_metadata.jsonl"
            if config["evaluation"]["geneval"]["prompts"] == "mini"
            else os.path.join(workflow.basedir, "arrag/benchmarks/geneval/evaluation_metadata.jsonl")
        ),
        "n": config["generation"]["images_per_prompt"],
    },
    "reference": {  # mini profile, Table 3: one image per reference-split caption
        "file": f"{RESULTS}/world/reference/metadata.jsonl",
        "n": 1,
        "field": "caption",
        "limit": config["generation"]["reference_prompts"],
    },
    "mjhq": {"file": f"{RESULTS}/prompts/mjhq.jsonl", "n": 1},  # paper profile, Table 3
    "dpg": {"file": f"{RESULTS}/prompts/dpg.jsonl", "n": 4},  # DPG-Bench tiles 4 images 2x2
}


def prompt_set_flags(wildcards, field=True):
    """`arrag generate-benchmark` / `finish-benchmark` flags selecting a prompt set's prompts and images."""
    p = PROMPT_SETS[wildcards.prompts]
    flags = f"--n {p['n']}" + (f" --limit {p['limit']}" if "limit" in p else "")
    return flags + (f" --prompt-field {p['field']}" if field and "field" in p else "")


GENERATION_SHARDS = config["generation"]["num_shards"]


def generation_shards(wildcards):
    """The shard markers of one method's prompt set (rule generate), gathered by rule finish_generation."""
    return [
        f"{RESULTS}/images/{wildcards.method}/{wildcards.prompts}/shards/{s:05d}-of-{GENERATION_SHARDS:05d}.json"
        for s in range(GENERATION_SHARDS)
    ]


def generation_inputs(wildcards):
    """The backbone (RA-CM3's fine-tuned one for racm3), plus what the method retrieves from."""
    if wildcards.method == "racm3":  # (the index reloads its CLIP from the weights it was built with)
        return {"model": f"{RESULTS}/models/racm3", "index": f"{RESULTS}/retrieval/image_index"} | racm3_clip_input(
            wildcards
        )
    inputs = {"model": f"{RESULTS}/models/base"}
    if wildcards.method in ("daid", "faid"):
        inputs["db"] = f"{RESULTS}/retrieval/db"
    if wildcards.method == "faid":
        inputs["faid"] = f"{RESULTS}/models/faid"
    return inputs


def bench_generate_inputs(wildcards):
    """What `arrag bench generate` needs for the configured methods (vanilla always)."""
    inputs = {"model": f"{RESULTS}/models/base"}
    if "daid" in METHODS or "faid" in METHODS:
        inputs["db"] = f"{RESULTS}/retrieval/db"
    if "faid" in METHODS:
        inputs["faid"] = f"{RESULTS}/models/faid"
    if "racm3" in METHODS:
        inputs |= {"racm3": f"{RESULTS}/models/racm3", "index": f"{RESULTS}/retrieval/image_index"}
        inputs |= racm3_clip_input(wildcards)
    return inputs


def bench_generate_flags(wildcards, input):
    """`arrag bench generate` adds a method's row for each of these (DAiD's whenever --db is given)."""
    flags = [f"{flag('--db', input.db)} {db_devices_flag()}"] if "daid" in METHODS or "faid" in METHODS else []
    flags += [flag("--faid", input.faid)] if "faid" in METHODS else []
    flags += [f"{flag('--racm3-model', input.racm3)} {flag('--image-index', input.index)}"] if "racm3" in METHODS else []
    return " ".join(flags)


# A torch_compact database too large for one GPU is sharded over `retrieval.db_gpus` GPUs of each job that
# searches it (arrag --db-devices): such a job asks for that many GPUs.
DB_GPUS = RETRIEVAL["db_gpus"]
if DB_GPUS > 1 and RETRIEVAL["index"] != "torch_compact":
    raise ValueError(
        f"retrieval.db_gpus is {DB_GPUS}, but only a torch_compact database is sharded over GPUs "
        f"(retrieval.index is {RETRIEVAL['index']!r}): set index: torch_compact, or db_gpus: 1"
    )


def db_devices_flag():
    """--db-devices cuda:0,...: the job's GPUs (renumbered from 0 by CUDA_VISIBLE_DEVICES)."""
    return "--db-devices " + ",".join(f"cuda:{i}" for i in range(DB_GPUS)) if DB_GPUS > 1 else ""


def generation_gpus(wildcards):
    """GPUs of a generation job: the database's shards for the methods that search it."""
    return DB_GPUS if wildcards.method in ("daid", "faid") else 1


def method_flags(wildcards, input):
    """CLI flags selecting the decoding method and its settings."""
    if wildcards.method == "vanilla":
        return "--method vanilla"
    if wildcards.method == "racm3":
        return f"--method racm3 {flag('--image-index', input.index)}"
    if wildcards.method == "faid":
        return f"--method faid {flag('--db', input.db)} {flag('--faid', input.faid)} {db_devices_flag()}"
    d = config["daid"]
    return (
        f"--method daid {flag('--db', input.db)} --daid-k {d['k']} --daid-weight {d['weight']} "
        f"--daid-temperature {d['temperature']}" + (" --daid-unique" if d["unique"] else "") + f" {db_devices_flag()}"
    )


# DAiD's sweep grid (rules/sweep.smk): every (weight, temperature) pair of the config.
DAID_SWEEP = Paramspace(
    pd.DataFrame(
        [(w, t) for w in config["sweeps"]["daid"]["weight"] for t in config["sweeps"]["daid"]["temperature"]],
        columns=["weight", "temperature"],
    )
)

GENEVAL = config["evaluation"]["geneval"]
GENEVAL_CLIP = "ViT-L-14-quickgelu"  # the evaluator's colour classifier (arrag.evaluation.geneval_mask2former)


def geneval_scoring_inputs(wildcards):
    """The images, plus the Mask2Former checkpoint for the paper's detector."""
    inputs = {"images": f"{RESULTS}/images/{wildcards.run}/geneval/generation.json"}
    if GENEVAL["detector"] == "mask2former":
        inputs["checkpoint"] = f"{RESULTS}/downloads/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
        inputs["clip"] = clip_input(GENEVAL_CLIP, GENEVAL["clip_pretrained"])
    return inputs


def geneval_detector_flags(wildcards, input):
    """--detector and its weights, and the images per prompt the run was generated with (refusing others)."""
    per_run = {"sweep_daid": config["sweeps"]["daid"], "sweep_faid": config["faid"]["sweep"]}
    n = per_run.get(wildcards.run.split(os.sep)[0], config["generation"])["images_per_prompt"]
    n = f"--images-per-prompt {n}"
    if GENEVAL["detector"] == "shapes":
        return f"--detector shapes {n}"
    return (
        f"--detector mask2former {flag('--checkpoint', input.checkpoint)} "
        f"{flag('--clip-pretrained', clip_file(GENEVAL_CLIP, GENEVAL['clip_pretrained']))} --device cuda {n}"
    )


GENEVAL_NOTE = (
    "Scored with the analytic shapes detector on the mini world (not Mask2Former + CLIP): mini-GenEval."
    if config["evaluation"]["geneval"]["detector"] == "shapes"
    else "GenEval"
)

FAID = config["faid"]


def launcher(processes):
    """`arrag` for one training process, or torchrun starting `processes` of them inside this one job (one per
    GPU; each takes its share of every global batch and the gradients are summed, arrag.models.training)."""
    if processes == 1:
        return "arrag"
    return f"python -m torch.distributed.run --standalone --nproc_per_node {processes} -m arrag"

# FAiD's sweep grid (rules/faid.smk): hop sets x module spacing.
FAID_SWEEP = Paramspace(
    pd.DataFrame(
        [(str(h), e) for h in FAID["sweep"]["hops"] for e in FAID["sweep"]["every"]], columns=["hops", "every"]
    )
)


# GPU placement. Snakemake's `gpu` resource only counts: with `--resources gpu=N` on one machine each GPU job runs
# under `python -m arrag.gpu_slots`, which takes a free device (one lock file per GPU) and sets
# CUDA_VISIBLE_DEVICES; a value a scheduler set (SLURM) passes through unchanged.
_GPUS = workflow.global_resources.get("gpu")
GPU_SLOTS = int(_GPUS.value) if _GPUS is not None and _GPUS.value else 0
if GPU_SLOTS:
    os.environ.update(ARRAG_GPU_SLOTS=str(GPU_SLOTS))


def on_gpu(wildcards, resources):
    """Shell prefix running a job on its own GPU(s); a job with gpu=0 runs as is."""
    return f"python -m arrag.gpu_slots --count {resources.gpu} --"


def gpu_job_threads(wildcards):
    """CPU threads of a GPU job: an equal share of the cores per GPU slot, or all of them without --resources gpu."""
    return max(1, workflow.cores // GPU_SLOTS) if GPU_SLOTS else workflow.cores


def arrag_on_gpu(wildcards, resources):
    """`arrag` as the rules of the benchmarks' own conda envs run it (GenEval, DPG-Bench), on their GPU: their
    pinned torch predates ours, so the package is not installed there and runs from this checkout."""
    return (
        f"PYTHONPATH={quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}} "
        f"python -m arrag.gpu_slots --count {resources.gpu} -- python -m arrag"
    )

DPG = config["evaluation"]["dpg"]
# the official script's first-row quirk applies to the official CSV; mini-DPG's CSV has no spare first row
DPG_SKIP_FIRST_ROW = DPG["questions"] == "official" if DPG["skip_first_row"] is None else DPG["skip_first_row"]
DPG_NOTE = (
    "mini-DPG: DPG-style questions on the mini world reference captions, answered by the shapes detector."
    if DPG["questions"] == "mini"
    else "DPG-Bench with mPLUG-large VQA."
)


def dpg_prompt_source(wildcards):
    """mini-DPG's folder (prompts/ + dpg_bench.csv), or nothing: the vendored DPG-Bench prompts."""
    return [f"{RESULTS}/world/dpg"] if DPG["questions"] == "mini" else []


def dpg_question_source(wildcards):
    return f"{RESULTS}/world/dpg" if DPG["questions"] == "mini" else f"{RESULTS}/downloads/dpg_bench.csv"


def dpg_scoring_inputs(wildcards):
    """The tiles and questions, plus the downloaded mPLUG checkpoint (with its tokenizer) for the paper's VQA."""
    inputs = {"tiles": f"{RESULTS}/images/{wildcards.method}/dpg_tiles", "questions": dpg_question_source(wildcards)}
    return inputs | ({"mplug": f"{RESULTS}/downloads/mplug"} if DPG["vqa"] == "mplug" else {})


def dpg_question_csv(source):
    return f"{source}/dpg_bench.csv" if DPG["questions"] == "mini" else source


FIDELITY = config["evaluation"]["fidelity"]
FWD = config["evaluation"]["fwd"]
FIDELITY_NOTE = (
    f"mini-FID and mini-CMMD on the mini world feature network; FWD: Haar packets, level {FWD['level']}, "
    f"{FWD['size']} px; reference-caption images against the reference split."
    if FIDELITY["benchmark"] == "mini"
    else f"MJHQ-30K; FID on Inception (clean-fid), CMMD on CLIP ViT-L/14@336, FWD level {FWD['level']} at {FWD['size']} px."
)


FIDELITY_PROMPTS = "reference" if FIDELITY["benchmark"] == "mini" else "mjhq"  # the prompt set Table 3 scores


def fidelity_inputs(wildcards):
    """Generated and real images, and the feature networks' weights."""
    if FIDELITY["benchmark"] == "mini":
        return {
            "images": f"{RESULTS}/images/{wildcards.method}/{FIDELITY_PROMPTS}/generation.json",
            "reference": f"{RESULTS}/world/reference/images.npy",
            "features": f"{RESULTS}/models/features",
        }
    return {
        "images": f"{RESULTS}/images/{wildcards.method}/{FIDELITY_PROMPTS}/generation.json",
        "reference": f"{RESULTS}/mjhq/reference",
        "inception": f"{RESULTS}/downloads/inception-2015-12-05.pt",
        "clip": clip_input(CMMD_CLIP, FIDELITY["clip_pretrained"]),
    }


CMMD_CLIP = "ViT-L-14-336-quickgelu"  # CMMD's CLIP (arrag.evaluation.features.CMMD_CLIP)


# How the sweeps (Figure 7) are scored, `sweeps.score`. fid, the paper's (appendix C.2): FID against the real images
# of the first `sweeps.mjhq_prompts` MJHQ-30K prompts, generated one image each; geneval: GenEval overall on the
# GenEval prompts, the mini profile's stand-in (it has no MJHQ). -> the prompt set a sweep point generates, the
# score file it writes, the `arrag sweep-table --metric` and the label of the tables and heatmaps (no apostrophe:
# the rules quote it in the shell).
SWEEPS = config["sweeps"]
if SWEEPS["score"] == "fid" and FIDELITY["benchmark"] != "mjhq":
    raise ValueError(
        "sweeps.score is fid, which reads MJHQ-30K, but evaluation.fidelity.benchmark is "
        f"{FIDELITY['benchmark']!r}: set it to mjhq, or sweeps.score to geneval"
    )
PROMPT_SETS["mjhq_sweep"] = {"file": f"{RESULTS}/prompts/mjhq_sweep.jsonl", "n": 1}
MJHQ_LIMITS = {"mjhq": FIDELITY["mjhq_prompts"], "mjhq_sweep": SWEEPS["mjhq_prompts"]}
if SWEEPS["score"] != "fid":
    SWEEP_PROMPTS = "geneval"
else:  # Table 3's own prompt set when it is the same first N prompts (config/paper-1gpu.yaml: 10K for both)
    SWEEP_PROMPTS = "mjhq" if MJHQ_LIMITS["mjhq"] == MJHQ_LIMITS["mjhq_sweep"] else "mjhq_sweep"
SWEEP_SCORE_FILE = "sweep_fid.json" if SWEEPS["score"] == "fid" else "geneval_summary.json"
SWEEP_METRIC_LABEL = (
    f"FID on the first {SWEEPS['mjhq_prompts']} MJHQ-30K prompts, lower is better"
    if SWEEPS["score"] == "fid"
    else (
        "mini-GenEval overall, a stand-in for the FID on 10K MJHQ-30K prompts of the paper"
        if GENEVAL["detector"] == "shapes"
        else "GenEval overall, not the FID on 10K MJHQ-30K prompts of the paper"
    )
)


def fidelity_network_flags(input):
    if FIDELITY["benchmark"] == "mini":
        return f"{flag('--fid-network', f'mini:{input.features}')} {flag('--cmmd-network', f'mini:{input.features}')}"
    clip = clip_file(CMMD_CLIP, FIDELITY["clip_pretrained"])
    return f"{flag('--fid-network', f'inception:{input.inception}')} {flag('--cmmd-network', f'clip:{clip}')}"


# The contamination check (rules/contamination.smk): the evaluation reference sets, whose images must not be in
# the database or the fine-tuning pairs (Table 3's real images: the mini world's reference split or MJHQ-30K's;
# Figure 6's held-out images when it searches them), and the sources checked against them (every corpus, and the
# fine-tuning pairs or the mini world's fine-tuning split). name -> {source: spec or None (a world split), num_shards}
CONTAMINATION = config["contamination"]
_SEARCHES_HELDOUT = RETRIEVAL["heldout"] and RETRIEVAL["accuracy"]["queries"] == "heldout"
REFERENCE_SETS = (
    {"reference": {"source": None, "num_shards": 1}}
    if FIDELITY["benchmark"] == "mini"
    else {"mjhq": {"source": {"type": "folder", "path": f"{RESULTS}/mjhq/reference"}, "num_shards": 1}}
) | ({HELDOUT_NAME: TOKENISED[HELDOUT_NAME]} if _SEARCHES_HELDOUT else {})
CHECKED_SOURCES = CORPORA | (FINETUNE_PAIRS or {FAID["trainset_split"]: {"source": None, "num_shards": 1}})
HASHED = CHECKED_SOURCES | REFERENCE_SETS
_clashes = sorted(set(CHECKED_SOURCES) & set(REFERENCE_SETS))
if _clashes:
    raise ValueError(
        f"{_clashes} are both evaluation reference sets and retrieval or fine-tuning sources: the benchmark's images "
        "cannot also be its training data; take the corpus or pairs from another split or source"
    )


def hash_shards(entries):
    """results/<profile>/hashes/<name>/hashes-SSSSS-of-TTTTT.npz of every shard of the given sources."""
    return [f"{RESULTS}/hashes/{name}/hashes-{s:05d}-of-{n:05d}.npz" for name, s, n in source_shards(entries)]


def hash_inputs(wildcards):
    """The model (its tokenizer's image size), and what the source reads: a download, MJHQ-30K's extracted
    reference images or a mini-world split."""
    entry = HASHED[wildcards.split]
    inputs = {"model": f"{RESULTS}/models/base"}
    if entry.get("download"):
        inputs["data"] = dataset_dir(entry["download"])
    if wildcards.split == "mjhq":
        inputs["images"] = f"{RESULTS}/mjhq/reference"
    elif entry["source"] is None:
        inputs["images"] = f"{RESULTS}/world/{wildcards.split}/images.npy"
    return inputs


def hash_source(wildcards, input):
    """The JSON source spec of a hashed set: the same spec its tokenisation reads (tokenise_source)."""
    source = HASHED[wildcards.split]["source"]
    return json.dumps(source or {"type": "mini_world", "path": os.path.dirname(input.images)})


def contamination_flags(wildcards, input):
    """--reference NAME SHARDS... --source NAME SHARDS... of `arrag contamination`."""
    groups = [("--reference", REFERENCE_SETS), ("--source", CHECKED_SOURCES)]
    flags = [
        f"{option} {quote(name)} {' '.join(map(quote, hash_shards({name: sets[name]})))}"
        for option, sets in groups
        for name in sets
    ]
    return " ".join(flags)


EXCLUSIONS = f"{RESULTS}/contamination/exclusions.json"


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
MODEL_PARAMETERS = JANUS_PRO_1B_PARAMETERS if _HUB else 4 * 1e6  # the mini model: 1.93M (README), x2 headroom
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
    grid=GRID,
    embed_dim=CLIP_EMBED_DIM,
)  # downloads, tables: a few records, no images
