"""The Snakemake profiles (workflow/profiles/): dry runs on the toy config, and the sbatch calls of the SLURM one."""

import importlib.util
import json
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


# conda as Snakemake asks it before a run that deploys conda envs (conda is not on the test machines; a dry run
# builds no env, so these answers are all it needs)
FAKE_CONDA = """#!/bin/sh
case "$*" in
  "info --json") echo '{{"conda_prefix": "{prefix}", "platform": "linux-64"}}' ;;
  "--version") echo "conda 25.1.1" ;;
  "config --get channel_priority --json") echo '{{"get": {{"channel_priority": "strict"}}}}' ;;
  *) echo "fake conda: $*" >&2; exit 1 ;;
esac
"""


def _conda_bin(tmp_path: Path) -> str:
    bin_dir = tmp_path / "conda-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "conda"
    script.write_text(FAKE_CONDA.format(prefix=tmp_path / "conda"))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(bin_dir)


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
        single = ("bench_generate", "bench_generate_showo", "tokenise_shard", "tokenise_showo_shard")
        if job["resources"].get("gpu") == "1" and job["rule"] not in single:
            assert job["threads"] == 8 // profile["resources"]["gpu"], job


def test_mini_model_jobs_share_the_cores_without_gpu_slots(tmp_path):
    """Without --resources gpu a mini-model job takes one thread, so two run side by side on a CPU, except the
    VQ-VAE's and the base model's training, which every later job waits for: they take every core (the base
    model's seeds share them). With GPU slots each gets its share of the cores."""
    work = _workdir(tmp_path)
    plain = _jobs(_snakemake(work, "-n", "--cores", "4", "--configfile", "config/toy.yaml").stdout)
    by_rule = {job["rule"]: job for job in plain}
    for rule in ("generate", "generate_daid_sweep", "train_faid", "train_showo"):
        assert by_rule[rule]["threads"] == 1, by_rule[rule]
    assert by_rule["train_vq"]["threads"] == 4, by_rule["train_vq"]
    assert by_rule["train_base"]["threads"] == 2, by_rule["train_base"]  # the toy's two seeds share the cores
    assert by_rule["select_base"]["threads"] == 1
    for rule in ("build_database", "build_showo_database", "train_features"):  # beside a trainer, not after it
        assert by_rule[rule]["threads"] == 1, by_rule[rule]
    slots = _jobs(
        _snakemake(work, "-n", "--cores", "4", "--resources", "gpu=2", "--configfile", "config/toy.yaml").stdout
    )
    assert {job["threads"] for job in slots if job["rule"] in ("train_vq", "train_base", "generate")} == {2}


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
    shutil.copytree(REPO / "arrag" / "prompt_sets", work / "arrag" / "prompt_sets")
    result = _snakemake(
        work, "-n", "--profile", SLURM, "--configfile", "config/paper.yaml", path_prefix=_conda_bin(tmp_path)
    )
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
    # Table 3 on MJHQ-30K: 30K images a set of 1024 px, Inception + CLIP ViT-L/14@336, FWD level 4 at 256 px
    fidelity = mem_mb("fidelity", network_parameters=2.4e7 + 4.3e8, images=30_000, feature_dim=2048 + 768,
                      image_size=1024, fwd_level=4, fwd_size=256)  # fmt: skip
    assert memory["score_fidelity"] == {fidelity}
    # RA-CM3's index over 9M+ images is streamed into memory-mapped files: the model, ids and one shard at a time
    assert 8_000 < max(memory["build_image_index"]) < 20_000
    # no job's memory is a constant of the profile: every rule computes its own
    assert not [rule for rule, res in profile["set-resources"].items() if "mem_mb" in res]


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
    # train_faid's inputs, so that the toy profile's two-process (two-GPU) training job is submitted too
    for folder in ("models/base", "retrieval/db", "retrieval/faid_trainset"):
        (work / "results/toy" / folder).mkdir(parents=True)

    result = _snakemake(
        work,
        "results/toy/models/vq",
        "results/toy/models/features",
        "results/toy/models/faid",
        "--allowed-rules",
        "train_vq",
        "train_features",
        "train_faid",
        "--profile",
        SLURM,
        "--configfile",
        "config/toy.yaml",
        "--retries",
        "0",
        "--slurm-init-seconds-before-status-checks",
        "1",
        path_prefix=f"{bin_dir}{os.pathsep}{_conda_bin(tmp_path)}",  # the profile deploys conda envs
    )
    out = result.stdout + result.stderr
    assert "not a cluster (test)" in out, out[-3000:]
    submissions = {}
    for line in calls.read_text().splitlines():
        if line.startswith("sbatch ") and (m := re.search(r"--comment (?:'?)rule_(\w+?)(?:'?) ", line)):
            submissions[m[1]] = line.split(" --wrap")[0]
    assert set(submissions) == {"train_vq", "train_features", "train_faid"}, calls.read_text()[-2000:]

    profile = _profile(SLURM)
    vq, features = submissions["train_vq"], submissions["train_features"]
    assert f"-A {profile['default-resources']['slurm_account']}" in vq
    assert f"-p {profile['set-resources']['train_vq']['slurm_partition']}" in vq
    assert f"-t {profile['set-resources']['train_vq']['runtime']}" in vq
    assert f"--mem {mem_mb('train', parameters=4e6)}" in vq
    assert "--gpus=1" in vq and "--cpus-per-task=8" in vq
    assert f"-p {profile['default-resources']['slurm_partition']}" in features
    assert "--gpus" not in features and "--cpus-per-task=8" in features
    assert f"--mem {mem_mb('features', images=256, image_size=32)}" in features  # config/toy.yaml's train split
    # every job on one node: torchrun's processes of a multi-GPU job must see all of the job's GPUs
    faid = submissions["train_faid"]
    assert "--gpus=2" in faid
    for call in submissions.values():
        assert re.findall(r"--nodes[= ](\d+)", call) == ["1"], call


