"""The paper's tables from our results, each as CSV (pandas), Markdown (RESULTS.md, report) and LaTeX (booktabs):
Table 1 (GenEval), Table 2 (DPG-Bench), Table 3 (CMMD, FID, FWD), Table 4 (inference time) and the
over-copying table; plus hyper-parameter sweeps (Figure 7) as a CSV and a heatmap.

A table is a `TableSpec` (its columns in the paper's order) and rows of dicts. In the paper profile the
paper's published rows (arrag/evaluation/paper_rows/<table>.csv) are added as reference rows, marked
source = "paper", above ours (source = "measured").

Every score of Tables 1-3 carries a 95% interval and, for each method, its paired difference to the base model
(arrag.evaluation.intervals): bootstrapped over prompts from the per-image records (GenEval, DPG-Bench), or read
from the replicates `arrag fidelity --bootstrap` stored (FID, CMMD, FWD). CSV: <col>_ci_low, <col>_ci_high,
<col>_diff_vs_base, <col>_diff_ci_low, <col>_diff_ci_high, ci_level, ci_resamples, ci_seed; Markdown and LaTeX:
"score ± half-width (difference ± half-width)"; the paper's rows, published numbers, have none ("± —").
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arrag.io import atomic_path, write_text
from arrag.methods import run_label

PAPER_DIR = Path(__file__).resolve().parent / "paper_rows"

# Display names of our methods in Markdown and LaTeX (the CSV keeps the method ids).
METHOD_NAMES = {"vanilla": "base model", "daid": "+ DAiD", "faid": "+ FAiD", "racm3": "+ RA-CM3"}
METHOD_NAMES |= {"showo": "Show-o", "showo_daid": "Show-o + DAiD", "showo_faid": "Show-o + FAiD"}
METHOD_NAMES |= {"vq_reconstructions": "VQ reconstructions (ceiling)"}  # arrag vq-ceiling


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    digits: int = 2
    percent: bool = False  # a fraction shown as a signed percentage
    count: bool = False  # a parameter count shown as 1.2B / 3.4M / 5.6K
    delta: bool = False  # shown with its difference to the base model's row, "0.72 (+0.01)" (CSV: <key>_delta)
    interval: bool = False  # a score with a 95% interval, "0.72 ± 0.03" (CSV: <key>_ci_low, <key>_ci_high)


# The paper's Params column: parameters of what makes each method's images (arrag.decoding.pipeline.method_parameters)
PARAMS = Column("params", "Params", 1, count=True)


@dataclass(frozen=True)
class TableSpec:
    name: str  # file stem under tables/, and the paper's reference file
    caption: str
    columns: tuple[Column, ...]
    label: tuple[str, str] = ("method", "Method")  # the row label: key in the rows, header


# Table 1's columns, in the paper's order: (summary tag, column header)
GENEVAL_COLUMNS = [
    ("single_object", "Single Obj."),
    ("two_object", "Two Obj."),
    ("counting", "Counting"),
    ("colors", "Colors"),
    ("position", "Position"),
    ("color_attr", "Color Attri."),
]
DPG_CATEGORIES = [("global", "Global"), ("entity", "Entity"), ("attribute", "Attribute"), ("relation", "Relation")]
DPG_CATEGORIES += [("other", "Other")]

TABLES = {
    "geneval": TableSpec(
        "geneval",
        "GenEval (Table 1): accuracy per tag; overall is the unweighted mean of the six tags.",
        (PARAMS,)
        + tuple(Column(k, h, interval=True) for k, h in GENEVAL_COLUMNS)
        + (Column("overall", "Overall", 3, delta=True, interval=True),),
    ),
    "dpg": TableSpec(
        "dpg",
        "DPG-Bench (Table 2): VQA accuracy x 100 per L1 category; overall is the mean image score.",
        (PARAMS,)
        + tuple(Column(k, h, interval=True) for k, h in DPG_CATEGORIES)
        + (Column("overall", "Overall", delta=True, interval=True),),
    ),
    "fidelity": TableSpec(
        "fidelity",
        "Fidelity against real images (Table 3): lower is better.",
        (
            PARAMS,
            Column("cmmd", "CMMD", 3, delta=True, interval=True),
            Column("fid", "FID", delta=True, interval=True),
            Column("fwd", "FWD", 3, delta=True, interval=True),
        ),
    ),
    "inference_time": TableSpec(
        "inference_time",
        "Inference time (Table 4): all timed images, seconds per image, and the overhead against the base model "
        "of the row's backbone (Janus, Show-o) in the same run.",
        (
            PARAMS,
            Column("total_s", "Total (s)", 2),
            Column("seconds_per_image", "Average (s)", 4),
            Column("overhead", "vs base", 1, percent=True),
        ),
    ),
    "over_copying": TableSpec(
        "over_copying",
        "Over-copying: tokens equal to a retrieved candidate, and the largest region copied from one source image.",
        (
            Column("copied_fraction_mean", "Copied tokens", 1, percent=True),
            Column("largest_region_fraction_mean", "Largest region (mean)", 2, percent=True),
            Column("largest_region_fraction_max", "Largest region (max)", 2, percent=True),
        ),
    ),
}


def read_summary(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the rule that scores it (see `snakemake -n {path}`)")
    return json.loads(path.read_text())


def geneval_row(summary: dict, label: str) -> dict:
    missing = [tag for tag, _ in GENEVAL_COLUMNS if tag not in summary["tags"]]
    if missing:
        raise ValueError(f"the GenEval summary of {label!r} lacks the tags {missing}: score the full prompt set")
    row = {tag: summary["tags"][tag]["accuracy"] for tag, _ in GENEVAL_COLUMNS}
    return row | {"overall": summary["overall"], "images": summary["images"]}


def dpg_row(summary: dict, label: str) -> dict:
    cats = summary["categories"]
    return {k: cats.get(k) for k, _ in DPG_CATEGORIES} | {"overall": summary["overall"], "images": summary["images"]}


def fidelity_row(result: dict, label: str) -> dict:
    """An `arrag fidelity` result; a metric it did not compute stays empty."""
    row = {k: result.get(k) for k in ("cmmd", "fid", "fwd", "images", "reference_images")}
    return row | {"network": (result.get("fid_network") or {}).get("name")}


def inference_rows(bench: dict) -> dict[str, dict]:
    """`arrag bench generate` result -> run label (run_label: `daid` on Janus, `showo_daid` on Show-o) -> row; the
    overhead is against the backbone's vanilla row in the same run."""
    backbone = bench.get("backbone", "janus")  # (results written before Show-o was timed are Janus's)
    return {
        run_label(r["method"], backbone): {
            "params": r["parameters"],
            "total_s": r["total_seconds"],
            "images": r["images"],
            "seconds_per_image": 1.0 / r["images_per_second"],
            "images_per_second": r["images_per_second"],
            "overhead": r["overhead_vs_vanilla"],
            "device": bench["device"],
        }
        for r in bench["rows"]
    }


