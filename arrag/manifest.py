"""Artefact manifests: every file of an artefact with its size and SHA-256, written last, checked on load.

Format "arrag-manifest/1" (`MANIFEST.json` in an artefact directory; a code or embedding shard embeds the same
object in its .json under "manifest"):

    format   "arrag-manifest/1"
    kind     what the artefact is ("patch-database", "janus-model", "faid", ...)
    files    {relative path: {"size": bytes, "sha256": hex}} every file of the artefact but the manifest
    inputs   the identities (digests) of what the artefact was built from, e.g. {"code_shards": [...]}
    digest   SHA-256 of the fields above: the artefact's identity, which artefacts built from it record

Writing it last makes its presence the mark of a complete artefact. Loading checks, always, that the manifest
is intact (its digest) and that every file is present with its size (no other file in a directory artefact,
hidden files aside);
the SHA-256 of every byte is checked the first time a machine loads the artefact and whenever a file has been
written since (its inode, size, mtime or ctime changed), a stamp of the files' status after a full check being
kept in ~/.cache/arrag/verified (or $ARRAG_VERIFIED_CACHE). `arrag verify PATH` always checks every byte.
SHA-256 rather than a cheaper digest: with the CPUs' SHA instructions it hashes ~1.6 GB/s on one core, faster
than BLAKE2b in hashlib and than most disks, so a paper-scale database (~80 GB) costs a minute, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

FORMAT = "arrag-manifest/1"
NAME = "MANIFEST.json"
CHUNK = 1 << 24  # bytes hashed per read: memory stays bounded whatever the file size

log = logging.getLogger(__name__)


class VerificationError(ValueError):
    """An artefact differs from its manifest (or has none): the message names the file and the fix."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in CHUNK-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _digest(body: dict) -> str:
    fields = {k: body[k] for k in ("format", "kind", "files", "inputs")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _artefact_files(directory: Path) -> list[str]:
    """Relative paths of every file under `directory` except the manifest and hidden files (Snakemake's
    .snakemake_timestamp in directory outputs, huggingface_hub's .cache/), sorted."""
    names = (p.relative_to(directory) for p in directory.rglob("*") if p.is_file() and p.name != NAME)
    return sorted(str(n) for n in names if not any(part.startswith(".") for part in n.parts))


def make_manifest(root: str | Path, names: list[str], kind: str, inputs: dict | None = None) -> dict:
    """The manifest of the files `names` (relative to `root`), hashing each; remembers them as verified."""
    root = Path(root)
    files = {n: {"size": (root / n).stat().st_size, "sha256": file_sha256(root / n)} for n in names}
    body = {"format": FORMAT, "kind": kind, "files": files, "inputs": dict(inputs or {})}
    body["digest"] = _digest(body)
    _remember(root, body)
    return body


def write_manifest(directory: str | Path, kind: str, inputs: dict | None = None) -> dict:
    """Hash every file of the artefact directory and write its MANIFEST.json (atomically): call it last."""
    from arrag.io import write_json

    directory = Path(directory)
    body = make_manifest(directory, _artefact_files(directory), kind, inputs)
    write_json(directory / NAME, body)
    return body


def read_manifest(directory: str | Path, kind: str | None = None, fix: str = "") -> dict:
    """The MANIFEST.json of an artefact directory, checked to be complete, intact and (given) of `kind`."""
    path = Path(directory) / NAME
    if not path.is_file():
        raise VerificationError(
            f"{path} is missing: {directory} is incomplete (interrupted while written) or was written by an "
            f"arrag without manifests; {fix or 'rebuild it'}"
        )
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise VerificationError(f"{path}: not valid JSON ({err.msg}); {fix or 'rebuild it'}") from None
    return check_body(body, path, kind, fix)


def check_body(body, where: str | Path, kind: str | None = None, fix: str = "") -> dict:
    """Refuse a manifest object of another format or kind, or whose digest does not match its fields."""
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        found = body.get("format") if isinstance(body, dict) else type(body).__name__
        raise VerificationError(f"{where}: manifest format {found!r}, expected {FORMAT!r}; {fix or 'rebuild it'}")
    if any(k not in body for k in ("kind", "files", "inputs", "digest")) or body["digest"] != _digest(body):
        raise VerificationError(f"{where}: the manifest was edited or is damaged (its digest does not match)")
    if kind is not None and body["kind"] != kind:
        raise VerificationError(f"{where}: a {body['kind']!r} artefact, expected a {kind!r}; {fix or 'check the path'}")
    return body


def check_files(
    root: str | Path, body: dict, *, full: bool | None = None, exact: bool = False, fix: str = "", remember=True
) -> None:
    """Every file of the manifest `body` present under `root` with its size; `exact`: no other file either.
    Contents (SHA-256) are checked when `full`, or, with full=None, unless this machine already checked these
    very files (same inode, size, mtime and ctime). Raises VerificationError naming the first file that differs."""
    root = Path(root)
    fix = fix or "rebuild it"
    for name, entry in body["files"].items():
        path = root / name
        if not path.is_file():
            raise VerificationError(f"{path} is missing (listed in the manifest of {root}); {fix}")
        size = path.stat().st_size
        if size != entry["size"]:
            raise VerificationError(
                f"{path}: {size} bytes, the manifest says {entry['size']}: truncated or altered; {fix}"
            )
    if exact:
        extra = sorted(set(_artefact_files(root)) - set(body["files"]))
        if extra:
            raise VerificationError(
                f"{root / extra[0]} is not listed in {root / NAME}: not part of the artefact; {fix}"
            )
    if full is None:
        full = _stamp(root, body) != _remembered(body)
    if not full:
        return
    for name, entry in body["files"].items():
        found = file_sha256(root / name)
        if found != entry["sha256"]:
            raise VerificationError(
                f"{root / name}: content differs from its manifest (SHA-256 {found[:16]}..., expected "
                f"{entry['sha256'][:16]}...): the file is corrupt or was changed; {fix}"
            )
    if remember:
        _remember(root, body)


def verify(directory: str | Path, kind: str | None = None, *, full: bool | None = None, fix: str = "") -> dict:
    """Check an artefact directory against its manifest (see check_files); returns the manifest."""
    body = read_manifest(directory, kind, fix)
    check_files(directory, body, full=full, exact=True, fix=fix)
    return body


def verify_member(directory: str | Path, name: str, kind: str | None = None, fix: str = "") -> Path:
    """Check one (small) file of an artefact in full, for readers that need only it; returns its path."""
    body = read_manifest(directory, kind, fix)
    if name not in body["files"]:
        raise VerificationError(f"{Path(directory) / NAME} lists no {name}; {fix or 'rebuild it'}")
    check_files(directory, {**body, "files": {name: body["files"][name]}}, full=True, fix=fix, remember=False)
    return Path(directory) / name


def read_artefact_metadata(directory: str | Path, name: str, kind: str, fmt: str | None, fix: str) -> tuple[dict, dict]:
    """(the metadata file `name` of the artefact folder `directory`, the folder's manifest): the folder is checked
    against its manifest (of `kind`) first, so an edited metadata file is named as such, then the file is read
    and its format checked (arrag.io.read_metadata). `fix` says what rebuilds the artefact."""
    from arrag.io import read_metadata

    path = Path(directory) / name
    if not path.is_file():  # before the manifest: the message names what is missing and what writes it
        raise FileNotFoundError(f"{path} is missing: {fix}")
    manifest = verify(directory, kind, fix=fix)
    return read_metadata(path, fmt, fix), manifest


def identity(directory: str | Path) -> str:
    """The digest of an artefact directory's manifest (without checking its files)."""
    return read_manifest(directory)["digest"]


def require_input(body: dict, name: str, expected: str, what: str, fix: str) -> None:
    """Refuse an artefact whose manifest records another `name` input than `expected` (a digest)."""
    found = body["inputs"].get(name)
    if found != expected:
        raise VerificationError(
            f"{what} was built from another {name.replace('_', ' ')} (digest {str(found)[:16]}...) than the one "
            f"given (digest {expected[:16]}...); {fix}"
        )


def verify_path(path: str | Path) -> list[dict]:
    """Check every byte of the artefacts at `path` (`arrag verify`): a directory with a MANIFEST.json, a
    shard's .json or .npz (its embedded manifest), or a directory of shards (each of them). Returns one
    {"path", "kind", "digest", "bytes"} per artefact; raises VerificationError at the first that differs."""
    path = Path(path)
    if path.is_dir() and (path / NAME).is_file():
        body = verify(path, full=True)
        return [_summary(path, body)]
    shard_jsons = sorted(path.glob("*.json")) if path.is_dir() else [path.with_suffix(".json")]
    shard_jsons = [j for j in shard_jsons if j.with_suffix(".npz").is_file()]
    if not shard_jsons:
        raise VerificationError(f"{path}: neither an artefact directory with {NAME} nor shards (.json + .npz)")
    results = []
    for json_path in shard_jsons:
        meta = json.loads(json_path.read_text())
        if "manifest" not in meta:
            raise VerificationError(f"{json_path}: no field 'manifest' (written by an arrag without manifests)")
        body = check_body(meta["manifest"], json_path)
        check_files(json_path.parent, body, full=True)
        results.append(_summary(json_path.with_suffix(".npz"), body))
    return results


def _summary(path: Path, body: dict) -> dict:
    size = sum(f["size"] for f in body["files"].values())
    return {"path": str(path), "kind": body["kind"], "digest": body["digest"], "bytes": size}


def seal(directory: str | Path, kind: str) -> dict:
    """Write a manifest for a directory made outside arrag (e.g. a model saved with save_pretrained) that the
    user trusts as it is now, so that loaders accept it and notice any later change."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VerificationError(f"{directory} is not a directory")
    if (directory / NAME).exists():
        raise VerificationError(f"{directory / NAME} exists already: `arrag verify {directory}` checks it")
    return _summary(directory, write_manifest(directory, kind))


def load_weights(module, state: dict, source: str | Path) -> None:
    """module.load_state_dict(state), refusing (naming the keys and `source`) tensors the module needs but the
    state lacks, which would stay randomly initialised, and tensors it has no place for."""
    result = module.load_state_dict(state, strict=False)
    for keys, meaning in (
        (result.missing_keys, "lacks tensors the model needs (they would stay random)"),
        (result.unexpected_keys, "holds tensors the model has no place for"),
    ):
        if keys:
            shown = ", ".join(sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            raise VerificationError(f"{source} {meaning}: {shown}; the checkpoint is incomplete or for another model")


# ---- stamps of full checks: which files this machine has hashed, by their status


def _stamp_dir() -> Path:
    return Path(os.environ.get("ARRAG_VERIFIED_CACHE") or Path.home() / ".cache" / "arrag" / "verified")


def _stamp(root: Path, body: dict) -> dict:
    """Each file's (device, inode, size, mtime, ctime): any write through the filesystem changes one of them."""
    stamp = {}
    for name in body["files"]:
        st = (root / name).stat()
        stamp[name] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return stamp


def _remembered(body: dict) -> dict | None:
    try:
        return json.loads((_stamp_dir() / f"{body['digest']}.json").read_text())
    except (OSError, ValueError):
        return None


def _remember(root: Path, body: dict) -> None:
    """Record that the files under `root` were hashed and matched; a cache that cannot be written only costs a
    full check next time."""
    from arrag.io import write_json

    try:
        write_json(_stamp_dir() / f"{body['digest']}.json", _stamp(root, body))
    except OSError as err:
        log.debug("could not record the verification of %s: %s", root, err)
