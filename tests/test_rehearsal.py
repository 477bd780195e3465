"""The rehearsal of the paper path: the stand-in mirror, the scale table, and a toy-count run of
config/rehearsal.yaml's paper code path with every non-loopback connection refused."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arrag.bench.scale import _rule_of, read_jobstats, run_span, scale_markdown, scale_rows

REPO = Path(__file__).resolve().parents[1]

# Refuses every connection that leaves the machine, in every Python process started with it on PYTHONPATH.
NO_NETWORK = """
import ipaddress, socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        if not local:
            raise ConnectionRefusedError(f"the rehearsal refuses network connections (to {address})")


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
"""


def test_janus_pro_1b_config_is_the_real_one():
    from arrag.data.mini_world import caption_vocabulary
    from arrag.models.janus import build_word_tokenizer
    from arrag.rehearsal import janus_pro_1b_config

    tok = build_word_tokenizer(caption_vocabulary())
    config = janus_pro_1b_config(tok)
    t, v, q = config.text_config, config.vision_config, config.vq_config
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.vocab_size) == (24, 2048, 16, 102400)
    assert (v.image_size, v.patch_size, v.num_hidden_layers, v.hidden_size) == (384, 16, 24, 1024)
    assert (q.num_patches, q.num_embeddings, q.embed_dim, q.base_channels) == (24, 16384, 8, 128)
    shallow = janus_pro_1b_config(tok, depth=2)
    assert shallow.text_config.num_hidden_layers == shallow.vision_config.num_hidden_layers == 2
    assert shallow.text_config.hidden_size == 2048  # depth only: the widths stay Janus-Pro-1B's
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):  # the architecture without memory: Janus-Pro-1B's size at full depth
        n = sum(p.numel() for p in JanusForConditionalGeneration(config).parameters())
    assert 1.8e9 < n < 2.3e9
    with pytest.raises(ValueError, match="depth=0"):
        janus_pro_1b_config(tok, depth=0)


def test_the_mirror_is_what_each_download_command_reads(tmp_path):
    """Every stand-in lies where `arrag download model|dataset|mjhq --mirror` looks, and what they produce is read by
    the loaders the paper path uses: Janus by path with Janus-Pro's VQ, captioned 384 px images from the tars and the
    parquet, MJHQ-30K's prompts and reference images."""
    from arrag.data.downloads import download_dataset, download_model
    from arrag.data.mjhq import download_mjhq, extract_reference, mjhq_records
    from arrag.data.sources import iter_source
    from arrag.models.janus import load_janus
    from arrag.models.vq import VQTokenizer
    from arrag.rehearsal import CC12M_REPO, HUB_ID, MIDJOURNEY_REPO, build_mirror

    mirror = tmp_path / "mirror"
    summary = build_mirror(mirror, cc12m=5, cc12m_per_tar=2, midjourney=3, mjhq=4, depth=1, toy=True, clip_model=None)
    assert (summary["cc12m_tars"], summary["midjourney_parquet"], summary["mjhq_images"]) == (3, 1, 4)
    model_dir = download_model(HUB_ID, "a" * 40, tmp_path / "base", mirror=mirror)
    model, processor = load_janus(model_dir)
    vq = VQTokenizer.from_janus(model)
    assert (vq.image_size, vq.grid, vq.codebook_size) == (384, 24, 16384)
    assert processor.tokenizer("a photo of a red circle")["input_ids"][0] == processor.tokenizer.bos_token_id

    cc12m = download_dataset(CC12M_REPO, "b" * 40, ["cc12m-train-*.tar"], tmp_path / "cc12m", mirror=mirror)
    spec = {"type": "webdataset", "urls": str(cc12m / "cc12m-train-{0000..0002}.tar"), "caption_key": "txt"}
    records = list(iter_source(spec))
    assert len(records) == 5 and all(r.error is None and r.image.shape == (384, 384, 3) for r in records)
    assert all(r.caption.startswith("a photo of") for r in records)
    mj = download_dataset(MIDJOURNEY_REPO, "c" * 40, ["data/train-*.parquet"], tmp_path / "mj", mirror=mirror)
    spec = {
        "type": "parquet",
        "files": str(mj / "data" / "train-*.parquet"),
        "image_column": "image",
        "caption_column": "llava",
    }
    assert [r.caption is not None and r.image.shape == (384, 384, 3) for r in iter_source(spec)] == [True] * 3

    mjhq = tmp_path / "mjhq"
    download_mjhq(mjhq, mirror=mirror / "mjhq30k")
    prompts = mjhq_records(mjhq / "meta_data.json")
    assert len(prompts) == 4 and extract_reference(mjhq / "mjhq30k_imgs.zip", prompts, tmp_path / "ref") == 4


