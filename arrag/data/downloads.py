"""Fetching pinned files over HTTP(S): benchmark question files, detector and feature-network weights.

`fetch` downloads to <dest>.partial, resuming it with a Range request after an interruption, retries with
back-off, checks the SHA-256 (in full, or the published prefix OpenMMLab puts in its file names), and only
then renames the file into place: a file under its final name is always complete and verified. A local
mirror folder (clusters whose compute nodes have no internet) is tried before the network.
"""

from __future__ import annotations

import hashlib
import os
import time
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
    """Append the rest of `url` to `partial` (a Range request when part of it is already there)."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
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
            except OSError as err:  # URLError, timeouts and resets; the partial file is kept for the next try
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