def inference_table_rows(benches: list[tuple[str, dict]]) -> dict[str, dict]:
    """Table 4's rows from one `arrag bench generate` result per backbone ((path, result), Janus's first): each
    row's overhead is against its own backbone's vanilla row, timed in the same run."""
    rows, sources = {}, {}
    for path, bench in benches:
        for label, row in inference_rows(bench).items():
            if label in rows:
                raise ValueError(f"{sources[label]} and {path} both time the {label!r} row: give one per backbone")
            rows[label], sources[label] = row, path
    return rows


def generation_parameters(path: str | Path) -> int:
    """The parameter count `arrag generate-benchmark` recorded in a prompt set's generation.json."""
    record = read_summary(path)
    if not isinstance(record.get("parameters"), int):
        raise ValueError(f"{path} records no parameter count: regenerate it with this version of arrag")
    return record["parameters"]


def add_deltas(spec: TableSpec, rows: list[dict]) -> list[dict]:
    """Each delta column's difference to the base model of the row's backbone, as <key>_delta: our rows against
    our vanilla row, the paper's against its row named after their group (Janus-Pro, Show-o)."""
    keys = [c.key for c in spec.columns if c.delta]
    measured_bases = {r["method"]: r for r in rows if r.get("source") == "measured" and r["method"] in BASES}
    paper_bases = {r["method"]: r for r in rows if r.get("source") == "paper"}
    for r in rows:
        measured = r.get("source") == "measured"
        base = measured_bases.get(base_of(r["method"])) if measured else paper_bases.get(r.get("group"))
        if base is None or base is r:
            continue
        for key in keys:
            if r.get(key) is not None and base.get(key) is not None:
                r[f"{key}_delta"] = r[key] - base[key]
    return rows


