"""Image sources for tokenisation: one deterministic enumeration of images, split into shards.

A source is described by a small JSON-able spec (it is recorded in every code shard). Five kinds:

    {"type": "mini_world", "path": DIR}
        a split written by arrag.data.mini_world.write_split; source_id = the record's "id"; the caption is
        the record's "caption".
    {"type": "folder", "path": DIR, "extensions": [".jpg", ".jpeg", ".png", ".webp", ".bmp"], "recursive": true,
     "caption_extension": ".txt"}
        image files under DIR in sorted order of their relative path; source_id = that relative path. With
        caption_extension, the caption is the text of the sidecar file with the same stem ("a/b.jpg" -> "a/b.txt").
    {"type": "webdataset", "urls": ["a.tar", ...] or "dir/shard-{000..009}.tar", "image_keys": ["jpg", ...],
     "caption_key": "txt"}
        local tar files in the WebDataset convention, read with the stdlib `tarfile` (no webdataset
        package): a sample is a run of consecutive files sharing a key, the key being the path up to the
        first dot of the file name ("dir/000123.jpg" and "dir/000123.txt" -> key "dir/000123"); the image
        is the member whose extension comes first in image_keys. source_id = "<tar file name>/<key>".
        caption_key "txt" takes the caption from the sample's .txt member; "json:caption" from the field
        "caption" of its .json member (img2dataset writes both).
    {"type": "hf_dataset", "name": ..., "split": "train", "revision": COMMIT, "image_column": "image",
     "streaming": true, "id_column": null, "caption_column": null}
        a Hugging Face dataset via datasets.load_dataset (imported lazily; never trust_remote_code).
        `revision` is required so a run is reproducible. source_id = row[id_column], else "<split>/<row>".
    {"type": "parquet", "files": "dir/*.parquet" or [...], "image_column": "image", "caption_column": null,
     "id_column": null}
        local parquet files (e.g. a Hugging Face dataset's shards fetched by `arrag download dataset`), read
        with pyarrow in sorted order of their paths; the image cell holds encoded bytes or {"bytes", "path"}
        (the datasets Image layout). source_id = row[id_column], else "<file name>/<row>".

Every type also takes "limit": N, which keeps only the first N items of the enumeration (the paper's
fine-tuning set takes 25K pairs from each of two datasets).

Item i of the enumeration has image_id = i and belongs to shard i % num_shards. Items of other shards are
enumerated but never decoded. A corrupt or unreadable image, or an unreadable caption where the spec asks
for one, becomes an ImageRecord with image=None and the error; anything else wrong (bad spec, missing
directory or tar file) raises.
"""

from __future__ import annotations

import functools
import glob as globmod
import io
import itertools
import json
import logging
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from arrag.io import progress

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_IMAGE_KEYS = ("jpg", "png", "webp", "jpeg")
# Required and optional fields of each source type (unknown fields are refused: a typo must not be ignored).
SPEC_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mini_world": (("path",), ("limit", "allow_empty")),
    "folder": (("path",), ("extensions", "recursive", "caption_extension", "limit", "allow_empty")),
    "webdataset": (("urls",), ("image_keys", "caption_key", "limit", "allow_empty")),
    "hf_dataset": (
        ("name", "revision"),
        ("split", "image_column", "streaming", "id_column", "caption_column", "limit", "allow_empty"),
    ),
    "parquet": (("files",), ("image_column", "caption_column", "id_column", "limit", "allow_empty")),
}

# One enumerated item: where it came from, how to read its image, and how to read its caption (None when the
# source has no captions). Loaders are called only for this shard's items, before the enumeration advances.
# The image loader returns encoded bytes, a PIL image or a uint8 array.
Item = tuple[str, Callable[[], "bytes | Image.Image | np.ndarray"], Callable[[], str] | None]


@dataclass
class ImageRecord:
    image_id: int  # position in the source's deterministic enumeration (global across shards)
    source_id: str  # file path / tar sample / dataset row / mini-world id: where the image came from
    image: np.ndarray | None  # uint8 [S, S, 3] after preprocessing; None when unreadable
    error: str | None  # why it could not be read ("ExceptionClass: message"); None when fine
    caption: str | None = None  # the paired text, when the source has captions


