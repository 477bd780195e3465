"""The paper's tables from our results, each as CSV (pandas), Markdown (README, report) and LaTeX (booktabs):
Table 1 (GenEval), Table 2 (DPG-Bench), Table 3 (CMMD, FID, FWD), Table 4 (inference time) and the
over-copying table; plus hyper-parameter sweeps (Figure 7) as a CSV and a heatmap.

A table is a `TableSpec` (its columns in the paper's order) and rows of dicts. In the paper profile the
paper's published rows (arrag/benchmarks/paper/<table>.csv) are added as reference rows, marked
source = "paper", above ours (source = "measured").
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

PAPER_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "paper"

# Display names of our methods in Markdown and LaTeX (the CSV keeps the method ids).
METHOD_NAMES = {"vanilla": "base model", "daid": "+ DAiD", "faid": "+ FAiD", "racm3": "+ RA-CM3"}


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    digits: int = 2
    percent: bool = False  # a fraction shown as a signed percentage


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
        tuple(Column(k, h) for k, h in GENEVAL_COLUMNS) + (Column("overall", "Overall", 3),),
    ),
    "dpg": TableSpec(
        "dpg",
        "DPG-Bench (Table 2): VQA accuracy x 100 per L1 category; overall is the mean image score.",
        tuple(Column(k, h) for k, h in DPG_CATEGORIES) + (Column("overall", "Overall"),),
    ),
    "fidelity": TableSpec(
        "fidelity",
        "Fidelity against real images (Table 3): lower is better.",
        (Column("cmmd", "CMMD", 3), Column("fid", "FID"), Column("fwd", "FWD", 3)),
    ),
    "inference_time": TableSpec(
        "inference_time",
        "Inference time (Table 4): seconds per image, and the overhead against the base model in the same run.",
        (Column("seconds_per_image", "Average (s)", 4), Column("overhead", "vs base", 1, percent=True)),
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
    """`arrag bench generate` result -> method -> row (the overhead is against vanilla in the same run)."""
    return {
        r["method"]: {
            "seconds_per_image": 1.0 / r["images_per_second"],
            "images_per_second": r["images_per_second"],
            "overhead": r["overhead_vs_vanilla"],
            "device": bench["device"],
        }
        for r in bench["rows"]
    }


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
        rows.append(row)
    if name == "inference_time":  # the paper states overheads against Janus-Pro's seconds per image
        base = next(r["seconds_per_image"] for r in rows if r["method"] == "Janus-Pro")
        for r in rows:
            r["overhead"] = r["seconds_per_image"] / base - 1
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _cell(value, column: Column) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column.percent:
        return f"{100 * value:+.{column.digits}f}%" if column.key == "overhead" else f"{100 * value:.{column.digits}f}%"
    return f"{value:.{column.digits}f}"


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
        cells = [_cell(r.get(c.key), c) for c in spec.columns]
        lines.append(f"| {_name(r, spec.label[0])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{spec.caption}" + (f" {note}" if note else "") + "\n"


def _latex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text).replace("~", r"\textasciitilde{}")


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
        cells = [_latex_escape(_name(r, spec.label[0]))] + [_latex_escape(_cell(r.get(c.key), c)) for c in spec.columns]
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
    write_rows(spec, rows, out_prefix, note)
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
    "often it is that token, on held-out positions; a random token for comparison.",
    (Column("mean_distance", "Mean distance", 3), Column("std_distance", "Std", 3), Column("exact_match", "Exact", 3)),
    label=("rank", "Rank"),
)


def sweep_pivot(rows: list[dict], x: str, y: str, name: str, title: str) -> tuple[TableSpec, list[dict]]:
    """A sweep's overall scores as a grid: one row per value of y, one column per value of x (Figure 7)."""
    xs = sorted({r[x] for r in rows})
    spec = TableSpec(name, title, tuple(Column(f"{x}={v:g}", f"{x} {v:g}", 3) for v in xs), label=(y, y))
    grid: dict = {}
    for r in rows:
        grid.setdefault(r[y], {y: r[y]})[f"{x}={r[x]:g}"] = r["overall"]
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


def sweep_rows(summaries: dict[str, dict]) -> list[dict]:
    """path -> GenEval summary  =>  one row per run: its parameters, overall and per-tag accuracies."""
    rows = []
    for path, s in summaries.items():
        row = {k: _number(v) for k, v in params_from_path(path).items()}
        row |= {"overall": s["overall"], **{tag: s["tags"][tag]["accuracy"] for tag, _ in GENEVAL_COLUMNS}}
        rows.append(row)
    return rows


def sweep_heatmap(rows: list[dict], x: str, y: str, out_png, title: str) -> Path:
    """Overall GenEval score over a 2-D grid of parameters (x across, y down), each cell annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = sorted({r[x] for r in rows}), sorted({r[y] for r in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        grid[ys.index(r[y]), xs.index(r[x])] = r["overall"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(xs), 1.0 + 0.8 * len(ys)))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="GenEval overall")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out_png


def write_sweep(summaries: dict[str, dict], out_csv, out_png, x: str, y: str, title: str) -> list[dict]:
    """The sweep's runs as a long CSV, its overall scores as a Markdown/LaTeX grid beside it, and a heatmap."""
    rows = sorted(sweep_rows(summaries), key=lambda r: (r[y], r[x]))
    write_text(out_csv, render_csv(rows))
    spec, grid = sweep_pivot(rows, x, y, Path(out_csv).stem, title)
    write_rows(spec, grid, Path(out_csv).with_suffix(""), csv=False)
    sweep_heatmap(rows, x, y, out_png, title)
    return rows