BASE = "vanilla"  # our base model's label: every other method's paired difference is against its row
SHOWO_BASE = "showo"  # Show-o's rows (showo, showo_daid, showo_faid) are compared with plain Show-o's
BASES = (BASE, SHOWO_BASE)


def base_of(label: str) -> str:
    """The label of the row a measured row's differences are against: its backbone's plain row."""
    return SHOWO_BASE if label == SHOWO_BASE or label.startswith(SHOWO_BASE + "_") else BASE


def paired_columns(points: dict, reps: dict, level, centred: bool = False) -> dict[str, dict]:
    """intervals.interval_columns per backbone: each row paired with its backbone's plain row (when present)."""
    from arrag.evaluation import intervals

    out = {}
    for base in BASES:
        group = [label for label in reps if base_of(label) == base]
        sub_points, sub_reps = {k: points[k] for k in group}, {k: reps[k] for k in group}
        out |= intervals.interval_columns(sub_points, sub_reps, base if base in group else None, level, centred)
    return out


FIDELITY_METRICS = ("cmmd", "fid", "fwd")


def record_intervals(kind: str, measured: dict[str, dict], results: dict, records: dict, boot) -> None:
    """geneval / dpg: each row's 95% intervals and paired differences to the base model, bootstrapped over
    prompts (arrag.evaluation.intervals) from the per-image records written with its summary (--out-jsonl)."""
    from arrag.evaluation import intervals
    from arrag.io import read_jsonl

    if kind not in ("geneval", "dpg"):
        raise ValueError(f"per-image records give intervals to the geneval and dpg tables, not {kind!r}")
    if set(records) != set(measured):
        raise ValueError(
            f"give --records for every --result or for none: records for {sorted(records)}, "
            f"results for {sorted(measured)}"
        )
    scores = {}
    for label, path in records.items():
        if kind == "geneval":
            scores[label] = intervals.geneval_prompt_scores(read_jsonl(path))
        else:  # the category scores as the summary made them (dpg.summarise's options)
            quirks = read_summary(results[label]).get("quirks", {})
            options = [quirks.get(k, True) for k in ("last_crop_categories", "raw_categories")]
            scores[label] = intervals.dpg_prompt_scores(read_jsonl(path), *options)
        intervals.check_matches(scores[label].point(), measured[label], path, results[label])
    points = {label: s.point() for label, s in scores.items()}
    reps = intervals.replicates(scores, boot)
    reps = {
        label: {c: r for c, r in cols.items() if measured[label].get(c) is not None} for label, cols in reps.items()
    }
    for label, cols in paired_columns(points, reps, boot.level).items():
        measured[label] |= cols | boot.record()


def stored_replicates(record: dict, path, metrics=FIDELITY_METRICS) -> dict[str, np.ndarray]:
    """metric -> the replicates an `arrag fidelity --bootstrap` record holds, refusing a record whose replicates are
    not `ci_resamples` finite numbers (a damaged or hand-edited file)."""
    out = {}
    for m in metrics:
        if record.get(f"{m}_replicates") is None:
            continue
        r = np.asarray(record[f"{m}_replicates"], dtype=float)
        if r.shape != (record["bootstrap"]["ci_resamples"],) or not np.isfinite(r).all():
            raise ValueError(
                f"{path}: {m}_replicates must be {record['bootstrap']['ci_resamples']} finite numbers (ci_resamples), "
                f"got shape {r.shape} with {int((~np.isfinite(r)).sum())} non-finite: rescore it with `arrag fidelity`"
            )
        out[m] = r
    return out


