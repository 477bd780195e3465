"""Fetching pinned files over HTTP(S): benchmark question files, detector and feature-network weights.

`fetch` downloads to <dest>.partial, resuming it with a Range request after an interruption, retries with
back-off, checks the SHA-256 (in full, or the published prefix OpenMMLab puts in its file names), and only
then renames the file into place: a file under its final name is always complete and verified. A local
mirror folder (clusters whose compute nodes have no internet) is tried before the network.
"""

from __future__ import annotations

import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from arrag.io import progress, replace_directory
from arrag.manifest import write_manifest

# The hubs' offline switches. Every job but a download runs with them (arrag.cli.main sets them before any hub
# library is imported): compute nodes have no internet, and a job loads only what a download rule fetched.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def go_offline() -> None:
    os.environ.update(OFFLINE_ENV)


def sha256_of(path: str | Path) -> str:
    from arrag.manifest import file_sha256

    return file_sha256(path)


def check_sha256(path: str | Path, sha256: str | None, url: str = "") -> None:
    """Refuse a file whose SHA-256 does not start with `sha256` (a full digest or a published prefix)."""
    if not sha256:
        return
    actual = sha256_of(path)
    if not actual.startswith(sha256.lower()):
        raise ValueError(
            f"{path}: SHA-256 {actual} does not match the pinned {sha256}"
            + (f"; delete it and fetch {url} again" if url else "")
        )


def _download(url: str, partial: Path, timeout: float) -> None:
    """Append the rest of `url` to `partial` (a Range request when part of it is already there); raise OSError
    (so the caller retries, resuming) when fewer bytes arrive than the server announced."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the partial file is whole (killed before the rename)
            return
        raise
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
            partial.unlink()
        total = int(response.headers.get("Content-Length") or 0) + have
        with (
            open(partial, "ab") as out,
            progress(total=total or None, initial=have, unit="B", unit_scale=True, desc=Path(url).name) as bar,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    if total and partial.stat().st_size != total:
        raise OSError(f"{url}: the connection ended after {partial.stat().st_size} of {total} bytes")


def fetch(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    mirror: str | Path | None = None,
    retries: int = 4,
    timeout: float = 60.0,
) -> Path:
    """`url` -> `dest`, verified against `sha256` (full or prefix), resumable, atomic. Returns dest.

    With `mirror`, the file of the same name in that folder is copied instead (and verified the same way).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    if mirror is not None:
        src = Path(mirror) / Path(url).name
        if not src.is_file():
            raise FileNotFoundError(f"the mirror {mirror} lacks {src.name}: download {url} there first")
        partial.write_bytes(src.read_bytes())
    else:
        for attempt in range(retries + 1):
            try:
                _download(url, partial, timeout)
                break
            except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets, cut-off bodies: the
                # partial file is kept for the next try
                if attempt == retries:
                    raise RuntimeError(
                        f"could not download {url} after {retries + 1} tries ({err}); rerun to resume"
                    ) from err
                time.sleep(2**attempt)
    try:
        check_sha256(partial, sha256, url)
    except ValueError:
        partial.unlink()
        raise
    os.replace(partial, dest)
    return dest


