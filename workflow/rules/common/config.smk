# The settings the rules read, derived from the validated config, with the checks that span several fields (the
# schema checks each field alone). Each raises before any job runs, naming the fields and the fix.

if config["model"]["source"] == "hub" and not config["model"]["revision"]:
    raise ValueError(
        f"model.source is hub but model.revision is not set: pin {config['model']['hub_id']} to a commit (the "
        "40-hex-digit id on its Hugging Face page, 'Files and versions' -> history), or set it to main: the download "
        f"then resolves it once and locks it in {config['downloads']['locks']}/{config['profile']}/model.json"
    )
SPLITS = list(config["world"]["splits"])
if SPLITS and sorted(SPLITS) != ["corpus", "finetune", "reference", "train"]:
    raise ValueError(f"world.splits has {sorted(SPLITS)}: give all of corpus, train, finetune and reference, or none")


# DAiD's settings: the config's `daid` block over arrag.methods.DAiDSettings' defaults (the schema gives none, so
# each default lives in one place)
DAID = {f.name: f.default for f in dataclasses.fields(DAiDSettings) if f.name != "db"} | config["daid"]


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
# (a held-out source without num_shards is tokenised in one shard)
_HELDOUT = {"num_shards": 1} | (RETRIEVAL["heldout"] or {"source": None})
TOKENISED = CORPORA | FINETUNE_PAIRS | {HELDOUT_NAME: _HELDOUT}
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


METHODS = config["methods"]
BACKBONES = config["backbones"]
SHOWO = config["showo"]
# Show-o's rows of Tables 1-4 (`backbones: [janus, showo]`): run name (arrag.methods.run_label) -> its method on Show-o
SHOWO_RUNS = {run_label(m, "showo"): m for m in SHOWO["methods"]} if "showo" in BACKBONES else {}
TABLE_RUNS = METHODS + list(SHOWO_RUNS)  # every row a table measures: the methods on Janus, then Show-o's


wildcard_constraints:
    method="vanilla|daid|faid|racm3|showo|showo_daid|showo_faid",


RETRIEVAL_METHODS = [m for m in METHODS if m in ("daid", "faid", "racm3")]  # methods whose retrievals have provenance
FAID = config["faid"]
GENERATION_SHARDS = config["generation"]["num_shards"]


# Prompt sets that `generate` makes images for: prompt file, images per prompt, prompt field, first N prompts.
PROMPT_SETS = {
    "geneval": {  # the mini world's GenEval-schema prompts, or GenEval's own 553 (vendored)
        "file": (
            world_split("geneval", "evaluation_metadata.jsonl")
            if config["evaluation"]["geneval"]["prompts"] == "mini"
            else os.path.join(workflow.basedir, "arrag/prompt_sets/geneval/evaluation_metadata.jsonl")
        ),
        "n": config["generation"]["images_per_prompt"],
    },
    "reference": {  # mini profile, Table 3: one image per reference-split caption
        "file": world_split("reference", "metadata.jsonl"),
        "n": 1,
        "field": "caption",
        "limit": config["generation"]["reference_prompts"],
    },
    "mjhq": {"file": prompts_file("mjhq"), "n": 1},  # paper profile, Table 3
    "dpg": {"file": prompts_file("dpg"), "n": 4},  # DPG-Bench tiles 4 images 2x2
    "mjhq_sweep": {"file": prompts_file("mjhq_sweep"), "n": 1},  # the sweeps' first N MJHQ-30K prompts
}


# DAiD's sweep grid (rules/sweep.smk): every (weight, temperature) pair of the config.
DAID_SWEEP = Paramspace(
    pd.DataFrame(
        [(w, t) for w in config["sweeps"]["daid"]["weight"] for t in config["sweeps"]["daid"]["temperature"]],
        columns=["weight", "temperature"],
    )
)
# FAiD's sweep grid (rules/faid.smk): hop sets x module spacing.
FAID_SWEEP = Paramspace(
    pd.DataFrame(
        [(str(h), e) for h in FAID["sweep"]["hops"] for e in FAID["sweep"]["every"]], columns=["hops", "every"]
    )
)
SWEEP_IMAGES_PER_PROMPT = {
    "sweep_daid": config["sweeps"]["daid"]["images_per_prompt"],
    "sweep_faid": FAID["sweep"]["images_per_prompt"],
}


def images_per_prompt(run):
    """Images per prompt of a run (a method, or a sweep point sweep_daid/... or sweep_faid/...) on the GenEval
    prompts: what the sweeps generate and what GenEval's scoring expects."""
    return SWEEP_IMAGES_PER_PROMPT.get(run.split(os.sep)[0], config["generation"]["images_per_prompt"])