def fidelity_intervals(measured: dict[str, dict], results: dict) -> None:
    """Table 3: each row's intervals and paired differences to the base model from the replicates `arrag
    fidelity` stored (the generated images resampled by prompt against fixed reference statistics). Records
    made with the same draws (seed, resamples, prompts) pair replicate by replicate; others are refused."""

    records = {label: read_summary(path) for label, path in results.items()}
    setups = {label: r["bootstrap"] for label, r in records.items() if r.get("bootstrap")}
    points, reps = {}, {}
    for label in setups:
        r = records[label]
        reps[label] = stored_replicates(r, results[label])
        points[label] = {m: r[m] for m in reps[label]}
    for label, setup in setups.items():
        base = base_of(label) if base_of(label) in setups else None
        if base is not None and setup != setups[base]:
            raise ValueError(
                f"{results[label]} and {results[base]} were bootstrapped differently ({setup} vs {setups[base]}): "
                "a paired difference needs the same draws; rescore both with one `arrag fidelity --bootstrap --seed`"
            )
    level = next(iter(setups.values()))["ci_level"] if setups else None
    for label, cols in paired_columns(points, reps, level, centred=True).items():
        measured[label] |= cols | {k: setups[label][k] for k in ("ci_level", "ci_resamples", "ci_seed")}


def interval_note(spec: TableSpec, rows: list[dict]) -> str:
    """The caption's sentence on the intervals: how they were made, and why some rows have none."""
    if not any(c.interval for c in spec.columns):
        return ""
    r = next((r for r in rows if r.get("ci_resamples")), None)
    none = "— : no interval, for want of per-prompt results (the paper's rows are published numbers)."
    if r is None:
        return f"± {none}"
    unit = "prompts"
    if spec.name == "fidelity":
        unit += (
            " (their generated images against fixed reference statistics; as repeated images bias a resample's "
            "metric upwards, the percentiles are centred on the point value)"
        )
    return (
        f"± is half the width of a {100 * r['ci_level']:g}% percentile-bootstrap interval over {unit}, "
        f"{r['ci_resamples']} resamples, seed {r['ci_seed']} (CSV: <column>_ci_low, _ci_high); the difference "
        "to the base model, in brackets, carries the paired bootstrap's interval on the same prompts (CSV: "
        f"<column>_diff_vs_base, _diff_ci_low, _diff_ci_high). {none}"
    )


def measured_row(kind: str, path: str | Path, label: str) -> dict:
    """One method's row of table `kind` from its result: a GenEval or DPG-Bench summary, a fidelity JSON, or
    (over_copying) the GenEval-layout folder holding its copying.json records."""
    if kind == "over_copying":
        from arrag.evaluation.over_copying import read_copying_records, summarise

        return summarise(read_copying_records(path))
    readers = {"geneval": geneval_row, "dpg": dpg_row, "fidelity": fidelity_row}
    if kind not in readers:
        raise ValueError(f"no per-method result for the {kind!r} table (known: {sorted(readers)} and over_copying)")
    return readers[kind](read_summary(path), label)


def paper_rows(name: str) -> list[dict]:
    """The paper's published rows of a table, marked source = "paper" (empty cells -> None)."""
    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        return []
    rows = []
    for raw in csv.DictReader(path.open(encoding="utf-8")):
        row = {"method": raw.pop("method"), "source": "paper"}
        row |= {k: (float(v) if _is_number(v) else (v or None)) for k, v in raw.items()}
        row["params"] = _count_from_text(raw.get("params"))
        rows.append(row)
    if name == "inference_time":  # the paper states overheads against Janus-Pro's seconds per image
        base = next(r["seconds_per_image"] for r in rows if r["method"] == "Janus-Pro")
        for r in rows:
            r["overhead"] = r["seconds_per_image"] / base - 1
    return rows


