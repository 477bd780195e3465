"""arrag.resources: the memory a job declares follows what it reads."""

import math

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
