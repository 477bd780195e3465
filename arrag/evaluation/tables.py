"""Result tables from GenEval summaries: the paper's Table 1 layout per method, and hyper-parameter sweeps
(Figure 7) as a CSV plus a heatmap. CSV for pandas, Markdown for the README and the report."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np

from arrag.io import atomic_path, write_text

# Table 1's columns, in the paper's order: (summary tag, column header)
GENEVAL_COLUMNS = [
    ("single_object", "Single Obj."),
    ("two_object", "Two Obj."),
    ("counting", "Counting"),
    ("colors", "Colors"),
    ("position", "Position"),
    ("color_attr", "Color Attri."),
]


def read_summary(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: score the images first (`arrag geneval --out-json {path}`)")
    return json.loads(path.read_text())


def geneval_rows(summaries: dict[str, dict]) -> list[dict]:
    """label -> GenEval summary  =>  one row per method: the six tag accuracies and the overall score."""
    rows = []
    for label, s in summaries.items():
        missing = [tag for tag, _ in GENEVAL_COLUMNS if tag not in s["tags"]]
        if missing:
            raise ValueError(f"the GenEval summary of {label!r} lacks the tags {missing}: score the full prompt set")
        row = {"method": label, **{tag: s["tags"][tag]["accuracy"] for tag, _ in GENEVAL_COLUMNS}}
        rows.append(row | {"overall": s["overall"], "images": s["images"]})
    return rows


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def geneval_markdown(rows: list[dict], note: str = "") -> str:
    headers = ["Method"] + [h for _, h in GENEVAL_COLUMNS] + ["Overall"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        cells = [f"{r[tag]:.2f}" for tag, _ in GENEVAL_COLUMNS] + [f"**{r['overall']:.3f}**"]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{note}\n" if note else "\n")


def write_geneval_table(summaries: dict[str, dict], out_csv, out_md, note: str = "") -> list[dict]:
    rows = geneval_rows(summaries)
    write_text(out_csv, _csv(rows))
    write_text(out_md, geneval_markdown(rows, note))
    return rows


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
    rows = sorted(sweep_rows(summaries), key=lambda r: (r[y], r[x]))
    write_text(out_csv, _csv(rows))
    sweep_heatmap(rows, x, y, out_png, title)
    return rows


def write_fidelity_table(results: dict[str, dict], out_csv, out_md, note: str = "") -> list[dict]:
    """label -> `arrag fwd` result  =>  Table 3's layout with the metrics measured so far (FWD)."""
    rows = [
        {"method": label, "fwd": r["fwd"], "images": r["images"], "reference": r["reference"]}
        for label, r in results.items()
    ]
    write_text(out_csv, _csv(rows))
    lines = ["| Method | FWD ↓ |", "|---|---|"] + [f"| {r['method']} | {r['fwd']:.4f} |" for r in rows]
    write_text(out_md, "\n".join(lines) + (f"\n\n{note}\n" if note else "\n"))
    return rows