def _count_from_text(text: str | None) -> float | None:
    """The paper's Params cells ("1.2B", "1B", "-") as numbers of parameters (None when not given)."""
    units = {"B": 1e9, "M": 1e6, "K": 1e3}
    if not text or text[-1] not in units or not _is_number(text[:-1]):
        return None
    return float(text[:-1]) * units[text[-1]]


def _count(value: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plus_minus(row: dict, prefix: str, digits: int) -> str:
    """ "± h": half the width of the interval <prefix>_low .. <prefix>_high, or "± —" where the row has none."""
    low, high = row.get(f"{prefix}_low"), row.get(f"{prefix}_high")
    return "± —" if _missing(low) or _missing(high) else f"± {(high - low) / 2:.{digits}f}"


def _cell(row: dict, column: Column) -> str:
    value, digits = row.get(column.key), column.digits
    if _missing(value):
        return "–"
    if column.count:
        return _count(value)
    if column.percent:
        return f"{100 * value:+.{digits}f}%" if column.key == "overhead" else f"{100 * value:.{digits}f}%"
    text = f"{value:.{digits}f}" + row.get(f"{column.key}_mark", "")
    if column.interval:
        text += " " + _plus_minus(row, f"{column.key}_ci", digits)
    delta = row.get(f"{column.key}_delta")
    if column.delta and not _missing(delta):
        has_ci = not _missing(row.get(f"{column.key}_diff_ci_low"))
        text += (
            f" ({delta:+.{digits}f}" + (" " + _plus_minus(row, f"{column.key}_diff_ci", digits) if has_ci else "") + ")"
        )
    return text


def _cells(row: dict, spec: TableSpec) -> list[str]:
    return [_cell(row, c) for c in spec.columns]


def _name(row: dict, key: str = "method") -> str:
    value = row[key]
    name = METHOD_NAMES.get(value, value) if key == "method" else (f"{value:g}" if isinstance(value, float) else value)
    name = str(name)
    return f"{name} (paper)" if row.get("source") == "paper" else name


def render_csv(rows: list[dict]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))  # union of keys, first-seen order
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def render_markdown(spec: TableSpec, rows: list[dict], note: str = "") -> str:
    headers = [spec.label[1]] + [c.header for c in spec.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append(f"| {_name(r, spec.label[0])} | " + " | ".join(_cells(r, spec)) + " |")
    return "\n".join(lines) + f"\n\n{spec.caption}" + (f" {note}" if note else "") + "\n"


def _latex_escape(text: str) -> str:
    text = re.sub(r"([&%$#_{}])", r"\\\1", text).replace("~", r"\textasciitilde{}")
    return text.replace("±", r"$\pm$").replace("—", "---")


def render_latex(spec: TableSpec, rows: list[dict], note: str = "") -> str:
    """A booktabs table; the paper's reference rows, when present, sit above a rule."""
    cols = "l" + "r" * len(spec.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join([spec.label[1]] + [_latex_escape(c.header) for c in spec.columns]) + r" \\",
        r"\midrule",
    ]
    previous = None
    for r in rows:
        if previous is not None and r.get("source") != previous:
            lines.append(r"\midrule")
        previous = r.get("source")
        cells = [_latex_escape(_name(r, spec.label[0]))] + [_latex_escape(cell) for cell in _cells(r, spec)]
        lines.append(" & ".join(cells) + r" \\")
    caption = _latex_escape(spec.caption + (f" {note}" if note else ""))
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:{spec.name}}}"]
    return "\n".join(lines + [r"\end{table}"]) + "\n"


