"""Lock files of hub downloads, as a package manager keeps them: the first download of a repository at a branch
(`revision: main`) resolves it to a commit and records that commit and the SHA-256 of every file it fetched;
every later download (a rerun, a colleague's copy, a mirror) fetches that commit and must produce exactly those
files, or is refused. A configured 40-hex commit is locked the same way (its files' digests), so the
configured revision and the lock can never disagree silently.

Lock format (JSON): {"format", "hub", "repo", "revision" (as configured), "commit" (what it resolved to),
"include" (the file patterns), "files": {path: sha256}}.
"""

from __future__ import annotations

import re
from pathlib import Path

from arrag.data.downloads import sha256_of
from arrag.io import read_metadata, write_json

FORMAT = "arrag-lock/1"
# what a download folder holds besides the repository's files: huggingface_hub's resume metadata, our note
NOT_LOCKED = (".cache/", "SOURCE", "MANIFEST.json")  # MANIFEST.json: arrag.manifest, written after the lock check


def is_commit(revision: str | None) -> bool:
    return bool(revision) and re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def read_lock(path: str | Path | None) -> dict | None:
    """The lock at `path`, or None when there is none yet."""
    if path is None or not Path(path).is_file():
        return None
    lock = read_metadata(path, FORMAT, "restore it, or delete it to resolve and lock again")
    if not isinstance(lock.get("files"), dict):
        raise ValueError(f"{path}: field 'files' is not an object of file names: delete it to resolve and lock again")
    return lock


def locked_commit(
    lock: dict | None, path: str | Path | None, hub: str, repo: str, revision: str | None, include: list[str]
) -> str | None:
    """The commit to download: the lock's (refusing a lock that disagrees with the configured repository,
    revision or files), else the configured commit, else None (a branch the caller resolves and then locks)."""
    if not revision:
        raise ValueError(
            f"{repo}: set its revision to a 40-hex-digit commit, or to a branch such as 'main' (resolved once by the "
            f"download and then locked in {path})"
        )
    if lock is None:
        return revision if is_commit(revision) else None
    disagree = []
    if (lock["hub"], lock["repo"]) != (hub, repo):
        disagree.append(f"repository {lock['hub']}:{lock['repo']}, config {hub}:{repo}")
    if revision not in (lock["revision"], lock["commit"]):
        disagree.append(f"revision {lock['revision']!r} (commit {lock['commit']}), config {revision!r}")
    if sorted(include) != sorted(lock["include"]):
        disagree.append(f"files {lock['include']}, config {sorted(include)}")
    if disagree:
        raise ValueError(
            f"the lock file {path} disagrees with the config: it has " + "; ".join(disagree) + ". Set the config "
            f"back to what the lock pins, or delete {path} to download, resolve and lock the new revision"
        )
    return lock["commit"]


def hash_files(root: str | Path) -> dict[str, str]:
    """{path relative to root: SHA-256} of every file a download brought (not its bookkeeping)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    names = [p.relative_to(root).as_posix() for p in files]
    return {name: sha256_of(p) for name, p in zip(names, files) if not name.startswith(NOT_LOCKED)}


def check_files(lock: dict, path: str | Path, root: str | Path, files: dict[str, str]) -> None:
    """Refuse files that drift from the lock; the differing ones are deleted so that a rerun fetches them again."""
    locked = lock["files"]
    changed = sorted(name for name in set(files) & set(locked) if files[name] != locked[name])
    missing, extra = sorted(set(locked) - set(files)), sorted(set(files) - set(locked))
    if changed or missing or extra:
        for name in changed:
            (Path(root) / name).unlink()
        raise ValueError(
            f"{lock['repo']}@{lock['commit']} does not match its lock file {path}: "
            + "; ".join(
                f"{what}: {names[:5]}{' ...' if len(names) > 5 else ''}"
                for what, names in (("different SHA-256 (deleted)", changed), ("missing", missing), ("new", extra))
                if names
            )
            + f". Rerun to fetch again; if the hub really changed, delete {path} to lock the new files"
        )


def write_lock(
    path: str | Path, hub: str, repo: str, revision: str, commit: str, include: list[str], files: dict[str, str]
) -> dict:
    lock = {
        "format": FORMAT,
        "hub": hub,
        "repo": repo,
        "revision": revision,
        "commit": commit,
        "include": sorted(include),
        "files": dict(sorted(files.items())),
    }
    write_json(path, lock)  # atomic: a lock is whole or absent
    return lock


def enforce(
    lock: dict | None, path: str | Path | None, hub: str, repo: str, revision: str, commit: str, include, root
) -> dict[str, str]:
    """After a download into `root`: check its files against the lock, or write the lock the first time.
    Returns the files' digests. Without a lock path (a caller that pins a commit itself) nothing is locked."""
    files = hash_files(root)
    if lock is not None:
        check_files(lock, path, root, files)
    elif path is not None:
        write_lock(path, hub, repo, revision, commit, list(include), files)
    return files
