"""Result tables: Table 1 rows from GenEval summaries, sweep parameters from Paramspace paths, the heatmap."""

import pytest

from arrag.evaluation.tables import GENEVAL_COLUMNS, params_from_path, write_geneval_table, write_sweep


def _summary(scale: float) -> dict:
    tags = {
        tag: {"accuracy": scale * (i + 1) / 10, "correct": i, "images": 10}
        for i, (tag, _) in enumerate(GENEVAL_COLUMNS)
    }
    return {"tags": tags, "overall": sum(v["accuracy"] for v in tags.values()) / len(tags), "images": 60}


def test_geneval_table_follows_the_papers_columns(tmp_path):
    rows = write_geneval_table({"vanilla": _summary(1.0), "daid": _summary(0.5)}, tmp_path / "t.csv", tmp_path / "t.md")
    header, *lines = (tmp_path / "t.csv").read_text().splitlines()
    assert header == "method,single_object,two_object,counting,colors,position,color_attr,overall,images"
    assert [line.split(",")[0] for line in lines] == ["vanilla", "daid"]
    assert rows[1]["overall"] == pytest.approx(0.5 * 3.5 / 10)
    md = (tmp_path / "t.md").read_text()
    assert "| Method | Single Obj. | Two Obj. | Counting | Colors | Position | Color Attri. | Overall |" in md
    broken = _summary(1.0)
    del broken["tags"]["position"]
    with pytest.raises(ValueError, match="lacks the tags"):
        write_geneval_table({"x": broken}, tmp_path / "b.csv", tmp_path / "b.md")


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