# Files a Janus checkpoint needs: weights as safetensors only (never pickles), configs, tokenizer and processor.
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def _partial_dir(out_dir: Path, mirror: str | Path | None, repo_id: str, revision: str) -> Path:
    """<out_dir>.partial/, the download's resumable staging folder; with a mirror, filled from its
    <org>--<name>/ folder (the layout hub snapshots and ModelScope models share there)."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        src = Path(mirror) / repo_id.replace("/", "--")
        if not src.is_dir():
            raise FileNotFoundError(f"the mirror {mirror} lacks {src.name}/: copy {repo_id}@{revision} there first")
        shutil.copytree(src, partial, dirs_exist_ok=True)
    return partial


def _snapshot(
    repo_id: str,
    revision: str,
    out_dir: Path,
    patterns: list[str],
    repo_type: str,
    mirror: str | Path | None,
    lock_path: str | Path | None = None,
) -> tuple[Path, str, dict[str, str]]:
    """The files of a hub repository matching `patterns`, in <out_dir>.partial/ (where huggingface_hub resumes an
    interrupted download), or copied from `mirror`/<org>--<name>/. Returns (folder, commit, {file: sha256}).

    Without `lock_path` the revision must be a commit. With it, the lock's commit is fetched and every file must
    match the lock (arrag.data.locks); without a lock yet, a branch is resolved to its commit now and the lock is
    written, so that every later download fetches the same files."""
    from arrag.data import locks

    lock = locks.read_lock(lock_path)
    if lock_path is None and not locks.is_commit(revision):
        raise ValueError(f"{repo_type} {repo_id!r}: pin `revision` to a 40-hex-digit commit, got {revision!r}")
    commit = locks.locked_commit(lock, lock_path, "huggingface", f"{repo_type}s/{repo_id}", revision, patterns)
    if commit is None:
        if mirror is not None:
            raise ValueError(
                f"{repo_id}: a mirror cannot resolve the branch {revision!r} to a commit: pin a commit, or copy the "
                f"lock file {lock_path} written where the download ran with internet"
            )
        from huggingface_hub import HfApi

        commit = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    partial = _partial_dir(out_dir, mirror, repo_id, commit)
    if mirror is None:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, revision=commit, allow_patterns=patterns, local_dir=partial, repo_type=repo_type)
    repo = f"{repo_type}s/{repo_id}"
    files = locks.enforce(lock, lock_path, "huggingface", repo, revision, commit, patterns, partial)
    return partial, commit, files


def download_model(
    hub_id: str,
    revision: str,
    out_dir: str | Path,
    mirror: str | Path | None = None,
    include: list[str] | None = None,
    lock: str | Path | None = None,
    sha256: dict[str, str] | None = None,
) -> Path:
    """A hub model snapshot (safetensors and configs only, or the files `include` names) at a pinned commit or
    a locked branch into out_dir, for compute nodes without internet; jobs then load it by path. `sha256` pins
    files known in advance ({name: digest}). The snapshot is downloaded into <out_dir>.partial/ (huggingface_hub
    resumes there) and renamed when complete."""
    out_dir = Path(out_dir)
    partial, commit, files = _snapshot(hub_id, revision, out_dir, include or MODEL_FILES, "model", mirror, lock)
    if not any(name.endswith(".safetensors") for name in files):
        raise ValueError(f"{hub_id}@{commit} has no .safetensors weights; arrag never loads pickled weights")
    for name, digest in (sha256 or {}).items():
        if files.get(name) != digest.lower():
            raise ValueError(f"{hub_id}@{commit}: {name} has SHA-256 {files.get(name)}, pinned {digest}")
    (partial / "SOURCE").write_text(f"{hub_id}@{commit}\n")
    write_manifest(partial, "hub-model", {"hub": f"{hub_id}@{commit}"})  # last: loaders check it (arrag.manifest)
    return promote_partial(partial, out_dir)


def download_dataset(
    repo_id: str,
    revision: str,
    include: list[str],
    out_dir: str | Path,
    mirror: str | Path | None = None,
    lock: str | Path | None = None,
) -> Path:
    """The files of a hub dataset matching `include` (e.g. WebDataset tars or parquet shards) at a pinned
    commit or a locked branch into out_dir: resumable, each large (LFS) file checked against the SHA-256 the hub
    publishes for it, renamed into place when complete. The files keep their paths inside the repository."""
    if not include:
        raise ValueError(f"dataset {repo_id!r}: give the files to fetch as patterns (include), e.g. '*.tar'")
    out_dir = Path(out_dir)
    partial, commit, files = _snapshot(repo_id, revision, out_dir, list(include), "dataset", mirror, lock)
    if not files:
        raise ValueError(f"no file of {repo_id}@{commit} matches {list(include)}: check the patterns")
    if mirror is None:  # a mirror is the user's own copy; the network copy is checked against the hub's record
        verify_lfs_sha256(repo_id, commit, partial, sorted(files), repo_type="dataset", digests=files)
    (partial / "SOURCE").write_text(f"{repo_id}@{commit} {' '.join(include)}\n")
    return promote_partial(partial, out_dir)


# ModelScope (DPG-Bench's mPLUG lives there): its REST API lists a repository's files with their SHA-256
MODELSCOPE = "https://www.modelscope.cn"


def _modelscope_files(model_id: str, revision: str, timeout: float = 60.0) -> list[dict]:
    """[{Path, Sha256, Revision, Type, ...}] of a ModelScope model at `revision` (files only, recursively)."""
    import json
    import urllib.parse

    query = urllib.parse.urlencode({"Revision": revision, "Recursive": "true"})
    url = f"{MODELSCOPE}/api/v1/models/{model_id}/repo/files?{query}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        listing = json.loads(response.read())
    files = (listing.get("Data") or {}).get("Files")
    if listing.get("Code") != 200 or not isinstance(files, list):
        raise RuntimeError(f"{url}: unexpected answer {str(listing)[:300]}")
    return [f for f in files if f.get("Type") != "tree"]


def download_modelscope(
    model_id: str,
    revision: str,
    out_dir: str | Path,
    mirror: str | Path | None = None,
    lock: str | Path | None = None,
) -> Path:
    """Every file of a ModelScope model (e.g. damo/mplug_visual-question-answering_coco_large_en) into out_dir,
    each resumable and checked against its SHA-256 (the lock's, else the one ModelScope lists), the lot checked
    against or recorded in the lock file. ModelScope names versions by tag or branch (e.g. v1.0.0, master), so
    the lock's `commit` is that name and the files' SHA-256 are what pin the content. With `mirror`, the folder
    <mirror>/<org>--<name>/ is copied instead."""
    from arrag.data import locks

    out_dir = Path(out_dir)
    lock_data = locks.read_lock(lock)
    name = locks.locked_commit(lock_data, lock, "modelscope", model_id, revision, ["*"]) or revision
    partial = _partial_dir(out_dir, mirror, model_id, revision)
    if mirror is None:
        import urllib.parse

        pinned = (lock_data or {}).get("files", {})
        for entry in _modelscope_files(model_id, name):
            path = entry["Path"]
            query = urllib.parse.urlencode({"Revision": entry.get("Revision") or name, "FilePath": path})
            url = f"{MODELSCOPE}/api/v1/models/{model_id}/repo?{query}"
            if not (partial / path).is_file():  # a file finished by an interrupted run is kept (checked below)
                fetch(url, partial / path, sha256=pinned.get(path) or entry.get("Sha256"))
    locks.enforce(lock_data, lock, "modelscope", model_id, revision, name, ["*"], partial)
    (partial / "SOURCE").write_text(f"modelscope:{model_id}@{name}\n")
    return promote_partial(partial, out_dir)


def verify_lfs_sha256(
    repo_id: str, revision: str, root: Path, files: list[str], repo_type: str = "dataset", digests: dict | None = None
) -> int:
    """Check every downloaded file the hub stores in LFS against the SHA-256 it publishes (`digests`: the files'
    SHA-256 already computed); returns how many were checked (small files kept in git have no published SHA-256
    and are not)."""
    from huggingface_hub import HfApi

    checked = 0
    for start in range(0, len(files), 100):
        infos = HfApi().get_paths_info(repo_id, files[start : start + 100], revision=revision, repo_type=repo_type)
        for info in infos:
            lfs = getattr(info, "lfs", None)
            if lfs is None:
                continue
            try:
                if digests is None:
                    check_sha256(root / info.path, lfs.sha256)
                elif digests[info.path] != lfs.sha256.lower():
                    raise ValueError(f"{root / info.path}: SHA-256 {digests[info.path]} does not match {lfs.sha256}")
            except ValueError as err:  # gone, so that a rerun fetches it again rather than trusting it
                (root / info.path).unlink()
                raise ValueError(f"{err}; deleted it: rerun the download to fetch it again") from None
            checked += 1
    return checked


def promote_partial(partial: Path, out_dir: Path) -> Path:
    """A download folder completed in <out>.partial/ (where an interrupted download resumes) takes its final
    name only now, replacing an older copy: a folder under the final name is always complete."""
    replace_directory(partial, out_dir)
    return out_dir
