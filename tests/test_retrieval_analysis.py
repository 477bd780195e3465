"""Figure 6 (retrieval accuracy) and the retrieval benchmark, on small synthetic databases."""

import pytest
import torch

from arrag.bench.retrieval import exact_top_k, markdown_table, run_retrieval_bench, tie_aware_recall
from arrag.evaluation.retrieval_accuracy import plot_accuracy, retrieval_accuracy
from arrag.evaluation.tables import RETRIEVAL_ACCURACY, retrieval_accuracy_rows, write_rows
from arrag.retrieval.database import PatchDatabase
from arrag.retrieval.keys import neighbourhood_keys


def _smooth_codes(n, k=32, side=8, seed=0):
    """Token grids with spatial structure (runs of equal tokens), so neighbours predict the centre."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (n, side, side), generator=g)
    copy_left = torch.rand(n, side, side, generator=g) < 0.6
    for c in range(1, side):
        codes[:, :, c] = torch.where(copy_left[:, :, c], codes[:, :, c - 1], codes[:, :, c])
    return codes


def test_retrieval_accuracy_matches_a_direct_recomputation(tmp_path):
    codebook = torch.nn.functional.normalize(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    db = PatchDatabase.build(_smooth_codes(60), codebook, index="flat")
    held_out = _smooth_codes(5, seed=9)
    result = retrieval_accuracy(db, held_out, codebook, k=4, max_queries=10_000)
    assert result["queries"] == 5 * 64 and result["rank"] == [1, 2, 3, 4]

    queries = neighbourhood_keys(held_out, codebook).flatten(0, 2)
    truth = held_out.flatten()
    _, values, _ = db.search(queries, 4)
    d = (codebook[values] - codebook[truth][:, None]).norm(dim=-1)
    torch.testing.assert_close(
        torch.tensor(result["mean_distance"], dtype=torch.float64), d.mean(0).double(), rtol=1e-5, atol=1e-6
    )
    hits = (values == truth[:, None]).double().mean(0)
    torch.testing.assert_close(torch.tensor(result["exact_match"], dtype=torch.float64), hits)
    # neighbours predict the centre in this data: retrieval beats random tokens
    assert result["mean_distance"][0] < result["random_mean_distance"]
    assert result["exact_match"][0] > result["random_exact_match"]

    write_rows(RETRIEVAL_ACCURACY, retrieval_accuracy_rows(result), tmp_path / "acc")
    lines = (tmp_path / "acc.csv").read_text().splitlines()
    assert lines[0] == "rank,mean_distance,std_distance,exact_match" and len(lines) == 6
    assert lines[-1].startswith("random,")
    assert "| Rank | Mean distance | Std | Exact |" in (tmp_path / "acc.md").read_text()
    assert float(lines[1].split(",")[1]) == pytest.approx(result["mean_distance"][0])
    plot_accuracy(result, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_exact_top_k_and_tie_aware_recall():
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(500, 6, generator=g), torch.randn(7, 6, generator=g)
    ref = torch.cdist(q, x).pow(2).sort(dim=1).values[:, :5]
    torch.testing.assert_close(exact_top_k(x, q, 5, chunk=128), ref, rtol=1e-4, atol=1e-4)
    assert tie_aware_recall(ref, ref[:, -1]) == 1.0
    assert tie_aware_recall(ref + 10, ref[:, -1]) == 0.0


def test_bench_rows_for_exact_and_approximate_backends():
    codebook = torch.nn.functional.normalize(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    result = run_retrieval_bench(
        _smooth_codes(150),
        _smooth_codes(10, seed=5),
        codebook,
        [("flat", {}), ("compact", {}), ("ivf_flat", {"nlist": 16, "nprobe": 1})],
        n_queries=128,
        batches=(1, 32),
        ks=(10,),
    )
    rows = {r["backend"]: r for r in result["rows"]}
    assert rows["flat"]["recall@10"] == 1.0 and rows["compact"]["recall@10"] == 1.0
    assert rows["ivf_flat"]["recall@10"] <= 1.0
    assert rows["compact"]["bytes_per_entry"]["keys"] < rows["flat"]["bytes_per_entry"]["keys"]
    assert rows["flat"]["speedup@32_vs_flat"] == 1.0
    table = markdown_table(result)
    assert table.count("\n| ") >= 3 and "recall@10" in table and "QPS@32" in table


def test_figure_6_on_the_training_set_reads_its_candidates(tiny_janus, tmp_path):
    """--queries train (appendix C.1): the FAiD training set's positions against the candidates retrieved for them,
    each rank's distance recomputed here; the table and figure say which query set they show."""
    import json

    import arrag.models.faid_training as ft
    from arrag.cli import main
    from arrag.models.vq import VQTokenizer

    model, processor, spec = tiny_janus
    model.save_pretrained(tmp_path / "base", safe_serialization=True)
    processor.save_pretrained(tmp_path / "base")
    codebook = VQTokenizer.from_janus(model).codebook
    corpus = _smooth_codes(30, k=spec.codebook_size, side=spec.grid)
    db = PatchDatabase.build(corpus, codebook, index="flat")
    db.save(tmp_path / "db")
    pairs = _smooth_codes(6, k=spec.codebook_size, side=spec.grid, seed=5)
    ft.build_trainset(model, db, pairs, ["a photo"] * 6, k=4, out_dir=tmp_path / "trainset")
    out = ["--out-csv", str(tmp_path / "acc.csv"), "--out-png", str(tmp_path / "acc.png")]
    args = ["retrieval-accuracy", "--model", str(tmp_path / "base"), "--db", str(tmp_path / "db"), "--k", "3"]
    assert (
        main(
            [
                *args,
                "--queries",
                "train",
                "--trainset",
                str(tmp_path / "trainset"),
                *out,
                "--out-json",
                str(tmp_path / "acc.json"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "acc.json").read_text())
    codes, candidates, _, _ = ft.load_trainset(tmp_path / "trainset")
    values, truth = candidates[..., :3].flatten(0, 1), codes.flatten()
    d = (codebook[values] - codebook[truth][:, None]).norm(dim=-1)
    assert result["query_set"] == "train" and result["queries"] == len(truth) == 6 * spec.grid**2
    torch.testing.assert_close(torch.tensor(result["mean_distance"]), d.mean(0), rtol=1e-5, atol=1e-6)
    assert "positions of FAiD training-set instances" in (tmp_path / "acc.md").read_text()
    held = [*args, "--queries", "heldout", *out]
    assert main(held) == 2  # held-out queries need their code shards