# ----------------------------------------------------------------------------- preprocessing


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels are composited onto white (a bare convert("RGB") would
    expose whatever colour hides under alpha = 0, often black); 16-bit greyscale is scaled to 8 bits."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit PNGs: convert() would clip at 255
        grey = (np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255).round().astype(np.uint8)
        image = Image.fromarray(grey, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1, F, ... (a no-op copy for RGB)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """PIL image -> uint8 [size, size, 3]: RGB, shorter side resized to `size` (bicubic), centre crop.

    Janus-Pro's VQ sees square images; like LlamaGen's data pipeline (ADM's centre_crop_arr) we keep the
    centre square rather than pad or squash. reducing_gap first shrinks large images with a box filter,
    which anti-aliases the bicubic downscale (what LlamaGen's repeated BOX halving does) and is fast.
    """
    image = to_rgb(image)
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.array(image, dtype=np.uint8)  # [size, size, 3], owns its memory


def decode_image(data: bytes) -> Image.Image:
    """Encoded image bytes -> fully decoded PIL image, EXIF orientation applied (phone photos)."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # PIL's message holds a BytesIO address: keep error text reproducible
        raise UnidentifiedImageError("cannot identify image file: not an image or an unsupported format") from None
    image.load()  # decode now, so a truncated file fails here and not later
    return ImageOps.exif_transpose(image)


def to_image_array(obj: bytes | Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Whatever a loader returned -> uint8 [size, size, 3]."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == np.uint8 and obj.shape == (size, size, 3):
            return obj  # already the right size (mini world at its native size): no resampling
        obj = Image.fromarray(obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        obj = decode_image(bytes(obj))
    return preprocess(obj, size)


# ----------------------------------------------------------------------------- spec checking


def _check_spec(spec: dict) -> str:
    """The spec's type, after checking it is known and carries exactly the allowed fields."""
    if not isinstance(spec, dict):
        raise ValueError(f"source spec must be a dict with a 'type' field, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in SPEC_FIELDS:
        raise ValueError(f"source spec field 'type' is {kind!r}: use one of {list(SPEC_FIELDS)}")
    required, optional = SPEC_FIELDS[kind]
    for field in required:
        if spec.get(field) in (None, "", []):
            raise ValueError(f"{kind} source spec is missing field {field!r} (required: {list(required)})")
    unknown = sorted(set(spec) - {"type", *required, *optional})
    if unknown:
        raise ValueError(
            f"{kind} source spec has unknown field(s) {unknown}: allowed are {['type', *required, *optional]}"
        )
    return kind


def _check_shard(shard: int, num_shards: int) -> None:
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards={num_shards!r} must be an int >= 1")
    if not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard!r} must be an int with 0 <= shard < num_shards={num_shards}")


def _existing_dir(spec: dict) -> Path:
    path = Path(spec["path"])
    if not path.is_dir():
        raise FileNotFoundError(f"{spec['type']} source spec field 'path': directory {path} does not exist")
    return path


# ----------------------------------------------------------------------------- the four sources


def _mini_world_items(spec: dict) -> Iterator[Item]:
    from arrag.data.mini_world import load_split

    images, records = load_split(_existing_dir(spec))  # images [N, S, S, 3]
    return (
        (str(r["id"]), functools.partial(images.__getitem__, i), functools.partial(str, r["caption"]))
        for i, r in enumerate(records)
    )


def _folder_files(root: Path, extensions: Iterable[str], recursive: bool) -> list[Path]:
    """Files under root with one of the extensions (case-insensitive), sorted by relative path."""
    exts = {("." + e.lstrip(".")).lower() for e in extensions}
    candidates = root.rglob("*") if recursive else root.glob("*")
    files = [p for p in candidates if p.suffix.lower() in exts and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _folder_items(spec: dict) -> Iterator[Item]:
    root = _existing_dir(spec)
    extensions = spec.get("extensions", DEFAULT_EXTENSIONS)
    if isinstance(extensions, str) or not extensions:
        raise ValueError(f"folder source spec field 'extensions' must be a non-empty list, got {extensions!r}")
    files = _folder_files(root, extensions, bool(spec.get("recursive", True)))
    sidecar = spec.get("caption_extension")
    if sidecar is None:
        return ((p.relative_to(root).as_posix(), p.read_bytes, None) for p in files)
    suffix = "." + str(sidecar).lstrip(".")
    return ((p.relative_to(root).as_posix(), p.read_bytes, _text_reader(p.with_suffix(suffix))) for p in files)


def _text_reader(path: Path) -> Callable[[], str]:
    return lambda: path.read_text(encoding="utf-8").strip()


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion, as WebDataset urls use it: "s-{000..002}-{a,b}" -> s-000-a, s-000-b, ...

    Numeric ranges keep the start's zero padding ("{000..010}" -> 000 ... 010)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        options = [f"{k:0{width}d}" for k in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [head + option + rest for option in options for rest in expand_braces(tail)]


def _tar_paths(urls: str | list[str]) -> list[Path]:
    patterns = [urls] if isinstance(urls, (str, Path)) else list(urls)
    names = [name for pattern in patterns for name in expand_braces(str(pattern))]
    for name in names:
        if "://" in name or name.startswith("pipe:"):
            raise ValueError(f"webdataset source spec field 'urls': {name} is not a local tar file (download first)")
        if not Path(name).is_file():
            raise FileNotFoundError(f"webdataset source spec field 'urls': {name} does not exist")
    return [Path(name) for name in names]


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset naming: "dir/000123.seg.png" -> ("dir/000123", "seg.png"); the extension is lowercased."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _missing_image(members: list[tarfile.TarInfo], image_keys: list[str]) -> NoReturn:
    names = [m.name for m in members]
    raise ValueError(f"sample has no member with an extension in image_keys {image_keys}: {names}")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    return tar.extractfile(member).read()


def _member_caption(tar: tarfile.TarFile, by_ext: dict[str, tarfile.TarInfo], caption_key: str) -> str:
    """caption_key "txt" -> the .txt member's text; "json:caption" -> field "caption" of the .json member."""
    ext, _, field = caption_key.partition(":")
    if ext not in by_ext:
        raise ValueError(f"sample has no .{ext} member for caption_key {caption_key!r}: {sorted(by_ext)}")
    text = _read_member(tar, by_ext[ext]).decode("utf-8")
    if not field:
        return text.strip()
    value = json.loads(text).get(field)
    if not isinstance(value, str):
        raise ValueError(f"the .{ext} member has no string field {field!r} (caption_key {caption_key!r})")
    return value.strip()


def _tar_problem(path: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> str | None:
    """Why the tar at `path` is not whole, or None. tarfile stops quietly at a missing end, so: a compressed
    tar is read to the end of its stream (a cut stream fails there); a plain one must hold, after its last
    member's data (padded to 512 bytes), the two zero blocks every tar writer ends an archive with."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
        tar.fileobj.seek(0)
        while tar.fileobj.read(1 << 20):
            pass
        return None
    end = members[-1].offset_data + -(-members[-1].size // 512) * 512 if members else 0
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read(1024)
    if len(tail) < 1024 or tail.strip(b"\0"):
        last = f" after its last member {members[-1].name}" if members else ""
        return f"truncated: {size} bytes, the end-of-archive blocks{last} are missing (a copy cut short)"
    return None


def _unreadable_tar(path: Path, problem: str) -> NoReturn:
    raise ValueError(f"{path}: {problem}; every sample of this file is skipped: download or copy it again")


def _tar_items(path: Path, image_keys: list[str], caption_key: str | None) -> Iterator[Item]:
    """Samples of one tar: (source_id, loader of the preferred image member's bytes, caption loader). A tar that
    is cut short or unreadable is one item whose loader fails naming the file: skipped and reported, not a
    silent prefix of its samples."""
    try:
        tar = tarfile.open(path)
        problem = _tar_problem(path, tar, tar.getmembers())
    except (tarfile.TarError, OSError, EOFError) as err:  # cut inside a header or a compressed stream
        tar, problem = None, f"unreadable ({type(err).__name__}: {err})"
    if problem:
        if tar is not None:
            tar.close()
        yield str(path), functools.partial(_unreadable_tar, path, problem), None
        return
    with tar:
        members = [m for m in tar.getmembers() if m.isfile() and "." in m.name.rpartition("/")[2]]
        # WebDataset groups *consecutive* members with the same key into one sample
        for key, group in itertools.groupby(members, key=lambda m: _split_key(m.name)[0]):
            by_ext = {_split_key(m.name)[1]: m for m in group}
            chosen = next((by_ext[k] for k in image_keys if k in by_ext), None)
            if chosen is None:  # still an item, so image_ids do not depend on which samples decode
                load = functools.partial(_missing_image, list(by_ext.values()), image_keys)
            else:
                load = functools.partial(_read_member, tar, chosen)
            caption = None if caption_key is None else functools.partial(_member_caption, tar, by_ext, caption_key)
            yield f"{path.name}/{key}", load, caption


def _webdataset_items(spec: dict) -> Iterator[Item]:
    image_keys = spec.get("image_keys", DEFAULT_IMAGE_KEYS)
    if isinstance(image_keys, str) or not image_keys:
        raise ValueError(f"webdataset source spec field 'image_keys' must be a non-empty list, got {image_keys!r}")
    image_keys = [k.lstrip(".").lower() for k in image_keys]
    caption_key = spec.get("caption_key")
    if caption_key is not None and not (isinstance(caption_key, str) and caption_key.partition(":")[0]):
        raise ValueError(
            f"webdataset source spec field 'caption_key' must be like 'txt' or 'json:caption', got {caption_key!r}"
        )
    paths = _tar_paths(spec["urls"])  # checked now, before the first item is asked for
    return itertools.chain.from_iterable(_tar_items(p, image_keys, caption_key) for p in paths)


def _hf_image(value) -> bytes | Image.Image:
    """A row's image cell -> bytes or PIL image. With Image(decode=False) it is {"bytes": ..., "path": ...}."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
        raise ValueError(f"image cell has neither bytes nor path: {sorted(value)}")
    if isinstance(value, (bytes, Image.Image)):
        return value
    raise TypeError(f"image cell of type {type(value).__name__} is not an image")


def _hf_items(spec: dict) -> Iterator[Item]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "the hf_dataset image source needs the Hugging Face `datasets` package: pip install datasets"
        ) from None
    revision = str(spec["revision"])
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        log.warning("hf_dataset revision %r is not a commit sha: a branch or tag can move under you", revision)
    split, column = spec.get("split", "train"), spec.get("image_column", "image")
    ds = datasets.load_dataset(spec["name"], split=split, revision=revision, streaming=spec.get("streaming", True))
    # undecoded bytes: a corrupt image then fails in our loader (one error record), not inside the
    # dataset iterator (which would end the enumeration), and other shards' rows are never decoded
    ds = ds.cast_column(column, datasets.Image(decode=False))
    id_column, caption_column = spec.get("id_column"), spec.get("caption_column")
    return (
        (
            str(row[id_column]) if id_column else f"{split}/{i}",
            functools.partial(_hf_image, row[column]),
            None if caption_column is None else functools.partial(_hf_caption, row, caption_column),
        )
        for i, row in enumerate(ds)
    )


def _hf_caption(row: dict, column: str) -> str:
    if column not in row:
        raise KeyError(
            f"hf_dataset source spec field 'caption_column': the row has no column {column!r}: {sorted(row)}"
        )
    if not isinstance(row[column], str):
        raise TypeError(f"caption column {column!r} holds {type(row[column]).__name__}, not text")
    return row[column].strip()


def _parquet_paths(files: str | list[str]) -> list[Path]:
    patterns = [files] if isinstance(files, (str, Path)) else list(files)
    paths = []
    for pattern in map(str, patterns):
        found = sorted(Path(p) for p in globmod.glob(pattern)) if globmod.has_magic(pattern) else [Path(pattern)]
        if not found or not all(p.is_file() for p in found):
            raise FileNotFoundError(f"parquet source spec field 'files': nothing at {pattern} (download first)")
        paths += found
    return paths


def _parquet_items(spec: dict) -> Iterator[Item]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("the parquet image source needs pyarrow: pip install pyarrow (or arrag[parquet])") from None
    column, caption_column, id_column = (
        spec.get("image_column", "image"),
        spec.get("caption_column"),
        spec.get("id_column"),
    )
    columns = [c for c in (column, caption_column, id_column) if c]
    paths = _parquet_paths(spec["files"])
    for path in paths:  # schemas only: a missing column is named now, not after hours of tokenising
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"parquet source: {path} has no column(s) {missing}; its columns are {names}")

    def rows() -> Iterator[Item]:
        for path in paths:
            position = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns):
                for row in batch.to_pylist():
                    source_id = str(row[id_column]) if id_column else f"{path.name}/{position}"
                    caption = None if caption_column is None else functools.partial(_hf_caption, row, caption_column)
                    yield source_id, functools.partial(_hf_image, row[column]), caption
                    position += 1

    return rows()


_ITEMS: dict[str, Callable[[dict], Iterator[Item]]] = {
    "mini_world": _mini_world_items,
    "folder": _folder_items,
    "webdataset": _webdataset_items,
    "hf_dataset": _hf_items,
    "parquet": _parquet_items,
}


# ----------------------------------------------------------------------------- overlap between sources


def source_locations(spec: dict) -> list[str]:
    """What a source reads: absolute folder or tar paths, or "hf://<name>/<split>" for a Hugging Face dataset."""
    kind = _check_spec(spec)
    if kind == "webdataset":
        patterns = [spec["urls"]] if isinstance(spec["urls"], (str, Path)) else spec["urls"]
        return [str(Path(name).resolve()) for p in patterns for name in expand_braces(str(p))]
    if kind == "hf_dataset":
        return [f"hf://{spec['name']}/{spec.get('split', 'train')}"]
    if kind == "parquet":
        return [str(p.resolve()) for p in _parquet_paths(spec["files"])]
    return [str(Path(spec["path"]).resolve())]


def shared_locations(a: dict, b: dict) -> list[str]:
    """The locations two sources both read (equal, or one folder inside the other): they share images."""
    shared = set()
    for x in source_locations(a):
        for y in source_locations(b):
            if x == y or Path(x).is_relative_to(y) or Path(y).is_relative_to(x):
                shared.add(max(x, y, key=len))  # the inner folder is what both read
    return sorted(shared)


# ----------------------------------------------------------------------------- the entry point


def _records(items: Iterator[Item], shard: int, num_shards: int, size: int, empty: str | None) -> Iterator[ImageRecord]:
    """`empty`: the error when the source has no item at all (None: an empty source is fine)."""
    i = -1
    for i, (source_id, load, load_caption) in enumerate(items):
        if i % num_shards != shard:
            continue
        try:
            caption = None if load_caption is None else load_caption()
            image = to_image_array(load(), size)
        except Exception as err:  # any failure to read *this* pair is data, not a bug: record it
            yield ImageRecord(i, source_id, None, f"{type(err).__name__}: {err}")
            continue
        yield ImageRecord(i, source_id, image, None, caption)
    if i < 0 and empty:
        raise ValueError(empty)


def _check_limit(spec: dict) -> int | None:
    limit = spec.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{spec['type']} source spec field 'limit' must be an int >= 1 (or absent), got {limit!r}")
    return limit


def iter_source(spec: dict, shard: int = 0, num_shards: int = 1, size: int = 384) -> Iterator[ImageRecord]:
    """This shard's images of the source as ImageRecords (image uint8 [size, size, 3]), in enumeration order.

    The spec, the shard and the source's existence are checked now (not at the first next()).
    """
    _check_shard(shard, num_shards)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r} must be a positive int (pixels)")
    kind = _check_spec(spec)
    limit = _check_limit(spec)
    items = itertools.islice(_ITEMS[kind](spec), limit)  # limit None: every item
    empty = (
        None
        if spec.get("allow_empty")
        else (
            f"the {kind} source {', '.join(source_locations(spec)[:3]) or spec} holds no items: check its path or "
            "pattern (or set 'allow_empty': true in its spec if an empty source is meant)"
        )
    )
    return _records(items, shard, num_shards, size, empty)


