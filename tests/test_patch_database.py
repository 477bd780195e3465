"""PatchDatabase: every backend against numpy brute force, provenance, add, persistence, bad inputs."""

import json
import logging
import math

import faiss
import numpy as np
import pytest
import torch

from arrag.manifest import write_manifest
from arrag.retrieval import PatchDatabase, neighbourhood_keys, query_from_grid
from arrag.retrieval.backends import compact_centroids, compact_nbits, pack_codes
from arrag.retrieval.keys import extended_codebook, neighbourhood_ids

K, D, GRID, IMAGES = 64, 8, 8, 200
EXACT = ["flat", "compact", "torch_compact"]
APPROXIMATE = {"ivf_flat": 0.99, "ivf_pq": 0.7, "opq_ivf_pq": 0.7, "ivf_compact": 0.99}  # recall@10 at nprobe=nlist
SMALL_IVF = {"nlist": 32}
FAST_PQ = {"train_size": 4000}  # PQ k-means (256 centroids per sub-quantizer) dominates the test time


def make_codes(num: int, seed: int) -> torch.Tensor:
    """Blocky token grids (2x2 cells of a random 4x4 grid, 20% noise): repeated keys, as in real images."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, K, (num, GRID // 2, GRID // 2), generator=gen)
    codes = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    noise = torch.rand(codes.shape, generator=gen) < 0.2
    return torch.where(noise, torch.randint(0, K, codes.shape, generator=gen), codes)


@pytest.fixture(scope="module")
def corpus():
    gen = torch.Generator().manual_seed(0)
    codebook = torch.nn.functional.normalize(torch.randn(K, D, generator=gen), dim=1)
    codes = make_codes(IMAGES, 1)
    image_ids = 1000 + 3 * torch.arange(IMAGES)
    held_out = make_codes(8, 2)  # queries: keys of unseen images at every 10th position
    positions = [(r, c) for r in range(GRID) for c in range(GRID)][::10]
    queries = torch.cat([query_from_grid(held_out, r, c, codebook) for r, c in positions])  # [Q, 4*D]
    keys = neighbourhood_keys(codes, codebook).reshape(-1, 4 * D).double().numpy()  # [E, 4*D]
    return codebook, codes, image_ids, queries, keys


@pytest.fixture(scope="module")
def databases(corpus):
    """One database per backend, built once."""
    codebook, codes, image_ids, _, _ = corpus
    params = {name: SMALL_IVF for name in APPROXIMATE} | {
        name: SMALL_IVF | FAST_PQ for name in ("ivf_pq", "opq_ivf_pq")
    }
    return {
        name: PatchDatabase.build(codes, codebook, index=name, image_ids=image_ids, **params.get(name, {}))
        for name in EXACT + list(APPROXIMATE)
    }


def brute_force(keys: np.ndarray, queries: torch.Tensor) -> np.ndarray:
    """Squared L2 distances [Q, E] in float64."""
    q = queries.double().numpy()
    return (q * q).sum(1)[:, None] + (keys * keys).sum(1)[None] - 2 * q @ keys.T


def assert_exact(dists: torch.Tensor, labels: np.ndarray, truth: np.ndarray, k: int) -> None:
    """Distances equal the brute-force k smallest; each hit truly lies at its distance (ties may permute)."""
    expected = np.sort(truth, axis=1)[:, :k]
    np.testing.assert_allclose(dists.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(truth, labels, 1), expected, atol=1e-4)
    assert all(len(set(row)) == k for row in labels)  # no entry returned twice


def labels_of(db: PatchDatabase, sources: torch.Tensor) -> np.ndarray:
    """Entry labels back from provenance (image id, row, column)."""
    image = (sources[..., 0] - 1000) // 3
    return (image * GRID * GRID + sources[..., 1] * GRID + sources[..., 2]).numpy()


def recall(labels: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Tie-aware recall@k: hits whose true distance is within the true k-th distance."""
    kth = np.sort(truth, axis=1)[:, k - 1 : k]
    found = labels >= 0
    hit = np.take_along_axis(truth, np.where(found, labels, 0), 1) <= kth + 1e-5
    return float((hit & found).mean())


