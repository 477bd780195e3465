"""Tests of the image sources (arrag.data.sources): preprocessing, the four source types, sharding."""

import io
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arrag.data import mini_world as mw
from arrag.data.sources import ImageRecord, expand_braces, iter_source, preprocess

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _solid(colour, w: int = 20, h: int = 12) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def _noise_jpeg(seed: int = 0, side: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels), "JPEG", quality=95)


def _thirds(w: int, h: int, vertical: bool = False) -> Image.Image:
    """Distinct red | green | blue thirds along the long side."""
    arr = np.zeros((h, w, 3), np.uint8)
    n = h if vertical else w
    for k, colour in enumerate((RED, GREEN, BLUE)):
        sl = slice(k * n // 3, (k + 1) * n // 3)
        if vertical:
            arr[sl] = colour
        else:
            arr[:, sl] = colour
    return Image.fromarray(arr)


def _ids(records: list[ImageRecord]) -> list[int]:
    return [r.image_id for r in records]


# ----------------------------------------------------------------------------- preprocess


def test_preprocess_centre_crop_keeps_the_middle_third():
    out = preprocess(_thirds(30, 10), 10)  # shorter side already 10: crop only, pixel exact
    assert out.dtype == np.uint8 and out.shape == (10, 10, 3) and out.flags.c_contiguous
    assert np.all(out == GREEN)
    tall = preprocess(_thirds(10, 30, vertical=True), 10)
    assert np.all(tall == GREEN)


def test_preprocess_resizes_the_shorter_side_then_crops():
    out = preprocess(_thirds(60, 20), 10)  # -> 30 x 10, centre 10 columns = the green third
    assert out.shape == (10, 10, 3)
    inner = out[:, 2:8].astype(int)  # away from the resampled boundaries
    assert np.abs(inner - GREEN).max() <= 8
    up = preprocess(_solid(BLUE, 6, 4), 16)  # upscaling works too
    assert up.shape == (16, 16, 3) and np.all(up == BLUE)


def test_preprocess_converts_modes():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white background
    rgba.putpixel((3, 3), (0, 0, 255, 255))
    out = preprocess(rgba, 8)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[3, 3]) == BLUE

    grey = preprocess(Image.new("L", (8, 8), 77), 8)
    assert grey.dtype == np.uint8 and grey.shape == (8, 8, 3) and np.all(grey == 77)

    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert np.all(preprocess(pal, 8) == (10, 200, 30))

    pal_t = pal.copy()
    pal_t.info["transparency"] = 1  # palette entry 1 transparent -> white
    assert np.all(preprocess(pal_t, 8) == 255)

    cmyk = preprocess(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), 8)
    assert cmyk.shape == (8, 8, 3) and np.all(cmyk == 255)

    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))  # 16-bit greyscale: full scale -> 255
    assert np.all(preprocess(deep, 8) == 255)


# ----------------------------------------------------------------------------- mini world


@pytest.fixture
def mini_split(tmp_path):
    images, records = mw.make_split("corpus", 5, seed=3, size=32)
    mw.write_split(tmp_path / "mw", images, records)
    return tmp_path / "mw", images, records


def test_mini_world_source(mini_split):
    path, images, records = mini_split
    out = list(iter_source({"type": "mini_world", "path": str(path)}, size=32))
    assert _ids(out) == list(range(5))
    assert [r.source_id for r in out] == [r["id"] for r in records]
    assert all(r.error is None for r in out)
    np.testing.assert_array_equal(np.stack([r.image for r in out]), images)  # native size: untouched

    assert [r.caption for r in out] == [r["caption"] for r in records]  # the split's captions come along

    small = list(iter_source({"type": "mini_world", "path": path}, size=16))
    for r, img in zip(small, images):
        np.testing.assert_array_equal(r.image, preprocess(Image.fromarray(img), 16))


# ----------------------------------------------------------------------------- folder


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.png").write_bytes(_encode(_solid(RED)))
    (root / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "sub" / "b.jpg").write_bytes(_noise_jpeg(1))
    (root / "sub" / "deeper" / "c.PNG").write_bytes(_encode(_solid(BLUE, 9, 30)))
    (root / "sub" / "trunc.jpg").write_bytes(_noise_jpeg(2)[:1500])
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_source(image_folder):
    out = list(iter_source({"type": "folder", "path": str(image_folder)}, size=8))
    assert [r.source_id for r in out] == ["a.png", "bad.png", "sub/b.jpg", "sub/deeper/c.PNG", "sub/trunc.jpg"]
    assert _ids(out) == list(range(5))
    good = {r.source_id: r for r in out if r.error is None}
    assert set(good) == {"a.png", "sub/b.jpg", "sub/deeper/c.PNG"}
    assert np.all(good["a.png"].image == RED) and np.all(good["sub/deeper/c.PNG"].image == BLUE)
    assert all(r.image.shape == (8, 8, 3) and r.image.dtype == np.uint8 for r in good.values())
    bad = {r.source_id: r for r in out if r.error is not None}
    assert bad["bad.png"].image is None and "UnidentifiedImageError" in bad["bad.png"].error
    assert bad["sub/trunc.jpg"].image is None and "truncated" in bad["sub/trunc.jpg"].error


