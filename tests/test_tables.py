"""Result tables: the paper's layouts as CSV/Markdown/LaTeX from fixture results, the paper's reference rows,
sweep parameters from Paramspace paths, the heatmap."""

import csv

import numpy as np
import pytest

from arrag.evaluation import tables as t
from arrag.evaluation.tables import GENEVAL_COLUMNS, params_from_path, write_sweep


def _summary(scale: float) -> dict:
    tags = {
        tag: {"accuracy": scale * (i + 1) / 10, "correct": i, "images": 10}
        for i, (tag, _) in enumerate(GENEVAL_COLUMNS)
    }
    return {"tags": tags, "overall": sum(v["accuracy"] for v in tags.values()) / len(tags), "images": 60}


def _table(tmp_path, kind, measured, **kw):
    rows = t.write_table(t.TABLES[kind], measured, tmp_path / kind, **kw)
    csv_rows = list(csv.DictReader((tmp_path / f"{kind}.csv").open()))
    return rows, csv_rows, (tmp_path / f"{kind}.md").read_text(), (tmp_path / f"{kind}.tex").read_text()


def test_geneval_table_follows_the_papers_columns(tmp_path):
    measured = {m: t.geneval_row(_summary(s), m) for m, s in [("vanilla", 1.0), ("daid", 0.5)]}
    measured["vanilla"]["params"] = measured["daid"]["params"] = 2_090_000_000
    rows, csv_rows, md, tex = _table(tmp_path, "geneval", measured)
    assert list(csv_rows[0])[:9] == ["method", "source", *[k for k, _ in GENEVAL_COLUMNS], "overall"]
    assert [r["method"] for r in csv_rows] == ["vanilla", "daid"]
    assert float(csv_rows[1]["overall"]) == pytest.approx(0.5 * 3.5 / 10)
    # the paper's Params column, and Overall's difference to the base model: numbers in the CSV, "x (+d)" in print;
    # made without per-prompt records, no interval: "± —", and the caption says why
    assert float(csv_rows[1]["params"]) == 2_090_000_000 and csv_rows[0]["overall_delta"] == ""
    assert float(csv_rows[1]["overall_delta"]) == pytest.approx(-0.5 * 3.5 / 10)
    header = "| Method | Params | Single Obj. | Two Obj. | Counting | Colors | Position | Color Attri. | Overall |"
    assert (
        header in md
        and "| base model | 2.1B | 0.10 ± — | 0.20 ± — | 0.30 ± — | 0.40 ± — | 0.50 ± — | 0.60 ± — | 0.350 ± — |" in md
    )
    assert (
        "| + DAiD | 2.1B | 0.05 ± — | 0.10 ± — | 0.15 ± — | 0.20 ± — | 0.25 ± — | 0.30 ± — | 0.175 ± — (-0.175) |" in md
    )
    assert r"+ DAiD & 2.1B & 0.05 $\pm$ --- & 0.10 $\pm$ --- & " in tex and r"0.175 $\pm$ --- (-0.175) \\" in tex
    assert "± — : no interval, for want of per-prompt results" in md
    assert tex.count(r"\midrule") == 1 and r"\label{tab:geneval}" in tex
    broken = _summary(1.0)
    del broken["tags"]["position"]
    with pytest.raises(ValueError, match="lacks the tags"):
        t.geneval_row(broken, "x")