def test_the_mirror_serves_ra_cm3_clip_where_download_clip_looks(tmp_path, monkeypatch, tiny_clip):
    """RA-CM3's CLIP stand-in lies where rule download_clip (`arrag download model --include
    open_clip_model.safetensors --mirror`) reads OpenAI's weights, and comes out as the file the job loads."""
    import arrag.rehearsal as rehearsal
    from arrag.data.downloads import download_model

    monkeypatch.setattr(rehearsal, "write_janus_snapshot", lambda out, *a, **k: {})
    monkeypatch.setattr(rehearsal, "write_clip", lambda path, *a, **k: shutil.copy(tiny_clip[1], path))
    summary = rehearsal.build_mirror(tmp_path / "mirror", cc12m=1, cc12m_per_tar=1, midjourney=1, mjhq=1)
    assert summary["clip"] == "timm--vit_base_patch32_clip_224.openai/open_clip_model.safetensors"
    out = download_model(
        rehearsal.CLIP_REPO, "d" * 40, tmp_path / "clip", include=[rehearsal.CLIP_FILE], mirror=tmp_path / "mirror"
    )
    assert (Path(out) / rehearsal.CLIP_FILE).read_bytes() == Path(tiny_clip[1]).read_bytes()


def _bench(path: Path, seconds: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t1\t{seconds / 2}\n"
    )


def test_job_statistics_are_grouped_by_rule_and_scaled_by_the_items_of_the_run(tmp_path):
    assert _rule_of(Path("generate/daid/geneval/00001-of-00002.tsv")) == "generate (daid)"
    assert _rule_of(Path("download_dataset/cc12m.tsv")) == "download_dataset"
    assert _rule_of(Path("generate_daid_sweep/weight~0.1/temperature~1.0.tsv")) == "generate_daid_sweep"

    results = tmp_path / "results"
    _bench(results / "jobstats" / "tokenise_shard" / "cc12m" / "00000-of-00002.tsv", 30.0, 500.0)
    _bench(results / "jobstats" / "tokenise_shard" / "cc12m" / "00001-of-00002.tsv", 10.0, 900.0)
    _bench(results / "jobstats" / "world.tsv", 2.0, 50.0)
    for shard, count in ((0, 3), (1, 5)):
        (results / "codes" / "cc12m").mkdir(parents=True, exist_ok=True)
        (results / "codes" / "cc12m" / f"codes-0000{shard}-of-00002.json").write_text(json.dumps({"count": count}))
        (results / "codes" / "cc12m" / f"codes-0000{shard}-of-00002.npz").write_bytes(b"x" * 100 * count)
    measured = read_jobstats(results / "jobstats")
    assert measured["tokenise_shard"].jobs == 2 and measured["tokenise_shard"].max_rss_mb == 900.0
    rows = {r["rule"]: r for r in scale_rows(results)}
    tok = rows["tokenise_shard"]
    assert (tok["items"], tok["seconds_per_item"]) == (8, 40.0 / 8)
    assert tok["paper_hours"] == pytest.approx(40.0 / 8 * tok["paper_items"] / 3600)
    disk = sum(p.stat().st_size for p in (results / "codes").rglob("*") if p.is_file())
    assert tok["paper_disk_gb"] == pytest.approx(disk / 8 * tok["paper_items"] / 1e9)
    assert "items" not in rows["world"]  # a fixed-cost job: no paper count
    assert tok["paper_cpu_hours"] == pytest.approx(20.0 / 8 * tok["paper_items"] / 3600)
    assert "| `tokenise_shard` | 2 |" in scale_markdown(list(rows.values()), "x")
    # the run's span: each statistics file is written when its job ends, which started `s` seconds before
    for path, end in ((results / "jobstats" / "world.tsv", 1_000_000.0), (results / "jobstats" / "tokenise_shard"
                      / "cc12m" / "00000-of-00002.tsv", 1_000_600.0), (results / "jobstats" / "tokenise_shard"
                      / "cc12m" / "00001-of-00002.tsv", 1_000_100.0)):  # fmt: skip
        os.utime(path, (end, end))
    span = run_span(results / "jobstats")
    assert span == (1_000_000.0 - 2.0, 1_000_600.0)  # the 2 s world job started first, tokenise shard 0 ended last
    line = scale_markdown(list(rows.values()), "x", span).splitlines()[0]
    assert (
        "3 jobs from" in line
        and "10.0 min from the first job's start" in line
        and f"{(30 + 10 + 2) / 2 / 60:.1f} CPU-minutes" in line
    )

    with pytest.raises(FileNotFoundError, match="no job statistics"):
        read_jobstats(tmp_path / "empty")


