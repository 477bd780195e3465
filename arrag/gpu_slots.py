"""Pin each GPU job of a one-machine Snakemake run to its own GPU.

Snakemake's ``gpu`` resource is a counter: with ``--resources gpu=4`` at most four GPU jobs run at once, but no
job is told *which* GPU is its own, so every one of them would use ``cuda:0``. A GPU rule's shell therefore runs
its command through this launcher::

    python -m arrag.gpu_slots [--gpus N] [--count K] [--lock-dir DIR] -- CMD [ARGS...]

It takes K free slots out of N GPUs (one lock file per GPU, ``DIR/gpu<i>.lock``, held with ``flock``), runs CMD
as a child process with ``CUDA_VISIBLE_DEVICES`` naming those GPUs, forwards SIGTERM, SIGINT and SIGHUP to it,
and exits with its status (128 + the signal number when a signal ended it). The kernel drops a ``flock`` when
the last process holding it exits, so a job that crashes or is killed never leaves a stale lock. The child
inherits the lock: if the launcher itself is SIGKILLed, its GPU stays taken until the command ends too. When
every slot is busy (Snakemake's counter should prevent that, but two runs may share a machine) the launcher
says so on stderr and waits.

CMD runs unchanged (exec, no child process) when

- N is 0: no GPU slots configured (the default without ``--resources gpu=N``), or K is 0 (a rule whose
  ``gpu`` resource is 0 for this configuration), or
- ``CUDA_VISIBLE_DEVICES`` is already set and names at most K devices: a scheduler (SLURM, for the jobs of
  ``workflow/profiles/slurm``) has narrowed it to this job's allocation.

When ``CUDA_VISIBLE_DEVICES`` names more devices than K (an ``export`` on a workstation, or a whole local run
inside one multi-GPU allocation), the slots are the first N of those devices, and the lock files carry their
names.

N defaults to ``$ARRAG_GPU_SLOTS`` (0 when unset), so a Snakefile can set it once from ``--resources gpu=N``
without changing any rule's command line. The lock directory defaults to ``$ARRAG_GPU_LOCK_DIR``, else
``/tmp/arrag-gpu-locks`` (``-slurm<job id>`` appended inside a SLURM job): one per machine, so two runs on the
same GPUs wait for each other instead of sharing a device.

Standard library only: it wraps every GPU job, so it starts in milliseconds (no torch import).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

ENV_SLOTS = "ARRAG_GPU_SLOTS"
ENV_LOCK_DIR = "ARRAG_GPU_LOCK_DIR"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
USAGE = "python -m arrag.gpu_slots [--gpus N] [--count K] [--lock-dir DIR] [--poll SECONDS] -- CMD [ARGS...]"


def _log(message: str) -> None:
    print(f"gpu_slots: {message}", file=sys.stderr, flush=True)


def default_lock_dir(environ: dict | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get(ENV_LOCK_DIR):
        return env[ENV_LOCK_DIR]
    job = env.get("SLURM_JOB_ID")
    return "/tmp/arrag-gpu-locks" + (f"-slurm{job}" if job else "")


def installed_gpus(proc: str = "/proc/driver/nvidia/gpus") -> int | None:
    """NVIDIA GPUs the driver lists (one folder each), or None where there is no driver to ask."""
    return len(os.listdir(proc)) if os.path.isdir(proc) else None


def candidate_devices(
    n: int, count: int = 1, environ: dict | None = None, installed: int | None = None
) -> list[str] | None:
    """The device names to take slots from, or None when the command should run unchanged (see the module doc).
    `installed`: GPUs the machine has (default: asked of the driver); more slots than that is an error, since
    a job on device 3 of a 2-GPU machine would fall back to the CPU without a word."""
    env = os.environ if environ is None else environ
    if n <= 0 or count <= 0:
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        installed = installed_gpus() if installed is None else installed
        if installed is not None and n > installed:
            raise ValueError(
                f"{n} GPU slots (--resources gpu={n}) but this machine has {installed} GPUs: give gpu={installed}"
            )
        return [str(i) for i in range(n)]
    listed = [d.strip() for d in visible.split(",") if d.strip()]
    if len(listed) <= count:
        return None
    return listed[:n]


def lock_path(lock_dir: str, device: str) -> str:
    """DIR/gpu3.lock for device 3; a UUID (GPU-..., MIG-...) gets a file-name-safe form of its name."""
    name = f"gpu{device}" if device.isdigit() else "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device)
    return os.path.join(lock_dir, f"{name}.lock")


def _prepare_dir(lock_dir: str) -> None:
    if not os.path.isdir(lock_dir):
        os.makedirs(lock_dir, exist_ok=True)
        if os.path.dirname(os.path.abspath(lock_dir)) == "/tmp":
            try:  # the machine-wide default: every user of the machine may add lock files, as in /tmp itself
                os.chmod(lock_dir, 0o1777)
            except OSError:
                pass


def _open_lock(path: str) -> tuple[int, bool]:
    """(fd, writable): another user's lock file opens read-only, which is enough for flock."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666), True
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