def test_paper_rows_come_first_above_a_rule(tmp_path):
    rows, csv_rows, md, tex = _table(tmp_path, "geneval", {"faid": t.geneval_row(_summary(1.0), "faid")}, paper=True)
    paper = [r for r in csv_rows if r["source"] == "paper"]
    assert len(paper) == 18 and csv_rows[-1]["source"] == "measured"
    faid = next(r for r in paper if r["method"] == "Janus-Pro + FAiD")
    assert (float(faid["position"]), float(faid["overall"])) == (0.70, 0.78)  # the paper's Table 1
    assert "| Transfusion (paper) | 7.3B | – | – | – | – | – | – | 0.630 ± — |" in md
    # the paper's own (+0.07) of FAiD over Janus-Pro, and its Params as a number in the CSV
    assert (
        "| Janus-Pro + FAiD (paper) | 1.2B | 1.00 ± — | 0.88 ± — | 0.50 ± — | 0.86 ± — | 0.70 ± — | 0.73 ± — | " in md
    )
    assert "| 0.780 ± — (+0.070) |" in md
    assert "| Janus-Pro + RA-CM3 (paper) | 1.0B |" in md and "0.650 ± — (-0.060) |" in md
    assert float(faid["params"]) == 1.2e9 and float(faid["overall_delta"]) == pytest.approx(0.07)
    assert "| DALL-E 3 (paper) | – |" in md
    assert tex.count(r"\midrule") == 2  # under the header, and between the paper's rows and ours


def test_inference_time_overheads_against_the_base_model(tmp_path):
    bench = {
        "device": "cpu",
        "rows": [
            {"method": "vanilla", "images_per_second": 10.0, "overhead_vs_vanilla": None},
            {"method": "daid", "images_per_second": 8.0, "overhead_vs_vanilla": 0.25},
        ],
    }
    for row, seconds in zip(bench["rows"], (0.4, 0.5)):
        row |= {"parameters": 1_000_000, "images": 4, "total_seconds": seconds}
    rows, csv_rows, md, tex = _table(tmp_path, "inference_time", t.inference_rows(bench), paper=True)
    assert "| Method | Params | Total (s) | Average (s) | vs base |" in md
    assert "| + DAiD | 1.0M | 0.50 | 0.1250 | +25.0% |" in md
    assert "| Janus-Pro + FAiD (paper) | 1.2B | 623.01 | 6.2300 | +36.0% |" in md
    paper = {r["method"]: r for r in rows if r["source"] == "paper"}
    assert paper["Janus-Pro + DAiD"]["overhead"] == pytest.approx(4.59 / 4.58 - 1)  # the paper's +0.22%
    assert paper["Janus-Pro + FAiD"]["overhead"] == pytest.approx(0.3603, abs=1e-4)
    assert r"+25.0\%" in tex


class _TimedHook:
    """A method's marker hook: the seconds its batches take (warm-up first), handed out by a stand-in time_batch."""

    def __init__(self, seconds):
        self.seconds = seconds

    def added_parameters(self):
        return []


def _timed_bench(backbone: str, seconds: dict[str, list[float]], monkeypatch) -> dict:
    """An `arrag bench generate` result of fake pipelines on `backbone` whose batches take the given seconds."""
    from types import SimpleNamespace

    import torch

    from arrag.bench import generate as g
    from arrag.models.backbone import AUTOREGRESSIVE, MASKED

    loop = MASKED if backbone == "showo" else AUTOREGRESSIVE
    pipe = SimpleNamespace(backbone=SimpleNamespace(name=backbone, loop=loop), vq=SimpleNamespace(grid=4))
    pipe.device, pipe.model = torch.device("cpu"), torch.nn.Linear(2, 2)
    pipe.sampling_config = lambda sampling: SimpleNamespace(steps=18)
    runs = {name: iter(ts) for name, ts in seconds.items()}
    monkeypatch.setattr(g, "time_batch", lambda pipe, batch, seeds, sampling, hooks, steps: next(hooks[0].seconds))
    methods = {name: (pipe, lambda name=name: [_TimedHook(runs[name])]) for name in seconds}
    return g.run_generation_bench(methods, ["a circle"], batch_size=2, repeats=2)


