"""`arrag bench retrieval-scaling` (arrag/bench/retrieval_scaling.py) on a tiny codebook and grids."""

import pytest
import torch

from arrag.bench.retrieval_scaling import (
    PAPER_ENTRIES,
    markdown_table,
    power_fit,
    run_scaling,
    tiled_grids,
    write_results,
)
from arrag.cli.bench import entry_count


def _grids(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 12, (n, 8, 8), generator=gen).to(torch.uint16)  # few codes: repeated keys, ties


def test_tiled_copies_replace_a_fraction_of_tokens_with_corpus_tokens_deterministically():
    base = _grids(50, 0)
    assert tiled_grids(base, 0, 0.1) is base
    copy = tiled_grids(base, 3, 0.1)
    assert torch.equal(copy.int(), tiled_grids(base, 3, 0.1).int()) and not torch.equal(copy.int(), base.int())
    assert not torch.equal(copy.int(), tiled_grids(base, 4, 0.1).int())
    changed = (copy.int() != base.int()).float().mean().item()
    assert 0.05 < changed <= 0.1  # drawn tokens sometimes equal the old one
    assert set(copy.int().unique().tolist()) <= set(base.int().unique().tolist())


def test_power_fit_recovers_a_power_law():
    fit = power_fit([1e6, 4e6, 16e6], [1000.0, 250.0, 62.5])
    assert fit["b"] == pytest.approx(-1) and fit["a"] == pytest.approx(1e9)
    assert power_fit([1e6], [3.0]) is None


def test_scaling_rows_recall_fits_and_outputs(tmp_path):
    codebook = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    backends = [("compact", {}), ("torch_compact", {}), ("ivf_compact", {"nlist": 4, "nprobe": 4})]
    result = run_scaling(
        _grids(6, 0), _grids(2, 9), codebook, [384, 1500], backends, n_queries=64, batches=(8, 32), min_seconds=0.01,
        log=lambda _: None,
    )  # fmt: skip
    assert [(r["entries"], r["backend"]) for r in result["rows"]] == [
        (e, b) for e in (384, 1536) for b in ("compact", "torch_compact", "ivf_compact")
    ]
    for r in result["rows"]:  # every backend exact here (nprobe = nlist): the hits' rebuilt keys tie with brute force
        assert r["recall@10"] == 1.0 and r["recall_queries"] == 64 and r["qps@8"] > 0
    fit = result["fits"]["compact"]
    assert fit["qps@32"]["points"] == 2
    assert fit["paper_memory_gb"] == pytest.approx(fit["bytes_per_entry"] * PAPER_ENTRIES / 1e9)
    assert "ivf_compact (nlist=4,nprobe=4)" in result["fits"]
    write_results(result, tmp_path / "s.json", tmp_path / "s.md", tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "7.83 billion" in (tmp_path / "s.md").read_text()


def test_a_search_predicted_past_the_limit_is_skipped_and_said():
    codebook = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    result = run_scaling(
        _grids(6, 0), _grids(2, 9), codebook, [384, 768], [("torch_compact", {})], n_queries=32, batches=(8,),
        max_batch_seconds=1e-9, min_seconds=0.01, log=lambda _: None,
    )  # fmt: skip
    small, large = result["rows"]
    assert small["qps@8"] > 0 and large["qps@8"] is None and "predicted" in large["skipped@8"]
    assert "recall@10" not in large and "skipped" in markdown_table(result)


def test_entry_counts_read_suffixes_and_refuse_nonsense():
    assert entry_count("2M") == 2_000_000 and entry_count("7.83B") == 7_830_000_000 and entry_count("500") == 500
    with pytest.raises(Exception, match="not an entry count"):
        entry_count("lots")
