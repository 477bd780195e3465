"""arrag.resources: the memory a job declares follows what it reads."""

import math

import numpy as np
import pytest
import torch

from arrag import resources as res


def test_encode_memory_follows_the_model_and_batch_not_much_the_shard():
    small = res.mem_mb("encode", parameters=2.1e9, batch_size=64, image_size=384, images=1000)
    large = res.mem_mb("encode", parameters=2.1e9, batch_size=64, image_size=384, images=131_000)
    assert large - small <= 200  # ids only: about 1 KB per image, never the images themselves
    assert res.mem_mb("encode", parameters=4.2e9, batch_size=64, image_size=384, images=1000) > small + 8000
    # the paper's tokenisation job: Janus-Pro-1B in float32 is 8.4 GB, so about 13 GB in all, not 40-58 GB
    assert 10_000 < large < 16_000


def test_build_memory_is_the_index_it_writes():
    one = res.mem_mb("build_database", entries=10**9, index="ivf_compact", num_codes=16384, neighbours=4)
    ten = res.mem_mb("build_database", entries=10**10, index="ivf_compact", num_codes=16384, neighbours=4)
    assert ten - one == pytest.approx(9e9 * 18 * res.HEADROOM / 2**20, rel=0.001)  # 18 B per extra entry
    # Janus-Pro's K = 16384, hop-1 causal keys: 8 B code + 8 B IVF label + 2 B value = 18 B per entry
    assert res.entry_bytes("ivf_compact", 16384, 4) == 18 and res.entry_bytes("compact", 16384, 4) == 10


@pytest.mark.parametrize("index", ["compact", "ivf_compact", "flat", "torch_compact"])
def test_entry_bytes_are_what_a_database_stores(index):
    from arrag.retrieval import PatchDatabase

    codebook = torch.nn.functional.normalize(torch.randn(1024, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    codes = torch.randint(0, 1024, (200, 8, 8), generator=torch.Generator().manual_seed(1))
    params = {"nlist": 16} if index == "ivf_compact" else {}
    stored = PatchDatabase.build(codes, codebook, index=index, **params).bytes_per_entry()
    assert res.entry_bytes(index, 1024, 4) == stored["keys"] + stored["list_ids"] + stored["values"]


def test_search_jobs_do_not_pay_for_the_database():
    """A searching job maps the database: its memory depends on its model and batch, not on the corpus."""
    janus = res.mem_mb("search", parameters=2.1e9, batch_size=32)
    assert janus == res.mem_mb("search", parameters=2.1e9, batch_size=32)
    assert janus < 16_000  # against ~170 GB when every job read the whole database


def test_training_counts_gradients_and_adam_moments():
    assert res.mem_mb("train", parameters=1e9) > res.mem_mb("train", parameters=1e9, trainable=1e7) + 10_000


def test_retries_double_and_bad_kinds_are_refused():
    first = res.mem_mb("search", parameters=1e6, batch_size=8)
    assert res.mem_mb("search", attempt=2, parameters=1e6, batch_size=8) == pytest.approx(2 * first, abs=100)
    with pytest.raises(ValueError, match="unknown job kind 'tokenize'.*encode"):
        res.mem_mb("tokenize", parameters=1)
    with pytest.raises(ValueError, match="unknown index 'hnsw'"):
        res.entry_bytes("hnsw", 1024, 4)
    assert math.isclose(res.model_bytes(1e9), 4e9)


def test_image_index_memory_grows_with_ids_per_image_and_one_shard_not_the_corpus():
    """build-image-index writes the index into memory-mapped files: per corpus image it holds only a few int64
    ids; codes and embeddings are held one shard at a time; the model is loaded for its codebook."""
    sizes = dict(parameters=2.1e9, clip_parameters=1.5e8, grid=24, embed_dim=512)
    one = res.mem_mb("image_index", images=10**6, shard_images=10**5, **sizes)
    two = res.mem_mb("image_index", images=2 * 10**6, shard_images=10**5, **sizes)
    assert two - one == pytest.approx(1e6 * 64 * res.HEADROOM / 2**20, abs=100)  # rounded up to 100 MB
    bigger_shards = res.mem_mb("image_index", images=10**6, shard_images=2 * 10**5, **sizes)
    assert bigger_shards - one == pytest.approx(1e5 * (576 * 2 + 512 * 2) * 2 * res.HEADROOM / 2**20, abs=100)
    small = res.mem_mb("image_index", images=10**6, shard_images=10**5, **(sizes | {"parameters": 1e6}))
    assert one > small + 9_000  # float32 model


def test_fidelity_memory_counts_the_fwd_statistics_the_code_keeps():
    """FWD keeps a float64 mean and covariance per wavelet packet for each set (and the sums while accumulating):
    the function counts the arrays `packet_statistics` returns, whatever the level and size."""
    from arrag.evaluation.fidelity import packet_statistics

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    sizes = dict(network_parameters=0, images=3, feature_dim=0, image_size=32)
    for level, size in ((1, 32), (2, 32), (2, 64)):
        mu, cov = packet_statistics(images, level=level, size=size)
        per_set = mu.nbytes + cov.nbytes
        batch = res.FWD_BATCH * 3 * (32**2 * 9 + size**2 * 8 * (level + 2))
        features = res.FEATURE_BATCH * 3 * 336**2 * 4 * 2
        assert res.fidelity_mb(**sizes, fwd_level=level, fwd_size=size) * 2**20 == pytest.approx(
            features + batch + 2 * 2 * per_set
        )
    # the paper's Table 3: level 4 at 256 px is 256 packets of 768 x 768: ~4.8 GB of statistics, 30K images
    # of 1024 px, Inception and CLIP ViT-L/14@336; against 2 GB of base, under 32 GB
    paper = res.mem_mb("fidelity", network_parameters=4.5e8, images=30_000, feature_dim=2816, image_size=1024,
                       fwd_level=4, fwd_size=256)  # fmt: skip
    assert 16_000 < paper < 32_000


def test_feature_network_memory_is_its_split_of_images():
    small = res.mem_mb("features", images=1000, image_size=32)
    large = res.mem_mb("features", images=101_000, image_size=32)
    assert large - small == pytest.approx(100_000 * 32**2 * 3 * 1.4 * res.HEADROOM / 2**20, abs=100)


def test_scorers_contamination_and_light_jobs():
    assert (
        res.mem_mb("scorer", parameters=5e8, batch_size=1, image_size=384)
        > res.mem_mb("scorer", parameters=0, batch_size=1, image_size=384) + 2000
    )  # Mask2Former and CLIP in float32
    # a hash shard keeps a 16-byte digest, an 8-byte pHash and a 192-byte thumbnail per image
    assert res.HASH_BYTES >= 16 + 8 + 192
    refs = res.mem_mb("contamination", reference_images=10**6, shard_images=0)
    assert refs - res.mem_mb("contamination", reference_images=0, shard_images=0) == pytest.approx(
        1e6 * res.HASH_BYTES * res.HEADROOM / 2**20, abs=100
    )
    assert (
        res.mem_mb("light")
        == res.mem_mb("light", records=0, image_size=0)
        == math.ceil(res.BASE_MB * res.HEADROOM / 100) * 100
    )
    assert res.mem_mb("light", records=30_000) > res.mem_mb("light")