GENEVAL = config["evaluation"]["geneval"]
# The detector's ceiling, by the vq_ceiling rule, where the VQ-VAE is trained on the world of the GenEval prompts
VQ_CEILING = config["model"]["source"] == "train" and GENEVAL["prompts"] == "mini"
VQ_CEILING_RUN = "vq_reconstructions"  # its GenEval "run": images/vq_reconstructions/geneval, scored by score_geneval
GENEVAL_TABLE_RUNS = TABLE_RUNS + ([VQ_CEILING_RUN] if VQ_CEILING else [])  # the ceiling is Table 1's last row
GENEVAL_CLIP = "ViT-L-14-quickgelu"  # the evaluator's colour classifier (arrag.evaluation.geneval_mask2former)
GENEVAL_NOTE = (
    "Scored with the analytic shapes detector on the mini world (not Mask2Former + CLIP): mini-GenEval."
    if config["evaluation"]["geneval"]["detector"] == "shapes"
    else "GenEval"
)


DPG = config["evaluation"]["dpg"]
# the official script's first-row quirk applies to the official CSV; mini-DPG's CSV has no spare first row
DPG_SKIP_FIRST_ROW = DPG["questions"] == "official" if DPG["skip_first_row"] is None else DPG["skip_first_row"]
DPG_NOTE = (
    "mini-DPG: DPG-style questions on the mini world reference captions, answered by the shapes detector."
    if DPG["questions"] == "mini"
    else "DPG-Bench with mPLUG-large VQA."
)


FIDELITY = config["evaluation"]["fidelity"]
FWD = config["evaluation"]["fwd"]
FIDELITY_NOTE = (
    f"mini-FID and mini-CMMD on the mini world feature network; FWD: Haar packets, level {FWD['level']}, "
    f"{FWD['size']} px; reference-caption images against the reference split."
    if FIDELITY["benchmark"] == "mini"
    else f"MJHQ-30K; FID on Inception (clean-fid), CMMD on CLIP ViT-L/14@336, FWD level {FWD['level']} at {FWD['size']} px."
)
FIDELITY_PROMPTS = "reference" if FIDELITY["benchmark"] == "mini" else "mjhq"  # the prompt set Table 3 scores
CMMD_CLIP = "ViT-L-14-336-quickgelu"  # CMMD's CLIP (arrag.models.clip.CMMD_CLIP)


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


# The contamination check (rules/contamination.smk): the evaluation reference sets, whose images must not be in
# the database or the fine-tuning pairs (Table 3's real images: the mini world's reference split or MJHQ-30K's;
# Figure 6's held-out images when it searches them), and the sources checked against them (every corpus, and the
# fine-tuning pairs or the mini world's fine-tuning split). name -> {source: spec or None (a world split), num_shards}
CONTAMINATION = config["contamination"]
_SEARCHES_HELDOUT = RETRIEVAL["heldout"] and RETRIEVAL["accuracy"]["queries"] == "heldout"
REFERENCE_SETS = (
    {"reference": {"source": None, "num_shards": 1}}
    if FIDELITY["benchmark"] == "mini"
    else {"mjhq": {"source": {"type": "folder", "path": mjhq_reference("mjhq")}, "num_shards": 1}}
) | ({HELDOUT_NAME: TOKENISED[HELDOUT_NAME]} if _SEARCHES_HELDOUT else {})
CHECKED_SOURCES = CORPORA | (FINETUNE_PAIRS or {FAID["trainset_split"]: {"source": None, "num_shards": 1}})
HASHED = CHECKED_SOURCES | REFERENCE_SETS
_clashes = sorted(set(CHECKED_SOURCES) & set(REFERENCE_SETS))
if _clashes:
    raise ValueError(
        f"{_clashes} are both evaluation reference sets and retrieval or fine-tuning sources: the benchmark's images "
        "cannot also be its training data; take the corpus or pairs from another split or source"
    )


# Thumbnail side of the retrieved images in the attribution figure: the mini world's native size, or 128 px for
# real corpora (images of any size, shown beside the generated ones).
ATTRIBUTION_SIZE = 128 if RETRIEVAL["corpora"] else config["world"]["image_size"]
# The paper's published rows beside ours (paper profile): `arrag table ... --paper-rows`.
PAPER_ROWS = "--paper-rows" if config["tables"]["paper_rows"] else ""
