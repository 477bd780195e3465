"""The scale table: each rule's measured cost per item in a run (its `jobstats/*.tsv`, Snakemake's benchmark
files: wall seconds, CPU seconds, peak RSS), and that cost extrapolated to the paper's counts, so a reader can plan
the real run.

Items are counted from the run's own outputs (code shards' and CLIP shards' counts, generation.json's images,
the trained models' recorded step counts), never from a config, so the table describes what actually ran.
The paper's counts (PAPER_ITEMS) are the paper's published sizes. Extrapolation is linear in items, which is what
these jobs are (batched per-item work); the fixed start-up cost of each job is part of the measured time, so the
per-item figure of a rehearsal with few items is an over-estimate. Time is measured on the machine that ran the
rehearsal (a CPU): it is that machine's hours, not GPU-hours, until a GPU run supplies its own job statistics.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The paper's counts (AR-RAG: retrieval corpus 5.7M CC12M + 3.3M JourneyDB + 4.6M DataComp images; 50K
# fine-tuning pairs, one epoch at a global batch of 256 = 196 steps; RA-CM3's CLIP index over CC12M + JourneyDB;
# GenEval's 553 prompts x 4 images, DPG-Bench's 1,065 prompts x 4 images and MJHQ-30K's 30,000 x 1, per method).
CORPUS_IMAGES = 5_700_000 + 3_300_000 + 4_600_000
PAIRS = 50_000
PER_METHOD_IMAGES = 553 * 4 + 1065 * 4 + 30_000
PAPER_ITEMS = {
    "tokenise_shard": CORPUS_IMAGES + PAIRS,  # images (the held-out Figure 6 folder is not counted)
    "embed_images": 5_700_000 + 3_300_000,  # images
    "build_database": CORPUS_IMAGES,  # images (576 entries each)
    "build_image_index": 5_700_000 + 3_300_000,  # images
    "faid_trainset": PAIRS,  # pairs
    "train_faid": 196 * 256,  # training sequences
    "train_racm3": 196 * 256,  # training sequences
    "generate": PER_METHOD_IMAGES,  # images per method
    "score_geneval": 553 * 4,  # images per method
    "score_dpg": 1065 * 4,  # images per method
    "score_fidelity": 30_000,  # images per method
    # Figure 7: DAiD's 5 x 4 grid of (lambda, tau) and FAiD's 3 x 3 grid of (hops, spacing), GenEval x 1 image each
    "generate_daid_sweep": 20 * 553,  # images
    "generate_faid_sweep": 9 * 553,  # images
    "train_faid_sweep": 9 * 196 * 256,  # training sequences
}


# Rules whose time is the backbone's forward (and backward) passes: decoding is bound by reading the weights at
# every step, training by the multiply-adds of every weight, so their cost per item scales with the parameters a
# step runs through. A rehearsal with a shallower stand-in (`arrag rehearsal mirror --depth 2`) is scaled up to
# Janus-Pro-1B's by that ratio (`model_factor`); the other rules run full-size networks (the VQ encoder, CLIP) or
# no network at all.
BACKBONE_RULES = ("generate", "generate_daid_sweep", "generate_faid_sweep", "train_faid", "train_faid_sweep",
                  "train_racm3")  # fmt: skip
# A generation job here is one batch, and a batch's cost hardly depends on its rows (every step reads the weights
# once for all of them): a fit over jobs of different sizes finds ~0 s per image. These rules keep the average,
# an upper bound at the paper's larger batches.
PER_BATCH_RULES = ("generate", "generate_daid_sweep", "generate_faid_sweep")


def step_parameters(config) -> int:
    """Parameters a decoding or training step multiplies by, for a JanusConfig: the language model's layers and
    final norm (not its embedding table: a lookup) and the image generation head and aligner."""
    import torch
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = JanusForConditionalGeneration(config)
    lm, parts = model.model.language_model, (model.model.generation_head, model.model.generation_aligner)
    total = sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
    return total + sum(p.numel() for part in parts for p in part.parameters())


def model_factor(model_dir: Path) -> float:
    """Janus-Pro-1B's step parameters over those of the run's backbone (`model_dir`, a saved Janus model): 1.0
    for a full-size run, about 8.8 for the 2-layer rehearsal stand-in."""
    from transformers import JanusConfig

    from arrag.data.mini_world import caption_vocabulary
    from arrag.models.janus import build_word_tokenizer
    from arrag.rehearsal import janus_pro_1b_config

    paper = janus_pro_1b_config(build_word_tokenizer(caption_vocabulary()))
    return step_parameters(paper) / step_parameters(JanusConfig.from_pretrained(model_dir))


@dataclass
class Measured:
    rule: str
    jobs: int = 0
    seconds: float = 0.0  # wall, summed over jobs
    cpu_seconds: float = 0.0
    max_rss_mb: float = 0.0  # the largest job's peak
    per_job: list = field(default_factory=list)  # (statistics file's path under the folder, wall s, CPU s)


def read_jobstats(jobstats_dir: str | Path) -> dict[str, Measured]:
    """Every `*.tsv` under jobstats_dir grouped by rule: the workflow names them `<rule>.tsv`, or
    `<rule>/<job>.tsv` for a rule with one job per wildcard value; generation is grouped per method
    (`generate/<method>/...` -> `generate (<method>)`)."""
    jobstats_dir = Path(jobstats_dir)
    files = sorted(jobstats_dir.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(
            f"{jobstats_dir} holds no job statistics *.tsv: run the workflow (e.g. the rehearsal) first"
        )
    groups: dict[str, Measured] = {}
    for path in files:
        rel = path.relative_to(jobstats_dir)
        rule = _rule_of(rel)
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        if not rows:
            raise ValueError(f"{path}: an empty job statistics file (a job that did not finish?); rerun its rule")
        m = groups.setdefault(rule, Measured(rule))
        for row in rows:
            values = {k: float(row[k]) for k in ("s", "cpu_time", "max_rss") if row.get(k) not in (None, "", "-")}
            m.jobs += 1
            m.seconds += values.get("s", 0.0)
            m.cpu_seconds += values.get("cpu_time", 0.0)
            m.max_rss_mb = max(m.max_rss_mb, values.get("max_rss", 0.0))
            m.per_job.append((rel.with_suffix("").as_posix(), values.get("s", 0.0), values.get("cpu_time", 0.0)))
    return groups


def _rule_of(rel: Path) -> str:
    """`world.tsv` -> `world`; `tokenise_shard/cc12m/00000-of-00002.tsv` -> `tokenise_shard`;
    `generate/daid/geneval/00000-of-00002.tsv` -> `generate (daid)`."""
    if len(rel.parts) == 1:
        return rel.stem
    return f"generate ({rel.parts[1]})" if rel.parts[0] == "generate" else rel.parts[0]


_RULE_LINE = re.compile(r"^(?:local)?rule (\w+):$")
_MEM = re.compile(r"\bmem_mb=(\d+)")
_METHOD = re.compile(r"\bmethod=(\w+)")


def declared_memory(plan: str) -> dict[str, float]:
    """rule -> the largest `mem_mb` its jobs declare in a Snakemake dry run's output (`snakemake -n --configfile
    config/paper.yaml ...`: what the paper's jobs ask of the scheduler, from arrag/resources.py), grouped like the
    job statistics (generation per method)."""
    declared: dict[str, float] = {}
    rule = method = None
    for line in plan.splitlines():
        line = line.strip()
        if match := _RULE_LINE.match(line):
            rule, method = match.group(1), None
        elif rule and line.startswith("wildcards:") and (match := _METHOD.search(line)):
            method = match.group(1)
        elif rule and line.startswith("resources:") and (match := _MEM.search(line)):
            name = f"generate ({method})" if rule == "generate" and method else rule
            declared[name] = max(declared.get(name, 0.0), float(match.group(1)))
            rule = None
    if not declared:
        raise ValueError(
            "the plan lists no job with mem_mb: give the output of `snakemake -n --configfile config/paper.yaml` "
            "(a dry run of the paper profile, not an empty or finished one)"
        )
    return declared


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _shard_counts(folder: Path) -> int:
    """Items in the code or CLIP shards under folder (each shard's .json records its `count`)."""
    return sum(_json(p).get("count", 0) for p in folder.rglob("*.json"))


def _images(record: Path) -> int:
    """Images a generation.json records: `generated` counts prompts, each with `n` images."""
    rec = _json(record)
    return rec["generated"] * rec.get("n", 1)


def _generated(results: Path, method: str | None = None, sets: tuple[str, ...] | None = None) -> int:
    total = 0
    for p in (results / "images").glob("*/*/generation.json"):
        run, prompt_set = p.parent.parent.name, p.parent.name
        if (method is None or run == method) and (sets is None or prompt_set in sets):
            total += _images(p)
    return total


_SCORE_SETS = {"score_geneval": ("geneval",), "score_dpg": ("dpg",), "score_fidelity": ("reference", "mjhq")}
_METHODS = ("vanilla", "daid", "faid", "racm3")


def job_items(results: Path, key: str) -> int | None:
    """Items one job processed, from its statistics file's path under jobstats/ without .tsv (`key`) and the
    outputs it wrote: a generation shard's images, a tokenisation or CLIP shard's count, a scorer's images; None
    where the outputs do not say."""
    parts = key.split("/")
    try:
        if parts[0] == "generate" and len(parts) == 4:  # generate/<method>/<prompts>/<shard>-of-<n>
            num_shards = int(parts[3].split("-of-")[1])
            return _images(results / "images" / parts[1] / parts[2] / "generation.json") // num_shards
        if parts[0] in ("tokenise_shard", "embed_images") and len(parts) == 3:  # <rule>/<source>/<shard>-of-<n>
            folder, prefix = ("codes", "codes") if parts[0] == "tokenise_shard" else ("clip", "clip")
            return _json(results / folder / parts[1] / f"{prefix}-{parts[2]}.json")["count"]
        if parts[0] in _SCORE_SETS and len(parts) == 2 and parts[1] in _METHODS:  # <rule>/<method>
            return _generated(results, method=parts[1], sets=_SCORE_SETS[parts[0]])
    except (FileNotFoundError, KeyError, IndexError, ValueError):
        pass
    return None


def marginal_cost(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(fixed seconds per job, seconds per item) fitted by least squares to (items, seconds) of a rule's jobs;
    None when the jobs' item counts do not differ or the fit is not a cost (a negative slope or intercept)."""
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_t = sum(t for _, t in points) / len(points)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in points) / sum((n - mean_n) ** 2 for n, _ in points)
    fixed = mean_t - slope * mean_n
    return (fixed, slope) if slope > 0 and fixed >= 0 else None


def _sweep_images(folder: Path) -> int:
    return sum(_images(p) for p in folder.rglob("generation.json"))


def _sequences(record: Path) -> int:
    """Training sequences a model saw: steps x global batch, from the record it saved (faid.json, training.json)."""
    rec = _json(record)
    return int(rec["steps"]) * int(rec["global_batch"])


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def item_counters(results: Path) -> dict[str, tuple[str, Callable[[], int], Path | None]]:
    """rule -> (unit, items it processed in this run, the folder its outputs fill: disk per item)."""
    corpus_codes = lambda: _json(results / "retrieval" / "db" / "metadata.json")["num_images"]  # noqa: E731
    counters = {
        "tokenise_shard": ("images", lambda: _shard_counts(results / "codes"), results / "codes"),
        "embed_images": ("images", lambda: _shard_counts(results / "clip"), results / "clip"),
        "build_database": ("images", corpus_codes, results / "retrieval" / "db"),
        "build_image_index": ("images", lambda: _shard_counts(results / "clip"), results / "retrieval" / "image_index"),
        "faid_trainset": (
            "pairs",
            lambda: _shard_counts(results / "retrieval" / "faid_trainset"),
            results / "retrieval" / "faid_trainset",
        ),
        "train_faid": ("sequences", lambda: _sequences(results / "models" / "faid" / "faid.json"), None),
        "train_racm3": ("sequences", lambda: _sequences(results / "models" / "racm3" / "training.json"), None),
        "score_geneval": ("images", lambda: _generated(results, sets=("geneval",)), None),
        "score_dpg": ("images", lambda: _generated(results, sets=("dpg",)), None),
        "score_fidelity": ("images", lambda: _generated(results, sets=("reference", "mjhq")), None),
    }
    counters["generate_daid_sweep"] = ("images", lambda: _sweep_images(results / "images" / "sweep_daid"), None)
    counters["generate_faid_sweep"] = ("images", lambda: _sweep_images(results / "images" / "sweep_faid"), None)
    counters["train_faid_sweep"] = (
        "sequences",
        lambda: sum(_sequences(p) for p in (results / "models" / "sweep_faid").rglob("faid.json")),
        None,
    )
    for method in ("vanilla", "daid", "faid", "racm3"):
        counters[f"generate ({method})"] = (
            "images",
            lambda m=method: _generated(results, method=m),
            results / "images" / method,
        )
    return counters


def scale_rows(results: str | Path, declared_mb: dict[str, float] | None = None) -> list[dict]:
    """One row per rule of the run: measured totals, per-item cost and the extrapolation to the paper's counts;
    with `declared_mb` (`declared_memory` of the paper profile's plan) the memory each paper job declares."""
    results = Path(results)
    measured = read_jobstats(results / "jobstats")
    counters = item_counters(results)
    base = results / "models" / "base"
    factor = model_factor(base) if (base / "config.json").is_file() else None
    rows = []
    for rule, m in sorted(measured.items()):
        row = {
            "rule": rule,
            "jobs": m.jobs,
            "seconds": m.seconds,
            "cpu_seconds": m.cpu_seconds,
            "max_rss_gb": m.max_rss_mb / 1024,
        }
        if declared_mb and rule in declared_mb:
            row["paper_mem_gb"] = declared_mb[rule] / 1000  # Snakemake's mem_mb is in MB
        if rule in counters:
            unit, count, folder = counters[rule]
            try:
                items = count()
            except (FileNotFoundError, KeyError):
                items = 0
            base_rule = rule.split(" ")[0]
            paper = PAPER_ITEMS.get(base_rule)
            if items and paper:
                scale = factor if factor and base_rule in BACKBONE_RULES else 1.0
                per_item, per_item_cpu, fit = m.seconds / items, m.cpu_seconds / items, "average"
                per_job = [] if base_rule in PER_BATCH_RULES else m.per_job  # no fit across batches (above)
                counted = [(job_items(results, key), wall, cpu) for key, wall, cpu in per_job]
                counted = [(n, wall, cpu) for n, wall, cpu in counted if n]
                wall_fit = marginal_cost([(n, wall) for n, wall, _ in counted])
                cpu_fit = marginal_cost([(n, cpu) for n, _, cpu in counted])
                if cpu_fit:  # jobs of different sizes: a fixed cost per job and a cost per item
                    per_item_cpu, fit, row["fixed_cpu_seconds"] = cpu_fit[1], "marginal", cpu_fit[0]
                if wall_fit:  # wall time on a loaded machine may not fit where CPU time does
                    per_item = wall_fit[1]
                row.update(
                    unit=unit,
                    items=items,
                    paper_items=paper,
                    fit=fit,
                    seconds_per_item=per_item,
                    cpu_seconds_per_item=per_item_cpu,
                    model_factor=scale,
                    paper_hours=per_item * paper * scale / 3600,
                    paper_cpu_hours=per_item_cpu * paper * scale / 3600,
                )
                if folder is not None and folder.exists():
                    row["paper_disk_gb"] = _folder_bytes(folder) / items * paper / 1e9
        rows.append(row)
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def run_span(jobstats_dir: str | Path) -> tuple[float, float]:
    """(first job's start, last job's end) of a run in epoch seconds, from its job statistics: Snakemake writes
    each `*.tsv` when the job ends, so a job started at the file's modification time minus its wall seconds."""
    starts, ends = [], []
    for path in Path(jobstats_dir).rglob("*.tsv"):
        for row in csv.DictReader(path.open(), delimiter="\t"):
            ends.append(path.stat().st_mtime)
            starts.append(ends[-1] - float(row["s"]))
    if not ends:
        raise FileNotFoundError(f"{jobstats_dir} holds no job statistics *.tsv: run the workflow first")
    return min(starts), max(ends)


def span_line(span: tuple[float, float], rows: list[dict]) -> str:
    """One sentence: when the run's jobs ran, how long it took from the first start to the last end, its CPU time."""
    import datetime

    utc = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    jobs, cpu = sum(r["jobs"] for r in rows), sum(r["cpu_seconds"] for r in rows)
    return (
        f"The run: {jobs} jobs from {utc(span[0])} to {utc(span[1])} UTC, {(span[1] - span[0]) / 60:.1f} min from the "
        f"first job's start to the last job's end, {cpu / 60:.1f} CPU-minutes in all (as its job statistics record).\n"
    )


def scale_markdown(rows: list[dict], source: str, span: tuple[float, float] | None = None) -> str:
    """The table as Markdown, rules with a paper count first; with `span` (`run_span`), a line on the run's time."""
    head = (
        "| rule | jobs | wall s | CPU s | peak RSS GB (largest job) | unit | items here | s per item | CPU s per item "
        "| per item | fixed CPU s per job | x model | paper items | paper hours (this machine) | paper CPU-hours "
        "| paper disk GB | paper GB per job (declared) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    scaled = [r for r in rows if "items" in r] + [r for r in rows if "items" not in r]
    body = "".join(
        f"| `{r['rule']}` | {r['jobs']} | {_fmt(r['seconds'])} | {_fmt(r['cpu_seconds'])} | {_fmt(r['max_rss_gb'])} "
        f"| {r.get('unit', '')} | {_fmt(r.get('items'))} | {_fmt(r.get('seconds_per_item'))} "
        f"| {_fmt(r.get('cpu_seconds_per_item'))} | {r.get('fit', '')} | {_fmt(r.get('fixed_cpu_seconds'))} "
        f"| {_fmt(r.get('model_factor'))} | {_fmt(r.get('paper_items'))} | {_fmt(r.get('paper_hours'))} "
        f"| {_fmt(r.get('paper_cpu_hours'))} | {_fmt(r.get('paper_disk_gb'))} | {_fmt(r.get('paper_mem_gb'))} |\n"
        for r in scaled
    )
    note = (
        f"\nMeasured from `{source}` (wall time per job summed over the rule's jobs; peak RSS of its largest job). "
        "Paper hours = wall seconds per item x the paper's items x model / 3600 (CPU-hours likewise from the jobs' "
        "CPU time, the better measure on a shared, loaded machine), where model is Janus-Pro-1B's parameters per "
        "step over the run's backbone's for the rules that run the backbone (1 for the others), on the machine that "
        "ran it (not GPU-hours unless it ran on GPUs); disk = the rule's output bytes per item x the paper's items. "
        "Both include each job's fixed cost (start-up, an index's centroids), so at a rehearsal's small counts they "
        "are upper bounds, except where the rule's jobs processed different numbers of items (per item: marginal): "
        "there a least-squares fit over its jobs separates a fixed cost per job from the cost per item, and the "
        "paper figures use the cost per item alone (add the fixed cost once per paper job). Generation rows keep the "
        "average: a generation job here is one batch, whose cost hardly depends on its rows (each step reads the "
        "weights once for all of them), so they are upper bounds at the paper's larger batches. Rows without a "
        "paper count are "
        "fixed-cost jobs. Peak RSS is not extrapolated: a job's memory does not grow with its items "
        "(tests/test_memory.py); at the paper's sizes it is what the rules declare (arrag/resources.py), shown in the "
        "last column where the table was given the paper profile's plan (`--paper-plan`). Snakemake samples a job's "
        "CPU time and memory every 0.5 s for its first 30 s and every 30 s after: a job shorter than half a second "
        "shows no CPU time and almost no memory, and a long job's short peaks can be missed.\n"
    )
    return (span_line(span, rows) + "\n" if span else "") + head + body + note


# ----------------------------------------------------------------------------- where a run's time went

_RULE_DEF = re.compile(r"^\s*(?:local)?rule (\w+):")


def rule_stages(rules_dir: str | Path) -> dict[str, str]:
    """rule name -> its stage: the stem of the workflow/rules/*.smk file that defines it (one file per stage)."""
    stages = {}
    for smk in sorted(Path(rules_dir).glob("*.smk")):
        for line in smk.read_text().splitlines():
            if match := _RULE_DEF.match(line):
                stages[match.group(1)] = smk.stem
    if not stages:
        raise FileNotFoundError(f"{rules_dir} defines no rules: give the workflow's rules folder (workflow/rules)")
    return stages


def stage_rows(jobstats_dir: str | Path, rules_dir: str | Path) -> list[dict]:
    """The run's job statistics summed per stage, most wall time first: jobs, wall and CPU seconds (summed over
    its jobs), the largest job's peak RSS, and its rules with their wall seconds (most first)."""
    stages = rule_stages(rules_dir)
    rows: dict[str, dict] = {}
    for rule, m in read_jobstats(jobstats_dir).items():
        name = rule.split(" ")[0]  # `generate (daid)` -> generate
        if name not in stages:
            raise ValueError(f"{jobstats_dir}: statistics of rule {name!r}, which {rules_dir} does not define")
        stage = stages[name]
        row = rows.setdefault(stage, {"stage": stage, "jobs": 0, "seconds": 0.0, "cpu_seconds": 0.0, "rules": {}})
        row["jobs"] += m.jobs
        row["seconds"] += m.seconds
        row["cpu_seconds"] += m.cpu_seconds
        row["max_rss_gb"] = max(row.get("max_rss_gb", 0.0), m.max_rss_mb / 1024)
        row["rules"][rule] = row["rules"].get(rule, 0.0) + m.seconds
    for row in rows.values():
        row["rules"] = dict(sorted(row["rules"].items(), key=lambda kv: -kv[1]))
    return sorted(rows.values(), key=lambda r: -r["seconds"])


def run_time_markdown(rows: list[dict], span: tuple[float, float], source: str) -> str:
    """stage_rows as Markdown, after a line on the run's span (run_span)."""
    total = sum(r["seconds"] for r in rows)
    head = (
        "| stage (workflow/rules/) | jobs | wall s | share | CPU s | peak RSS GB | rules (wall s) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| `{r['stage']}.smk` | {r['jobs']} | {r['seconds']:,.0f} | {r['seconds'] / total:.0%} | "
        f"{r['cpu_seconds']:,.0f} | {r['max_rss_gb']:.2f} | "
        + ", ".join(f"{rule} {s:,.0f}" for rule, s in r["rules"].items())
        + " |\n"
        for r in rows
    )
    jobs, cpu = sum(r["jobs"] for r in rows), sum(r["cpu_seconds"] for r in rows)
    body += f"| all | {jobs} | {total:,.0f} | 100% | {cpu:,.0f} | {max(r['max_rss_gb'] for r in rows):.2f} | |\n"
    note = (
        f"\nMeasured from `{source}` (Snakemake's benchmark file of every job). Wall s is summed over a stage's jobs: "
        "jobs run side by side, so the sum exceeds the run's span. A job's wall time includes its start-up (a Python "
        "process importing torch and transformers, about 5 s). Peak RSS is the stage's largest job.\n"
    )
    return span_line(span, rows) + "\n" + head + body + note