def write_table(
    spec: TableSpec, measured: dict[str, dict], out_prefix: str | Path, note: str = "", paper: bool = False
) -> list[dict]:
    """label -> row  =>  <out_prefix>.csv, .md and .tex (each atomic), the paper's rows first when paper=True."""
    rows = paper_rows(spec.name) if paper else []
    rows += [{"method": label, "source": "measured", **row} for label, row in measured.items()]
    if not rows:
        raise ValueError(f"no rows for the {spec.name} table: give at least one result")
    add_deltas(spec, rows)
    write_rows(spec, rows, out_prefix, " ".join(filter(None, [note, interval_note(spec, rows)])))
    return rows


def write_rows(spec: TableSpec, rows: list[dict], out_prefix: str | Path, note: str = "", csv: bool = True) -> None:
    """Rows as <out_prefix>.md and .tex (and .csv unless csv=False), each written atomically, and only once all
    are rendered: a table that fails to render leaves the old files as they were, not a mix."""
    out_prefix = Path(out_prefix)
    texts = {".csv": render_csv(rows)} if csv else {}
    texts |= {".md": render_markdown(spec, rows, note), ".tex": render_latex(spec, rows, note)}
    for suffix, text in texts.items():
        write_text(out_prefix.with_suffix(suffix), text)


def retrieval_accuracy_rows(result: dict) -> list[dict]:
    """Figure 6's data (arrag.evaluation.retrieval_accuracy) as rows: one per rank, then the random baseline."""
    keys = ("mean_distance", "std_distance", "exact_match")
    rows = [{"rank": r, **{k: result[k][i] for k in keys}} for i, r in enumerate(result["rank"])]
    return rows + [{"rank": "random", **{k: result[f"random_{k}"] for k in keys}}]


RETRIEVAL_ACCURACY = TableSpec(
    "retrieval_accuracy",
    "Retrieval accuracy (Figure 6): distance from the i-th retrieved token to the ground-truth token, and how "
    "often it is that token; a random token for comparison.",
    (Column("mean_distance", "Mean distance", 3), Column("std_distance", "Std", 3), Column("exact_match", "Exact", 3)),
    label=("rank", "Rank"),
)


CONTAMINATION = TableSpec(
    "contamination",
    "Benchmark images found in the retrieval corpora and fine-tuning pairs, and removed from them: exact "
    "(identical pixels after the tokenizer's resize and crop) and near duplicates (not counted again); an image "
    "of several pairs is removed once.",
    (
        Column("reference_images", "Reference images", 0),
        Column("source_images", "Source images", 0),
        Column("exact", "Exact", 0),
        Column("near", "Near", 0),
        Column("removed", "Removed", 0),
    ),
    label=("pair", "Reference / source"),
)


def write_contamination_table(exclusions: dict, out_prefix: str | Path) -> None:
    """The contamination check's pairs (arrag.data.contamination.find_contamination) as a table."""
    note = (
        f"Near: pHash within {exclusions['phash_bits']} of 64 bits and 8 x 8 colour thumbnails within "
        f"{exclusions['thumbnail_rms']:g} grey levels (RMS)."
    )
    write_rows(CONTAMINATION, exclusions["pairs"], out_prefix, note)


# How a sweep point is scored (`arrag sweep-table --metric`): the value column of its rows, the heatmap's label,
# and whether higher is better. geneval: the overall score of a GenEval summary; fid: the FID of an `arrag
# fidelity` record (the paper's Figure 7: FID on 10K MJHQ-30K prompts).
SWEEP_METRICS = {"geneval": ("overall", "GenEval overall", True), "fid": ("fid", "FID (lower is better)", False)}


def sweep_pivot(
    rows: list[dict], x: str, y: str, name: str, title: str, value: str = "overall"
) -> tuple[TableSpec, list[dict]]:
    """A sweep's scores as a grid: one row per value of y, one column per value of x (Figure 7)."""
    xs = sorted({r[x] for r in rows})
    ci = any(f"{value}_ci_low" in r for r in rows)  # ± and * once the sweep has intervals (sweep_intervals)
    columns = tuple(Column(f"{x}={v:g}", f"{x} {v:g}", 3, interval=ci) for v in xs)
    spec = TableSpec(name, title, columns, label=(y, y))
    grid: dict = {}
    for r in rows:
        key = f"{x}={r[x]:g}"
        cell = {key: r[value], f"{key}_ci_low": r.get(f"{value}_ci_low"), f"{key}_ci_high": r.get(f"{value}_ci_high")}
        grid.setdefault(r[y], {y: r[y]}).update(cell | {f"{key}_mark": "*" if r.get("differs_from_best") else ""})
    return spec, [grid[v] for v in sorted(grid)]