PAPER_CONFIGS = ["config/paper.yaml", "config/paper-1gpu.yaml"]


def _paper_workdir(tmp_path: Path) -> Path:
    work = _workdir(tmp_path)
    shutil.copytree(REPO / "arrag" / "prompt_sets", work / "arrag" / "prompt_sets")
    return work


def _planned(dry_run_output: str) -> list[dict]:
    """[{rule, local, input: [paths], shell}] of the jobs a `snakemake -n -p` run lists."""
    jobs = []
    for line in dry_run_output.splitlines():
        if m := re.match(r"(local)?rule (\w+):$", line):
            jobs.append({"rule": m[2], "local": bool(m[1]), "input": [], "shell": ""})
        elif jobs and (m := re.match(r"\s+input: (.*)$", line)):
            jobs[-1]["input"] = m[1].split(", ")
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = line[len("Shell command: ") :]
    return jobs


@pytest.mark.parametrize("configfile", PAPER_CONFIGS)
def test_paper_config_is_its_file_and_the_schema_defaults_alone(tmp_path, configfile):
    """No value of the mini profile (config/config.yaml) reaches a paper job: the config every rule reads is the
    paper file completed by the schema's defaults, nothing more (Snakemake would otherwise merge it under it)."""
    from snakemake.utils import validate

    work = _paper_workdir(tmp_path)
    (work / "dump.smk").write_text(
        'include: "Snakefile"\n\nimport json as _json\n\n_json.dump(config, open("used_config.json", "w"))\n'
        '_json.dump(sorted(workflow._localrules), open("localrules.json", "w"))\n'
    )
    result = _snakemake(work, "-n", "-s", "dump.smk", "--configfile", configfile)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = yaml.safe_load((REPO / configfile).read_text())
    validate(expected, str(REPO / "workflow/schemas/config.schema.yaml"))  # fills the defaults, as common.smk does
    used = json.loads((work / "used_config.json").read_text())
    assert used == json.loads(json.dumps(expected))
    assert used["world"]["splits"] == {}  # (the mini world's splits were the first thing to leak)
    # downloads run where Snakemake runs (the login node), never as cluster jobs
    listed = _snakemake(work, "-s", "dump.smk", "--list-rules", "--configfile", configfile).stdout
    rules = {line.strip() for line in listed.splitlines()}
    downloads = {rule for rule in rules if rule.startswith("download_")}
    assert downloads and downloads <= set(json.loads((work / "localrules.json").read_text()))

    # without --configfile the mini profile is the config, as before
    result = _snakemake(work, "-n", "-s", "dump.smk")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((work / "used_config.json").read_text())["profile"] == "mini"