@pytest.mark.parametrize("name", EXACT)
def test_exact_backends_equal_brute_force(corpus, databases, name):
    _, _, _, queries, keys = corpus
    dists, _, sources = databases[name].search(queries, 10)
    assert dists.dtype == torch.float32 and sources.dtype == torch.long
    assert_exact(dists, labels_of(databases[name], sources), brute_force(keys, queries), 10)


def test_torch_compact_running_top_k_over_chunks(corpus, databases):
    _, _, _, queries, keys = corpus
    db = databases["torch_compact"]
    whole = db.search(queries, 10)
    db.set_search_params(chunk=777)  # 12800 entries in 17 chunks, the last one short
    try:
        dists, _, sources = db.search(queries, 10)
    finally:
        db.set_search_params(chunk=1 << 18)
    assert torch.equal(dists, whole[0])
    assert_exact(dists, labels_of(db, sources), brute_force(keys, queries), 10)


def test_torch_compact_sharded_over_devices_is_exact(corpus, tmp_path):
    """Entries spread over 3 shards ("cpu:0..2": logical devices on the CPU) give the one-device answer; the
    devices are a runtime choice, not saved with the database."""
    codebook, codes, image_ids, queries, keys = corpus
    one = PatchDatabase.build(codes, codebook, index="torch_compact", image_ids=image_ids)
    sharded = PatchDatabase.build(codes[:70], codebook, index="torch_compact", image_ids=image_ids[:70], chunk=999)
    sharded.set_search_params(devices="cpu:0,cpu:1,cpu:2")
    for start in range(70, IMAGES, 30):  # later shards are placed on the least loaded device
        sharded.add(codes[start : start + 30], image_ids[start : start + 30])
    backend = sharded.backend
    load = {d: sum(len(p) for p, on in zip(backend.pieces, backend.placement) if on == d) for d in backend.devices}
    assert len(load) == 3 and max(load.values()) - min(load.values()) <= max(len(p) for p in backend.pieces)
    dists, _, sources = sharded.search(queries, 10)
    torch.testing.assert_close(dists, one.search(queries, 10)[0])
    assert_exact(dists, labels_of(sharded, sources), brute_force(keys, queries), 10)
    sharded.save(tmp_path / "db")
    assert "devices" not in json.loads((tmp_path / "db" / "metadata.json").read_text())["index_params"]


def test_ivf_compact_with_all_lists_is_exact(corpus, databases):
    _, _, _, queries, keys = corpus
    db = databases["ivf_compact"]
    db.set_search_params(nprobe=32)
    dists, _, sources = db.search(queries, 10)
    assert_exact(dists, labels_of(db, sources), brute_force(keys, queries), 10)


@pytest.mark.parametrize("name", list(APPROXIMATE))
def test_nprobe_reaches_the_index(corpus, databases, name):
    _, _, _, queries, keys = corpus
    truth = brute_force(keys, queries)
    db = databases[name]
    scores = []
    for nprobe in (1, 32):
        db.set_search_params(nprobe=nprobe)
        assert db.metadata["index_params"]["nprobe"] == nprobe
        _, _, sources = db.search(queries, 10)
        labels = np.where(sources[..., 0].numpy() >= 0, labels_of(db, sources), -1)
        scores.append(recall(labels, truth, 10))
    assert scores[0] < scores[1], scores  # more lists probed, more found: nprobe reached the inner index
    assert scores[1] >= APPROXIMATE[name], scores