def test_inference_time_table_has_show_o_rows_against_plain_show_o(tmp_path, monkeypatch):
    """One `arrag bench generate` result per backbone: the Show-o rows' overheads are against plain Show-o timed in
    its own run (not against Janus), as their batch times say."""
    import json

    from arrag.cli import main

    janus = {"vanilla": [9.0, 1.0, 1.2], "daid": [9.0, 1.1, 1.3]}  # (warm-up, then 2 timed batches)
    showo = {"vanilla": [9.0, 0.5, 0.5], "daid": [9.0, 0.6, 0.6], "faid": [9.0, 0.8, 0.7]}
    for name, seconds in (("janus", janus), ("showo", showo)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_timed_bench(name, seconds, monkeypatch)))
    results = [flag for name in ("janus", "showo") for flag in ("--result", str(tmp_path / f"{name}.json"))]
    argv = ["table", "inference_time", *results]
    assert main(argv + ["--out", str(tmp_path / "t")]) == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "t.csv").open())}
    assert list(rows) == ["vanilla", "daid", "showo", "showo_daid", "showo_faid"]
    expected = {"daid": 2.4 / 2.2 - 1, "showo_daid": 1.2 / 1.0 - 1, "showo_faid": 1.5 / 1.0 - 1}
    for label, overhead in expected.items():
        assert float(rows[label]["overhead"]) == pytest.approx(overhead)
    assert float(rows["vanilla"]["overhead"]) == float(rows["showo"]["overhead"]) == 0.0
    assert float(rows["showo_faid"]["seconds_per_image"]) == pytest.approx(1.5 / 4)  # 2 batches of 2 images
    md = (tmp_path / "t.md").read_text()
    assert "| Show-o | 6 | 1.00 | 0.2500 | +0.0% |" in md  # Params: the stand-in model's 6
    assert "| Show-o + FAiD |" in md and "+50.0% |" in md and "| + DAiD |" in md

    # the same backbone twice: refused, naming both files
    twice = ["--result", str(tmp_path / "showo.json")] * 2
    assert main(["table", "inference_time", *twice, "--out", str(tmp_path / "u")]) == 2
    with pytest.raises(ValueError, match="showo.json both time the 'showo' row"):
        t.inference_table_rows([("a/showo.json", json.loads((tmp_path / "showo.json").read_text()))] * 2)
    assert not (tmp_path / "u.csv").exists()


def test_dpg_and_fidelity_rows_and_latex_escaping(tmp_path):
    summary = {"overall": 71.5, "images": 8, "categories": {"global": 50.0, "entity": 80.0, "attribute": 70.0}}
    rows, csv_rows, md, _ = _table(tmp_path, "dpg", {"vanilla": t.dpg_row(summary, "vanilla")})
    # categories absent from the CSV stay empty
    assert "| base model | – | 50.00 ± — | 80.00 ± — | 70.00 ± — | – | – | 71.50 ± — |" in md
    fid = {"fid": 12.5, "cmmd": 0.1, "fwd": 3.25, "images": 10, "reference_images": 10, "fid_network": {"name": "mini"}}
    rows, csv_rows, md, tex = _table(tmp_path, "fidelity", {"my_method": t.fidelity_row(fid, "my_method")})
    assert "| my_method | – | 0.100 ± — | 12.50 ± — | 3.250 ± — |" in md
    assert r"my\_method & – & 0.100 $\pm$ --- & 12.50 $\pm$ --- & 3.250 $\pm$ ---" in tex
    with pytest.raises(ValueError, match="no per-method result"):
        t.measured_row("inference_time", tmp_path / "x.json", "x")
    with pytest.raises(FileNotFoundError, match="missing"):
        t.measured_row("geneval", tmp_path / "absent.json", "x")


def test_sweep_rows_take_parameters_from_the_paths(tmp_path):
    assert params_from_path("results/mini/scores/sweep_daid/weight~0.1/temperature~2.0/s.json") == {
        "weight": "0.1",
        "temperature": "2.0",
    }
    with pytest.raises(ValueError, match="key~value"):
        params_from_path("results/mini/scores/daid/s.json")
    summaries = {f"s/weight~{w}/temperature~{t}/x.json": _summary(w * t) for w in (0.1, 0.5) for t in (1.0, 2.0)}
    rows = write_sweep(summaries, tmp_path / "s.csv", tmp_path / "s.png", "weight", "temperature", "sweep")
    assert [(r["weight"], r["temperature"]) for r in rows] == [(0.1, 1.0), (0.5, 1.0), (0.1, 2.0), (0.5, 2.0)]
    assert rows[3]["overall"] == pytest.approx(_summary(1.0)["overall"])
    hops = write_sweep(
        {"s/hops~12/every~2/x.json": _summary(1.0)}, tmp_path / "h.csv", tmp_path / "h.png", "every", "hops", ""
    )
    assert hops[0]["hops"] == 12 and (tmp_path / "h.csv").read_text().splitlines()[1].startswith("12,2,")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    grid = (tmp_path / "s.md").read_text()  # the overall scores as a temperature x weight grid
    assert "| temperature | weight 0.1 | weight 0.5 |" in grid
    assert f"| 2 | {_summary(0.2)['overall']:.3f} | {_summary(1.0)['overall']:.3f} |" in grid
    assert r"\begin{tabular}{lrr}" in (tmp_path / "s.tex").read_text()