def test_folder_options(image_folder):
    flat = list(iter_source({"type": "folder", "path": image_folder, "recursive": False}, size=8))
    assert [r.source_id for r in flat] == ["a.png", "bad.png"]
    txt = list(iter_source({"type": "folder", "path": image_folder, "extensions": ["txt", ".jpg"]}, size=8))
    assert [r.source_id for r in txt] == ["notes.txt", "sub/b.jpg", "sub/trunc.jpg"]
    assert txt[0].error is not None  # a text file is an unreadable image, not a crash


# ----------------------------------------------------------------------------- webdataset


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def tar_dir(tmp_path):
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        _add(tar, "000000.jpg", _encode(_solid(GREEN), "JPEG"))
        _add(tar, "000000.txt", b"a caption")
        _add(tar, "000001.png", _encode(_solid(RED)))
        _add(tar, "000001.json", b"{}")
        _add(tar, "000002.jpg", b"\xff\xd8 not really a jpeg")  # corrupt member
    with tarfile.open(tmp_path / "shard-001.tar", "w") as tar:
        _add(tar, "part/000003.seg.png", _encode(_solid(BLUE)))  # extension "seg.png": not an image key
        _add(tar, "part/000003.png", _encode(_solid(BLUE)))
        _add(tar, "part/000004.txt", b"a sample without an image")
    return tmp_path


def test_webdataset_source(tar_dir):
    spec = {"type": "webdataset", "urls": str(tar_dir / "shard-{000..001}.tar")}
    out = list(iter_source(spec, size=8))
    assert [r.source_id for r in out] == [
        "shard-000.tar/000000",
        "shard-000.tar/000001",
        "shard-000.tar/000002",
        "shard-001.tar/part/000003",
        "shard-001.tar/part/000004",
    ]
    assert _ids(out) == list(range(5))
    assert [r.error is None for r in out] == [True, True, False, True, False]
    assert np.abs(out[0].image.astype(int) - GREEN).max() <= 8  # jpeg: nearly exact
    assert np.all(out[1].image == RED) and np.all(out[3].image == BLUE)
    assert "image_keys" in out[4].error
    # a list of paths gives the same enumeration; image_keys picks members
    listed = list(iter_source({**spec, "urls": [str(tar_dir / "shard-000.tar"), str(tar_dir / "shard-001.tar")]}))
    assert [r.source_id for r in listed] == [r.source_id for r in out]
    png_only = list(iter_source({**spec, "image_keys": ["png"]}, size=8))
    assert [r.error is None for r in png_only] == [False, True, False, True, False]


def test_webdataset_captions(tar_dir):
    spec = {"type": "webdataset", "urls": str(tar_dir / "shard-000.tar"), "caption_key": "txt"}
    out = list(iter_source(spec, size=8))
    assert out[0].caption == "a caption" and out[0].error is None
    assert out[1].image is None and "no .txt member" in out[1].error  # a pair without its text is unusable
    no_captions = list(iter_source({**spec, "caption_key": None}, size=8))
    assert [r.caption for r in no_captions] == [None, None, None]


