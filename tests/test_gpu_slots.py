"""arrag.gpu_slots: one lock file per GPU, so concurrent GPU jobs of a local Snakemake run get distinct devices."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arrag.gpu_slots import acquire_devices, acquire_slot, candidate_devices, lock_path

# A GPU job stand-in: records its device, then waits until the test releases that device (or 60 s pass).
HOLD = (
    "import os, sys, time, pathlib\n"
    "d = pathlib.Path(sys.argv[1]); dev = os.environ['CUDA_VISIBLE_DEVICES']\n"
    "(d / f'started-{dev}-{os.getpid()}').write_text(dev)\n"
    "end = time.time() + 60\n"
    "while not (d / f'release-{dev}').exists() and time.time() < end: time.sleep(0.02)\n"
)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env = {k: v for k, v in env.items() if not k.startswith("ARRAG_GPU_")}
    return {**env, **extra}


def _launch(launcher_args, cmd, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "arrag.gpu_slots", *launcher_args, "--", *cmd], env=env or _env(), **kwargs
    )


def _run(launcher_args, cmd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "arrag.gpu_slots", *launcher_args, "--", *cmd],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _wait_for(predicate, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _started(folder: Path) -> dict[str, str]:
    """{device: marker name} of the stand-in jobs that have started."""
    return {p.read_text(): p.name for p in folder.glob("started-*")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_concurrent_jobs_get_distinct_devices(tmp_path):
    locks, marks = tmp_path / "locks", tmp_path / "marks"
    marks.mkdir()
    # each job waits until all four run at once, so a device handed out twice would show up as a duplicate
    barrier = (
        "import os, sys, time, pathlib\n"
        "d = pathlib.Path(sys.argv[1]); dev = os.environ['CUDA_VISIBLE_DEVICES']\n"
        "(d / f'started-{os.getpid()}').write_text(dev)\n"
        "end = time.time() + 30\n"
        "while len(list(d.glob('started-*'))) < 4:\n"
        "    time.sleep(0.02)\n"
        "    if time.time() > end: sys.exit('the four jobs never ran at the same time')\n"
        "print(dev)\n"
    )
    jobs = [
        _launch(
            ["--gpus", "4", "--lock-dir", str(locks)],
            [sys.executable, "-c", barrier, str(marks)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [job.communicate(timeout=60) for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, [err for _, err in outs]
    assert sorted(out.strip() for out, _ in outs) == ["0", "1", "2", "3"]
    assert sorted(p.name for p in locks.iterdir()) == [f"gpu{i}.lock" for i in range(4)]


def test_a_fifth_job_waits_for_a_free_device(tmp_path):
    locks, marks = tmp_path / "locks", tmp_path / "marks"
    marks.mkdir()
    args = ["--gpus", "4", "--lock-dir", str(locks), "--poll", "0.05"]
    holders = [_launch(args, [sys.executable, "-c", HOLD, str(marks)]) for _ in range(4)]
    try:
        _wait_for(lambda: len(_started(marks)) == 4, what="four jobs to start")
        assert set(_started(marks)) == {"0", "1", "2", "3"}

        with (tmp_path / "fifth.err").open("w") as err:
            fifth = _launch(args, [sys.executable, "-c", HOLD, str(marks)], stderr=err)
        _wait_for(lambda: "busy" in (tmp_path / "fifth.err").read_text(), what="the fifth job to report waiting")
        time.sleep(0.5)
        assert len(list(marks.glob("started-*"))) == 4 and fifth.poll() is None  # still waiting

        (marks / "release-2").touch()  # the job on GPU 2 ends: the fifth takes its device
        assert fifth.wait(timeout=60) == 0
        assert len(list(marks.glob("started-2-*"))) == 2 and len(list(marks.glob("started-*"))) == 5
        assert "got GPU slot(s) 2" in (tmp_path / "fifth.err").read_text()
    finally:
        for device in "0123":
            (marks / f"release-{device}").touch()
        for holder in holders:
            holder.wait(timeout=60)
    assert [h.returncode for h in holders] == [0] * 4


def test_scheduler_set_devices_pass_through(tmp_path):
    locks = tmp_path / "locks"
    show = [
        sys.executable,
        "-c",
        "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')), os.getpid())",
    ]

    # SLURM's allocation for a one-GPU job: the command runs as is, in the launcher's own process (exec)
    job = _launch(
        ["--gpus", "4", "--lock-dir", str(locks)],
        show,
        env=_env(CUDA_VISIBLE_DEVICES="3"),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = job.communicate(timeout=60)
    assert out.split() == ["'3'", str(job.pid)]
    # a two-GPU job with its two GPUs; and a set-but-empty list (no GPU at all) stays empty
    assert (
        _run(
            ["--gpus", "4", "--count", "2", "--lock-dir", str(locks)], show, env=_env(CUDA_VISIBLE_DEVICES="0,1")
        ).stdout.split()[0]
        == "'0,1'"
    )
    assert (
        _run(["--gpus", "4", "--lock-dir", str(locks)], show, env=_env(CUDA_VISIBLE_DEVICES="")).stdout.split()[0]
        == "''"
    )
    assert not locks.exists()  # no slot was taken

    # no slots configured (--gpus 0, the default without $ARRAG_GPU_SLOTS): unchanged, even without the variable
    assert _run(["--lock-dir", str(locks)], show).stdout.split()[0] == "'unset'"
    assert _run(["--gpus", "0", "--lock-dir", str(locks)], show).stdout.split()[0] == "'unset'"
    assert _run(["--gpus", "4", "--count", "0", "--lock-dir", str(locks)], show).stdout.split()[0] == "'unset'"
    assert not locks.exists()
    # $ARRAG_GPU_SLOTS gives N when --gpus is absent
    assert _run(["--lock-dir", str(locks)], show, env=_env(ARRAG_GPU_SLOTS="2")).stdout.split()[0] == "'0'"


def test_more_listed_devices_than_needed_are_shared_out(tmp_path):
    # CUDA_VISIBLE_DEVICES=4,6 exported on a workstation: the jobs take those two, one each
    locks = str(tmp_path / "locks")
    show = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    assert candidate_devices(4, 1, {"CUDA_VISIBLE_DEVICES": "4,6"}) == ["4", "6"]
    with acquire_devices(["4", "6"], locks, timeout=0) as held:
        assert held == ["4"]
        result = _run(["--gpus", "4", "--lock-dir", locks], show, env=_env(CUDA_VISIBLE_DEVICES="4,6"))
    assert result.returncode == 0 and result.stdout.strip() == "6"
    assert os.path.exists(lock_path(locks, "6")) and lock_path(locks, "GPU-ab/c") == f"{locks}/gpu-GPU-ab_c.lock"


def test_exit_status_is_forwarded(tmp_path):
    locks = str(tmp_path / "locks")
    exit7 = [sys.executable, "-c", "import sys; sys.exit(7)"]
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert _run(["--gpus", "2", "--lock-dir", locks], exit7).returncode == 7
    assert _run(["--gpus", "2", "--lock-dir", locks], killed).returncode == 128 + signal.SIGKILL
    assert _run(["--gpus", "2", "--lock-dir", locks], [sys.executable, "-c", "pass"]).returncode == 0
    assert _run(["--gpus", "0"], exit7).returncode == 7  # pass-through
    assert _run(["--gpus", "2", "--lock-dir", locks], ["/nonexistent/command"]).returncode == 127
    assert _run(["--gpus", "2", "--lock-dir", locks], []).returncode == 2  # usage error: no command


def test_sigterm_reaches_the_job_and_frees_its_device(tmp_path):
    locks = str(tmp_path / "locks")
    pidfile = tmp_path / "child.pid"
    sleeper = [
        sys.executable,
        "-c",
        f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)",
    ]
    launcher = _launch(["--gpus", "1", "--lock-dir", locks], sleeper)
    _wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the job to start")
    child = int(pidfile.read_text())
    launcher.send_signal(signal.SIGTERM)  # to the launcher only, as Snakemake's kill would
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    assert not _alive(child)
    with acquire_slot(1, locks, timeout=0) as slot:
        assert slot == 0


def test_a_killed_holders_lock_is_freed(tmp_path):
    locks = str(tmp_path / "locks")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom arrag.gpu_slots import acquire_slot\n"
            f"with acquire_slot(1, {locks!r}) as i:\n    print(i, flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert holder.stdout.readline().strip() == "0"
    with pytest.raises(TimeoutError):
        with acquire_slot(1, locks, poll=0.05, timeout=0.3, log=lambda m: None):
            pass
    holder.kill()  # SIGKILL: no clean-up ran, the kernel drops the lock
    holder.wait(timeout=30)
    holder.stdout.close()
    with acquire_slot(1, locks, timeout=0) as slot:
        assert slot == 0


def test_the_job_keeps_its_device_when_the_launcher_is_killed(tmp_path):
    locks, marks = str(tmp_path / "locks"), tmp_path / "marks"
    marks.mkdir()
    launcher = _launch(["--gpus", "1", "--lock-dir", locks], [sys.executable, "-c", HOLD, str(marks)])
    _wait_for(lambda: _started(marks), what="the job to start")
    launcher.kill()
    launcher.wait(timeout=30)
    # the orphaned job still runs on GPU 0, so nobody else may take it
    with pytest.raises(TimeoutError):
        with acquire_slot(1, locks, poll=0.05, timeout=0.3, log=lambda m: None):
            pass
    (marks / "release-0").touch()
    with acquire_slot(1, locks, poll=0.05, timeout=30, log=lambda m: None) as slot:
        assert slot == 0


def test_library_slots_are_distinct_and_multi_gpu_is_all_or_nothing(tmp_path):
    locks = str(tmp_path / "locks")
    with acquire_slot(3, locks, timeout=0) as a, acquire_slot(3, locks, timeout=0) as b:
        assert (a, b) == (0, 1)
        with pytest.raises(TimeoutError):  # two needed, one free: nothing is kept while it waits
            with acquire_devices(["0", "1", "2"], locks, count=2, poll=0.05, timeout=0.2, log=lambda m: None):
                pass
        with acquire_slot(3, locks, timeout=0) as c:
            assert c == 2
    with acquire_devices(["0", "1", "2"], locks, count=2, timeout=0) as pair:
        assert pair == ["0", "1"]
    with pytest.raises(ValueError):
        with acquire_devices(["0"], locks, count=2):
            pass


def test_a_multi_gpu_job_holds_nothing_while_it_waits(tmp_path):
    locks = str(tmp_path / "locks")
    show = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    with acquire_devices(["0", "1"], locks, count=2, timeout=0):
        job = _launch(
            ["--gpus", "3", "--count", "2", "--lock-dir", locks, "--poll", "0.2"],
            show,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: os.path.exists(lock_path(locks, "2")), what="the job to try GPU 2")
        with acquire_devices(["2"], locks, poll=0.01, timeout=10, log=lambda m: None):  # it let GPU 2 go again
            assert job.poll() is None
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0 and out.strip() in ("0,1", "0,2", "1,2"), err


SNAKEFILE = """
import os