def test_a_runs_time_is_summed_per_stage_the_smk_file_of_each_rule(tmp_path):
    """`arrag run-time`: each rule's jobs land in the stage (workflow/rules/<stage>.smk) that defines the rule,
    with the stage's sums and its rules' own sums; stages by wall time, most first; the real workflow's rules
    each have one stage."""
    from arrag.bench.scale import rule_stages, run_time_markdown, stage_rows

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "models.smk").write_text("if x:\n    rule train_base:\n        input: 'a'\nrule train_vq:\n")
    (rules / "generate.smk").write_text("rule generate:\n    output: 'b'\nlocalrule sample_grid:\n")
    jobs = tmp_path / "jobstats"
    _bench(jobs / "train_base.tsv", 300.0, 1000.0)
    _bench(jobs / "train_vq.tsv", 100.0, 2000.0)
    _bench(jobs / "generate" / "daid" / "geneval" / "00000-of-00001.tsv", 150.0, 500.0)
    _bench(jobs / "generate" / "vanilla" / "geneval" / "00000-of-00001.tsv", 50.0, 400.0)
    _bench(jobs / "generate" / "vanilla" / "dpg" / "00000-of-00001.tsv", 60.0, 400.0)
    _bench(jobs / "sample_grid" / "vanilla.tsv", 1.0, 100.0)
    assert rule_stages(rules) == {"train_base": "models", "train_vq": "models", "generate": "generate",
                                  "sample_grid": "generate"}  # fmt: skip
    rows = stage_rows(jobs, rules)
    assert [r["stage"] for r in rows] == ["models", "generate"]  # 400 s before 261 s
    models, generate = rows
    assert (models["jobs"], models["seconds"], models["cpu_seconds"]) == (2, 400.0, 200.0)
    assert models["max_rss_gb"] == pytest.approx(2000.0 / 1024)
    assert (generate["jobs"], generate["seconds"]) == (4, 261.0)
    assert list(generate["rules"].items()) == [("generate (daid)", 150.0), ("generate (vanilla)", 110.0),
                                               ("sample_grid", 1.0)]  # fmt: skip
    table = run_time_markdown(rows, (0.0, 600.0), "jobstats")
    assert "| `models.smk` | 2 | 400 | 61% |" in table and "| all | 6 | 661 | 100% | 330 |" in table
    assert "6 jobs from" in table.splitlines()[0] and "10.0 min" in table.splitlines()[0]

    _bench(jobs / "unknown_rule.tsv", 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown_rule"):
        stage_rows(jobs, rules)
    with pytest.raises(FileNotFoundError, match="defines no rules"):
        rule_stages(tmp_path / "jobstats")
    real = rule_stages(REPO / "workflow" / "rules")
    assert real["train_base"] == "models" and real["vq_ceiling"] == "evaluate" and real["world"] == "world"


def test_jobs_of_different_sizes_separate_a_fixed_cost_from_the_cost_per_item(tmp_path):
    """Tokenisation shards of 2 and 8 images costing 40 + 10 s per image: the paper figure uses the 10 s per image,
    not the average (which carries the fixed 40 s of each small job). Generation jobs (one batch each, whose cost
    hardly depends on its rows) keep the average, as does a rule whose jobs are all of one size."""
    from arrag.bench.scale import PAPER_ITEMS, marginal_cost

    results = tmp_path / "results"
    for shard, n in ((0, 2), (1, 8)):
        _bench(results / "jobstats" / "tokenise_shard" / "cc12m" / f"0000{shard}-of-00002.tsv", 40.0 + 10 * n, 1.0)
        (results / "codes" / "cc12m").mkdir(parents=True, exist_ok=True)
        (results / "codes" / "cc12m" / f"codes-0000{shard}-of-00002.json").write_text(json.dumps({"count": n}))
    for prompts, n, record in (("reference", 2, {"generated": 2}), ("dpg", 8, {"generated": 2, "n": 4})):
        _bench(results / "jobstats" / "generate" / "daid" / prompts / "00000-of-00001.tsv", 40.0 + 10 * n, 1.0)
        (results / "images" / "daid" / prompts).mkdir(parents=True)
        (results / "images" / "daid" / prompts / "generation.json").write_text(json.dumps(record))
    for shard in (0, 1):
        _bench(results / "jobstats" / "embed_images" / "cc12m" / f"0000{shard}-of-00002.tsv", 30.0, 1.0)
        (results / "clip" / "cc12m").mkdir(parents=True, exist_ok=True)
        (results / "clip" / "cc12m" / f"clip-0000{shard}-of-00002.json").write_text(json.dumps({"count": 4}))
    rows = {r["rule"]: r for r in scale_rows(results)}
    tok = rows["tokenise_shard"]
    assert tok["items"] == 10 and tok["fit"] == "marginal" and tok["seconds_per_item"] == pytest.approx(10.0)
    assert tok["fixed_cpu_seconds"] == pytest.approx(20.0)  # _bench's CPU time is half the wall time
    assert tok["paper_hours"] == pytest.approx(10.0 * PAPER_ITEMS["tokenise_shard"] / 3600)
    gen = rows["generate (daid)"]
    assert gen["fit"] == "average" and gen["seconds_per_item"] == pytest.approx((40 + 20 + 40 + 80) / 10)
    assert marginal_cost([(2, 50.0), (6, 30.0)]) is None  # costs that fall with size are not a cost model


PLAN = """
[Mon Nov 30 19:13:26 2026]
localrule download_model:
    output: results/paper/models/base
    resources: tmpdir=/tmp, mem_mb=2500, mem=2.5 GB, mem_mib=2385

[Mon Nov 30 19:13:26 2026]
rule generate:
    output: results/paper/images/daid/geneval/shards/00000-of-00004.json
    wildcards: method=daid, prompts=geneval, shard=00000-of-00004
    resources: tmpdir=/tmp, mem_mb=23000, mem=23 GB, mem_mib=21935, gpu=1

[Mon Nov 30 19:13:26 2026]
rule generate:
    wildcards: method=daid, prompts=mjhq, shard=00001-of-00004
    resources: tmpdir=/tmp, mem_mb=31000, mem=31 GB, gpu=1

rule generate:
    wildcards: method=vanilla, prompts=mjhq, shard=00001-of-00004
    resources: tmpdir=/tmp, mem_mb=19000, gpu=1
"""


def test_the_paper_plan_gives_each_rules_largest_declared_memory(tmp_path):
    from arrag.bench.scale import declared_memory

    declared = declared_memory(PLAN)
    assert declared == {"download_model": 2500.0, "generate (daid)": 31000.0, "generate (vanilla)": 19000.0}
    results = tmp_path / "results"
    _bench(results / "jobstats" / "generate" / "daid" / "geneval" / "00000-of-00001.tsv", 10.0, 100.0)
    _bench(results / "jobstats" / "world.tsv", 2.0, 50.0)
    rows = {r["rule"]: r for r in scale_rows(results, declared)}
    assert rows["generate (daid)"]["paper_mem_gb"] == 31.0 and "paper_mem_gb" not in rows["world"]
    assert "| 31 |" in scale_markdown(list(rows.values()), "x")
    with pytest.raises(ValueError, match="paper.yaml"):
        declared_memory("Nothing to be done (all requested files are present and up to date).")


def test_backbone_rules_are_scaled_from_the_stand_in_to_janus_pro_1b(tmp_path):
    """Generation and training run the backbone: a 2-layer stand-in's cost per item is scaled by Janus-Pro-1B's
    parameters per step over its own (22 more layers of attention and MLP); encoders' rows are not scaled."""
    from arrag.bench.scale import PAPER_ITEMS, model_factor, step_parameters
    from arrag.data.mini_world import caption_vocabulary
    from arrag.models.janus import build_word_tokenizer
    from arrag.rehearsal import janus_pro_1b_config

    tok = build_word_tokenizer(caption_vocabulary())
    full, shallow = janus_pro_1b_config(tok), janus_pro_1b_config(tok, depth=2)
    layer = 4 * 2048**2 + 3 * 2048 * 5632 + 2 * 2048  # q, k, v, o; gate, up, down; two RMSNorms
    assert step_parameters(full) - step_parameters(shallow) == 22 * layer
    results = tmp_path / "results"
    shallow.save_pretrained(results / "models" / "base")
    factor = model_factor(results / "models" / "base")
    assert factor == pytest.approx(step_parameters(full) / step_parameters(shallow)) and 5 < factor < 12
    _bench(results / "jobstats" / "generate" / "vanilla" / "geneval" / "00000-of-00001.tsv", 60.0, 100.0)
    _bench(results / "jobstats" / "tokenise_shard" / "cc12m" / "00000-of-00001.tsv", 30.0, 100.0)
    (results / "images" / "vanilla" / "geneval").mkdir(parents=True)
    (results / "images" / "vanilla" / "geneval" / "generation.json").write_text(json.dumps({"generated": 6}))
    (results / "codes" / "cc12m").mkdir(parents=True)
    (results / "codes" / "cc12m" / "codes-00000-of-00001.json").write_text(json.dumps({"count": 3}))
    rows = {r["rule"]: r for r in scale_rows(results)}
    gen = rows["generate (vanilla)"]
    assert gen["model_factor"] == factor
    assert gen["paper_hours"] == pytest.approx(60.0 / 6 * PAPER_ITEMS["generate"] * factor / 3600)
    assert rows["tokenise_shard"]["model_factor"] == 1.0


def test_the_network_guard_refuses_outside_connections(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    code = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=5)"  # TEST-NET-1
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "refuses network connections" in out.stderr


@pytest.mark.smoke
def test_the_rehearsal_runs_the_paper_path_offline(tmp_path, tiny_clip):
    """config/rehearsal.yaml at toy counts: Janus-Pro-1B's stand-in (384 px, 24 x 24, 16384 x 8; narrow widths, two
    layers: FAiD's paper layout puts a module after every 2nd) downloaded from the mirror, CC12M-shaped tars and
    midjourney-shaped parquet through download_dataset, tokenisation, the database, FAiD at the paper's layout, RA-
    CM3 with a CLIP index, generation with each, scoring, MJHQ's zip; no connection leaves the machine. Then the
    scale table of the run."""
    from conftest import TINY_CLIP

    from arrag.rehearsal import build_mirror

    work = tmp_path / "work"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    shutil.rmtree(work / "config" / "locks" / "rehearsal", ignore_errors=True)  # a local rehearsal's stand-ins
    build_mirror(
        work / "rehearsal-mirror", cc12m=8, cc12m_per_tar=2, midjourney=2, mjhq=2, depth=2, toy=True, clip_model=None
    )
    (work / "clip").mkdir()
    (work / "clip" / "arrag-dag-clip.json").write_text(json.dumps(TINY_CLIP))
    shutil.copy(tiny_clip[1], work / "clip" / "weights.safetensors")
    (work / "toy.yaml").write_text(
        "world: {splits: {corpus: 1, train: 8, finetune: 1, reference: 2}, geneval_prompts: 6}\n"
        "retrieval:\n"
        "  corpora: {cc12m: {source: {type: webdataset, urls: 'downloads/cc12m/cc12m-train-{0000..0001}.tar'},"
        " num_shards: 1}}\n"
        "  index_params: {nlist: 4, nprobe: 2}\n"
        "finetune:\n"
        "  pairs:\n"
        "    cc12m_pairs: {source: {type: webdataset, urls: downloads/cc12m/cc12m-train-0002.tar, caption_key: txt}}\n"
        "    midjourney_pairs: {source: {type: parquet, files: 'downloads/midjourney/data/train-*.parquet',"
        " image_column: image, caption_column: llava}}\n"
        "faid: {processes: 1, training: {batch_size: 2, steps: 1}}\n"
        "racm3: {clip: {model: clip/arrag-dag-clip.json, pretrained: clip/weights.safetensors},"
        " training: {steps: 1}}\n"
        "generation: {num_shards: 1, batch_size: 6}\n"
    )
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{guard}{os.pathsep}{REPO}",
        "HF_HUB_OFFLINE": "0",  # nothing may rely on an offline flag: the guard is what refuses
    }
    targets = [f"results/rehearsal/images/{m}/geneval/generation.json" for m in ("vanilla", "daid", "faid", "racm3")]
    targets += ["results/rehearsal/scores/faid/geneval_summary.json", "results/rehearsal/prompts/mjhq.jsonl"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            *targets,
            "--cores",
            "2",
            "--max-threads",
            "1",
            "--configfile",
            "config/rehearsal.yaml",
            "toy.yaml",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = work / "results" / "rehearsal"
    assert (results / "models" / "base" / "SOURCE").read_text().startswith("deepseek-community/Janus-Pro-1B@")
    shard = json.loads(next((results / "codes" / "cc12m").glob("codes-*.json")).read_text())
    assert (shard["image_size"], shard["grid"], shard["codebook_size"], shard["count"]) == (384, [24, 24], 16384, 4)
    for method in ("vanilla", "daid", "faid", "racm3"):
        assert json.loads((results / "images" / method / "geneval" / "generation.json").read_text())["generated"] == 6
    assert (results / "mjhq" / "reference").is_dir()
    rows = {r["rule"]: r for r in scale_rows(results)}
    assert rows["tokenise_shard"]["items"] == 4 + 2 + 2  # the corpus and two pair sources
    assert rows["faid_trainset"]["items"] == 2 + 2  # the two pair sources
    assert rows["train_faid"]["items"] == 2 and rows["generate (faid)"]["items"] == 6
    assert rows["build_database"]["paper_hours"] > 0 and rows["download_model"]["jobs"] == 1