def test_webdataset_json_captions(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        _add(tar, "0.jpg", _encode(_solid(GREEN), "JPEG"))
        _add(tar, "0.json", b'{"caption": " a green square ", "url": "x"}')
        _add(tar, "1.jpg", _encode(_solid(RED), "JPEG"))
        _add(tar, "1.json", b'{"url": "y"}')
    spec = {"type": "webdataset", "urls": str(tmp_path / "s.tar"), "caption_key": "json:caption"}
    out = list(iter_source(spec, size=8))
    assert out[0].caption == "a green square"
    assert out[1].image is None and "'caption'" in out[1].error


def test_folder_sidecar_captions(image_folder):
    (image_folder / "a.txt").write_text("a red square\n")
    spec = {"type": "folder", "path": str(image_folder), "extensions": [".png"], "caption_extension": "txt"}
    out = {r.source_id: r for r in iter_source(spec, size=8)}
    assert out["a.png"].caption == "a red square"
    assert out["sub/deeper/c.PNG"].image is None and "c.txt" in out["sub/deeper/c.PNG"].error


@pytest.mark.parametrize("limit", [1, 3, 100])
def test_limit_keeps_the_first_items(image_folder, limit):
    spec = {"type": "folder", "path": str(image_folder)}
    everything = list(iter_source(spec, size=8))
    for shard in range(2):  # sharding splits the limited enumeration, not the whole source
        limited = list(iter_source({**spec, "limit": limit}, shard, 2, size=8))
        assert _ids(limited) == [r.image_id for r in everything[:limit] if r.image_id % 2 == shard]


def test_shared_locations(tmp_path, tar_dir):
    from arrag.data.sources import shared_locations

    a = {"type": "webdataset", "urls": str(tar_dir / "shard-{000..001}.tar")}
    b = {"type": "webdataset", "urls": [str(tar_dir / "shard-001.tar")], "caption_key": "txt", "limit": 5}
    assert shared_locations(a, b) == [str((tar_dir / "shard-001.tar").resolve())]
    assert shared_locations({**a, "urls": str(tar_dir / "shard-000.tar")}, b) == []
    outer, inner = {"type": "folder", "path": str(tmp_path)}, {"type": "folder", "path": str(tmp_path / "x" / "..")}
    assert shared_locations(outer, {"type": "folder", "path": str(tmp_path / "sub")}) == [str(tmp_path / "sub")]
    assert shared_locations(outer, inner) == [str(tmp_path)]
    hf = {"type": "hf_dataset", "name": "org/data", "revision": "a" * 40}
    assert shared_locations(hf, {**hf, "limit": 10}) == ["hf://org/data/train"]
    assert shared_locations(hf, {**hf, "split": "test"}) == [] and shared_locations(hf, outer) == []


def test_expand_braces():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/{8..10}") == ["a/8", "a/9", "a/10", "b/8", "b/9", "b/10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


# ----------------------------------------------------------------------------- hf_dataset


class _FakeDataset:
    """The slice of datasets.IterableDataset the source uses: cast_column and iteration over dict rows."""

    def __init__(self, rows):
        self.rows, self.casts = rows, []

    def cast_column(self, column, feature):
        self.casts.append((column, feature))
        return self

    def __iter__(self):
        return iter(self.rows)


@pytest.fixture
def fake_datasets(monkeypatch):
    rows = [
        {"img": {"bytes": _encode(_solid(RED)), "path": None}, "key": "r0"},
        {"img": {"bytes": b"garbage", "path": None}, "key": "r1"},
        {"img": {"bytes": _encode(_solid(BLUE)), "path": None}, "key": "r2"},
    ]
    module = types.ModuleType("datasets")
    module.calls = []
    module.dataset = _FakeDataset(rows)
    module.Image = lambda decode=True: ("Image", decode)

    def load_dataset(name, **kwargs):
        module.calls.append((name, kwargs))
        return module.dataset

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return module


def test_hf_dataset_source(fake_datasets):
    spec = {"type": "hf_dataset", "name": "org/data", "revision": "a" * 40, "split": "train", "image_column": "img"}
    out = list(iter_source(spec, size=8))
    assert fake_datasets.calls == [("org/data", {"split": "train", "revision": "a" * 40, "streaming": True})]
    assert fake_datasets.dataset.casts == [("img", ("Image", False))]  # we decode, so errors are per row
    assert [r.source_id for r in out] == ["train/0", "train/1", "train/2"]
    assert np.all(out[0].image == RED) and np.all(out[2].image == BLUE)
    assert out[1].image is None and "UnidentifiedImageError" in out[1].error
    keyed = list(iter_source({**spec, "id_column": "key"}, shard=1, num_shards=2, size=8))
    assert [(r.image_id, r.source_id) for r in keyed] == [(1, "r1")]
    captioned = list(iter_source({**spec, "caption_column": "key"}, size=8))
    assert [r.caption for r in captioned] == ["r0", None, "r2"]  # row 1's image is unreadable
    missing = list(iter_source({**spec, "caption_column": "text"}, size=8))
    assert "'text'" in missing[0].error


def test_hf_dataset_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        iter_source({"type": "hf_dataset", "name": "org/data", "revision": "main"})


# ----------------------------------------------------------------------------- parquet


@pytest.fixture
def parquet_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        ({"bytes": _encode(_solid(RED)), "path": None}, "a red square", "r0"),
        ({"bytes": b"garbage", "path": None}, "broken", "r1"),
        ({"bytes": _encode(_solid(BLUE)), "path": None}, "a blue square", "r2"),
    ]
    for name, part in (("train-00001.parquet", rows[2:]), ("train-00000.parquet", rows[:2])):  # sorted on read
        table = pa.table({"image": [r[0] for r in part], "text": [r[1] for r in part], "key": [r[2] for r in part]})
        pq.write_table(table, tmp_path / name)
    return tmp_path


