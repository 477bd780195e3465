"""Tests of code-shard tokenisation and the shard file format (arrag.data.code_shards)."""

import io
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from arrag.data import code_shards as cs
from arrag.data.sources import iter_source
from arrag.models.vq import VQTokenizer, codebook_fingerprint


@pytest.fixture(scope="module")
def vq(tiny_janus):
    tokenizer = VQTokenizer.from_janus(tiny_janus[0])
    assert tokenizer.image_size == 16 and tokenizer.grid == 4
    return tokenizer


@pytest.fixture
def folder(tmp_path):
    """7 images of assorted sizes and one corrupt file (sorted position 3)."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        pixels = rng.integers(0, 256, (12 + 3 * i, 20, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        (root / f"img{i}.png").write_bytes(buf.getvalue())
    (root / "img2x.png").write_bytes(b"not a png at all")  # sorts between img2 and img3
    return {"type": "folder", "path": str(root)}


def _expected(spec, vq, shard=0, num_shards=1):
    """(codes [N, H, W], image_ids [N]) by encoding the source's readable images directly."""
    good = [r for r in iter_source(spec, shard, num_shards, size=vq.image_size) if r.image is not None]
    return vq.encode(np.stack([r.image for r in good])).cpu(), torch.tensor([r.image_id for r in good])


def test_tokenise_shard_matches_direct_encoding(folder, vq, tmp_path, caplog):
    out = tmp_path / "codes"
    with caplog.at_level(logging.WARNING, logger="arrag.data.code_shards"):
        meta = cs.tokenise_shard(folder, 0, 1, vq, out, batch_size=3, tokenizer_id="tiny")
    npz, js = cs.shard_paths(out, 0, 1)
    assert npz.name == "codes-00000-of-00001.npz" and npz.is_file() and js.is_file()

    codes, ids, disk = cs.load_code_shard(npz)
    want_codes, want_ids = _expected(folder, vq)
    assert codes.dtype == torch.long and codes.shape == (7, 4, 4)
    torch.testing.assert_close(codes, want_codes)
    torch.testing.assert_close(ids, want_ids)
    assert ids.tolist() == [0, 1, 2, 4, 5, 6, 7]

    assert "source_ids" not in meta and disk["source_ids"][2:4] == ["img2.png", "img3.png"]
    assert meta["count"] == disk["count"] == 7 and meta["grid"] == [4, 4] and meta["image_size"] == 16
    assert meta["codebook_size"] == vq.codebook_size and meta["tokenizer_id"] == "tiny"
    assert meta["codebook_sha256"] == codebook_fingerprint(vq.codebook)
    assert meta["format"] == "arrag-codes/1" and meta["source"] == folder and meta["seconds"] >= 0
    assert [(s["image_id"], s["source_id"]) for s in meta["skipped"]] == [(3, "img2x.png")]
    assert "UnidentifiedImageError" in meta["skipped"][0]["error"]
    assert "img2x.png" in caplog.text and "1 skipped" in caplog.text

    with np.load(npz, allow_pickle=False) as data:  # the stored dtypes are part of the format
        assert data["codes"].dtype == np.uint16 and data["image_ids"].dtype == np.int64


def test_captions_follow_their_images(folder, vq, tmp_path):
    root = tmp_path / "imgs"
    for i in range(7):
        if i != 5:  # img5 has no sidecar: that pair is skipped, not given an empty caption
            (root / f"img{i}.txt").write_text(f"caption {i}")
    spec = {**folder, "caption_extension": ".txt"}
    paths = []
    for shard in range(2):
        cs.tokenise_shard(spec, shard, 2, vq, tmp_path / "codes", batch_size=2)
        paths.append(cs.shard_paths(tmp_path / "codes", shard, 2)[0])
    codes, ids, metas = cs.load_code_shards(paths)
    captions = cs.shard_captions(paths, metas)
    files = {r.image_id: r.source_id for r in iter_source(folder, size=vq.image_size)}
    assert len(captions) == len(ids) == 6  # img2x (corrupt) and img5 (no caption) are skipped
    assert captions == [f"caption {files[int(i)][3]}" for i in ids]  # "img4.png" -> "caption 4"

    plain = tmp_path / "plain"
    cs.tokenise_shard(folder, 0, 1, vq, plain)
    path = cs.shard_paths(plain, 0, 1)[0]
    with pytest.raises(ValueError, match="caption_key, caption_column or caption_extension"):
        cs.shard_captions([path], cs.load_code_shards([path])[2])


def test_sharded_tokenisation_reassembles(folder, vq, tmp_path):
    out = tmp_path / "codes"
    for shard in range(3):
        cs.tokenise_shard(folder, shard, 3, vq, out, batch_size=2)
    paths = [cs.shard_paths(out, s, 3)[0] for s in range(3)]
    codes, ids, metas = cs.load_code_shards(paths)
    assert [m["shard"] for m in metas] == [0, 1, 2] and sum(m["count"] for m in metas) == 7
    order = torch.argsort(ids)
    want_codes, want_ids = _expected(folder, vq)
    torch.testing.assert_close(ids[order], want_ids)
    torch.testing.assert_close(codes[order], want_codes)


