# Where each output lives: everything a run writes is under results/<profile>/ (results/README.md describes the
# layout). A path that more than one rule names is defined once here; a rule's own output, read by a later rule
# of its file or by `all`, is referred to as rules.<name>.output.

RESULTS = f"results/{config['profile']}"

BASE_MODEL = f"{RESULTS}/models/base"  # the backbone: trained (train_base) or a hub snapshot (download_model)
VQ_MODEL = f"{RESULTS}/models/vq"  # the mini model's VQ-VAE (train_vq)
BASE_CANDIDATE = f"{RESULTS}/models/base_seeds/seed~{{seed}}"  # the mini base model of one training seed (train_base)
BASE_SELECTION = f"{RESULTS}/models/base_selection.json"  # which candidate became BASE_MODEL, and why (select_base)
FEATURES_MODEL = f"{RESULTS}/models/features"  # the mini world's feature network: mini-FID, mini-CMMD
RACM3_MODEL = f"{RESULTS}/models/racm3"  # RA-CM3's fine-tuned backbone (train_racm3)
FAID_MODEL = f"{RESULTS}/models/faid"  # FAiD's modules (train_faid)
DATABASE = f"{RESULTS}/retrieval/db"  # the patch database (build_database)
IMAGE_INDEX = f"{RESULTS}/retrieval/image_index"  # RA-CM3's image retriever (build_image_index)
FAID_TRAINSET = f"{RESULTS}/retrieval/faid_trainset"  # FAiD's retrieved training set (faid_trainset)
SHOWO_MODEL = f"{RESULTS}/models/showo"  # the Show-o backbone folder: showo/ + magvitv2/ (+ tokenizer/)
SHOWO_DATABASE = f"{RESULTS}/retrieval/showo_db"  # Show-o's patch database: its own codes, 8-neighbour keys
SHOWO_FAID_TRAINSET = f"{RESULTS}/retrieval/showo_faid_trainset"
SHOWO_FAID_MODEL = f"{RESULTS}/models/showo_faid"  # FAiD's modules on Show-o (train_showo_faid)
EXCLUSIONS = f"{RESULTS}/contamination/exclusions.json"  # benchmark images found in the sources (contamination)
MINI_DPG = f"{RESULTS}/world/dpg"  # mini-DPG's prompts and question CSV (mini_dpg)
# downloads (localrules, on the login node)
INCEPTION = f"{RESULTS}/downloads/inception-2015-12-05.pt"
MASK2FORMER = f"{RESULTS}/downloads/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
DPG_CSV = f"{RESULTS}/downloads/dpg_bench.csv"
MPLUG = f"{RESULTS}/downloads/mplug"
MJHQ30K = f"{RESULTS}/downloads/mjhq30k"


def world_split(split, file="images.npy"):
    """results/<profile>/world/<split>/<file>: a mini-world split's images.npy or metadata.jsonl (rule world)."""
    return f"{RESULTS}/world/{split}/{file}"


def world_dir(split_file):
    """results/<profile>/world/<split>/images.npy -> results/<profile>/world"""
    return os.path.dirname(os.path.dirname(split_file))


def generated(run, prompts):
    """results/<profile>/images/<run>/<prompts>/generation.json: a finished prompt-set folder of a method or a
    sweep point (written last, by finish_generation or a sweep's generating job)."""
    return f"{RESULTS}/images/{run}/{prompts}/generation.json"


def dpg_tiles(method):
    """results/<profile>/images/<method>/dpg_tiles: a method's DPG-Bench images as 2x2 tiles (rule tile_dpg)."""
    return f"{RESULTS}/images/{method}/dpg_tiles"


def prompts_file(name):
    """results/<profile>/prompts/<name>.jsonl: a prompt set made by a rule (dpg_prompts, mjhq_prompts)."""
    return f"{RESULTS}/prompts/{name}.jsonl"


def mjhq_reference(prompts):
    """The real MJHQ-30K images of prompt set `prompts` (mjhq or mjhq_sweep; rule mjhq_prompts)."""
    return f"{RESULTS}/{prompts}/reference"


def clip_download(model):
    """The OpenAI weights of open_clip `model`, as rule download_clip fetches them."""
    return f"{RESULTS}/downloads/clip/{model}"


def lock_path(name):
    """The lock file of download `name` (arrag.data.locks): commit it beside the config, as a package lock."""
    return os.path.join(config["downloads"]["locks"], config["profile"], f"{name}.json")


def dataset_dir(name):
    return os.path.join(config["downloads"]["dir"], name)


def source_shards(entries):
    """(name, shard, num_shards) of every tokenisation shard of the given sources (name -> {source, num_shards})."""
    counts = {name: entry.get("num_shards", 1) for name, entry in entries.items()}
    return [(name, s, n) for name, n in counts.items() for s in range(n)]


def code_shard(split, shard, num_shards):
    """results/<profile>/codes/<split>/codes-SSSSS-of-TTTTT.npz (format: arrag.data.code_shards)"""
    return f"{RESULTS}/codes/{split}/codes-{shard:05d}-of-{num_shards:05d}.npz"


def showo_code_shard(split, shard, num_shards):
    """results/<profile>/codes_showo/<split>/codes-SSSSS-of-TTTTT.npz: a shard tokenised by Show-o's MAGVIT-v2."""
    return f"{RESULTS}/codes_showo/{split}/codes-{shard:05d}-of-{num_shards:05d}.npz"


def showo_part(part):
    """results/<profile>/downloads/showo/<part>: a downloaded part of Show-o (showo, magvitv2, tokenizer)."""
    return f"{RESULTS}/downloads/showo/{part}"


def clip_shard(split, shard, num_shards):
    """results/<profile>/clip/<split>/clip-SSSSS-of-TTTTT.npz: CLIP embeddings of one shard (rule embed_images)"""
    return f"{RESULTS}/clip/{split}/clip-{shard:05d}-of-{num_shards:05d}.npz"


def hash_shards(entries):
    """results/<profile>/hashes/<name>/hashes-SSSSS-of-TTTTT.npz of every shard of the given sources."""
    return [f"{RESULTS}/hashes/{name}/hashes-{s:05d}-of-{n:05d}.npz" for name, s, n in source_shards(entries)]


# Every rule's log and Snakemake benchmark (its job's wall and CPU seconds and peak memory, read by
# arrag.bench.scale) are named after the rule: <rule>.log, or <rule>/<job>.log for a rule with one job per
# wildcard value (`job`: the wildcards, as a path).
def log_path(rule, job=""):
    return _job_file("logs", rule, job, "log")


def jobstats_path(rule, job=""):
    return _job_file("jobstats", rule, job, "tsv")


def _job_file(folder, rule, job, ext):
    name = f"{rule}/{job}" if job else rule
    return f"{RESULTS}/{folder}/{name}.{ext}"


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


# The run's results document, written last by results_doc (workflow/rules/results.smk).
RESULTS_DOC = f"{RESULTS}/RESULTS.md"