def test_values_and_sources(corpus, databases):
    codebook, codes, _, queries, _ = corpus
    keys = neighbourhood_keys(codes, codebook)  # [N, H, W, 4*D]
    for name in ("compact", "torch_compact", "ivf_pq"):
        dists, values, sources = databases[name].search(queries, 5)
        assert values.shape == (len(queries), 5) and sources.shape == (len(queries), 5, 3)
        image = (sources[..., 0] - 1000) // 3
        assert ((sources[..., 0] - 1000) % 3 == 0).all()
        assert torch.equal(codes[image, sources[..., 1], sources[..., 2]], values)
        if name != "ivf_pq":  # approximate distances are not the true ones
            hit_keys = keys[image, sources[..., 1], sources[..., 2]]  # [Q, 5, 4*D]
            true = (hit_keys - queries[:, None]).square().sum(-1)
            torch.testing.assert_close(dists, true, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["ivf_compact", "compact", "torch_compact"])
def test_equal_queries_are_searched_once_with_each_ones_own_result(corpus, databases, name, monkeypatch):
    """A batch with repeated queries (a plain background's neighbourhoods): every row gets what a search of that
    query alone returns, and a FAISS index sees each distinct query once (torch_compact searches them all: on a
    GPU, finding the distinct ones would cost a device sync every step)."""
    _, _, _, queries, _ = corpus
    db = databases[name]
    order = torch.tensor([3, 0, 3, 7, 0, 0, 3, 12])  # 8 rows, some repeated
    distinct = len(torch.unique(queries[order], dim=0))
    assert distinct < len(order)
    alone = [db.search(queries[i : i + 1], 10) for i in order.tolist()]
    seen = []
    if name != "torch_compact":
        index = db.backend._searcher()
        search = index.search
        monkeypatch.setattr(index, "search", lambda x, k: seen.append(len(x)) or search(x, k))
    dists, values, sources = db.search(queries[order], 10)
    assert seen == ([] if name == "torch_compact" else [distinct])
    for row, (d, v, s) in enumerate(alone):
        assert torch.equal(dists[row], d[0]) and torch.equal(values[row], v[0]) and torch.equal(sources[row], s[0])


def test_hop2_full_keys_compact(corpus):
    """24 neighbours x 7 bits = 168-bit codes: packing across many bytes stays exact."""
    codebook, codes, _, _, _ = corpus
    db = PatchDatabase.build(codes[:40], codebook, hops=2, causal=False)
    keys = neighbourhood_keys(codes[:40], codebook, 2, False).reshape(-1, 24 * D).double().numpy()
    queries = torch.from_numpy(keys[::97] + 0.05).float()
    dists, _, sources = db.search(queries, 5)
    labels = (sources[..., 0] * 64 + sources[..., 1] * 8 + sources[..., 2]).numpy()
    assert_exact(dists, labels, brute_force(keys, queries), 5)
    assert db.bytes_per_entry()["keys"] == 21


@pytest.mark.parametrize("num_codes, dim", [(64, 8), (1024, 2), (16384, 1)])
def test_packed_codes_follow_the_faiss_layout(num_codes, dim):
    gen = torch.Generator().manual_seed(num_codes)
    codebook = torch.randn(num_codes, dim, generator=gen)  # distinct rows, so compute_codes has no ties
    ext = extended_codebook(codebook).numpy()
    nbits = compact_nbits(num_codes)
    assert nbits == math.ceil(math.log2(num_codes + 1))
    pq = faiss.ProductQuantizer(4 * dim, 4, nbits)
    faiss.copy_array_to_vector(compact_centroids(ext, 4, nbits).ravel(), pq.centroids)
    ids = torch.randint(0, num_codes + 1, (6, 4), generator=gen).numpy()
    ids[0] = num_codes  # all zero rows
    ids[1] = num_codes - 1
    keys = np.ascontiguousarray(ext[ids].reshape(6, -1))
    assert np.array_equal(pack_codes(ids, nbits), pq.compute_codes(keys))