_gpus = workflow.global_resources.get("gpu")
if _gpus is not None and _gpus.value:
    os.environ.update(ARRAG_GPU_SLOTS=str(_gpus.value))


def gpu_launcher(wildcards, resources):
    return f"python -m arrag.gpu_slots --count {resources.gpu} --"


rule all:
    input: expand("out/{i}.txt", i=range(4)), "out/cpu.txt"


rule job:
    output: "out/{i}.txt"
    wildcard_constraints: i=r"\\d+"
    params: gpu=gpu_launcher
    resources: gpu=1
    shell: "{params.gpu} python -c 'import os, sys, time; t = time.time(); time.sleep(0.5); "
           "print(os.environ[\\"CUDA_VISIBLE_DEVICES\\"], t, time.time())' > {output}"


rule cpu:
    output: "out/cpu.txt"
    params: gpu=gpu_launcher
    resources: gpu=0
    shell: "{params.gpu} python -c 'import os; "
           "print(os.environ.get(\\"CUDA_VISIBLE_DEVICES\\", \\"unset\\"))' > {output}"
"""


@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed")
def test_snakemake_jobs_running_together_get_distinct_devices(tmp_path):
    # the wiring the GPU rules use: N from --resources gpu=N, K from the rule's gpu resource
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = _env(ARRAG_GPU_LOCK_DIR=str(tmp_path / "locks"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [
        (dev, float(t0), float(t1))
        for dev, t0, t1 in (p.read_text().split() for p in sorted((tmp_path / "out").glob("[0-9].txt")))
    ]
    assert len(runs) == 4 and {dev for dev, _, _ in runs} <= {"0", "1"}
    for i, (dev_a, start_a, end_a) in enumerate(runs):
        for dev_b, start_b, end_b in runs[i + 1 :]:
            if start_a < end_b and start_b < end_a:  # ran at the same time
                assert dev_a != dev_b, runs
    assert (tmp_path / "out/cpu.txt").read_text().strip() == "unset"  # gpu=0: run unchanged


def test_the_launcher_imports_nothing_heavy():
    code = "import sys, arrag.gpu_slots; print(sorted({'torch', 'numpy', 'arrag.cli'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env()).stdout == "[]\n"


def test_more_slots_than_installed_gpus_is_an_error():
    from arrag.gpu_slots import candidate_devices

    assert candidate_devices(2, environ={}, installed=2) == ["0", "1"]
    with pytest.raises(ValueError, match="4 GPU slots .* this machine has 2 GPUs: give gpu=2"):
        candidate_devices(4, environ={}, installed=2)
    assert candidate_devices(4, environ={"CUDA_VISIBLE_DEVICES": "5"}, installed=2) is None  # a scheduler's choice
