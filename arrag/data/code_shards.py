"""Code shards: an image source tokenised by the VQ tokenizer, one file pair per shard.

File format "arrag-codes/1" (read by the retrieval stages and by users; keep it stable):

    <out_dir>/codes-SSSSS-of-TTTTT.npz   numpy .npz, no pickled objects (np.load(..., allow_pickle=False)):
        codes      uint16 [N, H, W]  VQ token ids, row-major grid (int32 when codebook_size > 65536)
        image_ids  int64 [N]         position of each image in the source's enumeration (ascending)
    <out_dir>/codes-SSSSS-of-TTTTT.json  metadata:
        format           "arrag-codes/1"
        shard, num_shards  s and T: this shard holds the source items with image_id % T == s
        count            N
        grid             [H, W]
        image_size       S, the square side (px) images were centre-cropped/resized to before encoding
        codebook_size    K
        codebook_sha256  arrag.models.vq.codebook_fingerprint of the L2-normalised codebook
        tokenizer_id     free text naming the tokenizer (e.g. model repo@revision); "" if not given
        source           the source spec (see arrag.data.sources)
        source_ids       [N strings] where each image came from, in image_ids order
        captions         [N strings] the paired texts, in image_ids order; only for sources with captions
                         (mini world, or a spec with caption_key / caption_column / caption_extension)
        skipped          [{"image_id", "source_id", "error"}] items that could not be read
        seconds          wall time of the tokenisation
        manifest         arrag.manifest of the .npz (size, SHA-256); its "digest" is the shard's identity,
                         which databases and indexes built from the shard record

Both files are written atomically (temporary name, then rename) and the .json last: a shard is complete
exactly when its .json exists. Rewriting a shard first deletes its old .json, so a crash midway never
leaves an old .json vouching for a new .npz.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from arrag.data.sources import encode_shard
from arrag.io import read_shard, write_shard
from arrag.models.vq import VQTokenizer, codebook_fingerprint

log = logging.getLogger(__name__)

FORMAT = "arrag-codes/1"
# Fields that must agree between shards before their codes can be used together.
MUST_MATCH = ("codebook_sha256", "grid", "tokenizer_id")


def shard_paths(out_dir: str | Path, shard: int, num_shards: int) -> tuple[Path, Path]:
    """(npz, json) paths of one shard."""
    stem = f"codes-{shard:05d}-of-{num_shards:05d}"
    return Path(out_dir) / f"{stem}.npz", Path(out_dir) / f"{stem}.json"


def code_dtype(codebook_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, i.e. codebooks of up to 65536 entries (Janus-Pro has 16384)."""
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int32)


# ----------------------------------------------------------------------------- writing