def test_add_equals_build_on_the_concatenation(corpus):
    codebook, codes, image_ids, queries, _ = corpus
    truth = brute_force(corpus[4], queries)
    for name in ("compact", "torch_compact", "flat"):
        whole = PatchDatabase.build(codes, codebook, index=name, image_ids=image_ids)
        parts = PatchDatabase.build(codes[:120], codebook, index=name, image_ids=image_ids[:120])
        assert parts.add(codes[120:], image_ids[120:]) == 80 * 64
        assert len(parts) == len(whole) == IMAGES * 64 and parts.metadata == whole.metadata
        assert torch.equal(parts.codes, whole.codes) and torch.equal(parts.image_ids, whole.image_ids)
        (d1, _, _), (d2, _, s2) = whole.search(queries, 10), parts.search(queries, 10)
        assert torch.equal(d1, d2)
        assert_exact(d2, labels_of(parts, s2), truth, 10)  # equal up to the order of tied hits
    # a trained index accepts later shards too; with every list probed it stays exact
    parts = PatchDatabase.build(codes[:120], codebook, index="ivf_compact", image_ids=image_ids[:120], **SMALL_IVF)
    parts.add(codes[120:], image_ids[120:])
    parts.set_search_params(nprobe=32)
    dists, _, sources = parts.search(queries, 10)
    assert_exact(dists, labels_of(parts, sources), brute_force(corpus[4], queries), 10)


def test_add_zero_images_is_a_logged_skip(corpus, caplog):
    codebook, codes, _, _, _ = corpus
    db = PatchDatabase.build(codes[:3], codebook)
    with caplog.at_level(logging.WARNING):
        assert db.add(codes[:0]) == 0
    assert "zero images" in caplog.text and len(db) == 3 * 64
    assert db.add(codes[3:5]) == 128 and db.image_ids.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", EXACT + list(APPROXIMATE))
def test_save_load_round_trip(corpus, databases, name, tmp_path):
    codebook, _, _, queries, _ = corpus
    db = databases[name]
    if "nprobe" in db.metadata["index_params"]:
        db.set_search_params(nprobe=4)
    db.save(tmp_path / "db")
    expected = {"MANIFEST.json", "metadata.json", "codes.npy", "image_ids.npy"}
    expected |= {"index.faiss"} if db.backend.saves_index else set()
    assert {p.name for p in (tmp_path / "db").iterdir()} == expected
    loaded = PatchDatabase.load(tmp_path / "db", codebook=codebook)
    assert loaded.metadata == db.metadata
    for a, b in zip(db.search(queries, 10), loaded.search(queries, 10)):
        assert torch.equal(a, b)


def test_load_refuses_another_codebook_or_format(corpus, databases, tmp_path):
    codebook = corpus[0]
    databases["compact"].save(tmp_path / "db")
    with pytest.raises(ValueError, match="codebook_sha256"):
        PatchDatabase.load(tmp_path / "db", codebook=codebook.flip(0))
    meta = json.loads((tmp_path / "db" / "metadata.json").read_text())
    meta["format"] = "arrag-patchdb/0"
    (tmp_path / "db" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="metadata.json: .* bytes, the manifest says"):  # an edit is caught first
        PatchDatabase.load(tmp_path / "db", codebook=codebook)
    write_manifest(tmp_path / "db", "patch-database")  # an old-format database with a sound manifest
    with pytest.raises(ValueError, match=r"'format'.*arrag-patchdb/1.*arrag-patchdb/0"):
        PatchDatabase.load(tmp_path / "db", codebook=codebook)


