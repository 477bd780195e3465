"""Benchmark images must not be in the retrieval database or the fine-tuning pairs (the paper: "any samples
included in the testing set are excluded to prevent data leakage").

Three steps, each a DAG rule:

1. `hash_source_shard` (rule hash_images): one shard of an image source (the same shards as tokenisation) is
   decoded, resized and centre-cropped exactly as the tokenizer sees it (arrag.data.sources.preprocess at the
   VQ's image size), and each image gets three hashes: a digest of its pixels (exact copies), a 64-bit DCT
   perceptual hash and an 8 x 8 colour thumbnail (re-encoded or rescaled copies). It streams: a batch of
   images at a time, and 216 B of hashes per image kept.
2. `find_contamination` (rule contamination): every checked source is compared with every evaluation reference
   set. A source image is a copy when its pixel digest equals a reference image's (exact), or when their pHashes
   are at most `phash_bits` apart (Hamming) and their thumbnails at most `thumbnail_rms` grey levels (near).
   Writes the exclusion list and the counts per pair of sets (rendered by
   arrag.evaluation.tables.write_contamination_table).
3. `Exclusions.keep` / `kept_rows`: the readers of code shards and fine-tuning pairs drop the listed images.

Hash shard format "arrag-hashes/1" (arrag.io.write_shard: .npz of arrays, then its .json):
    hashes-SSSSS-of-TTTTT.npz   image_ids int64 [N] (positions in the source's enumeration),
                                digests uint8 [N, 16] (first 16 bytes of SHA-256 of the uint8 [S, S, 3] pixels),
                                phash uint64 [N], thumbs uint8 [N, 192] (8 x 8 x RGB)
    hashes-SSSSS-of-TTTTT.json  format, shard, num_shards, count, image_size, phash (the hashes' definition),
                                source (the spec), source_ids [N], skipped [{image_id, source_id, error}], seconds

Exclusion list format "arrag-exclusions/1" (JSON): phash, phash_bits, thumbnail_rms, references {name: {source,
images}}, sources {name: {source, image_size, images, excluded: [{image_id, source_id, reference, reference_id,
exact, phash_bits, thumbnail_rms}]}}, and pairs (the table's rows).

Cost of the comparison: brute force over the 64-bit pHashes, XOR + popcount, in chunks that keep the distance
matrix in cache (about 1e9 pairs per second on one CPU core, measured), then the thumbnails of the few pairs
within phash_bits: MJHQ-30K's 30K references against the paper's 13.6M corpus images (4.1e11 pairs) take
about 7 core-minutes; memory is the references' hashes plus one source shard's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

from arrag.data.sources import iter_source
from arrag.io import progress, read_metadata, read_shard, write_shard

log = logging.getLogger(__name__)

HASH_FORMAT = "arrag-hashes/1"
EXCLUSIONS_FORMAT = "arrag-exclusions/1"
# the hashes' definition: a hash shard made otherwise is refused
PHASH = "sha256-16 pixels; dct-phash-64 (luma, 32x32 Lanczos, 8x8 lowest DCT-II > median); 8x8 RGB box thumbnail"
DIGEST_BYTES = 16
THUMB = 8
THUMB_VALUES = THUMB * THUMB * 3
HASH_ARRAYS = ("digests", "phash", "thumbs")
_CHUNK_BYTES = 2**21  # source rows x references per chunk: ~2M pairs kept the XOR in cache (fastest, measured)


# ----------------------------------------------------------------------------- hashing


def pixel_digests(images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] -> uint8 [B, 16]: SHA-256 of each image's pixels (equal exactly for identical pixels)."""
    digests = [hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[:DIGEST_BYTES] for image in images]
    return np.frombuffer(b"".join(digests), np.uint8).reshape(len(images), DIGEST_BYTES)


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] -> uint64 [B]: the DCT perceptual hash (pHash) of each image.

    Greyscale (ITU-R 601 luma, as PIL's "L"), resized to 32 x 32, 2-D DCT-II; the 8 x 8 lowest frequencies
    are compared with their median, one bit each. Low frequencies survive re-encoding and rescaling; the
    median makes the bits balanced and the hash independent of brightness and contrast."""
    grey = np.zeros((len(images), 32, 32))
    for i, image in enumerate(images):
        grey[i] = np.asarray(Image.fromarray(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS))
    low = dctn(grey, type=2, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(images), 64)
    bits = low > np.median(low, axis=1, keepdims=True)  # [B, 64]
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)  # bit 63 = coefficient (0, 0)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] -> uint8 [B, 192]: each image area-averaged to 8 x 8 RGB, the check of a pHash match.

    The pHash sees only luma structure: two different scenes with the same layout (in the mini world, one
    shape at the same place in another colour) can share it. An 8 x 8 colour thumbnail keeps colour and
    averages away what re-encoding changes (JPEG noise, resampling), so a copy stays within a few grey levels."""
    thumbs = np.zeros((len(images), THUMB, THUMB, 3), np.uint8)
    for i, image in enumerate(images):
        thumbs[i] = np.asarray(Image.fromarray(image).resize((THUMB, THUMB), Image.Resampling.BOX))
    return thumbs.reshape(len(images), THUMB_VALUES)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 -> uint8, same shape: numpy >= 2's bitwise_count, else a byte lookup table
    (numpy 1.26 is still allowed by the environment)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _BYTE_BITS[np.ascontiguousarray(x).view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of uint64 hashes a [N] and b [M] -> uint8 [N, M]."""
    return popcount(a[:, None] ^ b[None, :])


def thumbnail_rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise RMS difference (grey levels) of thumbnails a [P, 192] and b [P, 192] -> float32 [P]."""
    diff = a.astype(np.float32) - b.astype(np.float32)
    return np.sqrt((diff * diff).mean(1))


def hash_shard_paths(out_dir: str | Path, shard: int, num_shards: int) -> tuple[Path, Path]:
    stem = f"hashes-{shard:05d}-of-{num_shards:05d}"
    return Path(out_dir) / f"{stem}.npz", Path(out_dir) / f"{stem}.json"


def hash_images(images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [B, S, S, 3] -> the three hashes of each image: digests [B, 16], phash [B], thumbs [B, 192]."""
    return {"digests": pixel_digests(images), "phash": perceptual_hashes(images), "thumbs": thumbnails(images)}


def hash_source_shard(
    spec: dict, shard: int, num_shards: int, size: int, out_dir: str | Path, batch_size: int = 256
) -> dict:
    """Hash one shard of an image source (images preprocessed to [size, size, 3], as tokenisation does) and
    write it as a hash shard; returns its metadata (without source_ids). It streams: a batch of images at a
    time, 216 B of hashes per image kept. Unreadable items are listed, as tokenisation lists them."""
    start = time.perf_counter()
    ids, source_ids, skipped, batch = [], [], [], []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in HASH_ARRAYS}

    def flush() -> None:
        for name, array in hash_images(np.stack(batch)).items():
            parts[name].append(array)
        batch.clear()

    for record in progress(iter_source(spec, shard, num_shards, size=size), desc=f"hash shard {shard}", unit="img"):
        if record.image is None:
            skipped.append({"image_id": record.image_id, "source_id": record.source_id, "error": record.error})
            continue
        ids.append(record.image_id)
        source_ids.append(record.source_id)
        batch.append(record.image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    empty = hash_images(np.zeros((0, size, size, 3), np.uint8))
    arrays = {name: np.concatenate(parts[name]) if parts[name] else empty[name] for name in HASH_ARRAYS}
    arrays["image_ids"] = np.asarray(ids, np.int64)
    meta = {
        "format": HASH_FORMAT,
        "shard": shard,
        "num_shards": num_shards,
        "count": len(ids),
        "image_size": size,
        "phash": PHASH,
        "source": json.loads(json.dumps(spec, default=str)),
        "source_ids": source_ids,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_shard(hash_shard_paths(out_dir, shard, num_shards)[0], arrays, meta)
    log.info("hash shard %d/%d: %d images, %d skipped", shard, num_shards, len(ids), len(skipped))
    return {k: v for k, v in meta.items() if k != "source_ids"}


@dataclass
class HashSet:
    """The hashes of one source's images (one shard, or all of them concatenated)."""

    image_ids: np.ndarray  # int64 [N]
    digests: np.ndarray  # uint8 [N, 16]
    phash: np.ndarray  # uint64 [N]
    thumbs: np.ndarray  # uint8 [N, 192]
    meta: dict


def load_hash_shard(path: str | Path) -> HashSet:
    names = ("image_ids", *HASH_ARRAYS)
    arrays, meta = read_shard(path, HASH_FORMAT, names, "rerun hashing (arrag hash-images)")
    if meta.get("phash") != PHASH or arrays[1].shape[1:] != (DIGEST_BYTES,) or arrays[3].shape[1:] != (THUMB_VALUES,):
        raise ValueError(f"{path}: hashed as {meta.get('phash')!r}, this version compares {PHASH!r}: rerun hashing")
    if len(meta["source_ids"]) != len(arrays[0]):
        raise ValueError(f"{path}: {len(meta['source_ids'])} source_ids for {len(arrays[0])} images: rerun hashing")
    return HashSet(*arrays, meta)


def check_shard_set(paths: list[str | Path]) -> dict:
    """The metadata of the first of one source's hash shards, after checking from the .json files that they are
    all of its shards (an unchecked shard would leak) with one source spec and image size."""
    if not paths:
        raise ValueError("no hash shards given")
    metas = []
    for path in paths:
        json_path = Path(path).with_suffix(".json")
        if not json_path.is_file():
            raise FileNotFoundError(f"{json_path} is missing: incomplete hash shard: rerun hashing for {path}")
        metas.append(read_metadata(json_path, HASH_FORMAT, "rerun hashing (arrag hash-images)"))
    first = metas[0]
    for path, meta in zip(paths, metas):
        for field in ("source", "image_size", "num_shards"):
            if meta.get(field) != first.get(field):
                raise ValueError(
                    f"hash shards disagree on {field!r}: {paths[0]} has {first.get(field)!r}, {path} has "
                    f"{meta.get(field)!r}"
                )
    if sorted(m.get("shard") for m in metas) != list(range(first["num_shards"])):
        raise ValueError(f"{[str(p) for p in paths]} are not the shards 0..{first['num_shards'] - 1} of one source")
    return first


def load_hash_set(paths: list[str | Path]) -> HashSet:
    """Every shard of one source (check_shard_set), concatenated."""
    check_shard_set(paths)
    shards = [load_hash_shard(p) for p in paths]
    meta = {**shards[0].meta, "source_ids": [i for s in shards for i in s.meta["source_ids"]]}
    names = ("image_ids", *HASH_ARRAYS)
    return HashSet(*(np.concatenate([getattr(s, n) for s in shards]) for n in names), meta)


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Thresholds:
    """When a source image is a near duplicate of a reference image: both hashes close."""

    phash_bits: int  # pHash Hamming distance at most this (of 64 bits): the candidate pairs
    thumbnail_rms: float  # and 8x8 colour thumbnails at most this RMS apart (grey levels, 0..255)

    def __post_init__(self):
        bits, rms = self.phash_bits, self.thumbnail_rms
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits < 32:
            raise ValueError(
                f"contamination phash_bits={bits!r}: give an int Hamming distance in [0, 32) between 64-bit "
                "perceptual hashes (0: equal hashes only; 32 and more match unrelated images)"
            )
        if not (isinstance(rms, (int, float)) and not isinstance(rms, bool) and 0 <= rms < 255):
            raise ValueError(f"contamination thumbnail_rms={rms!r}: give a number of grey levels in [0, 255)")


def near_duplicates(source: HashSet, reference: HashSet, t: Thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each source image, the closest reference image within both thresholds: (its row in the reference
    int64 [N], -1 for none; the pair's pHash distance [N]; their thumbnails' RMS difference float32 [N]).

    The pHash comparison is brute force, XOR + popcount over a chunk of source rows against every reference
    (chunked so that the [c, R] matrix stays in cache); only pairs within phash_bits have their thumbnails
    compared, so the check costs R x N hash comparisons plus a few thumbnail ones."""
    if not len(reference.phash):
        raise ValueError(f"the reference set {reference.meta['source']} holds no images")
    n = len(source.phash)
    rows, bits, rms = np.full(n, -1, np.int64), np.zeros(n, np.uint8), np.full(n, np.inf, np.float32)
    chunk = max(1, _CHUNK_BYTES // len(reference.phash))
    for start in range(0, n, chunk):
        d = hamming(source.phash[start : start + chunk], reference.phash)  # [c, R]
        i, j = np.nonzero(d <= t.phash_bits)  # candidate pairs
        r = thumbnail_rms(source.thumbs[start + i], reference.thumbs[j])
        ok = r <= t.thumbnail_rms
        i, j, r = i[ok], j[ok], r[ok]
        order = np.lexsort((r, i))  # per source row, its closest thumbnail first
        i, j, r = i[order], j[order], r[order]
        first = np.r_[True, i[1:] != i[:-1]] if len(i) else np.zeros(0, bool)
        rows[start + i[first]] = j[first]
        bits[start + i[first]] = d[i[first], j[first]]
        rms[start + i[first]] = r[first]
    return rows, bits, rms


def match(source: HashSet, reference: HashSet, t: Thresholds) -> dict[str, np.ndarray]:
    """Which source images copy a reference image: exact (bool [N], identical pixels), matched (bool [N],
    exact or near), and each match's reference row, pHash distance and thumbnail RMS."""
    ref_rows = {d.tobytes(): r for r, d in enumerate(reference.digests)}
    exact_rows = np.array([ref_rows.get(d.tobytes(), -1) for d in source.digests], np.int64)
    rows, bits, rms = near_duplicates(source, reference, t)
    exact = exact_rows >= 0
    return {
        "exact": exact,
        "matched": exact | (rows >= 0),
        "rows": np.where(exact, exact_rows, rows),
        "bits": np.where(exact, 0, bits),
        "rms": np.where(exact, 0.0, rms),
    }


def find_contamination(references: dict[str, list], sources: dict[str, list], thresholds: Thresholds) -> dict:
    """name -> hash shards, for the evaluation reference sets and the checked sources -> the exclusion list
    (format above). A source image matched by any reference set is excluded once; the rows count each pair.
    Sources stream a shard at a time: memory is the reference sets' hashes plus one shard's (216 B per image)."""
    if not references or not sources:
        raise ValueError("give at least one reference set and one source to check")
    refs = {name: load_hash_set(paths) for name, paths in references.items()}
    sizes = {r.meta["image_size"] for r in refs.values()}
    out = {
        "format": EXCLUSIONS_FORMAT,
        "phash": PHASH,
        "phash_bits": thresholds.phash_bits,
        "thumbnail_rms": thresholds.thumbnail_rms,
        "references": {n: {"source": r.meta["source"], "images": len(r.image_ids)} for n, r in refs.items()},
        "sources": {},
        "pairs": [],
    }
    for name, paths in sources.items():
        first = check_shard_set(paths)
        if sizes != {first["image_size"]}:
            raise ValueError(
                f"source {name!r} was hashed at {first['image_size']} px and the reference sets at {sorted(sizes)} "
                "px: hash every set at the tokenizer's image size"
            )
        excluded = {}  # image id -> its first match
        counts = {ref_name: {"source_images": 0, "exact": 0, "near": 0, "removed": 0} for ref_name in refs}
        for path in paths:
            shard = load_hash_shard(path)
            for ref_name, ref in refs.items():
                m = match(shard, ref, thresholds)
                for row in np.flatnonzero(m["matched"]):
                    excluded.setdefault(
                        int(shard.image_ids[row]),
                        {
                            "image_id": int(shard.image_ids[row]),
                            "source_id": shard.meta["source_ids"][row],
                            "reference": ref_name,
                            "reference_id": ref.meta["source_ids"][m["rows"][row]],
                            "exact": bool(m["exact"][row]),
                            "phash_bits": int(m["bits"][row]),
                            "thumbnail_rms": round(float(m["rms"][row]), 3),
                        },
                    )
                c = counts[ref_name]
                c["source_images"] += len(shard.image_ids)
                c["exact"] += int(m["exact"].sum())
                c["near"] += int((m["matched"] & ~m["exact"]).sum())
                c["removed"] += int(m["matched"].sum())
        for ref_name, c in counts.items():
            pair = {"pair": f"{ref_name} / {name}", "reference": ref_name, "source": name}
            out["pairs"].append(pair | {"reference_images": len(refs[ref_name].image_ids)} | c)
        images = counts[next(iter(refs))]["source_images"]
        out["sources"][name] = {
            "source": first["source"],
            "image_size": first["image_size"],
            "images": images,
            "excluded": sorted(excluded.values(), key=lambda e: e["image_id"]),
        }
        log.info("%s: %d of %d images match a reference set", name, len(excluded), images)
    return out


# ----------------------------------------------------------------------------- applying


def source_key(spec: dict) -> str:
    """A source spec as a comparable string: folder and mini-world paths resolved, keys sorted."""
    spec = dict(spec)
    if "path" in spec:
        spec["path"] = str(Path(spec["path"]).resolve())
    return json.dumps(spec, sort_keys=True)


class Exclusions:
    """The exclusion list of `find_contamination`, applied to the images of the sources it checked."""

    def __init__(self, data: dict, path: str = "<exclusions>"):
        self.path = path
        self.data = data
        self.by_source = {source_key(e["source"]): e for e in data["sources"].values()}

    @classmethod
    def load(cls, path: str | Path) -> "Exclusions":
        fix = "run the contamination check (arrag contamination)"
        return cls(read_metadata(path, EXCLUSIONS_FORMAT, fix), str(path))

    def entry(self, spec: dict) -> dict:
        entry = self.by_source.get(source_key(spec))
        if entry is None:
            checked = [e["source"] for e in self.data["sources"].values()]
            raise ValueError(
                f"{self.path} never checked the source {spec} against the benchmarks (it checked {checked}): "
                "add it to the contamination check and rerun it"
            )
        return entry

    def keep_local(self, spec: dict, image_ids: np.ndarray, source_ids: list[str] | None = None) -> np.ndarray:
        """bool [N]: which of a source's images (positions in its enumeration) are not excluded. With
        source_ids, the excluded positions must name the same images as when they were hashed."""
        entry = self.entry(spec)
        image_ids = np.asarray(image_ids, np.int64)
        excluded = {e["image_id"]: e["source_id"] for e in entry["excluded"]}
        keep = ~np.isin(image_ids, np.fromiter(excluded, np.int64, len(excluded)))
        if source_ids is not None:
            for row in np.flatnonzero(~keep):
                hashed = excluded[int(image_ids[row])]
                if source_ids[row] != hashed:
                    raise ValueError(
                        f"image {image_ids[row]} of {spec} is {source_ids[row]!r} but was {hashed!r} when {self.path} "
                        "was made: the source changed; rerun hashing and the contamination check"
                    )
        return keep

    def keep(self, image_ids, metas: list[dict]) -> np.ndarray:
        """bool [N] over `load_code_shards(paths)`'s images (global ids: each source shifted by its
        image_id_offset): False for the excluded ones. Refuses shards tokenised at another image size than
        the one hashed, or of a source the list never checked."""
        image_ids = np.asarray(image_ids, np.int64)
        keep = np.ones(len(image_ids), bool)
        row = 0
        for meta in metas:  # load_code_shards concatenates the shards in order
            n = meta["count"]
            entry = self.entry(meta["source"])
            if meta.get("image_size") != entry["image_size"]:
                raise ValueError(
                    f"{meta['source']} was tokenised at {meta.get('image_size')} px but hashed at "
                    f"{entry['image_size']} px for {self.path}: hash it at the tokenizer's size"
                )
            local = image_ids[row : row + n] - meta["image_id_offset"]
            keep[row : row + n] = self.keep_local(meta["source"], local, meta.get("source_ids"))
            row += n
        if row != len(image_ids):
            raise ValueError(f"{len(image_ids)} image ids for shards holding {row} images")
        return keep


def kept_rows(exclusions_path: str | Path | None, image_ids, metas: list[dict]) -> np.ndarray:
    """bool [N] over `load_code_shards`' images: those the exclusion list does not name (all without one)."""
    if exclusions_path is None:
        return np.ones(len(image_ids), bool)
    keep = Exclusions.load(exclusions_path).keep(image_ids, metas)
    log.warning("left out %d of %d images: benchmark copies listed in %s", (~keep).sum(), len(keep), exclusions_path)
    return keep