def _try_lock(path: str) -> tuple[int, bool] | None:
    fd, writable = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd, writable


def _release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holders(lock_dir: str, devices: Sequence[str]) -> str:
    """'0: pid 123, 1: pid 456' from the pids the holders wrote into their lock files (best effort)."""
    parts = []
    for device in devices:
        try:
            with open(lock_path(lock_dir, device)) as f:
                pid = f.read().strip()
        except OSError:
            pid = ""
        parts.append(f"{device}: pid {pid or '?'}")
    return ", ".join(parts)


@contextmanager
def _acquire(
    devices: Sequence[str],
    count: int,
    lock_dir: str,
    poll: float,
    timeout: float | None,
    log: Callable[[str], None],
) -> Iterator[list[tuple[str, int]]]:
    """Yields [(device, fd)] for `count` devices, all locked; releases them on exit."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if count > len(devices):
        raise ValueError(f"a job needs {count} GPUs but only {len(devices)} slots exist ({', '.join(devices)})")
    _prepare_dir(lock_dir)
    start = time.monotonic()
    next_report = None
    held: list[tuple[str, int, bool]] = []
    try:
        while True:
            for device in devices:
                if len(held) == count:
                    break
                got = _try_lock(lock_path(lock_dir, device))
                if got is not None:
                    held.append((device, *got))
            if len(held) == count:
                break
            # all or nothing: two multi-GPU jobs holding half of what each needs would wait for ever
            while held:
                _release(held.pop()[1])
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"no {count} free GPU slot(s) among {', '.join(devices)} after {waited:.0f} s")
            if next_report is None or waited >= next_report:
                log(
                    f"all GPU slots busy ({_holders(lock_dir, devices)}; locks in {lock_dir}), "
                    f"waiting for {count}; waited {waited:.0f} s"
                )
                next_report = waited + 60.0
            time.sleep(poll)
        for _device, fd, writable in held:
            if writable:  # who holds it, for the waiting message of others
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if next_report is not None:
            log(f"got GPU slot(s) {','.join(d for d, _, _ in held)} after {time.monotonic() - start:.1f} s")
        yield [(device, fd) for device, fd, _ in held]
    finally:
        while held:
            _release(held.pop()[1])


@contextmanager
def acquire_devices(
    devices: Sequence[str],
    lock_dir: str | None = None,
    count: int = 1,
    poll: float = 0.5,
    timeout: float | None = None,
    log: Callable[[str], None] = _log,
) -> Iterator[list[str]]:
    """Lock `count` free devices out of `devices` (names as in CUDA_VISIBLE_DEVICES); yields their names.

    Waits while all are busy, polling every `poll` seconds; TimeoutError after `timeout` seconds (None: no limit).
    """
    with _acquire(devices, count, lock_dir or default_lock_dir(), poll, timeout, log) as held:
        yield [device for device, _ in held]


@contextmanager
def acquire_slot(
    n: int,
    lock_dir: str | None = None,
    poll: float = 0.5,
    timeout: float | None = None,
    log: Callable[[str], None] = _log,
) -> Iterator[int]:
    """Lock the first free one of GPUs 0..n-1; yields its index."""
    with acquire_devices([str(i) for i in range(n)], lock_dir, 1, poll, timeout, log) as held:
        yield int(held[0])


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _start(cmd: Sequence[str], start: Callable[[], object]) -> int | None:
    """start() the command; None when it started, else the shell's status for a command that cannot run."""
    try:
        start()
    except FileNotFoundError:
        _log(f"command not found: {cmd[0]}")
        return 127
    except PermissionError:
        _log(f"permission denied: {cmd[0]}")
        return 126
    return None