@pytest.mark.parametrize("configfile", PAPER_CONFIGS)
def test_paper_jobs_load_local_files_that_download_rules_fetch(tmp_path, configfile):
    """The paper profiles plan as shipped; every weight a job loads is a local path that is one of its inputs and
    comes from a download rule (a localrule, locked, mirror-aware); no other job names a hub tag or a URL."""
    work = _paper_workdir(tmp_path)
    result = _snakemake(work, "-n", "-p", "--configfile", configfile)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = _planned(result.stdout)
    profile = yaml.safe_load((REPO / configfile).read_text())["profile"]
    downloads = [job for job in jobs if job["rule"].startswith("download_")]
    showo = "showo" in yaml.safe_load((REPO / configfile).read_text()).get("backbones", [])
    assert {job["rule"] for job in downloads} == {
        "download_model", "download_dataset", "download_clip", "download_mplug", "download_geneval_detector",
        "download_inception", "download_mjhq", "download_dpg_csv",
    } | ({"download_showo_part"} if showo else set())  # fmt: skip
    assert all(job["shell"].startswith("arrag download ") for job in downloads)
    for job in downloads:  # hub downloads: a lock file beside the config
        if job["rule"] in ("download_model", "download_dataset", "download_clip", "download_mplug") + (
            "download_showo_part",
        ):
            assert f"--lock config/locks/{profile}/" in job["shell"], job
    produced = {out for job in downloads for out in _outputs(result.stdout, job)}

    loaded = []
    for job in jobs:
        if job["rule"].startswith("download_"):
            continue
        assert not re.search(r"https?://|openai|hf-hub:|arrag download", job["shell"]), job
        weights = r"(--clip-pretrained|clip:|--mplug-model|--checkpoint|inception:)\s?(\S+)"
        for flag, path in re.findall(weights, job["shell"]):
            loaded.append((job["rule"], path))
            assert any(path == i or path.startswith(i + "/") for i in job["input"]), (flag, path, job)
            assert any(path == o or path.startswith(o + "/") for o in produced), (flag, path, job)
    assert {rule for rule, _ in loaded} >= {"embed_images", "build_image_index", "score_geneval", "score_fidelity",
                                            "score_dpg"}  # fmt: skip
    assert f"results/{profile}/downloads/mplug" in {path for _, path in loaded}
    clip = f"results/{profile}/downloads/clip/ViT-B-32-quickgelu"  # a job reading RA-CM3's index reloads its CLIP
    index_jobs = [job for job in jobs if "--image-index" in job["shell"]]
    assert index_jobs and all(clip in job["input"] for job in index_jobs), [j["rule"] for j in index_jobs]

    # a mirror folder (clusters without internet on the login node either) reaches every download command
    (work / "mirror.yaml").write_text("downloads: {mirror: /srv/mirror}\n")
    result = _snakemake(work, "-n", "-p", "--configfile", configfile, "mirror.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    for job in _planned(result.stdout):
        if job["rule"].startswith("download_"):
            assert "--mirror /srv/mirror" in job["shell"], job


def _outputs(dry_run_output: str, job: dict) -> list[str]:
    """The outputs of the job whose shell command is job["shell"]."""
    block = dry_run_output[: dry_run_output.index(job["shell"])]
    block = block[block.rindex(f"rule {job['rule']}:") :]
    return re.search(r"\n\s+output: (.*)\n", block)[1].split(", ")


@pytest.mark.parametrize("profile", [LOCAL, SLURM])
def test_the_profiles_run_only_the_benchmark_scorers_in_conda_envs(tmp_path, profile):
    """The profiles deploy conda envs, and only the paper's two scorers declare one: they run in the benchmarks' own
    environments while every other job runs where Snakemake runs (turning conda on re-plans nothing else)."""
    if profile == SLURM and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    assert _profile(profile)["software-deployment-method"] == "conda"
    work = _paper_workdir(tmp_path)
    (work / "envs.smk").write_text(
        'include: "Snakefile"\n\nimport json as _json\n\n'
        '_json.dump(sorted(r.name for r in workflow.rules if r.conda_env), open("rules_in_envs.json", "w"))\n'
    )
    conda = _conda_bin(tmp_path)
    for config, rules, envs in [
        ("config/paper.yaml", ["score_dpg", "score_geneval"], {"workflow/envs/geneval.yaml", "workflow/envs/dpg.yaml"}),
        ("config/toy.yaml", [], set()),  # the mini scorers (shapes detector) need no conda
    ]:
        args = ("--profile", profile, "--configfile", config)
        result = _snakemake(work, "--list-conda-envs", *args, path_prefix=conda)  # the envs the DAG's jobs use
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        listed = {line.split("\t")[0] for line in result.stdout.splitlines() if line.startswith("workflow/envs/")}
        assert listed == envs
        assert _snakemake(work, "-n", *args, "-s", "envs.smk", path_prefix=conda).returncode == 0
        assert json.loads((work / "rules_in_envs.json").read_text()) == rules
