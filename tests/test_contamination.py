"""Tests of the contamination check (arrag.data.contamination): benchmark copies planted in a corpus and a
fine-tuning split are found and left out; the mini world's other images are not."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from arrag.cli import main
from arrag.data import code_shards as cs
from arrag.data import contamination as ct
from arrag.data.mini_world import load_split, make_split, write_split
from arrag.evaluation.tables import write_contamination_table

THRESHOLDS = ct.Thresholds(phash_bits=14, thumbnail_rms=6.0)  # the config's defaults


def _encoded(image: np.ndarray, fmt: str, size: int | None = None, quality: int = 90) -> bytes:
    pil = Image.fromarray(image)
    if size is not None:
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    pil.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


# Copies of a reference image as a crawl would hold them: the file itself, JPEG-recompressed, rescaled (up and
# down; the source's preprocessing resizes them back to the tokenizer's size), rescaled and recompressed.
VARIANTS = {
    "exact.png": lambda im: _encoded(im, "PNG"),
    "jpeg90.jpg": lambda im: _encoded(im, "JPEG"),
    "up2x.png": lambda im: _encoded(im, "PNG", size=64),
    "down2x.png": lambda im: _encoded(im, "PNG", size=16),
    "up3x_jpeg90.jpg": lambda im: _encoded(im, "JPEG", size=96),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A mini-world reference split, a folder corpus of 300 other renders plus copies of 4 reference images in
    every variant, and a fine-tuning split of 100 renders plus 2 exact and 2 JPEG-recompressed copies."""
    root = tmp_path_factory.mktemp("planted")
    ref_images, ref_records = make_split("reference", 40, seed=1)
    write_split(root / "reference", ref_images, ref_records)
    corpus = root / "corpus"
    corpus.mkdir()
    for i, image in enumerate(make_split("corpus", 300, seed=2)[0]):
        (corpus / f"c{i:04d}.png").write_bytes(_encoded(image, "PNG"))
    copies = {}  # file -> reference id
    for k in range(4):
        for name, encode in VARIANTS.items():
            copies[f"p{k}_{name}"] = ref_records[k]["id"]
            (corpus / f"p{k}_{name}").write_bytes(encode(ref_images[k]))
    ft_images, ft_records = make_split("finetune", 100, seed=3)
    jpeg = [np.asarray(Image.open(io.BytesIO(_encoded(ref_images[k], "JPEG"))).convert("RGB")) for k in (6, 7)]
    planted_ft = np.stack([ref_images[4], ref_images[5], *jpeg])
    planted_records = [dict(ref_records[k], id=f"planted-{k}") for k in (4, 5, 6, 7)]
    write_split(
        root / "finetune",
        np.concatenate([ft_images[:50], planted_ft, ft_images[50:]]),
        ft_records[:50] + planted_records + ft_records[50:],
    )
    specs = {
        "reference": {"type": "mini_world", "path": str(root / "reference")},
        "corpus": {"type": "folder", "path": str(corpus)},
        "finetune": {"type": "mini_world", "path": str(root / "finetune")},
    }
    shards = {name: 2 if name == "corpus" else 1 for name in specs}
    paths = {}
    for name, spec in specs.items():
        for s in range(shards[name]):
            ct.hash_source_shard(spec, s, shards[name], 32, root / "hashes" / name, batch_size=64)
        paths[name] = [ct.hash_shard_paths(root / "hashes" / name, s, shards[name])[0] for s in range(shards[name])]
    result = ct.find_contamination(
        {"reference": paths["reference"]}, {n: paths[n] for n in ("corpus", "finetune")}, THRESHOLDS
    )
    exclusions = root / "exclusions.json"
    exclusions.write_text(json.dumps(result))
    return {
        "root": root,
        "specs": specs,
        "copies": copies,
        "result": result,
        "exclusions": exclusions,
        "paths": paths,
        "ref_records": ref_records,
    }


def test_planted_copies_are_found_and_nothing_else(planted):
    result = planted["result"]
    corpus = {e["source_id"]: e for e in result["sources"]["corpus"]["excluded"]}
    assert set(corpus) == set(planted["copies"])  # every copy, and none of the 300 other renders
    for name, entry in corpus.items():
        assert entry["reference_id"] == planted["copies"][name] and entry["reference"] == "reference"
        assert entry["exact"] == name.endswith("exact.png")
    finetune = {e["source_id"]: e for e in result["sources"]["finetune"]["excluded"]}
    assert set(finetune) == {"planted-4", "planted-5", "planted-6", "planted-7"}
    assert [finetune[f"planted-{k}"]["exact"] for k in (4, 5, 6, 7)] == [True, True, False, False]
    assert sorted(e["image_id"] for e in finetune.values()) == [50, 51, 52, 53]
    rows = {r["source"]: r for r in result["pairs"]}
    assert rows["corpus"]["source_images"] == 300 + 20
    assert (rows["corpus"]["exact"], rows["corpus"]["near"], rows["corpus"]["removed"]) == (4, 16, 20)
    assert (rows["finetune"]["exact"], rows["finetune"]["near"], rows["finetune"]["removed"]) == (2, 2, 4)
    assert rows["finetune"]["reference_images"] == 40