def test_failing_save_leaves_nothing(corpus, tmp_path, monkeypatch):
    codebook, codes, _, _, _ = corpus
    db = PatchDatabase.build(codes[:4], codebook)

    def broken(directory):
        raise OSError("disk full")

    monkeypatch.setattr(db.backend, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        db.save(tmp_path / "db")
    assert list(tmp_path.iterdir()) == []


def test_bytes_per_entry(databases):
    nbits = math.ceil(math.log2(K + 1))
    compact = math.ceil(4 * nbits / 8)
    assert databases["compact"].bytes_per_entry() == {"keys": compact, "list_ids": 0, "values": 2, "provenance": 8 / 64}
    assert databases["ivf_compact"].bytes_per_entry()["keys"] == compact
    assert databases["ivf_compact"].bytes_per_entry()["list_ids"] == 8  # the int64 label in its list
    assert databases["flat"].bytes_per_entry()["keys"] == 4 * 4 * D
    assert databases["torch_compact"].bytes_per_entry()["keys"] == 2 * 4
    assert databases["opq_ivf_pq"].bytes_per_entry()["keys"] == 8
    assert databases["opq_ivf_pq"].bytes_per_entry()["list_ids"] == 8


def test_metadata(databases):
    meta = databases["ivf_flat"].metadata
    assert meta["format"] == "arrag-patchdb/1" and meta["grid"] == [8, 8] and meta["hops"] == 1 and meta["causal"]
    assert meta["codebook_size"] == K and meta["codebook_dim"] == D and len(meta["codebook_sha256"]) == 64
    assert meta["ntotal"] == IMAGES * 64 and meta["num_images"] == IMAGES and meta["index"] == "ivf_flat"
    assert meta["index_params"]["nlist"] == 32
    params = databases["opq_ivf_pq"].metadata["index_params"]
    assert params["m"] == 8 and params["nlist"] == 32 and set(params) == {"m", "nlist", "nprobe", "train_size"}


def test_opq_pads_a_width_not_divisible_by_m(corpus):
    codebook, codes, _, _, _ = corpus
    db = PatchDatabase.build(codes[:30], codebook[:, :5], index="opq_ivf_pq", nlist=8, nprobe=8)
    assert "OPQ8_24" in db.backend.factory  # width 4 x 5 = 20 is not a multiple of m = 8
    _, values, _ = db.search(neighbourhood_keys(codes[:2], codebook[:, :5]).reshape(-1, 20), 3)
    assert (values >= 0).all()


def test_bad_inputs(corpus, databases):
    codebook, codes, _, queries, _ = corpus
    db = databases["compact"]
    with pytest.raises(ValueError, match=r"\[Q, 32\].*causal 1-hop"):
        db.search(queries[:, :24], 3)
    with pytest.raises(ValueError, match="k must be"):
        db.search(queries, len(db) + 1)
    with pytest.raises(ValueError, match="k must be"):
        db.search(queries, 0)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        PatchDatabase.build(codes + 1, codebook)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        db.add(codes[:2] + 64)
    with pytest.raises(ValueError, match="grid"):
        db.add(codes[:2, :4])
    with pytest.raises(ValueError, match="known indexes: flat, ivf_flat"):
        PatchDatabase.build(codes[:2], codebook, index="hnsw")
    with pytest.raises(ValueError, match="nlist.*accepts: none"):
        PatchDatabase.build(codes[:2], codebook, index="compact", nlist=4)
    with pytest.raises(ValueError, match="nprobe.*accepts: none"):
        db.set_search_params(nprobe=4)
    with pytest.raises(ValueError, match="image_ids"):
        PatchDatabase.build(codes[:2], codebook, image_ids=torch.arange(3))
    with pytest.raises(ValueError, match="nlist=800 needs at least 800"):
        PatchDatabase.build(codes[:2], codebook, index="opq_ivf_pq")


def test_ids_and_keys_agree(corpus):
    """The stored neighbour ids reproduce the keys through the extended codebook."""
    codebook, codes, _, _, _ = corpus
    ids = neighbourhood_ids(codes[:3], 1, True, pad_id=K)
    torch.testing.assert_close(extended_codebook(codebook)[ids].flatten(-2), neighbourhood_keys(codes[:3], codebook))


def test_unfilled_ivf_hits_are_marked(corpus, databases):
    """With one list probed an IVF search may scan fewer than k entries: those hits are -1 / inf."""
    queries = corpus[3]
    db = databases["ivf_flat"]
    db.set_search_params(nprobe=1)
    dists, values, sources = db.search(queries, 2000)
    missing = torch.isinf(dists)
    assert missing.any() and (~missing).any()
    assert torch.equal(values == -1, missing) and (sources[missing] == -1).all()


def test_load_refuses_another_key_layout(tmp_path):
    codebook = torch.nn.functional.normalize(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    codes = torch.randint(0, 16, (3, 4, 4), generator=torch.Generator().manual_seed(1))
    PatchDatabase.build(codes, codebook, hops=1, causal=True, index="flat").save(tmp_path / "db")
    assert len(PatchDatabase.load(tmp_path / "db", codebook, hops=1, causal=True)) == 3 * 16
    with pytest.raises(ValueError, match="'hops' differs"):
        PatchDatabase.load(tmp_path / "db", codebook, hops=2)
    with pytest.raises(ValueError, match="'causal' differs"):
        PatchDatabase.load(tmp_path / "db", codebook, causal=False)


@pytest.mark.parametrize("name", ["compact", "ivf_compact", "flat", "torch_compact"])
def test_memory_mapped_load_equals_in_memory_and_brute_force(corpus, databases, name, tmp_path):
    codebook, codes, _, queries, keys = corpus
    db = databases[name]
    if "nprobe" in db.metadata["index_params"]:
        db.set_search_params(nprobe=db.metadata["index_params"]["nlist"])  # every list: exact
    db.save(tmp_path / "db")
    mapped = PatchDatabase.load(tmp_path / "db", codebook=codebook)  # mmap=True is the default
    read = PatchDatabase.load(tmp_path / "db", codebook=codebook, mmap=False)
    assert mapped.codes.dtype == read.codes.dtype == torch.uint16  # the stored dtype, not int32
    for a, b in zip(mapped.search(queries, 10), read.search(queries, 10)):
        assert torch.equal(a, b)
    dists, _, sources = mapped.search(queries, 10)
    assert_exact(dists, labels_of(mapped, sources), brute_force(keys, queries), 10)
    # read-only: adding would write into the mapped files (FAISS aborts the process on its views)
    with pytest.raises(ValueError, match="memory-mapped.*mmap=False"):
        mapped.add(codes[:2])
    assert read.add(codes[:2]) == 2 * GRID * GRID


def test_from_code_shards_equals_build_on_the_concatenation(corpus, tmp_path):
    from arrag.data.code_shards import load_code_shards, shard_paths, write_code_shard

    codebook, codes, image_ids, queries, _ = corpus
    from arrag.retrieval.database import codebook_sha256

    fingerprint = codebook_sha256(codebook)
    meta = {
        "codebook_size": K,
        "codebook_sha256": fingerprint,
        "tokenizer_id": "t",
        "source": {"type": "folder", "path": "/a"},
    }
    for shard, part in enumerate((slice(0, 120), slice(120, None))):
        write_code_shard(tmp_path, shard, 2, codes[part].numpy(), image_ids[part].numpy(), meta)
    paths = [shard_paths(tmp_path, s, 2)[0] for s in range(2)]
    built = PatchDatabase.from_code_shards(paths, codebook, index="compact")
    all_codes, all_ids, _ = load_code_shards(paths)
    whole = PatchDatabase.build(all_codes, codebook, index="compact", image_ids=all_ids)
    assert built.metadata == whole.metadata | {"tokenizer_id": "t", "sources": built.sources}
    assert built.sources == [{"source": meta["source"], "offset": 0}]
    for a, b in zip(built.search(queries, 10), whole.search(queries, 10)):
        assert torch.equal(a, b)


def test_token_ids_above_int16_come_back_unsigned():
    """uint16 grids are gathered through an int16 view (CUDA has no uint16 indexing): ids 32768..65535 have the
    sign bit set in that view and must come back as themselves."""
    from arrag.retrieval.database import take_tokens

    ids = torch.tensor([0, 1, 32767, 32768, 40000, 65535])
    index = torch.tensor([[5, 3], [0, 4], [2, 1]])
    assert torch.equal(take_tokens(ids.to(torch.uint16), index), ids[index])
    assert torch.equal(take_tokens(ids.to(torch.int32), index), ids[index])