def test_a_sweep_scored_by_fid_reads_fidelity_records_and_prefers_the_lowest(tmp_path):
    """Figure 7 as the paper scores it: FID per point from `arrag fidelity` records; the best point is the lowest."""
    from arrag.evaluation.tables import best_sweep_row

    records = {
        f"s/weight~{w}/temperature~1.0/sweep_fid.json": {"fid": 10 + 20 * w, "fwd": 3.0, "images": 10000}
        for w in (0.05, 0.1, 0.3)
    }
    rows = write_sweep(records, tmp_path / "f.csv", tmp_path / "f.png", "weight", "temperature", "FID", "fid")
    assert [r["fid"] for r in rows] == [11.0, 12.0, 16.0] and "overall" not in rows[0]
    assert best_sweep_row(rows, "fid")["weight"] == 0.05 and best_sweep_row(rows, "fid")["fid"] == 11.0
    assert "| 1 | 11.000 | 12.000 | 16.000 |" in (tmp_path / "f.md").read_text()
    assert (tmp_path / "f.csv").read_text().splitlines()[0] == "weight,temperature,fid,fwd,images"
    with pytest.raises(ValueError, match="holds no FID"):
        write_sweep(
            {"s/weight~0.1/x.json": {"fwd": 1.0, "images": 4}},
            tmp_path / "g.csv",
            tmp_path / "g.png",
            "weight",
            "weight",
            "",
            "fid",
        )


def test_scoring_bench_times_each_scorer_after_a_warm_up(tmp_path):
    from arrag.bench.scoring import run_scoring_bench, write_results

    calls = []

    def scorer():
        calls.append(1)
        return 40

    result = run_scoring_bench({"fake": scorer}, repeats=2)
    assert len(calls) == 3  # one warm-up, two timed runs
    row = result["rows"][0]
    assert row["images"] == 40 and row["images_per_second"] == pytest.approx(40 / row["seconds"])
    write_results(result, tmp_path / "s.json", tmp_path / "s.md")
    assert "| fake | 40 |" in (tmp_path / "s.md").read_text()


def test_show_o_rows_are_compared_with_plain_show_o_not_with_janus():
    from arrag.evaluation.tables import TABLES, add_deltas, base_of, paired_columns

    assert [base_of(x) for x in ("vanilla", "daid", "showo", "showo_daid", "showo_faid")] == ["vanilla"] * 2 + [
        "showo"
    ] * 3
    rows = [
        {"method": m, "source": "measured", "fid": v}
        for m, v in (("vanilla", 10.0), ("daid", 9.0), ("showo", 20.0), ("showo_faid", 16.0))
    ]
    add_deltas(TABLES["fidelity"], rows)
    assert [r.get("fid_delta") for r in rows] == [None, -1.0, None, -4.0]
    reps = {m: {"fid": np.full(50, v)} for m, v in (("vanilla", 10.0), ("showo", 20.0), ("showo_faid", 16.0))}
    points = {m: {"fid": float(r["fid"][0])} for m, r in reps.items()}
    cols = paired_columns(points, reps, 0.95)
    assert cols["showo_faid"]["fid_diff_vs_base"] == -4.0
    assert "fid_diff_vs_base" not in cols["showo"] and "fid_diff_vs_base" not in cols["vanilla"]
