"""The Snakemake profiles (workflow/profiles/): dry runs on the toy config, and the sbatch calls of the SLURM one."""

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arrag.resources import mem_mb

REPO = Path(__file__).resolve().parents[1]
LOCAL = "workflow/profiles/local"
SLURM = "workflow/profiles/slurm"

needs_slurm_plugin = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm is not installed (pip install snakemake-executor-plugin-slurm)",
)


def _workdir(tmp_path: Path) -> Path:
    for name in ("Snakefile", "workflow", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def _snakemake(workdir: Path, *args: str, path_prefix: str = "") -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": f"{path_prefix}{os.pathsep}{path}" if path_prefix else path}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / name / "profile.yaml").read_text())


def _jobs(dry_run_output: str) -> list[dict]:
    """[{rule, threads, resources: {name: value}}] of the jobs a dry run lists."""
    jobs = []
    for line in dry_run_output.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append({"rule": m[1], "threads": 1, "resources": {}})
        elif jobs and (m := re.match(r"\s+threads: (\d+)$", line)):
            jobs[-1]["threads"] = int(m[1])
        elif jobs and (m := re.match(r"\s+resources: (.*)$", line)):
            jobs[-1]["resources"] = dict(item.split("=", 1) for item in m[1].split(", "))
    return jobs


def _rules(work: Path) -> set[str]:
    result = _snakemake(work, "--list-rules", "--configfile", "config/toy.yaml")
    assert result.returncode == 0, result.stderr
    return {line.strip() for line in result.stdout.splitlines() if re.fullmatch(r"\w+", line.strip())}


def test_local_profile_dry_runs(tmp_path):
    work = _workdir(tmp_path)
    result = _snakemake(work, "-n", "--profile", LOCAL, "--configfile", "config/toy.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = _jobs(result.stdout)
    gpu_jobs = [job for job in jobs if job["resources"].get("gpu") == "1"]
    assert gpu_jobs and len(jobs) > len(gpu_jobs)

    profile = _profile(LOCAL)
    assert isinstance(profile["resources"]["gpu"], int) and profile["resources"]["gpu"] >= 1
    assert profile["keep-going"] and profile["rerun-incomplete"]
    # each GPU job gets its share of the cores (cores / gpu), so GPU jobs can run side by side
    shared = _snakemake(work, "-n", "--profile", LOCAL, "--configfile", "config/toy.yaml", "--cores", "8")
    for job in _jobs(shared.stdout):  # (bench_generate keeps every core on purpose: nothing may skew its timings)
        if job["resources"].get("gpu") == "1" and job["rule"] not in ("bench_generate", "tokenise_shard"):
            assert job["threads"] == 8 // profile["resources"]["gpu"], job


@needs_slurm_plugin
def test_slurm_profile_resolves_resources(tmp_path):
    work = _workdir(tmp_path)
    result = _snakemake(work, "-n", "--profile", SLURM, "--configfile", "config/toy.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    profile = _profile(SLURM)
    assert profile["executor"] == "slurm" and profile["jobs"] == 64
    gpu_partition = profile["set-resources"]["train_base"]["slurm_partition"]
    assert gpu_partition != profile["default-resources"]["slurm_partition"]

    # no typo in a rule name: set-resources and set-threads would silently ignore it
    rules = _rules(work)
    assert set(profile["set-resources"]) <= rules and set(profile["set-threads"]) <= rules

    jobs = [job for job in _jobs(result.stdout) if job["rule"] != "all"]
    assert len(jobs) > 30
    for job in jobs:
        res = job["resources"]
        assert {"slurm_account", "slurm_partition", "runtime", "mem_mb"} <= set(res), job
        assert 1 <= job["threads"] <= profile["cores"], job
        if res.get("gpu") == "1":  # every GPU job goes to the GPU partition, with its own time and memory
            assert res["slurm_partition"] == gpu_partition, job
            assert job["rule"] in profile["set-resources"], job
    by_rule = {job["rule"]: job for job in jobs}
    assert by_rule["train_base"]["threads"] == 8
    # memory is computed by arrag.resources from the config (the toy model), not set in the profile
    assert "mem_mb" not in profile["set-resources"]["train_base"]
    assert by_rule["train_base"]["resources"]["mem_mb"] == str(mem_mb("train", parameters=4e6))
    assert by_rule["train_base"]["resources"]["runtime"] == str(profile["set-resources"]["train_base"]["runtime"])
    assert by_rule["world"]["resources"]["slurm_partition"] == profile["default-resources"]["slurm_partition"]
    assert by_rule["score_geneval"]["resources"]["gpu"] == "0"  # the toy profile's shapes detector needs no GPU


def test_slurm_profile_sends_every_gpu_job_of_the_paper_dag_to_the_gpu_partition(tmp_path):
    """The paper DAG has GPU jobs the toy one lacks (CLIP embedding, 4-GPU training): each gets the GPU partition
    and its own time and memory, and the multi-GPU ones ask for 4 GPUs."""
    work = _workdir(tmp_path)
    shutil.copytree(REPO / "arrag" / "benchmarks", work / "arrag" / "benchmarks")
    pin = f"{{revision: {'4567cdef' * 5}}}"
    (work / "pin.yaml").write_text(f"model: {pin}\ndownloads: {{datasets: {{cc12m: {pin}, midjourney: {pin}}}}}\n")
    result = _snakemake(work, "-n", "--profile", SLURM, "--configfile", "config/paper.yaml", "pin.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    profile = _profile(SLURM)
    gpu_partition = profile["set-resources"]["train_base"]["slurm_partition"]
    jobs = [job for job in _jobs(result.stdout) if int(job["resources"].get("gpu", 0)) >= 1]
    assert {"embed_images", "tokenise_shard", "train_faid", "train_racm3", "generate"} <= {j["rule"] for j in jobs}
    for job in jobs:
        assert job["resources"]["slurm_partition"] == gpu_partition and job["rule"] in profile["set-resources"], job
    gpus = {job["rule"]: job["resources"]["gpu"] for job in jobs}
    assert gpus["train_faid"] == gpus["train_racm3"] == "4" and gpus["embed_images"] == "1"

    # every job's memory follows arrag.resources and the data it reads: a CC12M tokenisation shard holds
    # Janus-Pro-1B (2.1B parameters) and a batch of 64 images of 384 px, its 5.7M images over 64 shards
    memory = {}
    for job in _jobs(result.stdout):
        memory.setdefault(job["rule"], set()).add(int(job["resources"]["mem_mb"]))
    cc12m = mem_mb("encode", parameters=2.1e9, batch_size=64, image_size=384, images=-(-5_700_000 // 64))
    assert cc12m in memory["tokenise_shard"] and 10_000 < cc12m < 16_000
    assert memory["generate"] == {mem_mb("search", parameters=2.1e9, batch_size=32)}
    (build,) = memory["build_database"]
    assert build > 100_000  # every corpus patch's code: 18 B for each of ~7.8 billion entries

FAKE_SLURM = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
if [ "$(basename "$0")" = sbatch ]; then cat > /dev/null; echo "sbatch: error: not a cluster (test)" >&2; exit 1; fi
exit 0
"""


@needs_slurm_plugin
def test_slurm_profile_sbatch_flags(tmp_path):
    """Submits to a stand-in sbatch that records its arguments and refuses the job."""
    (tmp_path / "work").mkdir()
    work = _workdir(tmp_path / "work")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("sbatch", "sacct", "squeue", "sinfo", "sacctmgr", "sshare", "scontrol", "scancel"):
        script = bin_dir / tool
        script.write_text(FAKE_SLURM.format(log=calls))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    # the world's outputs, so that a GPU job (train_vq) and a CPU job (train_features) are ready to submit
    world = work / "results/toy/world"
    for split in ("corpus", "train", "finetune", "reference"):
        (world / split).mkdir(parents=True)
        (world / split / "images.npy").touch()
        (world / split / "metadata.jsonl").touch()
    (world / "geneval").mkdir()
    (world / "geneval/evaluation_metadata.jsonl").touch()
    (world / "world.json").touch()

    result = _snakemake(
        work,
        "results/toy/models/vq",
        "results/toy/models/features",
        "--profile",
        SLURM,
        "--configfile",
        "config/toy.yaml",
        "--retries",
        "0",
        "--slurm-init-seconds-before-status-checks",
        "1",
        path_prefix=str(bin_dir),
    )
    out = result.stdout + result.stderr
    assert "not a cluster (test)" in out, out[-3000:]
    submissions = {}
    for line in calls.read_text().splitlines():
        if line.startswith("sbatch ") and (m := re.search(r"--comment (?:'?)rule_(\w+?)(?:'?) ", line)):
            submissions[m[1]] = line.split(" --wrap")[0]
    assert set(submissions) == {"train_vq", "train_features"}, calls.read_text()[-2000:]

    profile = _profile(SLURM)
    vq, features = submissions["train_vq"], submissions["train_features"]
    assert f"-A {profile['default-resources']['slurm_account']}" in vq
    assert f"-p {profile['set-resources']['train_vq']['slurm_partition']}" in vq
    assert f"-t {profile['set-resources']['train_vq']['runtime']}" in vq
    assert f"--mem {mem_mb('train', parameters=4e6)}" in vq
    assert "--gpus=1" in vq and "--cpus-per-task=8" in vq
    assert f"-p {profile['default-resources']['slurm_partition']}" in features
    assert "--gpus" not in features and "--cpus-per-task=8" in features