def test_the_table(planted, tmp_path):
    write_contamination_table(planted["result"], tmp_path / "contamination")
    md = (tmp_path / "contamination.md").read_text()
    assert "| reference / corpus | 40 | 320 | 4 | 16 | 20 |" in md and "Threshold" not in md
    assert "within 14 of 64 bits" in md and "within 6 grey levels" in md
    assert (tmp_path / "contamination.csv").read_text().startswith("pair,reference,source,reference_images,")
    assert r"\begin{tabular}" in (tmp_path / "contamination.tex").read_text()


def test_tighter_thresholds_miss_recompressed_copies(planted):
    """The thresholds matter: with equal pHashes and 1 grey level, only exact and near-lossless copies match."""
    paths = planted["paths"]
    strict = ct.find_contamination(
        {"reference": paths["reference"]}, {"corpus": paths["corpus"]}, ct.Thresholds(0, 1.0)
    )
    found = {e["source_id"] for e in strict["sources"]["corpus"]["excluded"]}
    assert {f"p{k}_exact.png" for k in range(4)} <= found < set(planted["copies"])


def test_near_duplicates_equal_a_brute_force_search(monkeypatch):
    """The chunked candidate search equals a loop over every pair (chunks smaller than the source)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 30, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (200, 3)).astype(np.uint64)
    src_phash = base[rng.integers(0, 30, 200)] ^ flips[:, 0] ^ (flips[:, 1] * (rng.random(200) < 0.5))
    thumbs = rng.integers(0, 256, (30, 192), dtype=np.uint8)
    src_thumbs = np.clip(thumbs[rng.integers(0, 30, 200)] + rng.integers(-9, 10, (200, 192)), 0, 255).astype(np.uint8)

    def hashes(phash, th):
        return ct.HashSet(np.arange(len(phash)), np.zeros((len(phash), 16), np.uint8), phash, th, {"source": {}})

    monkeypatch.setattr(ct, "_CHUNK_BYTES", 7 * 30)  # 7 source rows per chunk
    t = ct.Thresholds(3, 5.5)
    rows, bits, rms = ct.near_duplicates(hashes(src_phash, src_thumbs), hashes(base, thumbs), t)
    for i in range(200):
        d = [bin(int(src_phash[i] ^ b)).count("1") for b in base]
        r = [np.sqrt(((src_thumbs[i].astype(float) - th) ** 2).mean()) for th in thumbs]
        ok = [j for j in range(30) if d[j] <= 3 and r[j] <= 5.5]
        if not ok:
            assert rows[i] == -1
            continue
        best = min(ok, key=lambda j: r[j])
        assert rows[i] == best and bits[i] == d[best] and rms[i] == pytest.approx(r[best], abs=1e-4)
    assert (rows >= 0).any() and (rows < 0).any()


def test_perceptual_hash_ignores_brightness_and_sees_structure():
    images, _ = make_split("x", 8, seed=5)
    brighter = np.clip(images.astype(int) + 20, 0, 255).astype(np.uint8)
    same = ct.popcount(ct.perceptual_hashes(images) ^ ct.perceptual_hashes(brighter))
    rolled = ct.popcount(ct.perceptual_hashes(images) ^ ct.perceptual_hashes(np.roll(images, 4, axis=1)))
    assert same.max() <= 4 and rolled.mean() > 8
    assert ct.pixel_digests(images[:1]).tobytes() == ct.pixel_digests(images[:1].copy()).tobytes()
    assert ct.pixel_digests(brighter[:1]).tobytes() != ct.pixel_digests(images[:1]).tobytes()


def test_exclusions_leave_out_code_shard_rows_of_every_source(planted, tmp_path):
    """Code shards of the corpus (2 shards) and of the fine-tuning split: the excluded images go, ids stay."""
    specs = planted["specs"]
    paths = []
    for name, n in (("finetune", 1), ("corpus", 2)):
        for s in range(n):
            hashed = ct.load_hash_shard(planted["paths"][name][s])
            codes = np.zeros((len(hashed.image_ids), 2, 2), np.uint16)
            meta = {
                "codebook_size": 4,
                "codebook_sha256": "x",
                "tokenizer_id": "",
                "image_size": 32,
                "source": specs[name],
                "source_ids": hashed.meta["source_ids"],
            }
            cs.write_code_shard(tmp_path / name, s, n, codes, hashed.image_ids, meta)
            paths.append(cs.shard_paths(tmp_path / name, s, n)[0])
    _, image_ids, metas = cs.load_code_shards(paths)
    keep = ct.kept_rows(planted["exclusions"], image_ids, metas)
    names = [i for m in metas for i in m["source_ids"]]
    dropped = {names[r] for r in np.flatnonzero(~keep)}
    assert dropped == set(planted["copies"]) | {f"planted-{k}" for k in (4, 5, 6, 7)}
    assert keep.sum() == 104 + 320 - 24
    assert (ct.kept_rows(None, image_ids, metas)).all()

    metas[0] = dict(metas[0], image_size=16)  # tokenised at another size than hashed: refused
    with pytest.raises(ValueError, match="tokenised at 16 px but hashed at 32 px"):
        ct.kept_rows(planted["exclusions"], image_ids, metas)
    metas[0] = dict(metas[0], image_size=32, source_ids=["other"] * metas[0]["count"])
    with pytest.raises(ValueError, match="the source changed"):
        ct.kept_rows(planted["exclusions"], image_ids, metas)
    metas[0] = dict(metas[0], source={"type": "folder", "path": str(tmp_path)})
    with pytest.raises(ValueError, match="never checked the source"):
        ct.kept_rows(planted["exclusions"], image_ids, metas)


def test_build_db_and_the_fine_tuning_pairs_apply_the_exclusions(planted, tiny_janus, tmp_path, monkeypatch):
    """`arrag build-db --exclude` and the pair readers of faid-trainset / train-racm3 (--world --exclude)."""
    import argparse

    from arrag.data.pairs import fine_tuning_pairs
    from arrag.models import training
    from arrag.models.janus import save_janus
    from arrag.models.vq import VQTokenizer, janus_image_size
    from arrag.retrieval.database import PatchDatabase
    from arrag.retrieval.image_index import ImageLevelIndex

    model, processor, _ = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    vq = VQTokenizer.from_janus(model)  # 16 px: hash the corpus at that size for this test
    root = planted["root"]
    ct.hash_source_shard(planted["specs"]["reference"], 0, 1, vq.image_size, tmp_path / "h" / "reference")
    ct.hash_source_shard(planted["specs"]["corpus"], 0, 1, vq.image_size, tmp_path / "h" / "corpus")
    main(
        [
            "hash-images",
            "--model",
            str(tmp_path / "model"),
            "--source",
            json.dumps(planted["specs"]["finetune"]),
            "--out",
            str(tmp_path / "h" / "finetune"),
        ]
    )
    assert json.loads((tmp_path / "h" / "finetune" / "hashes-00000-of-00001.json").read_text())["image_size"] == 16
    model.model.vqmodel.save_pretrained(tmp_path / "vq")  # the mini DAG hashes at its VQ-VAE's size
    assert janus_image_size(str(tmp_path / "vq")) == janus_image_size(str(tmp_path / "model")) == 16
    shard = "hashes-00000-of-00001.npz"
    exclusions = tmp_path / "exclusions.json"
    rc = main(
        [
            "contamination",
            "--reference",
            "reference",
            str(tmp_path / "h" / "reference" / shard),
            "--source",
            "corpus",
            str(tmp_path / "h" / "corpus" / shard),
            "--source",
            "finetune",
            str(tmp_path / "h" / "finetune" / shard),
            "--out",
            str(exclusions),
            "--table",
            str(tmp_path / "contamination"),
        ]
    )
    assert rc == 0 and (tmp_path / "contamination.md").is_file()
    excluded = {
        e["source_id"]: e["image_id"] for e in json.loads(exclusions.read_text())["sources"]["corpus"]["excluded"]
    }
    assert set(planted["copies"]) <= set(excluded)

    cs.tokenise_shard(planted["specs"]["corpus"], 0, 1, vq, tmp_path / "codes")
    codes = str(cs.shard_paths(tmp_path / "codes", 0, 1)[0])
    for flags, name in (([], "all"), (["--exclude", str(exclusions)], "clean")):
        assert (
            main(
                [
                    "build-db",
                    "--model",
                    str(tmp_path / "model"),
                    "--codes",
                    codes,
                    *flags,
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    full, clean = (PatchDatabase.load(tmp_path / name, vq.codebook) for name in ("all", "clean"))
    grid = vq.grid**2
    assert len(full) - len(clean) == grid * len(excluded)
    kept_ids = set(clean.image_ids.tolist())
    assert not kept_ids & set(excluded.values()) and len(kept_ids) == 320 - len(excluded)
    assert set(full.image_ids.tolist()) == kept_ids | set(excluded.values())  # the others keep their ids

    captions = tmp_path / "captions.jsonl"  # RA-CM3's mini retriever over the same corpus
    captions.write_text("".join(json.dumps({"caption": f"image {i}"}) + "\n" for i in range(320)))
    index_args = [
        "build-image-index",
        "--model",
        str(tmp_path / "model"),
        "--codes",
        codes,
        "--captions",
        str(captions),
    ]
    assert main([*index_args, "--exclude", str(exclusions), "--out", str(tmp_path / "index")]) == 0
    index_ids = set(ImageLevelIndex.load(tmp_path / "index").image_ids.tolist())
    assert index_ids == kept_ids

    # the world split is 32 px and this tokenizer 16 px: record what would be encoded instead of encoding it
    encoded = []
    monkeypatch.setattr(
        training, "encode_images", lambda vq, images: encoded.append(images) or torch.zeros(len(images))
    )
    args = argparse.Namespace(codes=None, world=str(root), split="finetune", exclude=str(exclusions))
    codes_ft, captions, _, _, positions = fine_tuning_pairs(args, lambda: vq)
    dropped = {e["image_id"] for e in json.loads(exclusions.read_text())["sources"]["finetune"]["excluded"]}
    assert {50, 51, 52, 53} <= dropped
    assert list(positions) == [i for i in range(104) if i not in dropped] and len(codes_ft) == len(captions)
    images, records = load_split(root / "finetune")
    assert captions == [records[i]["caption"] for i in positions]
    np.testing.assert_array_equal(encoded[0], images[positions])
    args.exclude = None
    assert len(fine_tuning_pairs(args, lambda: vq)[0]) == 104


def test_refusals(planted, tmp_path):
    with pytest.raises(ValueError, match="phash_bits"):
        ct.Thresholds(64, 6.0)
    with pytest.raises(ValueError, match="thumbnail_rms"):
        ct.Thresholds(10, float("nan"))
    paths = planted["paths"]
    with pytest.raises(ValueError, match="not the shards 0..1"):
        ct.find_contamination({"reference": paths["reference"]}, {"corpus": paths["corpus"][:1]}, THRESHOLDS)
    with pytest.raises(FileNotFoundError, match="run the contamination check"):
        ct.Exclusions.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="arrag-exclusions/1"):
        ct.Exclusions.load(tmp_path / "bad.json")
    rc = main(
        [
            "contamination",
            "--reference",
            "r",
            str(paths["reference"][0]),
            "--source",
            "only-a-name",
            "--out",
            str(tmp_path / "x.json"),
            "--table",
            str(tmp_path / "t"),
        ]
    )
    assert rc == 2 and not (tmp_path / "x.json").exists()


def test_pairs_from_code_shards_lose_the_excluded_images_and_their_captions(planted, tmp_path):
    """faid-trainset / train-racm3 with --codes: each kept pair keeps its own caption."""
    import argparse

    from arrag.data.pairs import fine_tuning_pairs

    hashed = ct.load_hash_shard(planted["paths"]["finetune"][0])
    n = len(hashed.image_ids)
    codes = (np.arange(n, dtype=np.uint16)[:, None, None] % 4) * np.ones((1, 2, 2), np.uint16)
    meta = {
        "codebook_size": 4,
        "codebook_sha256": "x",
        "tokenizer_id": "",
        "image_size": 32,
        "source": planted["specs"]["finetune"],
        "source_ids": hashed.meta["source_ids"],
        "captions": [f"caption of {i}" for i in hashed.meta["source_ids"]],
    }
    cs.write_code_shard(tmp_path, 0, 1, codes, hashed.image_ids, meta)
    args = argparse.Namespace(codes=[str(cs.shard_paths(tmp_path, 0, 1)[0])], exclude=str(planted["exclusions"]))
    pair_codes, captions, _, _, _ = fine_tuning_pairs(args, None)
    kept = [i for i in hashed.meta["source_ids"] if not i.startswith("planted-")]
    assert captions == [f"caption of {i}" for i in kept] and len(pair_codes) == n - 4 == 100
    rows = [hashed.meta["source_ids"].index(i) for i in kept]
    assert (pair_codes[:, 0, 0].numpy() == np.asarray(rows) % 4).all()


def test_popcount_with_and_without_numpy_2(monkeypatch):
    values = np.random.default_rng(1).integers(0, 2**63, (5, 7), dtype=np.uint64) | np.uint64(2**63)
    expected = np.array([[bin(int(v)).count("1") for v in row] for row in values])
    np.testing.assert_array_equal(ct.popcount(values), expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # numpy 1.26: the lookup table
    np.testing.assert_array_equal(ct.popcount(values), expected)
