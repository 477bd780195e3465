"""Fetching pinned files over HTTP(S): benchmark question files, detector and feature-network weights.

`fetch` downloads to <dest>.partial, resuming it with a Range request after an interruption, retries with
back-off, checks the SHA-256 (in full, or the published prefix OpenMMLab puts in its file names), and only
then renames the file into place: a file under its final name is always complete and verified. A local
mirror folder (clusters whose compute nodes have no internet) is tried before the network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from arrag.io import progress


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def download_model(hub_id: str, revision: str, out_dir: str | Path, mirror: str | Path | None = None) -> Path:
    """A hub model snapshot at a pinned commit into out_dir (safetensors and configs only), for compute nodes
    without internet; `arrag.models.janus.load_janus(out_dir)` then loads it by path. The snapshot is
    downloaded into <out_dir>.partial/ (huggingface_hub resumes there) and renamed when complete."""
    if not revision or len(revision) != 40:
        raise ValueError(f"model {hub_id!r}: pin `revision` to a 40-hex-digit commit, got {revision!r}")
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        src = Path(mirror) / hub_id.replace("/", "--")
        if not src.is_dir():
            raise FileNotFoundError(f"the mirror {mirror} lacks {src.name}/: snapshot {hub_id}@{revision} there first")
        shutil.copytree(src, partial, dirs_exist_ok=True)
    else:
        from huggingface_hub import snapshot_download

        snapshot_download(hub_id, revision=revision, allow_patterns=MODEL_FILES, local_dir=partial)
    if not list(partial.glob("*.safetensors")):
        raise ValueError(f"{hub_id}@{revision} has no .safetensors weights; arrag never loads pickled weights")
    (partial / "SOURCE").write_text(f"{hub_id}@{revision}\n")
    return promote_partial(partial, out_dir)


def promote_partial(partial: Path, out_dir: Path) -> Path:
    """A download folder completed in <out>.partial/ (where an interrupted download resumes) takes its final
    name only now, replacing an older copy: a folder under the final name is always complete."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return out_dir