def test_several_sources_get_disjoint_ids_that_lead_back_to_their_images(folder, vq, tmp_path):
    """Two corpora (two folders) in one database: each source's ids are shifted past the previous source's, the
    database keeps the table, and a hit's image id leads back to the image in its own source."""
    from arrag.retrieval.database import PatchDatabase

    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(other / f"x{i}.png")
    second = {"type": "folder", "path": str(other)}
    for spec, out in ((folder, tmp_path / "a"), (second, tmp_path / "b")):
        for shard in range(2):
            cs.tokenise_shard(spec, shard, 2, vq, out, batch_size=2)
    paths = [cs.shard_paths(tmp_path / d, s, 2)[0] for d in ("a", "b") for s in range(2)]
    codes, ids, metas = cs.load_code_shards(paths)
    # the first folder enumerates 8 items (its corrupt one is skipped but keeps its position): ids 0..7
    table = cs.source_table(metas)
    assert [t["offset"] for t in table] == [0, 8] and table[1]["source"]["path"] == str(other)
    assert sorted(ids.tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    db = PatchDatabase.build(codes, vq.codebook, index="flat", image_ids=ids, sources=table)
    db.save(tmp_path / "db")
    loaded = PatchDatabase.load(tmp_path / "db", codebook=vq.codebook)
    assert loaded.sources == table
    spec, local = cs.image_source(loaded.sources, 9)
    assert spec["path"] == str(other) and local == 1
    want = next(r for r in iter_source(second, size=vq.image_size) if r.image_id == 1)
    row = int((ids == 9).nonzero()[0, 0])  # the database's image 9 has the codes of the second folder's image 1
    torch.testing.assert_close(codes[row], vq.encode(want.image[None]).cpu()[0])
    assert cs.image_source(table, 3) == (folder, 3)
    # one source alone keeps its own ids (offset 0)
    _, alone, _ = cs.load_code_shards(paths[:2])
    assert sorted(alone.tolist()) == [0, 1, 2, 4, 5, 6, 7]


def test_json_is_written_last(folder, vq, tmp_path, monkeypatch):
    finals = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (finals.append(os.path.basename(dst)), real_replace(src, dst)))
    cs.tokenise_shard(folder, 0, 1, vq, tmp_path / "codes")
    assert finals == ["codes-00000-of-00001.npz", "codes-00000-of-00001.json"]


def test_crash_leaves_no_shard(folder, vq, tmp_path, monkeypatch):
    out = tmp_path / "codes"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        cs.tokenise_shard(folder, 0, 1, vq, out)
    assert list(out.iterdir()) == []  # nothing at the final names, no temporary files either

    # a crash while rewriting a complete shard leaves it marked incomplete, not stale-but-complete
    monkeypatch.undo()
    cs.tokenise_shard(folder, 0, 1, vq, out)
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(RuntimeError):
        cs.tokenise_shard(folder, 0, 1, vq, out)
    with pytest.raises(FileNotFoundError, match="incomplete shard: rerun tokenisation"):
        cs.load_code_shard(cs.shard_paths(out, 0, 1)[0])


def test_empty_shard(vq, tmp_path, caplog):
    spec = {"type": "folder", "path": str(tmp_path), "allow_empty": True}  # no images at all, and that is meant
    with caplog.at_level(logging.WARNING, logger="arrag.data.code_shards"):
        meta = cs.tokenise_shard(spec, 1, 4, vq, tmp_path / "codes")
    assert meta["count"] == 0 and meta["skipped"] == [] and "no readable images" in caplog.text
    codes, ids, disk = cs.load_code_shard(cs.shard_paths(tmp_path / "codes", 1, 4)[0])
    assert codes.shape == (0, 4, 4) and ids.shape == (0,) and disk["source_ids"] == []


def _rewrite_json(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.fixture
def two_shards(folder, vq, tmp_path):
    out = tmp_path / "codes"
    for shard in range(2):
        cs.tokenise_shard(folder, shard, 2, vq, out)
    return [cs.shard_paths(out, s, 2) for s in range(2)]


def test_load_code_shards_refuses_a_different_codebook(two_shards):
    (npz0, _), (npz1, js1) = two_shards
    _rewrite_json(js1, codebook_sha256="0" * 64)
    with pytest.raises(ValueError, match="codebook_sha256") as err:
        cs.load_code_shards([npz0, npz1])
    assert npz0.name in str(err.value) and npz1.name in str(err.value)


@pytest.mark.parametrize("field, value", [("grid", [8, 8]), ("tokenizer_id", "other")])
def test_load_code_shards_refuses_other_mismatches(two_shards, field, value):
    (npz0, _), (npz1, js1) = two_shards
    _rewrite_json(js1, **{field: value})
    with pytest.raises(ValueError, match=field):
        cs.load_code_shards([npz0, npz1])


def test_load_code_shard_checks(two_shards):
    (npz0, js0), _ = two_shards
    codes, ids, meta = cs.load_code_shard(js0)  # the .json path works too
    assert len(codes) == len(ids) == meta["count"]
    _rewrite_json(js0, count=meta["count"] + 1)
    with pytest.raises(ValueError, match="count"):
        cs.load_code_shard(npz0)
    _rewrite_json(js0, format="arrag-codes/0")
    with pytest.raises(ValueError, match="format"):
        cs.load_code_shard(npz0)
    js0.unlink()
    with pytest.raises(FileNotFoundError, match="incomplete shard"):
        cs.load_code_shard(npz0)


def test_write_code_shard_validates(tmp_path):
    meta = {"codebook_size": 64}
    with pytest.raises(ValueError, match="codebook"):
        cs.write_code_shard(tmp_path, 0, 1, np.full((2, 4, 4), 64), np.arange(2), meta)
    with pytest.raises(ValueError, match="image_ids"):
        cs.write_code_shard(tmp_path, 0, 1, np.zeros((2, 4, 4)), np.arange(3), meta)
    big = {"codebook_size": 70000}
    cs.write_code_shard(tmp_path, 0, 1, np.full((1, 2, 2), 69999), np.arange(1), big)
    codes, _, _ = cs.load_code_shard(cs.shard_paths(tmp_path, 0, 1)[0])
    assert codes.flatten().tolist() == [69999] * 4  # int32 storage beyond uint16's range
    assert cs.code_dtype(65536) == np.uint16 and cs.code_dtype(65537) == np.int32
