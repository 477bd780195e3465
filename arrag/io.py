"""Atomic file and directory writes: a crash or interrupt never leaves a half-written output under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(final: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success rename it into place, on failure delete it.

    The temporary name lives in the same directory so the rename is atomic on one filesystem.
    An existing `final` is replaced only once the new one is complete.
    """
    final = Path(final)
    check_output_path(final, directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    # tempfile creates private (0700/0600) entries; give the output the permissions a plain write would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)
    try:
        yield tmp
        if directory:
            replace_directory(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def check_output_path(path: str | Path, directory: bool = True) -> Path:
    """Refuse an output folder that exists as a file (or an output file that exists as a folder), before any
    work is done, rather than failing at the end and losing that work."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, but a folder is written there: give a folder path (or remove the file)")
    if not directory and path.is_dir():
        raise ValueError(f"{path} is a folder, but a file is written there: give a file path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{path}: {parent} is a file, not a folder")
    return path


def replace_directory(new: Path, final: Path) -> None:
    """Give the complete directory `new` the name `final`; an existing `final` is renamed aside first and deleted
    only after the swap, so the old one is never deleted before its replacement is in place."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(final)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_shard(npz_path: str | Path, arrays: dict, meta: dict) -> None:
    """One shard as a file pair: `npz_path` (the arrays, no pickles) and its .json metadata, both atomic and the
    .json last, so a shard is complete exactly when its .json exists; the .json's "manifest" (arrag.manifest)
    holds the .npz's size and SHA-256 and its digest is the shard's identity. The old .json is deleted first: a
    crash midway never leaves an old .json vouching for a new .npz."""
    from arrag.manifest import make_manifest

    npz_path = Path(npz_path)
    json_path = npz_path.with_suffix(".json")
    json_path.unlink(missing_ok=True)
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as f:  # a file object: savez would append ".npz"
        np.savez(f, **arrays)
    write_json(json_path, {**meta, "manifest": make_manifest(npz_path.parent, [npz_path.name], meta["format"])})


def read_metadata(path: str | Path, fmt: str | None, fix: str) -> dict:
    """The JSON object of a metadata file (an artefact's, a shard's, a lock's, ...): refused with an error naming
    the file, the field and `fix` (what rewrites the file) when the file is missing, is not JSON or not an
    object, or its field "format" is not `fmt` (None: the file has no format field)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {fix}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}): {fix}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a JSON {type(meta).__name__}, not an object: {fix}")
    if fmt is not None and meta.get("format") != fmt:
        raise ValueError(f"{path}: field 'format' differs: expected {fmt!r}, found {meta.get('format')!r}; {fix}")
    return meta


def read_shard(npz_path: str | Path, fmt: str, names: tuple[str, ...], rerun: str) -> tuple[list[np.ndarray], dict]:
    """The arrays `names` of a shard written by `write_shard` and its metadata, after checking the shard is
    complete (its .json exists), of format `fmt`, matches its manifest (arrag.manifest.check_files) and holds
    meta["count"] rows in every array. `rerun` says what rewrites the shard, for the error messages."""
    from arrag.manifest import check_body, check_files

    npz_path = Path(npz_path).with_suffix(".npz")
    json_path = npz_path.with_suffix(".json")
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} is missing: incomplete shard: {rerun} for {npz_path.name}")
    meta = read_metadata(json_path, fmt, rerun)
    if not npz_path.is_file():
        raise FileNotFoundError(f"{npz_path} is missing although {json_path.name} exists: {rerun}")
    if "manifest" not in meta:
        raise ValueError(f"{json_path}: no field 'manifest' (written by an arrag without manifests): {rerun}")
    manifest = check_body(meta["manifest"], json_path, fmt, rerun)
    if list(manifest["files"]) != [npz_path.name]:
        raise ValueError(f"{json_path}: its manifest lists {list(manifest['files'])}, not {npz_path.name}: {rerun}")
    check_files(npz_path.parent, manifest, fix=rerun)
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = [data[name] for name in names]
    counts = {name: len(a) for name, a in zip(names, arrays)}
    if any(n != meta["count"] for n in counts.values()):
        raise ValueError(f"{npz_path}: rows {counts} but field 'count' is {meta['count']}")
    return arrays, meta


def write_jsonl(path: str | Path, records) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    return records


def progress(iterable=None, **kwargs):
    """tqdm progress bar; in log files (no terminal) it updates every 10 s instead of every step."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 10.0, **kwargs)


def fingerprint(path: str | Path) -> str:
    """A short digest of a file or directory as it is now: every file's relative name, size and modification
    time (not its bytes: weights are large). Retraining or rebuilding rewrites the files, so the digest changes
    and outputs made from the old artefact are not reused."""
    import hashlib

    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
