"""The Snakemake DAG: lint, config validation, and one smoke run of the whole DAG on the toy profile."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _workdir(tmp_path: Path) -> Path:
    for name in ("Snakefile", "workflow", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )


def test_lint_is_clean(tmp_path):
    """Clean but for one lint, by design: rules run in the environment Snakemake runs in (environment.yml), and
    only the benchmarks' own scorers declare a conda env, so that --use-conda re-plans nothing else."""
    for config in ([], ["--configfile", "config/paper.yaml"]):
        (tmp_path / str(len(config))).mkdir()
        result = _snakemake(_workdir(tmp_path / str(len(config))), "--lint", *config)
        assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr[-3000:]
        lints = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip().startswith("* ")]
        assert lints and set(lints) == {"* Specify a conda environment or container for each rule.:"}, lints


def test_invalid_config_names_the_key_and_allowed_values(tmp_path):
    work = _workdir(tmp_path)
    (work / "bad.yaml").write_text("profile: bad\ndevice: tpu\n")
    result = _snakemake(work, "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "device" in out and "auto|cpu|cuda" in out

    (work / "bad.yaml").write_text("profile: bad\nworld: {underrepresented: [[magenta, circle]]}\n")
    out = _snakemake(work, "-n", "--configfile", "bad.yaml")
    assert out.returncode != 0 and "magenta" in out.stdout + out.stderr


def test_methods_not_configured_are_never_built(tmp_path):
    work = _workdir(tmp_path)
    (work / "two.yaml").write_text("methods: [vanilla, daid]\n")
    result = _snakemake(work, "-n", "--configfile", "config/toy.yaml", "two.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    rules = {
        line.split(":")[0].split()[-1]
        for line in result.stdout.splitlines()
        if line.startswith(("rule ", "localrule "))
    }
    assert {"bench_generate", "generate", "build_database"} <= rules
    assert not rules & {"train_faid", "train_racm3", "faid_trainset", "build_image_index"}


def test_a_hub_model_is_downloaded_at_its_pinned_commit_instead_of_trained(tmp_path):
    work = _workdir(tmp_path)
    (work / "hub.yaml").write_text(f"model: {{source: hub, revision: {'0123abcd' * 5}}}\n")
    result = _snakemake(work, "-n", "-p", "--configfile", "config/toy.yaml", "hub.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rule download_model:" in result.stdout and "rule train_base:" not in result.stdout
    assert f"--hub-id deepseek-community/Janus-Pro-1B --revision {'0123abcd' * 5}" in result.stdout
    (work / "hub.yaml").write_text("model: {source: hub}\n")
    unpinned = _snakemake(work, "-n", "--configfile", "config/toy.yaml", "hub.yaml")
    assert unpinned.returncode != 0 and "model.revision is not set" in unpinned.stdout + unpinned.stderr


def test_a_database_sharded_over_gpus_gives_its_jobs_that_many(tmp_path):
    work = _workdir(tmp_path)
    (work / "shard.yaml").write_text("retrieval: {index: torch_compact, index_params: {}, db_gpus: 2}\n")
    result = _snakemake(work, "-n", "-p", "--configfile", "config/toy.yaml", "shard.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = result.stdout.split("\n\n")
    daid = [job for job in jobs if "arrag generate-benchmark" in job and "--method daid" in job]
    vanilla = [job for job in jobs if "arrag generate-benchmark" in job and "--method vanilla" in job]
    assert daid and all("--db-devices cuda:0,cuda:1" in job and "gpu=2" in job for job in daid)
    showo = [job for job in jobs if "arrag generate-benchmark" in job and "--method faid" in job and "showo" in job]
    assert showo and all("--db-devices cuda:0,cuda:1" in job and "gpu=2" in job for job in showo)
    assert vanilla and all("--db-devices" not in job and "gpu=1" in job for job in vanilla)
    (work / "shard.yaml").write_text("retrieval: {db_gpus: 2}\n")
    refused = _snakemake(work, "-n", "--configfile", "config/toy.yaml", "shard.yaml")
    assert refused.returncode != 0 and "only a torch_compact database is sharded" in refused.stdout + refused.stderr


def test_every_generating_job_samples_and_runs_daid_as_configured(tmp_path):
    """One flag builder: every job that generates (the methods' runs, both sweeps, Table 4's timing) gets the
    configured sampling, and every one that runs DAiD the configured DAiD (here --daid-unique and a top-k)."""
    work = _workdir(tmp_path)
    (work / "flags.yaml").write_text("daid: {unique: true}\ngeneration: {top_k: 7}\n")
    result = _snakemake(work, "-n", "-p", "--configfile", "config/toy.yaml", "flags.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    generating = ("arrag generate-benchmark", "arrag bench generate")
    jobs = [job for job in result.stdout.split("\n\n") if any(command in job for command in generating)]
    rules = {re.search(r"^(?:local)?rule (\w+):", job, re.M).group(1) for job in jobs}
    assert rules == {"generate", "generate_daid_sweep", "generate_faid_sweep", "bench_generate", "bench_generate_showo"}
    assert all("--top-k 7 " in job and "--guidance-scale 3.0 --temperature 1.0 --seed 0" in job for job in jobs)
    daid = [job for job in jobs if "--method daid" in job or "arrag bench generate" in job]
    assert len(daid) > 1 and all("--daid-unique" in job for job in daid)
    assert all("--daid-unique" not in job for job in jobs if job not in daid)
    _assert_logs_named_after_rules(result.stdout, "toy")


def _assert_logs_named_after_rules(dry_run_stdout: str, profile: str) -> None:
    """Every job has a log and a job statistics file named after its rule, <rule>.ext or <rule>/<job>.ext: what
    `arrag scale-table` groups them by (arrag.bench.scale)."""
    jobs = [job for job in dry_run_stdout.split("\n\n") if re.search(r"^(?:local)?rule (\w+):", job, re.M)]
    assert jobs
    for job in jobs:
        rule = re.search(r"^(?:local)?rule (\w+):", job, re.M).group(1)
        if rule == "all":
            continue
        log = re.search(r"^\s*log: (\S+)$", job, re.M).group(1)
        stats = re.search(r"^\s*benchmark: (\S+)$", job, re.M).group(1)
        assert re.fullmatch(rf"results/{profile}/logs/{rule}(/[^ ]+)?\.log", log), (rule, log)
        assert re.fullmatch(rf"results/{profile}/jobstats/{rule}(/[^ ]+)?\.tsv", stats), (rule, stats)


def _job_counts(dry_run_stdout: str) -> dict[str, int]:
    table = dry_run_stdout[dry_run_stdout.index("job ") : dry_run_stdout.index("total")]
    return {parts[0]: int(parts[1]) for parts in (line.split() for line in table.splitlines()[2:]) if len(parts) == 2}


@pytest.mark.parametrize(
    "config, tokenise, embed, rows, shards, sweep, daid_sweep, sweep_prompts, total",
    [
        # tokenised: the corpora and the pairs (Figure 6 reads FAiD's training set, so no held-out images);
        # rows: Janus's four methods, plus Show-o, Show-o + DAiD and Show-o + FAiD where `backbones` has Show-o;
        # the sweeps' 10K MJHQ-30K prompts: their own set beside Table 3's 30K, or Table 3's own first 10K
        ("config/paper.yaml", 64 + 32 + 48 + 4 + 4, 64 + 32, 4 + 3, 4, 3 * 3, 5 * 4, "mjhq_sweep", 797),
        ("config/paper-1gpu.yaml", 1 + 1 + 1, 1, 4, 1, 2 * 2, 3 * 2, "mjhq", 101 + 5 + 1),
    ],
)
def test_the_paper_profiles_resolve(
    tmp_path, config, tokenise, embed, rows, shards, sweep, daid_sweep, sweep_prompts, total
):
    """The paper DAG as shipped (Janus-Pro-1B from the hub, three corpora, FAiD's fine-tuning pairs from two
    captioned sources, RA-CM3's CLIP index over the corpora it names, GenEval/DPG-Bench/MJHQ-30K with the
    benchmarks' own models, every weight from a download rule) resolves with its expected jobs; nothing of the mini
    world is built."""
    work = _workdir(tmp_path)
    shutil.copytree(REPO / "arrag" / "prompt_sets", work / "arrag" / "prompt_sets")  # the vendored prompt sets
    result = _snakemake(work, "-n", "-p", "--configfile", config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = _job_counts(result.stdout)
    assert jobs["tokenise_shard"] == tokenise and jobs["generate"] == rows * 3 * shards  # x prompt sets x shards
    assert jobs["finish_generation"] == rows * 3 and jobs["download_model"] == 1
    for rule in (
        "download_geneval_detector",
        "download_dpg_csv",
        "download_mjhq",
        "download_inception",
        "download_mplug",
    ):
        assert jobs[rule] == 1
    assert jobs["download_clip"] == 3  # RA-CM3's ViT-B/32, GenEval's ViT-L/14, CMMD's ViT-L/14@336
    assert jobs["faid_trainset"] == jobs["train_faid"] == 1 and jobs["train_faid_sweep"] == sweep
    assert jobs["embed_images"] == embed and jobs["build_image_index"] == jobs["train_racm3"] == 1
    assert jobs["download_dataset"] == 2  # CC12M tars and midjourney-v6-llava parquet
    assert jobs["hash_images"] == tokenise + 1 and jobs["contamination"] == 1  # every tokenised shard + MJHQ-30K
    assert sum(jobs.values()) == total  # the figure docs/paper-scale.md quotes (+ 1: results_doc)
    assert not set(jobs) & {"world", "train_vq", "train_base", "mini_dpg", "train_features"}
    trainset = next(  # Janus's (Show-o's writes retrieval/showo_faid_trainset)
        line for line in result.stdout.splitlines() if "arrag faid-trainset" in line and "/faid_trainset " in line
    )
    assert "--codes results/" in trainset and "codes/midjourney_pairs/codes-00000-of-" in trainset
    assert "--world" not in trainset and "--exclude-self" not in trainset
    download = next(line for line in result.stdout.splitlines() if "arrag download dataset" in line and "cc12m" in line)
    assert "--repo pixparse/cc12m-wds --revision 796118f2eabdb9984f23f7f15d1e74d388612fc6 --include" in download
    index = next(line for line in result.stdout.splitlines() if "arrag build-image-index" in line)
    clip = f"results/{config.split('/')[1][:-5]}/downloads/clip/ViT-B-32-quickgelu/open_clip_model.safetensors"
    assert "--embeddings results/" in index and f"--clip-model ViT-B-32-quickgelu --clip-pretrained {clip}" in index
    assert "--captions" not in index and "codes/datacomp/" not in index  # RA-CM3: CC12M + JourneyDB only
    check = next(line for line in result.stdout.splitlines() if "arrag contamination" in line)
    assert "--reference mjhq " in check and "--source midjourney_pairs " in check and "--source cc12m " in check
    exclusions = f"--exclude results/{config.split('/')[1][:-5]}/contamination/exclusions.json"
    assert exclusions in index and exclusions in trainset
    # Figure 7 as the paper scores it (appendix C.2): every sweep point generates the first 10K MJHQ-30K prompts,
    # one image each, and is scored by FID (Inception) against their real images; no sweep point runs GenEval
    profile = config.removeprefix("config/").removesuffix(".yaml")
    jobs_text = result.stdout.split("\n\n")
    points = [j for j in jobs_text if "rule generate_daid_sweep:" in j or "rule generate_faid_sweep:" in j]
    assert len(points) == daid_sweep + sweep
    assert all(f"--prompts results/{profile}/prompts/{sweep_prompts}.jsonl --n 1 " in j for j in points)
    assert jobs["score_sweep_fid"] == daid_sweep + sweep and jobs["score_geneval"] == rows  # the methods' own runs
    scores = [j for j in jobs_text if "rule score_sweep_fid:" in j]
    assert len(scores) == daid_sweep + sweep
    reference = f"--reference results/{profile}/{sweep_prompts}/reference"
    assert all("--fid-network inception:" in j and reference in j for j in scores)
    assert jobs["mjhq_prompts"] == (2 if sweep_prompts == "mjhq_sweep" else 1)
    _assert_logs_named_after_rules(result.stdout, profile)
    sweep_set = next(line for line in result.stdout.splitlines() if f"{sweep_prompts}.jsonl --out-reference" in line)
    assert "arrag mjhq-prompts" in sweep_set and "--limit 10000 " in sweep_set
    tables = [line for line in result.stdout.splitlines() if "arrag sweep-table" in line]
    assert len(tables) == 2 and all("--metric fid " in t and "FID on the first 10000 MJHQ-30K" in t for t in tables)
    # Figure 6 on FAiD's training set, as appendix C.1
    accuracy = next(line for line in result.stdout.splitlines() if "arrag retrieval-accuracy" in line)
    assert f"--queries train --trainset results/{profile}/retrieval/faid_trainset " in accuracy
    (work / "unset.yaml").write_text("model: {revision: null}\n")
    unset = _snakemake(work, "-n", "--configfile", config, "unset.yaml")
    assert unset.returncode != 0 and "model.revision is not set" in unset.stdout + unset.stderr


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """The whole DAG on the toy profile, run once: its test reads it, and the test over image folders reruns part
    of a copy of it under another config (Snakemake reruns only the jobs whose inputs or parameters changed)."""
    work = _workdir(tmp_path_factory.mktemp("toy"))
    # one thread per job, two jobs at once: toy jobs are import-bound, and single-threaded jobs cannot thrash
    # each other's OpenMP barriers on a busy 2-core machine
    result = _snakemake(work, "--cores", "2", "--max-threads", "1", "--configfile", "config/toy.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


@pytest.mark.smoke
def test_a_database_over_configured_image_folders(toy_run, tmp_path, tiny_clip):
    """retrieval.corpora: two image folders tokenised in their own shards into one database with disjoint image
    ids and its source table; Figure 6 from a held-out folder; attribution finds images through the table; FAiD's
    training set from captioned pairs in parquet, "downloaded" through rule download_dataset from a local mirror
    (finetune.pairs, downloads.datasets); RA-CM3's CLIP index over one of the corpora (a tiny random-weight CLIP
    from a local config and weights file) and its fine-tuning on the same pairs. And generation in two shards (one
    prompt set, one method). Over a copy of the toy run: only what these settings change is rerun."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import TINY_CLIP

    work = tmp_path / "work"
    shutil.copytree(toy_run, work, symlinks=True)
    rng = np.random.default_rng(0)
    captions = ["a photo of a red circle", "a photo of a blue square", "a photo of two green triangles"]
    for name, n in (("photos_a", 12), ("photos_b", 8), ("held", 6)):
        (work / "data" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(work / "data" / name / f"{i}.png")
    images = []
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    (work / "mirror" / "org--pairs" / "data").mkdir(parents=True)  # what `download dataset --mirror` copies
    table = pa.table({"image": images, "text": [captions[i % 3] for i in range(5)]})
    pq.write_table(table, work / "mirror" / "org--pairs" / "data" / "train-00000.parquet")
    (work / "clip").mkdir()
    (work / "clip" / "arrag-dag-clip.json").write_text(json.dumps(TINY_CLIP))
    shutil.copy(tiny_clip[1], work / "clip" / "weights.safetensors")
    (work / "corpora.yaml").write_text(
        "methods: [vanilla, daid, faid, racm3]\n"
        "retrieval:\n"
        "  corpora:\n"
        "    photos_a: {source: {type: folder, path: data/photos_a}, num_shards: 2}\n"
        "    photos_b: {source: {type: folder, path: data/photos_b}}\n"
        "  heldout: {source: {type: folder, path: data/held}}\n"
        "downloads:\n"
        "  mirror: mirror\n"
        f"  datasets: {{pairs: {{repo: org/pairs, revision: {'c' * 40}, include: ['data/*.parquet']}}}}\n"
        "finetune:\n"
        "  pairs:\n"
        "    captioned:\n"
        "      source: {type: parquet, files: downloads/pairs/data/train-*.parquet, caption_column: text}\n"
        "      download: pairs\n"
        "      num_shards: 2\n"
        "racm3:\n"
        "  corpora: [photos_b]\n"
        "  clip: {model: clip/arrag-dag-clip.json, pretrained: clip/weights.safetensors}\n"
        "generation: {num_shards: 2, seed: 1}\n"
    )
    targets = [
        "results/toy/tables/retrieval_accuracy.csv",
        "results/toy/figures/attribution.png",
        "results/toy/retrieval/faid_trainset",
        "results/toy/models/racm3",
        "results/toy/images/vanilla/geneval/generation.json",
    ]
    result = _snakemake(
        work, *targets, "--cores", "2", "--max-threads", "1", "--configfile", "config/toy.yaml", "corpora.yaml"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    meta = json.loads((work / "results/toy/retrieval/db/metadata.json").read_text())
    assert meta["num_images"] == 20 and [t["offset"] for t in meta["sources"]] == [0, 12]
    assert [t["source"]["path"] for t in meta["sources"]] == ["data/photos_a", "data/photos_b"]
    assert len((work / "results/toy/tables/retrieval_accuracy.csv").read_text().splitlines()) == 1 + 5 + 1
    assert (work / "results/toy/figures/attribution.png").is_file()
    assert (work / "downloads/pairs/SOURCE").read_text().startswith(f"org/pairs@{'c' * 40}")
    trainset = json.loads((work / "results/toy/retrieval/faid_trainset/trainset.json").read_text())
    assert sorted(trainset["captions"]) == sorted(captions[i % 3] for i in range(5))
    db_digest = json.loads((work / "results/toy/retrieval/db/MANIFEST.json").read_text())["digest"]
    assert trainset["database"] == db_digest and not trainset["excluded_same_image"]
    index = json.loads((work / "results/toy/retrieval/image_index/index.json").read_text())
    assert index["count"] == 8 and index["encoder"]["name"] == "open_clip"
    assert [t["source"]["path"] for t in index["sources"]] == ["data/photos_b"]
    racm3 = json.loads((work / "results/toy/models/racm3/training.json").read_text())
    assert racm3["image_index"]["count"] == 8 and racm3["steps"] == 3
    # two shards write one prompt-set folder; finish_generation checks it and sums their records. Another seed than
    # the toy run's: the shards generate every prompt anew, beside the old folder, which the new one then replaces
    geneval = work / "results/toy/images/vanilla/geneval"
    prompts = (work / "results/toy/world/geneval/evaluation_metadata.jsonl").read_text().splitlines()
    generation = json.loads((geneval / "generation.json").read_text())
    assert (generation["generated"], generation["num_shards"], generation["seed"]) == (len(prompts), 2, 1)
    assert {p.name for p in (geneval / "shards").iterdir()} >= {"00000-of-00002.json", "00001-of-00002.json"}
    assert len(list(geneval.glob("0*/samples/*.png"))) == 2 * len(prompts)
    logs = work / "results/toy/logs/generate/vanilla/geneval"
    assert {p.name for p in logs.iterdir()} >= {"00000-of-00002.log", "00001-of-00002.log"}


@pytest.mark.smoke
def test_whole_dag_on_the_toy_profile(toy_run):
    work = toy_run
    res = work / "results" / "toy"

    # GenEval layout: one folder per prompt with its metadata and n samples
    prompts = [json.loads(line) for line in (res / "world/geneval/evaluation_metadata.jsonl").read_text().splitlines()]
    geneval = res / "images/vanilla/geneval"
    for i, record in enumerate(prompts):
        folder = geneval / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == record
        samples = sorted((folder / "samples").glob("*.png"))
        assert [p.name for p in samples] == ["0000.png", "0001.png"]
        assert Image.open(samples[0]).size == (32, 32)
    generation = json.loads((geneval / "generation.json").read_text())
    assert (generation["generated"], generation["num_shards"]) == (len(prompts), 1)
    assert len(list((res / "images/vanilla/reference").glob("0*/samples/0000.png"))) == 4
    assert Image.open(res / "figures/samples_vanilla.png").size[0] > 32

    # the models load back by path, offline
    assert list((res / "models/base").glob("*.safetensors")) and (res / "models/base/tokenizer.json").is_file()
    assert not (res / "models/base.partial").exists()
    selection = json.loads((res / "models/base_selection.json").read_text())  # the better of the toy's two seeds
    assert len(selection["candidates"]) == 2 and selection["scores"][selection["chosen"]] == max(
        selection["scores"].values()
    )
    chosen = Path(selection["chosen"]) if Path(selection["chosen"]).is_absolute() else work / selection["chosen"]
    assert [f.read_bytes() for f in sorted(chosen.iterdir())] == [
        f.read_bytes() for f in sorted((res / "models/base").iterdir())
    ]

    # the retrieval database: two corpus shards gathered into one database, Figure 6 from held-out codes
    shards = sorted((res / "codes/corpus").glob("codes-*-of-00002.json"))
    assert len(shards) == 2 and sum(json.loads(p.read_text())["count"] for p in shards) == 200
    meta = json.loads((res / "retrieval/db/metadata.json").read_text())
    assert meta["ntotal"] == 200 * 8 * 8 and meta["index"] == "ivf_compact" and meta["hops"] == 1
    lines = (res / "tables/retrieval_accuracy.csv").read_text().splitlines()
    assert lines[0] == "rank,mean_distance,std_distance,exact_match" and lines[-1].startswith("random,")
    assert len(lines) == 1 + 5 + 1 and (res / "figures/retrieval_accuracy.png").is_file()

    # DAiD: images in the same layout, each prompt folder with its over-copying records, and the table
    daid = res / "images/daid/geneval"
    assert len(list(daid.glob("0*/samples/*.png"))) == 2 * len(prompts)
    assert len(json.loads((daid / "00000" / "copying.json").read_text())) == 2
    assert json.loads((daid / "settings.json").read_text())["method"] == "daid"
    table = (res / "tables/over_copying.csv").read_text().splitlines()
    assert table[0].startswith("method,source,images,copied_fraction_mean") and table[1].startswith("daid,measured,24,")

    # RA-CM3: its image index over the corpus, its fine-tuned model, images copying-scored against the reference
    assert json.loads((res / "retrieval/image_index/index.json").read_text())["count"] == 200
    assert list((res / "models/racm3").glob("*.safetensors"))
    racm3 = res / "images/racm3/geneval"
    assert len(list(racm3.glob("0*/samples/*.png"))) == 2 * len(prompts)
    assert json.loads((racm3 / "settings.json").read_text())["method"] == "racm3"
    assert table[2].startswith("faid,measured,24,") and table[3].startswith("racm3,measured,24,")
    assert Image.open(res / "figures/attribution.png").size[1] > 4 * 32

    # mini-GenEval: per-image records in the official schema, Table 1 per method, DAiD's sweep as CSV + heatmap
    records = [json.loads(line) for line in (res / "scores/daid/geneval_results.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(prompts) and {"filename", "tag", "correct", "reason"} <= set(records[0])
    table1 = (res / "tables/geneval.csv").read_text().splitlines()
    assert table1[0].startswith("method,source,single_object,two_object,counting,colors,position,color_attr,overall")
    runs = ["vanilla", "daid", "faid", "racm3", "showo_faid", "vq_reconstructions"]  # the last: the detector's ceiling
    assert [line.split(",")[0] for line in table1[1:]] == runs
    ceiling = res / "images/vq_reconstructions/geneval"
    assert len(list(ceiling.glob("0*/samples/*.png"))) == 2 * len(prompts)
    assert "VQ reconstructions (ceiling)" in (res / "tables/geneval.md").read_text()
    for name in ("geneval", "dpg", "fidelity", "inference_time", "over_copying"):  # each table in three formats
        assert (res / f"tables/{name}.md").read_text().startswith("| Method |")
        assert r"\begin{tabular}" in (res / f"tables/{name}.tex").read_text()
    fidelity = (res / "tables/fidelity.csv").read_text().splitlines()
    assert fidelity[0].startswith("method,source,") and len(fidelity) == 6  # the four methods and Show-o + FAiD
    # the run in one document (rule results_doc): every table as written, stamped with the commit and the machine
    doc = (res / "RESULTS.md").read_text()
    assert all((res / f"tables/{name}.md").read_text().strip() in doc for name in ("geneval", "dpg", "fidelity"))
    assert "- commit: " in doc and "- machine: " in doc and "](figures/samples_vanilla.png)" in doc
    # the Params column from the generation records (FAiD adds its modules), Overall against vanilla, Total (s)
    import csv

    params = {r["method"]: float(r["params"]) for r in csv.DictReader((res / "tables/geneval.csv").open())}
    assert params["daid"] == params["vanilla"] > 0 and params["faid"] > params["vanilla"]
    assert "(+" in (res / "tables/geneval.md").read_text() or "(-" in (res / "tables/geneval.md").read_text()
    times = list(csv.DictReader((res / "tables/inference_time.csv").open()))
    assert all(float(r["total_s"]) > 0 and float(r["params"]) > 0 for r in times)
    inference = (res / "tables/inference_time.csv").read_text().splitlines()
    # Show-o's rows from its own timing (toy: showo.methods [faid]; its --db adds DAiD's row, as on Janus)
    labels = ["vanilla", "daid", "faid", "racm3", "showo", "showo_daid", "showo_faid"]
    assert [line.split(",")[0] for line in inference[1:]] == labels

    # mini-DPG: its prompts and question CSV, 2x2 tiles named by prompt, per-image records, Table 2
    questions = (res / "world/dpg/dpg_bench.csv").read_text().splitlines()
    assert questions[0].startswith("item_id,text,keywords,proposition_id,dependency")
    tiles = sorted((res / "images/faid/dpg_tiles").glob("*.png"))
    assert len(tiles) == 4 and Image.open(tiles[0]).size == (64, 64)
    assert len((res / "scores/faid/dpg_results.jsonl").read_text().splitlines()) == 4
    dpg = (res / "tables/dpg.csv").read_text().splitlines()
    assert dpg[0].startswith("method,source,global,entity,attribute,relation,other,overall") and len(dpg) == 6
    sweep = (res / "tables/sweep_daid.csv").read_text().splitlines()
    assert sweep[0].startswith("weight,temperature,overall") and len(sweep) == 3
    assert (res / "figures/sweep_daid.png").is_file()

    # FAiD: its training set, FAiD-only checkpoint, images with copying records, its (one-point) toy sweep
    assert json.loads((res / "retrieval/faid_trainset/trainset.json").read_text())["count"] == 64
    assert (res / "models/faid/faid.safetensors").is_file() and (res / "models/faid/faid.json").is_file()
    faid = res / "images/faid/geneval"
    assert len(list(faid.glob("0*/samples/*.png"))) == 2 * len(prompts)
    assert json.loads((faid / "settings.json").read_text())["method"] == "faid"
    assert len((res / "tables/sweep_faid.csv").read_text().splitlines()) == 2

    # Show-o (backbones: [janus, showo], its FAiD row only): its own codes, an 8-neighbour database, FAiD, images
    showo_db = json.loads((res / "retrieval/showo_db/metadata.json").read_text())
    assert showo_db["causal"] is False and showo_db["ntotal"] == 200 * 8 * 8
    assert json.loads((res / "retrieval/showo_faid_trainset/trainset.json").read_text())["count"] == 64
    assert json.loads((res / "models/showo_faid/faid.json").read_text())["backbone"] == "showo"
    showo = res / "images/showo_faid/geneval"
    assert len(list(showo.glob("0*/samples/*.png"))) == 2 * len(prompts)
    assert params["showo_faid"] > 0

    # one log and one job statistics file per job, named after its rule
    rules = [
        "world",
        "train_vq",
        "train_base/seed~0",
        "train_base/seed~1",
        "select_base",
        "tokenise_shard/corpus/00000-of-00002",
        "tokenise_shard/corpus/00001-of-00002",
        "tokenise_shard/reference/00000-of-00001",
        "build_database",
        "retrieval_accuracy",
        "over_copying",
        "build_image_index",
        "train_racm3",
        "attribution",
        "faid_trainset",
        "train_faid",
        "geneval_table",
        "sweep_daid",
        "sweep_faid",
        "fidelity_table",
        "inference_time_table",
        "bench_generate",
        "bench_generate_showo",
        "mini_dpg",
        "dpg_prompts",
        "dpg_table",
    ]
    methods = ("vanilla", "daid", "faid", "racm3")
    rules += [f"{rule}/{method}" for rule in ("sample_grid", "tile_dpg") for method in methods]
    for prompt_set in ("geneval", "reference", "dpg"):  # generation in one shard per method and prompt set
        rules += [f"generate/{m}/{prompt_set}/00000-of-00001" for m in methods]
        rules += [f"finish_generation/{m}/{prompt_set}" for m in methods]
    for rule in rules:
        assert (res / "logs" / f"{rule}.log").is_file()
        assert (res / "jobstats" / f"{rule}.tsv").is_file()

    again = _snakemake(work, "--cores", "2", "--configfile", "config/toy.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # the HTML report: tables, figures and sample grids per method
    report = _snakemake(work, "--cores", "1", "--configfile", "config/toy.yaml", "--report", "report.html")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert (work / "report.html").stat().st_size > 100_000


def test_the_mini_sweeps_keep_their_labelled_stand_in_and_fid_needs_mjhq(tmp_path):
    """The mini profile has no MJHQ-30K: its sweeps are scored by mini-GenEval and their tables say it stands in for
    the paper's FID; asking it for FID is refused with the keys to change."""
    work = _workdir(tmp_path)
    result = _snakemake(work, "-n", "-p", "--configfile", "config/toy.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    tables = [line for line in result.stdout.splitlines() if "arrag sweep-table" in line]
    assert len(tables) == 2 and all(
        "--metric geneval " in t and "mini-GenEval overall, a stand-in" in t for t in tables
    )
    (work / "fid.yaml").write_text("sweeps: {score: fid}\n")
    refused = _snakemake(work, "-n", "--configfile", "config/toy.yaml", "fid.yaml")
    assert refused.returncode != 0 and "evaluation.fidelity.benchmark is 'mini'" in refused.stdout + refused.stderr


def test_openai_clip_weights_in_a_gelu_model_are_refused_at_parse_time(tmp_path):
    """RA-CM3's retriever as `ViT-B-32` with the OpenAI weights (QuickGELU) would load with a warning only."""
    work = _workdir(tmp_path)
    shutil.copytree(REPO / "arrag" / "prompt_sets", work / "arrag" / "prompt_sets")
    (work / "gelu.yaml").write_text("racm3: {clip: {model: ViT-B-32, pretrained: openai}}\n")
    result = _snakemake(work, "-n", "--configfile", "config/paper-1gpu.yaml", "gelu.yaml")
    assert result.returncode != 0 and "use the model name ViT-B-32-quickgelu" in result.stdout + result.stderr