def test_parquet_source(parquet_files):
    spec = {"type": "parquet", "files": str(parquet_files / "train-*.parquet"), "caption_column": "text"}
    out = list(iter_source(spec, size=8))
    assert [r.source_id for r in out] == ["train-00000.parquet/0", "train-00000.parquet/1", "train-00001.parquet/0"]
    assert np.all(out[0].image == RED) and np.all(out[2].image == BLUE) and out[1].image is None
    assert [out[0].caption, out[2].caption] == ["a red square", "a blue square"]
    keyed = list(iter_source({**spec, "id_column": "key", "limit": 2}, shard=1, num_shards=2, size=8))
    assert [(r.image_id, r.source_id) for r in keyed] == [(1, "r1")]
    with pytest.raises(ValueError, match=r"no column\(s\) \['caption'\]"):
        iter_source({**spec, "caption_column": "caption"})
    with pytest.raises(FileNotFoundError, match="download first"):
        iter_source({**spec, "files": str(parquet_files / "test-*.parquet")})


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_shards_partition_the_source(image_folder, num_shards):
    spec = {"type": "folder", "path": str(image_folder)}
    everything = list(iter_source(spec, size=8))
    seen: list[int] = []
    for shard in range(num_shards):
        ids = _ids(list(iter_source(spec, shard, num_shards, size=8)))
        assert all(i % num_shards == shard for i in ids)
        seen += ids
    assert sorted(seen) == _ids(everything) == list(range(len(everything)))  # disjoint and complete


def test_enumeration_is_deterministic(tar_dir, image_folder):
    for spec in (
        {"type": "folder", "path": str(image_folder)},
        {"type": "webdataset", "urls": str(tar_dir / "shard-{000..001}.tar")},
    ):
        a, b = list(iter_source(spec, 1, 2, size=8)), list(iter_source(spec, 1, 2, size=8))
        assert [(r.image_id, r.source_id, r.error) for r in a] == [(r.image_id, r.source_id, r.error) for r in b]
        for x, y in zip(a, b):
            assert (x.image is None and y.image is None) or np.array_equal(x.image, y.image)


# ----------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"type": "zip"}, "type"),
        ({"path": "x"}, "type"),
        ({"type": "folder"}, "path"),
        ({"type": "folder", "path": ".", "extentions": [".png"]}, "extentions"),
        ({"type": "folder", "path": ".", "extensions": ".png"}, "extensions"),
        ({"type": "webdataset"}, "urls"),
        ({"type": "webdataset", "urls": "http://host/a.tar"}, "urls"),
        ({"type": "webdataset", "urls": "a.tar", "image_keys": "jpg"}, "image_keys"),
        ({"type": "hf_dataset", "name": "org/data"}, "revision"),
        ({"type": "mini_world"}, "path"),
        ({"type": "folder", "path": ".", "limit": 0}, "limit"),
        ({"type": "folder", "path": ".", "limit": "10"}, "limit"),
        ({"type": "webdataset", "urls": "a.tar", "caption_key": ":caption"}, "caption_key"),
    ],
)
def test_bad_spec_names_the_field(spec, field):
    with pytest.raises(ValueError, match=field):
        iter_source(spec)


def test_unknown_type_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="mini_world.*folder.*webdataset.*hf_dataset.*parquet"):
        iter_source({"type": "zip"})


def test_missing_paths_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        iter_source({"type": "folder", "path": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="path"):
        iter_source({"type": "mini_world", "path": tmp_path / "nope"})
    (tmp_path / "shard-000.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="shard-001.tar"):
        iter_source({"type": "webdataset", "urls": str(tmp_path / "shard-{000..001}.tar")})


@pytest.mark.parametrize("shard, num_shards", [(2, 2), (-1, 2), (0, 0)])
def test_bad_shard(tmp_path, shard, num_shards):
    with pytest.raises(ValueError, match="shard"):
        iter_source({"type": "folder", "path": str(tmp_path)}, shard, num_shards)


def test_path_objects_work(image_folder):
    assert len(list(iter_source({"type": "folder", "path": Path(image_folder)}, size=8))) == 5