def params_from_path(path: str | Path) -> dict[str, str]:
    """Sweep parameters from Snakemake Paramspace path components: .../weight~0.1/temperature~1.0/... ->
    {"weight": "0.1", "temperature": "1.0"}."""
    params = dict(re.findall(r"([A-Za-z_]+)~([^/]+)", str(path)))
    if not params:
        raise ValueError(f"{path}: no key~value components; sweep outputs live under .../name~value/ folders")
    return params


def _number(text: str) -> int | float:
    """ "12" -> 12 (a hop set stays an integer, not 12.0), "0.1" -> 0.1."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def sweep_rows(summaries: dict[str, dict], metric: str = "geneval") -> list[dict]:
    """path -> score record  =>  one row per run: its parameters and its score (geneval: overall and per-tag
    accuracies of a GenEval summary; fid: FID, and FWD beside it, of an `arrag fidelity` record)."""
    if metric not in SWEEP_METRICS:
        raise ValueError(f"unknown sweep metric {metric!r}: use one of {sorted(SWEEP_METRICS)}")
    rows = []
    for path, s in summaries.items():
        row = {k: _number(v) for k, v in params_from_path(path).items()}
        if metric == "fid":
            if s.get("fid") is None:
                raise ValueError(f"{path} holds no FID: score the sweep point with `arrag fidelity --fid-network ...`")
            row |= {"fid": s["fid"], "fwd": s.get("fwd"), "images": s["images"]}
        else:
            row |= {"overall": s["overall"], **{tag: s["tags"][tag]["accuracy"] for tag, _ in GENEVAL_COLUMNS}}
        rows.append(row)
    return rows


def sweep_heatmap(rows: list[dict], x: str, y: str, out_png, title: str, metric: str = "geneval") -> Path:
    """A sweep's score over a 2-D grid of parameters (x across, y down), each cell annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    value, label, _ = SWEEP_METRICS[metric]
    xs, ys = sorted({r[x] for r in rows}), sorted({r[y] for r in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    labels = {}
    for r in rows:
        i, j = ys.index(r[y]), xs.index(r[x])
        grid[i, j] = r[value]
        labels[i, j] = f"{r[value]:.3f}" + ("*" if r.get("differs_from_best") else "")
        if not _missing(r.get(f"{value}_ci_low")):
            labels[i, j] += "\n" + _plus_minus(r, f"{value}_ci", 3)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(xs), 1.0 + 0.8 * len(ys)))
    image = ax.imshow(grid, cmap="viridis" if SWEEP_METRICS[metric][2] else "viridis_r", aspect="auto")
    for (i, j), text in labels.items():  # dark text on the colour map's bright end
        colour = "black" if image.norm(grid[i, j]) > 0.6 else "white"
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    if any("differs_from_best" in r for r in rows):
        best = best_sweep_row(rows, metric)
        outline = plt.Rectangle((xs.index(best[x]) - 0.5, ys.index(best[y]) - 0.5), 1, 1, fill=False, color="red", lw=2)
        ax.add_patch(outline)
        title += "\nbest: red box; * differs from it beyond noise\n(paired 95% interval of the difference excludes 0)"
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out_png


def best_sweep_row(rows: list[dict], metric: str = "geneval") -> dict:
    """The best run of a sweep: the highest GenEval overall, or the lowest FID."""
    value, _, higher_is_better = SWEEP_METRICS[metric]
    return (max if higher_is_better else min)(rows, key=lambda r: r[value])


