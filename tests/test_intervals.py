"""Intervals on the tables: the percentile bootstrap over prompts against a direct numpy re-implementation with the
same seed, paired differences (identical methods: exactly 0), FID / CMMD / FWD resamples against a direct
recomputation on the resampled set, and the tables' ± cells and CSV columns."""

import csv
import json

import numpy as np
import pytest

from arrag.evaluation import intervals as iv
from arrag.evaluation import tables as t
from arrag.evaluation.fidelity import cmmd, fid, fwd, wavelet_packets
from arrag.evaluation.geneval import summarise as geneval_summarise
from arrag.io import write_json, write_jsonl

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def _geneval_records(correct: np.ndarray, per_prompt: int = 2) -> list[dict]:
    """correct [prompts, per_prompt] bools -> records of prompts cycling through the six tags."""
    rows = []
    for p, images in enumerate(correct):
        for s, ok in enumerate(images):
            tag = TAGS[p % len(TAGS)]
            name = f"images/m/geneval/{p:05d}/samples/{s:04d}.png"
            rows.append(
                {"filename": name, "tag": tag, "prompt": f"prompt {p}", "correct": bool(ok), "metadata": str(p)}
            )
    return rows


def _direct_geneval(correct: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The bootstrap written out: per tag (first-seen order) draw prompts with replacement, accuracy over their
    images; overall = mean of the tags. -> [B, 7] (six tags, overall)."""
    rng = np.random.default_rng(seed)
    tags = np.arange(len(correct)) % len(TAGS)
    per_tag = []
    for t_ in range(len(TAGS)):
        c = correct[tags == t_]
        idx = rng.integers(0, len(c), size=(resamples, len(c)))
        per_tag.append(c[idx].sum(axis=(1, 2)) / (idx.shape[1] * c.shape[1]))
    per_tag = np.stack(per_tag, 1)
    return np.concatenate([per_tag, per_tag.mean(1, keepdims=True)], 1)


def test_geneval_bootstrap_matches_a_direct_numpy_reimplementation():
    correct = np.random.default_rng(0).random((60, 2)) < 0.4
    scores = iv.geneval_prompt_scores(_geneval_records(correct))
    summary = geneval_summarise(_geneval_records(correct))
    point = scores.point()
    assert point["overall"] == pytest.approx(summary["overall"], rel=1e-12)
    assert all(point[tag] == pytest.approx(summary["tags"][tag]["accuracy"]) for tag in TAGS)
    reps = iv.replicates({"m": scores}, iv.Bootstrap(resamples=300, seed=7))["m"]
    direct = _direct_geneval(correct, 300, 7)
    np.testing.assert_allclose(np.stack([reps[c] for c in TAGS + ["overall"]], 1), direct, rtol=1e-12)
    low, high = np.percentile(direct, [2.5, 97.5], axis=0)
    cols = iv.interval_columns({"m": point}, {"m": reps}, base=None)["m"]
    assert cols["overall_ci_low"] == pytest.approx(low[-1]) and cols["overall_ci_high"] == pytest.approx(high[-1])
    for col in TAGS + ["overall"]:  # each interval covers its point estimate
        assert cols[f"{col}_ci_low"] <= point[col] <= cols[f"{col}_ci_high"]
    assert cols["overall_ci_high"] - cols["overall_ci_low"] > 0.05  # 60 prompts: not a degenerate interval
    # another seed, other draws
    other = iv.replicates({"m": scores}, iv.Bootstrap(resamples=300, seed=8))["m"]["overall"]
    assert not np.array_equal(other, reps["overall"])


def test_count_blocks_are_the_draws_of_one_call():
    counts = np.concatenate(list(iv.count_blocks(np.random.default_rng(3), 9, 70, block=16)))
    idx = np.random.default_rng(3).integers(0, 9, size=(70, 9))
    assert counts.shape == (70, 9) and np.array_equal(counts, np.stack([np.bincount(r, minlength=9) for r in idx]))


def test_paired_difference_of_identical_methods_is_exactly_zero():
    correct = np.random.default_rng(1).random((30, 2)) < 0.5
    scores = {m: iv.geneval_prompt_scores(_geneval_records(correct)) for m in ("vanilla", "daid")}
    reps = iv.replicates(scores, iv.Bootstrap(resamples=200, seed=0))
    points = {m: s.point() for m, s in scores.items()}
    cols = iv.interval_columns(points, reps, base="vanilla")
    assert "overall_diff_vs_base" not in cols["vanilla"]
    for col in TAGS + ["overall"]:
        assert cols["daid"][f"{col}_diff_vs_base"] == 0.0
        assert cols["daid"][f"{col}_diff_ci_low"] == 0.0 == cols["daid"][f"{col}_diff_ci_high"]


def test_paired_difference_resamples_the_same_prompts_for_both_methods():
    rng = np.random.default_rng(2)
    base = rng.random((48, 2)) < 0.3
    better = base.copy()
    better[::5] = True  # a fifth of the prompts always right: better beyond noise
    scores = {m: iv.geneval_prompt_scores(_geneval_records(c)) for m, c in (("vanilla", base), ("daid", better))}
    reps = iv.replicates(scores, iv.Bootstrap(resamples=400, seed=5))
    diff = _direct_geneval(better, 400, 5)[:, -1] - _direct_geneval(base, 400, 5)[:, -1]
    cols = iv.interval_columns({m: s.point() for m, s in scores.items()}, reps, base="vanilla")["daid"]
    assert (cols["overall_diff_ci_low"], cols["overall_diff_ci_high"]) == pytest.approx(
        np.percentile(diff, [2.5, 97.5])
    )
    assert cols["overall_diff_ci_low"] > 0  # never worse on any prompt: the paired interval excludes 0
    assert cols["overall_diff_vs_base"] == pytest.approx(
        scores["daid"].point()["overall"] - scores["vanilla"].point()["overall"]
    )
    # unpaired, the two intervals overlap: pairing is what separates them
    unpaired = iv.interval_columns({m: s.point() for m, s in scores.items()}, reps, base=None)
    assert unpaired["daid"]["overall_ci_low"] < unpaired["vanilla"]["overall_ci_high"]


def test_different_prompts_or_stale_records_are_refused():
    correct = np.ones((12, 2), bool)
    a = iv.geneval_prompt_scores(_geneval_records(correct))
    b = iv.geneval_prompt_scores(_geneval_records(correct[:6]))
    with pytest.raises(ValueError, match="different prompts"):
        iv.replicates({"vanilla": a, "daid": b}, iv.Bootstrap(resamples=10))
    with pytest.raises(ValueError, match="different runs"):
        iv.check_matches(a.point(), {"overall": 0.5}, "r.jsonl", "s.json")
    with pytest.raises(ValueError, match="resamples"):
        iv.Bootstrap(resamples=1)


def test_dpg_bootstrap_resamples_items_and_keeps_category_ratios():
    from arrag.evaluation.dpg import summarise

    rng = np.random.default_rng(4)
    records = []
    for i in range(20):  # items with 1-3 entity questions and 0-2 attribute ones, 2 crops each
        qs = {}
        for j in range(rng.integers(1, 4)):
            qs[f"e{j}"] = {"tuple": "entity - whole (x)", "raw": list(rng.random(2) < 0.6), "scores": [1.0, 1.0]}
        for j in range(rng.integers(0, 3)):
            qs[f"a{j}"] = {
                "tuple": "attribute - color (x, red)",
                "raw": list(rng.random(2) < 0.4),
                "scores": [0.0, 0.0],
            }
        qs = {k: v | {"raw": [float(x) for x in v["raw"]]} for k, v in qs.items()}
        records.append({"item_id": f"item-{i:02d}", "score": float(rng.random()), "questions": qs})
    scores = iv.dpg_prompt_scores(records)
    summary = summarise(records)
    point = scores.point()
    assert point["overall"] == pytest.approx(summary["overall"]) and point["entity"] == pytest.approx(
        summary["categories"]["entity"]
    )
    reps = iv.replicates({"m": scores}, iv.Bootstrap(resamples=100, seed=1))["m"]
    idx = np.random.default_rng(1).integers(0, 20, size=(100, 20))  # one stratum: items in id order
    last = [[v["raw"][-1] for v in r["questions"].values() if v["tuple"].startswith("attribute")] for r in records]
    direct = [100 * sum(sum(last[i]) for i in row) / sum(len(last[i]) for i in row) for row in idx]
    np.testing.assert_allclose(reps["attribute"], direct, rtol=1e-12)
    np.testing.assert_allclose(reps["overall"], [100 * np.mean([records[i]["score"] for i in row]) for row in idx])


# ----------------------------------------------------------------------------- fidelity metrics


def _resampled(n: int, resamples: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    blocks = list(iv.count_blocks(np.random.default_rng(seed), n, resamples, block=3))
    return blocks, np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def test_fid_and_cmmd_resamples_match_a_direct_recomputation():
    from arrag.evaluation.fidelity import cmmd_replicates, frechet_replicates

    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(14, 3)), rng.normal(size=(20, 3)) * 1.3 + 0.4
    blocks, idx = _resampled(14, 7, seed=2)
    reps = frechet_replicates(gen[:, None, :], ref.mean(0)[None], np.cov(ref, rowvar=False)[None], blocks)[:, 0]
    np.testing.assert_allclose(reps, [fid(gen[i], ref) for i in idx], rtol=1e-7)
    np.testing.assert_allclose(cmmd_replicates(gen, ref, blocks), [cmmd(gen[i], ref) for i in idx], rtol=1e-9)


def test_fwd_resamples_match_a_direct_recomputation():
    from arrag.evaluation.fidelity import frechet_replicates, packet_statistics

    rng = np.random.default_rng(1)
    gen = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    ref = rng.integers(30, 200, (40, 8, 8, 3), dtype=np.uint8)
    kw = dict(level=1, size=8)  # 4 packets of 3 x 4 x 4 = 48 values, fewer than the 40 images' rank: well defined
    blocks, idx = _resampled(40, 3, seed=4)
    mu, cov = packet_statistics(ref, **kw)
    reps = frechet_replicates(wavelet_packets(gen, **kw).numpy(), mu, cov, blocks).mean(1)
    np.testing.assert_allclose(reps, [fwd(gen[i], ref, **kw) for i in idx], rtol=1e-6)


def test_fidelity_bootstrap_resamples_prompts_of_a_geneval_folder(tmp_path):
    from test_fidelity import _geneval_folder, _images

    from arrag.evaluation.fidelity import fidelity_bootstrap

    gen = _images(5, n=12, size=8)
    _geneval_folder(tmp_path / "gen", gen, per_prompt=3)  # 4 prompts of 3 images
    rng = np.random.default_rng(0)
    feats, ref = rng.normal(size=(12, 2)), rng.normal(size=(30, 2))
    point = fid(feats, ref)
    out = fidelity_bootstrap(
        tmp_path / "gen", iv.Bootstrap(resamples=20, seed=9), {"fid": point}, fid_feats=(feats, ref)
    )
    assert out["bootstrap"] | {"ci_prompts_sha256": None} == {
        "ci_level": 0.95,
        "ci_resamples": 20,
        "ci_seed": 9,
        "ci_unit": "prompt",
        "ci_units": 4,
        "ci_prompts_sha256": None,
        "ci_centred": True,
    }
    prompts = np.random.default_rng(9).integers(0, 4, size=(20, 4))
    direct = [fid(feats[np.concatenate([np.arange(3 * p, 3 * p + 3) for p in row])], ref) for row in prompts]
    np.testing.assert_allclose(out["fid_replicates"], direct, rtol=1e-7)
    # resampled sets repeat images, which biases FID upwards: the percentiles are centred on the point value
    centred = np.percentile(direct, [2.5, 97.5]) + point - np.mean(direct)
    assert (out["fid_ci_low"], out["fid_ci_high"]) == pytest.approx(tuple(centred))
    assert out["fid_ci_low"] <= point <= out["fid_ci_high"] < np.percentile(direct, 97.5)
    assert "cmmd_replicates" not in out and "fwd_replicates" not in out


def test_fwd_interval_is_left_out_and_said_so_above_the_work_limit(monkeypatch):
    from arrag.evaluation import fidelity

    monkeypatch.setattr(fidelity, "FWD_BOOTSTRAP_MAX_FLOPS", 10)
    gen = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    stats = fidelity.packet_statistics(gen, level=1, size=8)
    out = fidelity.fidelity_bootstrap(
        gen, iv.Bootstrap(resamples=5), {"fwd": 1.0}, fwd_reference=stats, packets=dict(level=1, size=8)
    )
    assert "fwd_replicates" not in out and "FWD has no interval" in out["fwd_bootstrap"]
    assert out["bootstrap"]["ci_unit"] == "image"


# ----------------------------------------------------------------------------- tables


def test_geneval_table_shows_intervals_and_paired_differences(tmp_path):
    correct = np.random.default_rng(3).random((24, 2)) < 0.5
    better = correct | (np.arange(24) % 2 == 0)[:, None]
    results, records = {}, {}
    for m, c in (("vanilla", correct), ("daid", better)):
        write_jsonl(tmp_path / f"{m}.jsonl", _geneval_records(c))
        write_json(tmp_path / f"{m}.json", geneval_summarise(_geneval_records(c)))
        results[m], records[m] = tmp_path / f"{m}.json", tmp_path / f"{m}.jsonl"
    measured = {m: t.geneval_row(t.read_summary(p), m) for m, p in results.items()}
    t.record_intervals("geneval", measured, results, records, iv.Bootstrap(resamples=200, seed=0))
    t.write_table(t.TABLES["geneval"], measured, tmp_path / "geneval", paper=True)
    rows = list(csv.DictReader((tmp_path / "geneval.csv").open()))
    daid = next(r for r in rows if r["method"] == "daid")
    low, high, point = (float(daid[k]) for k in ("overall_ci_low", "overall_ci_high", "overall"))
    assert low <= point <= high and daid["ci_resamples"] == "200" and daid["ci_seed"] == "0"
    assert float(daid["overall_diff_ci_low"]) > 0 and float(daid["overall_diff_vs_base"]) == pytest.approx(
        float(daid["overall_delta"])
    )
    paper = next(r for r in rows if r["source"] == "paper" and r["method"] == "Janus-Pro + FAiD")
    assert paper["overall_ci_low"] == "" and paper["overall_diff_ci_low"] == ""  # no per-prompt data
    md = (tmp_path / "geneval.md").read_text()
    half, diff_half = (high - low) / 2, (float(daid["overall_diff_ci_high"]) - float(daid["overall_diff_ci_low"])) / 2
    diff = float(daid["overall_diff_vs_base"])
    assert f"| {point:.3f} ± {half:.3f} ({diff:+.3f} ± {diff_half:.3f}) |" in md
    assert "| Janus-Pro + FAiD (paper) | 1.2B | 1.00 ± — |" in md and "0.780 ± — (+0.070) |" in md
    assert "200 resamples, seed 0" in md and "published numbers" in md
    assert r"$\pm$" in (tmp_path / "geneval.tex").read_text()


def test_fidelity_table_pairs_replicates_of_the_same_draws(tmp_path):
    boot = {"ci_level": 0.95, "ci_resamples": 4, "ci_seed": 0, "ci_unit": "prompt", "ci_units": 4}
    records = {
        "vanilla": {"fid": 2.0, "fid_replicates": [1.0, 2.0, 3.0, 2.5], "images": 4, "bootstrap": boot},
        "daid": {"fid": 1.0, "fid_replicates": [0.5, 1.0, 2.5, 1.5], "images": 4, "bootstrap": boot},
    }
    for m, r in records.items():
        write_json(tmp_path / f"{m}.json", r)
    results = {m: tmp_path / f"{m}.json" for m in records}
    measured = {m: t.fidelity_row(r, m) for m, r in records.items()}
    t.fidelity_intervals(measured, results)
    diff = np.array(records["daid"]["fid_replicates"]) - np.array(records["vanilla"]["fid_replicates"])
    centred = np.percentile(diff, [2.5, 97.5]) + (1.0 - 2.0) - diff.mean()  # on the point difference, -1
    assert (measured["daid"]["fid_diff_ci_low"], measured["daid"]["fid_diff_ci_high"]) == pytest.approx(tuple(centred))
    low, high = np.percentile(records["vanilla"]["fid_replicates"], [2.5, 97.5]) + 2.0 - 2.125
    assert (measured["vanilla"]["fid_ci_low"], measured["vanilla"]["fid_ci_high"]) == pytest.approx((low, high))
    assert measured["daid"]["fid_diff_vs_base"] == -1.0 and "cmmd_ci_low" not in measured["daid"]
    write_json(tmp_path / "daid.json", records["daid"] | {"bootstrap": boot | {"ci_seed": 1}})
    with pytest.raises(ValueError, match="bootstrapped differently"):
        t.fidelity_intervals({m: t.fidelity_row(r, m) for m, r in records.items()}, results)


def test_table_command_takes_records_and_bootstrap_flags(tmp_path):
    from arrag.cli import main

    correct = np.random.default_rng(6).random((12, 2)) < 0.5
    write_jsonl(tmp_path / "r.jsonl", _geneval_records(correct))
    write_json(tmp_path / "s.json", geneval_summarise(_geneval_records(correct)))
    common = ["table", "geneval", "--out", str(tmp_path / "g")]
    args = common + ["--result", str(tmp_path / "s.json"), "--label", "vanilla", "--records", str(tmp_path / "r.jsonl")]
    assert main(args + ["--bootstrap", "50", "--seed", "3"]) == 0
    row = next(csv.DictReader((tmp_path / "g.csv").open()))
    assert (
        row["ci_resamples"] == "50" and row["ci_seed"] == "3" and float(row["overall_ci_low"]) <= float(row["overall"])
    )
    json.loads(json.dumps(row))
    write_json(tmp_path / "s.json", geneval_summarise(_geneval_records(~correct)))  # records of another run
    assert main(args) == 2


def test_sweep_marks_runs_that_differ_from_the_best_beyond_noise(tmp_path):
    from arrag.evaluation.tables import write_sweep

    rng = np.random.default_rng(8)
    base = rng.random((36, 2)) < 0.3
    runs = {0.1: base | (np.arange(36) % 2 == 0)[:, None], 0.2: base, 0.5: base.copy()}  # 0.1: best by far
    runs[0.5][0] = True  # one image better than 0.2: within noise of it, far below 0.1
    summaries, records = {}, {}
    for w, c in runs.items():
        path = str(tmp_path / f"weight~{w}" / "temperature~1.0" / "geneval_summary.json")
        write_jsonl(tmp_path / f"{w}.jsonl", _geneval_records(c))
        summaries[path], records[path] = geneval_summarise(_geneval_records(c)), str(tmp_path / f"{w}.jsonl")
    boot = iv.Bootstrap(resamples=300, seed=2)
    rows = write_sweep(
        summaries, tmp_path / "s.csv", tmp_path / "s.png", "weight", "temperature", "t", "geneval", records, boot
    )
    by_w = {r["weight"]: r for r in rows}
    assert by_w[0.1]["diff_vs_best"] == 0.0 and not by_w[0.1]["differs_from_best"]
    assert by_w[0.2]["differs_from_best"] and by_w[0.5]["differs_from_best"]
    direct = _direct_geneval(runs[0.2], 300, 2)[:, -1] - _direct_geneval(runs[0.1], 300, 2)[:, -1]
    assert (by_w[0.2]["diff_ci_low"], by_w[0.2]["diff_ci_high"]) == pytest.approx(
        tuple(np.percentile(direct, [2.5, 97.5]))
    )
    assert by_w[0.2]["overall_ci_low"] <= by_w[0.2]["overall"] <= by_w[0.2]["overall_ci_high"]
    grid = (tmp_path / "s.md").read_text()
    half = (by_w[0.2]["overall_ci_high"] - by_w[0.2]["overall_ci_low"]) / 2
    assert f"{by_w[0.2]['overall']:.3f}* ± {half:.3f}" in grid and f"| {by_w[0.1]['overall']:.3f} ± " in grid
    assert "differs from the best run beyond noise" in grid
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert "diff_ci_low" in header and "differs_from_best" in header and "ci_seed" in header
    # without a seed's paired draws the mark would be noise: two identical runs never differ
    same = {p: summaries[p] for p in list(summaries)[1:2]}
    same[str(tmp_path / "weight~0.7" / "temperature~1.0" / "geneval_summary.json")] = summaries[list(summaries)[1]]
    recs = dict(zip(same, [records[list(summaries)[1]]] * 2))
    twin = write_sweep(
        same, tmp_path / "t.csv", tmp_path / "t.png", "weight", "temperature", "t", "geneval", recs, boot
    )
    assert [r["diff_ci_low"] for r in twin] == [0.0, 0.0] and not any(r["differs_from_best"] for r in twin)


def test_fid_sweep_pairs_stored_replicates(tmp_path):
    from arrag.evaluation.tables import write_sweep

    boot = {"ci_level": 0.95, "ci_resamples": 3, "ci_seed": 0, "ci_unit": "prompt", "ci_units": 9}
    fids = {0.1: [10.0, 11.0, 12.0], 0.3: [10.5, 12.0, 13.0]}
    summaries = {
        f"s/weight~{w}/temperature~1.0/sweep_fid.json": {
            "fid": r[1],
            "fid_replicates": r,
            "fwd": 1.0,
            "images": 9,
            "bootstrap": boot,
        }
        for w, r in fids.items()
    }
    rows = write_sweep(summaries, tmp_path / "f.csv", tmp_path / "f.png", "weight", "temperature", "FID", "fid")
    worse = next(r for r in rows if r["weight"] == 0.3)
    assert worse["diff_vs_best"] == 1.0 and worse["differs_from_best"]  # worse on every paired resample
    paired = np.array([0.5, 1.0, 1.0])  # centred on the point difference, as FID is biased by a resample
    assert worse["diff_ci_low"] == pytest.approx(np.percentile(paired, 2.5) + 1.0 - paired.mean())
    summaries[next(iter(summaries))]["bootstrap"] = boot | {"ci_seed": 4}
    with pytest.raises(ValueError, match="bootstrapped differently"):
        write_sweep(summaries, tmp_path / "g.csv", tmp_path / "g.png", "weight", "temperature", "FID", "fid")


def test_damaged_replicates_are_refused_by_name(tmp_path):
    boot = {"ci_level": 0.95, "ci_resamples": 3, "ci_seed": 0, "ci_unit": "prompt", "ci_units": 3}
    for bad in ([1.0, float("nan"), 2.0], [1.0, 2.0]):
        write_json(tmp_path / "vanilla.json", {"fid": 1.0, "fid_replicates": bad, "images": 3, "bootstrap": boot})
        with pytest.raises(ValueError, match=r"vanilla.json: fid_replicates must be 3 finite numbers"):
            t.fidelity_intervals({"vanilla": {"fid": 1.0}}, {"vanilla": tmp_path / "vanilla.json"})


def test_fidelity_command_stores_replicates_that_the_table_pairs(tmp_path):
    from test_fidelity import _geneval_folder, _images

    from arrag.cli import main

    ref = _images(0, n=24, size=8)
    np.save(tmp_path / "ref.npy", ref)
    for label, seed in (("vanilla", 1), ("daid", 2)):
        _geneval_folder(tmp_path / label, _images(seed, n=12, size=8), per_prompt=2)
        args = ["fidelity", "--images", str(tmp_path / label), "--reference", str(tmp_path / "ref.npy")]
        args += ["--fwd-level", "1", "--fwd-size", "8", "--bootstrap", "30", "--seed", "4"]
        assert main(args + ["--out-json", str(tmp_path / f"{label}.json")]) == 0
    record = json.loads((tmp_path / "vanilla.json").read_text())
    assert record["bootstrap"]["ci_units"] == 6 and record["bootstrap"]["ci_resamples"] == 30
    assert len(record["fwd_replicates"]) == 30 and record["fwd_ci_low"] <= record["fwd"] <= record["fwd_ci_high"]
    table = ["table", "fidelity", "--out", str(tmp_path / "f")]
    for label in ("vanilla", "daid"):
        table += ["--result", str(tmp_path / f"{label}.json"), "--label", label]
    assert main(table) == 0
    daid = next(r for r in csv.DictReader((tmp_path / "f.csv").open()) if r["method"] == "daid")
    daid_record = json.loads((tmp_path / "daid.json").read_text())
    reps = np.array(daid_record["fwd_replicates"]) - record["fwd_replicates"]
    diff = daid_record["fwd"] - record["fwd"]
    assert float(daid["fwd_diff_ci_low"]) == pytest.approx(np.percentile(reps, 2.5) + diff - reps.mean())
    assert float(daid["fwd_ci_low"]) == pytest.approx(daid_record["fwd_ci_low"])  # the table's and the record's
    md = (tmp_path / "f.md").read_text()
    half = (float(daid["fwd_diff_ci_high"]) - float(daid["fwd_diff_ci_low"])) / 2
    assert "30 resamples, seed 4" in md and f"({diff:+.3f} ± {half:.3f}) |" in md  # FWD's paired difference


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_fid_resamples_on_a_gpu_match_the_cpu():
    from arrag.evaluation.fidelity import frechet_replicates

    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(50, 1, 16)), rng.normal(size=(60, 16))
    blocks = list(iv.count_blocks(np.random.default_rng(1), 50, 20))
    stats = (ref.mean(0)[None], np.cov(ref, rowvar=False)[None])
    cpu = frechet_replicates(gen, *stats, blocks)
    np.testing.assert_allclose(frechet_replicates(gen, *stats, blocks, device="cuda"), cpu, rtol=1e-9)