@dataclass
class EncodedShard:
    """One shard of a source run through an image encoder: its outputs and where each came from."""

    outputs: np.ndarray  # [N, ...] the encoder's outputs for the readable images, in enumeration order;
    # memory-mapped from an unlinked scratch file (read-only), or `empty` when there are none
    image_ids: list[int]  # [N]
    source_ids: list[str]  # [N]
    captions: list[str | None]  # [N]; all None for a source without captions
    skipped: list[dict]  # {"image_id", "source_id", "error"} of the items that could not be read


def _spool(out: np.ndarray, expected: int, empty: np.ndarray, spool) -> None:
    """Append one batch's outputs [b, ...] to the scratch file, after checking their shape and dtype."""
    out = np.ascontiguousarray(out)
    if out.shape != (expected, *empty.shape[1:]) or out.dtype != empty.dtype:
        raise ValueError(
            f"the encoder returned {out.dtype} {tuple(out.shape)} for {expected} images; expected "
            f"{empty.dtype} {(expected, *empty.shape[1:])} (the `empty` array's layout)"
        )
    spool.write(out.tobytes())


def encode_shard(
    spec: dict,
    shard: int,
    num_shards: int,
    size: int,
    encode: Callable[[np.ndarray], np.ndarray],
    empty: np.ndarray,
    batch_size: int = 256,
    desc: str = "encode",
    scratch_dir: str | Path | None = None,
) -> EncodedShard:
    """Run `encode(uint8 [b, size, size, 3]) -> [b, ...]` over this shard's readable images, `batch_size` at a
    time (what tokenisation and CLIP embedding both do); `empty` [0, ...] gives the outputs' dtype and shape and
    stands for a shard with none. Unreadable items are logged and listed, never fatal.

    Memory does not grow with the shard: only one batch of decoded images is alive at a time, and each batch's
    outputs are appended to an unlinked scratch file in `scratch_dir` (the output folder: same file system, no
    /tmp quota; None = the system's temporary folder) that comes back memory-mapped. A crash leaves nothing
    behind: the file has no name."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    records = iter_source(spec, shard, num_shards, size=size)  # checks spec and shard now
    if scratch_dir is not None:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    image_ids, source_ids, captions, skipped = [], [], [], []
    with tempfile.TemporaryFile(prefix=".encode-", dir=scratch_dir) as spool:
        batch = []  # uint8 [size, size, 3] images, at most batch_size
        for record in progress(records, desc=f"{desc} shard {shard}/{num_shards}", unit="img"):
            if record.image is None:
                log.warning("skipping image %d (%s): %s", record.image_id, record.source_id, record.error)
                skipped.append({"image_id": record.image_id, "source_id": record.source_id, "error": record.error})
                continue
            image_ids.append(record.image_id)
            source_ids.append(record.source_id)
            captions.append(record.caption)
            batch.append(record.image)
            if len(batch) == batch_size:
                _spool(encode(np.stack(batch)), len(batch), empty, spool)
                batch = []
        if batch:
            _spool(encode(np.stack(batch)), len(batch), empty, spool)
        spool.flush()
        # the mapping outlives the file object: the kernel frees the unlinked file when it is unmapped
        shape = (len(image_ids), *empty.shape[1:])
        outputs = np.memmap(spool, dtype=empty.dtype, mode="r", shape=shape) if image_ids else empty
    return EncodedShard(outputs, image_ids, source_ids, captions, skipped)