def sweep_intervals(rows: list[dict], summaries: dict[str, dict], metric: str, records: dict | None, boot) -> None:
    """Each sweep run's intervals, and its paired difference to the best run (all runs share the sweep's
    prompts): diff_vs_best, diff_ci_low, diff_ci_high, differs_from_best (that interval excludes 0). geneval:
    bootstrapped from each run's per-image records; fid: from the replicates `arrag fidelity --bootstrap`
    stored, which must share one set of draws. Rows in `summaries` order; left as they are without either."""
    from arrag.evaluation import intervals
    from arrag.io import read_jsonl

    paths = list(summaries)
    if metric == "geneval":
        if not records or boot is None:
            return
        scores = {}
        for i, path in enumerate(paths):
            scores[i] = intervals.geneval_prompt_scores(read_jsonl(records[path]))
            intervals.check_matches(scores[i].point(), rows[i], records[path], path)
        reps, made = intervals.replicates(scores, boot), boot.record()
    else:
        setups = [summaries[p].get("bootstrap") for p in paths]
        if any(s is None for s in setups):
            return
        if any(s != setups[0] for s in setups):
            raise ValueError(
                f"the sweep's fidelity records were bootstrapped differently ({setups[0]} vs others): "
                "rescore them with one `arrag fidelity --bootstrap --seed`"
            )
        reps = {i: stored_replicates(summaries[p], p, ("fid", "fwd")) for i, p in enumerate(paths)}
        made = {k: setups[0][k] for k in ("ci_level", "ci_resamples", "ci_seed")}
    value = SWEEP_METRICS[metric][0]
    best = rows.index(best_sweep_row(rows, metric))
    points = {i: {c: rows[i][c] for c in reps[i]} for i in reps}
    centred = metric == "fid"  # a resample biases FID (fidelity.fidelity_bootstrap)
    for i, cols in intervals.interval_columns(points, reps, best, made["ci_level"], centred).items():
        rows[i] |= {k: v for k, v in cols.items() if "_diff_" not in k}
        low, high = cols.get(f"{value}_diff_ci_low", 0.0), cols.get(f"{value}_diff_ci_high", 0.0)
        diff = cols.get(f"{value}_diff_vs_base", 0.0)
        rows[i] |= {"diff_vs_best": diff, "diff_ci_low": low, "diff_ci_high": high}
        rows[i] |= {"differs_from_best": bool(low > 0 or high < 0)} | made


def write_sweep(
    summaries: dict[str, dict],
    out_csv,
    out_png,
    x: str,
    y: str,
    title: str,
    metric: str = "geneval",
    records: dict[str, str] | None = None,
    boot=None,
) -> list[dict]:
    """The sweep's runs as a long CSV, its scores as a Markdown/LaTeX grid beside it, and a heatmap; with
    per-image records (geneval: summary path -> JSONL) or stored replicates (fid), each with its interval and
    its paired difference to the best run (sweep_intervals)."""
    rows = sweep_rows(summaries, metric)
    sweep_intervals(rows, summaries, metric, records, boot)
    rows = sorted(rows, key=lambda r: (r[y], r[x]))
    write_text(out_csv, render_csv(rows))
    spec, grid = sweep_pivot(rows, x, y, Path(out_csv).stem, title, SWEEP_METRICS[metric][0])
    note = ""
    if rows and "differs_from_best" in rows[0]:
        r = rows[0]
        note = (
            f"Intervals: ± is half the width of a {100 * r['ci_level']:g}% percentile-bootstrap interval over prompts, "
            f"{r['ci_resamples']} resamples, seed {r['ci_seed']}; * : differs from the best run beyond noise "
            "(the paired bootstrap's interval of the difference excludes 0; CSV: diff_vs_best, diff_ci_low, "
            "diff_ci_high, differs_from_best)."
        )
    write_rows(spec, grid, Path(out_csv).with_suffix(""), note, csv=False)
    sweep_heatmap(rows, x, y, out_png, title, metric)
    return rows