def run_child(cmd: Sequence[str], env: dict, pass_fds: Sequence[int] = ()) -> int:
    """Run cmd as a child, forwarding FORWARDED_SIGNALS to it; its exit status (128 + signal when killed)."""
    state: dict = {"child": None, "pending": []}

    def forward(signum, _frame):
        child = state["child"]
        if child is None:
            state["pending"].append(signum)
        elif child.returncode is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        if state["pending"]:  # told to stop before the command started
            return 128 + state["pending"][0]
        failed = _start(cmd, lambda: state.update(child=subprocess.Popen(list(cmd), env=env, pass_fds=tuple(pass_fds))))
        if failed is not None:
            return failed
        for signum in state["pending"]:  # arrived while the child was starting
            state["child"].send_signal(signum)
        return _exit_status(state["child"].wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m arrag.gpu_slots",
        usage=USAGE,
        description="Run CMD on free GPU(s) of this machine: CUDA_VISIBLE_DEVICES from a per-GPU lock file.",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help=f"GPUs on this machine to share among jobs (default: ${ENV_SLOTS}, else 0 = run CMD unchanged)",
    )
    parser.add_argument(
        "--count", type=int, default=1, help="GPUs this command needs (default 1; 0 = run CMD unchanged)"
    )
    parser.add_argument(
        "--lock-dir",
        default=None,
        help=f"folder of the gpu<i>.lock files (default: ${ENV_LOCK_DIR}, else /tmp/arrag-gpu-locks)",
    )
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between tries while every slot is busy")
    argv = list(argv)
    if "--" not in argv:
        parser.error("put the command after --")
    split = argv.index("--")
    args, cmd = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not cmd:
        parser.error("no command after --")
    if args.gpus is None:
        value = os.environ.get(ENV_SLOTS, "").strip() or "0"
        try:
            args.gpus = int(value)
        except ValueError:
            parser.error(f"${ENV_SLOTS} must be an integer, got {value!r}")
    if args.count < 0:
        parser.error("--count must not be negative")
    return args, cmd


def main(argv: Sequence[str] | None = None) -> int:
    args, cmd = _parse(sys.argv[1:] if argv is None else argv)
    try:
        devices = candidate_devices(args.gpus, args.count)
    except ValueError as err:
        _log(str(err))
        return 2
    if devices is None:  # pass-through: this process becomes the command (returns only if it cannot start)
        return _start(cmd, lambda: os.execvp(cmd[0], cmd))
    lock_dir = args.lock_dir or default_lock_dir()
    try:
        with _acquire(devices, args.count, lock_dir, args.poll, None, _log) as held:
            visible = ",".join(device for device, _ in held)
            _log(f"CUDA_VISIBLE_DEVICES={visible} (lock {lock_path(lock_dir, held[0][0])})")
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
            return run_child(cmd, env, pass_fds=[fd for _, fd in held])
    except ValueError as err:
        _log(str(err))
        return 2
    except KeyboardInterrupt:  # while waiting for a slot
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