def tokenise_shard(
    spec: dict,
    shard: int,
    num_shards: int,
    vq: VQTokenizer,
    out_dir: str | Path,
    *,
    batch_size: int = 256,
    tokenizer_id: str = "",
) -> dict:
    """Tokenise one shard of the source and write it; return its metadata (without source_ids)."""
    start = time.perf_counter()
    dtype = code_dtype(vq.codebook_size)

    def encode(images: np.ndarray) -> np.ndarray:  # [b, S, S, 3] -> codes [b, H, W], small storage dtype
        return vq.encode(images).cpu().numpy().astype(dtype)  # encode runs on vq.device

    empty = np.zeros((0, vq.grid, vq.grid), dtype)
    encoded = encode_shard(
        spec, shard, num_shards, vq.image_size, encode, empty, batch_size, desc="tokenise", scratch_dir=out_dir
    )
    codes, skipped = encoded.outputs, encoded.skipped  # [N, H, W], memory-mapped

    meta = {
        "image_size": vq.image_size,
        "codebook_size": vq.codebook_size,
        "codebook_sha256": codebook_fingerprint(vq.codebook),
        "tokenizer_id": tokenizer_id,
        "source": json.loads(json.dumps(spec, default=str)),  # e.g. Path values -> str
        "source_ids": encoded.source_ids,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if any(c is not None for c in encoded.captions):  # a captioned source gives every kept record its caption
        meta["captions"] = encoded.captions
    meta = write_code_shard(out_dir, shard, num_shards, codes, np.asarray(encoded.image_ids, np.int64), meta)
    if not len(codes):
        log.warning(
            "shard %d/%d holds no readable images (more shards than images?); wrote it empty", shard, num_shards
        )
    level = logging.WARNING if skipped else logging.INFO
    npz_path = shard_paths(out_dir, shard, num_shards)[0]
    log.log(
        level,
        "shard %d/%d: %d images tokenised, %d skipped -> %s",
        shard,
        num_shards,
        len(codes),
        len(skipped),
        npz_path,
    )
    return {k: v for k, v in meta.items() if k not in ("source_ids", "captions")}


def write_code_shard(
    out_dir: str | Path, shard: int, num_shards: int, codes: np.ndarray, image_ids: np.ndarray, meta: dict
) -> dict:
    """Write codes [N, H, W] and image_ids [N] with `meta` (needs codebook_size; format, shard, num_shards,
    count and grid are filled in here from the arguments). Returns the metadata written."""
    codes, image_ids = np.asarray(codes), np.asarray(image_ids)
    if codes.ndim != 3 or image_ids.shape != (len(codes),):
        raise ValueError(f"need codes [N, H, W] and image_ids [N], got {codes.shape} and {image_ids.shape}")
    for field in ("source_ids", "captions"):
        if len(meta.get(field, codes)) != len(codes):
            raise ValueError(f"{len(meta[field])} {field} for {len(codes)} codes")
    size = int(meta["codebook_size"])
    if len(codes) and not (0 <= codes.min() and codes.max() < size):
        raise ValueError(f"codes lie in [{codes.min()}, {codes.max()}], outside the codebook [0, {size})")
    meta = {**meta, "format": FORMAT, "shard": shard, "num_shards": num_shards, "count": len(codes)}
    meta["grid"] = [int(codes.shape[1]), int(codes.shape[2])]

    # copy=False: a memory-mapped shard from encode_shard is streamed into the .npz, never copied into memory
    arrays = {"codes": codes.astype(code_dtype(size), copy=False), "image_ids": image_ids.astype(np.int64)}
    write_shard(shard_paths(out_dir, shard, num_shards)[0], arrays, meta)
    return meta


# ----------------------------------------------------------------------------- reading


def load_code_shard(npz_path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One shard -> (codes LongTensor [N, H, W], image_ids LongTensor [N], metadata). Accepts the .json path too."""
    npz_path = Path(npz_path).with_suffix(".npz")
    (image_ids,), meta = read_shard(npz_path, FORMAT, ("image_ids",), "rerun tokenisation")
    codes = _read_codes(npz_path, meta)
    return torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(image_ids.astype(np.int64)), meta


def load_code_shards(paths: list[str | Path]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Several shards concatenated in the given order -> (codes [N, H, W], image_ids [N], metadata per shard).

    Shards of several sources (e.g. CC12M, JourneyDB and DataComp) get disjoint image ids: each source's ids
    (positions in its own enumeration) are shifted by an offset, the sources taken in order of first
    appearance; every shard's metadata records its source's "image_id_offset" (see `source_table`).
    Refuses shards whose codebook, grid or tokenizer differ: their codes are not the same vocabulary.
    Holds every shard at once as int64: for a large corpus use `iter_code_shards`."""
    parts = list(iter_code_shards(paths))
    codes = torch.cat([torch.from_numpy(c.astype(np.int64)) for c, _, _ in parts])
    image_ids = torch.cat([torch.from_numpy(ids) for _, ids, _ in parts])
    return codes, image_ids, [meta for _, _, meta in parts]


def iter_code_shards(paths: list[str | Path]) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """`load_code_shards` one shard at a time: (codes [n, H, W] in their stored dtype, image ids [n] int64 with
    the source offsets applied, metadata). Only one shard's codes are in memory at once; every shard's metadata
    and image ids are checked and read first (the offsets need each source's largest id)."""
    ids, metas = code_shard_ids(paths)
    for path, meta, shard_ids in zip(paths, metas, ids):
        yield _read_codes(path, meta), shard_ids, meta


def code_shard_ids(paths: list[str | Path]) -> tuple[list[np.ndarray], list[dict]]:
    """Every shard's global image ids [n] int64 (its source's offset applied) and metadata, without their codes:
    what a job needs to plan before it streams the codes (`iter_code_shards`)."""
    if not paths:
        raise ValueError("no code shards given")
    metas, local_ids = [], []
    for path in paths:
        (ids,), meta = read_shard(Path(path).with_suffix(".npz"), FORMAT, ("image_ids",), "rerun tokenisation")
        for field in MUST_MATCH:
            if metas and meta[field] != metas[0][field]:
                raise ValueError(
                    f"code shards disagree on field {field!r}: {paths[0]} has {metas[0][field]!r}, "
                    f"{path} has {meta[field]!r}; tokenise them with the same tokenizer"
                )
        metas.append(meta)
        local_ids.append(ids.astype(np.int64))
    if sum(len(ids) for ids in local_ids) == 0:  # a database or training set of nothing could never be used
        raise ValueError(
            f"the code shards {[str(p) for p in paths[:3]]}{' ...' if len(paths) > 3 else ''} hold no images: their "
            "sources are empty or every image was skipped (see 'skipped' in their .json); fix the sources"
        )
    keys = [json.dumps(m.get("source"), sort_keys=True) for m in metas]
    sizes: dict[str, int] = {}  # per source: 1 + its largest image id (ids are positions in its enumeration)
    for key, ids in zip(keys, local_ids):
        sizes[key] = max(sizes.get(key, 0), int(ids.max()) + 1 if len(ids) else 0)
    offsets, next_offset = {}, 0
    for key in dict.fromkeys(keys):  # first appearance order
        offsets[key], next_offset = next_offset, next_offset + sizes[key]
    for meta, key in zip(metas, keys):
        meta["image_id_offset"] = offsets[key]
    return [ids + meta["image_id_offset"] for ids, meta in zip(local_ids, metas)], metas


def _read_codes(path: str | Path, meta: dict) -> np.ndarray:
    """codes [N, H, W] of one shard, in their stored dtype, checked against its metadata."""
    npz_path = Path(path).with_suffix(".npz")
    (codes,), meta_now = read_shard(npz_path, FORMAT, ("codes",), "rerun tokenisation")
    if meta_now.get("count") != meta.get("count"):
        raise ValueError(f"{npz_path}: rewritten while being read (field 'count' changed); rerun the job")
    if list(codes.shape[1:]) != list(meta["grid"]):
        raise ValueError(f"{npz_path}: codes grid {list(codes.shape[1:])} but field 'grid' is {meta['grid']}")
    return codes


def require_codebook(paths: list[str | Path], metas: list[dict], codebook_sha256: str, model: str) -> None:
    """Refuse shards tokenised with another VQ codebook than `model`'s (fingerprint `codebook_sha256`): their
    token ids name other vectors, and anything built from them would carry the wrong codebook's stamp."""
    for path, meta in zip(paths, metas):
        if meta["codebook_sha256"] != codebook_sha256:
            raise ValueError(
                f"{path} was tokenised with another VQ codebook (sha256 {meta['codebook_sha256'][:12]}...) than "
                f"{model}'s ({codebook_sha256[:12]}...): pass the model the shards were tokenised with, or "
                "re-tokenise them with this one (arrag tokenise)"
            )


def shard_digests(metas: list[dict]) -> list[str]:
    """The shards' identities (their manifests' digests), which what is built from them records."""
    return [m["manifest"]["digest"] for m in metas]


def shard_captions(paths: list[str | Path], metas: list[dict]) -> list[str]:
    """The captions of `load_code_shards(paths)`'s images, in the same order (fine-tuning pairs)."""
    for path, meta in zip(paths, metas):
        if "captions" not in meta:
            raise ValueError(
                f"{path} holds no captions: its source {meta.get('source')} was tokenised without them; give the "
                "spec a caption field (caption_key, caption_column or caption_extension) and re-tokenise"
            )
    return [c for meta in metas for c in meta["captions"]]


def source_table(metas: list[dict]) -> list[dict]:
    """[{"source": spec, "offset": first global image id}] of the sources of `load_code_shards`' shards."""
    table = {}
    for m in metas:
        entry = {"source": m.get("source"), "offset": m["image_id_offset"]}
        table.setdefault(json.dumps(m.get("source"), sort_keys=True), entry)
    return sorted(table.values(), key=lambda t: t["offset"])


def image_source(sources: list[dict], image_id: int) -> tuple[dict, int]:
    """A global image id -> (its source's spec, its position in that source's enumeration)."""
    owner = max((t for t in sources if t["offset"] <= image_id), key=lambda t: t["offset"], default=None)
    if owner is None:
        raise ValueError(f"image id {image_id} belongs to no source of this database")
    return owner["source"], image_id - owner["offset"]
