"""How sure each table's scores are: 95% percentile-bootstrap intervals over prompts, and paired differences.

A benchmark score is a statistic of per-prompt results, so its sampling noise is that of the prompt set. The
bootstrap draws `resamples` new prompt sets with replacement and recomputes every score on each:

- the draws: numpy's `default_rng(seed)`, `rng.integers(0, n, size=(resamples, n))` for a set of n prompts, one
  such block per stratum in the order given (GenEval's strata are its tags: the benchmark fixes how many prompts
  each tag has, so prompts are resampled within their tag; DPG-Bench and the fidelity sets have one stratum);
- the interval: the (1 - level)/2 and (1 + level)/2 percentiles (numpy's linear interpolation) of the replicates;
- paired: one set of draws serves every method scored on the same prompts, so method minus base model, replicate
  by replicate, is the paired bootstrap of their difference (its interval excludes 0: they differ beyond noise).

A score here is a ratio of per-prompt sums: a GenEval tag's accuracy is correct images / images over its prompts,
a DPG-Bench category's score is the sum of its questions' scores / their number; derived columns (GenEval's
overall, the unweighted mean of the tags) are recomputed from each replicate's columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 1000  # enough for the 2.5th / 97.5th percentiles to be stable to a few % of the interval's width
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def __post_init__(self):
        if not isinstance(self.resamples, int) or self.resamples < 2:
            raise ValueError(f"bootstrap resamples {self.resamples!r}: give an integer >= 2 (default {RESAMPLES})")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"bootstrap seed {self.seed!r}: give a non-negative integer (default {SEED})")
        if not 0 < self.level < 1:
            raise ValueError(f"interval level {self.level!r}: give a fraction in (0, 1), e.g. {LEVEL}")

    def record(self) -> dict:
        """How the intervals were made, for the outputs that carry them."""
        return {"ci_level": self.level, "ci_resamples": self.resamples, "ci_seed": self.seed}


def count_blocks(rng: np.random.Generator, n: int, resamples: int, block: int = 256) -> Iterator[np.ndarray]:
    """How often each of n units is drawn in each resample, `block` resamples at a time: float64 [b, n] blocks,
    row r from rng.integers(0, n, size=(resamples, n))[r] (drawing in blocks consumes the generator as one call)."""
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]  # row r's draws, offset into row r
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL, centre=None) -> tuple[np.ndarray, np.ndarray]:
    """replicates [B, ...] -> (low, high), each [...]: the equal-tailed percentile interval. A replicate that is
    NaN (a resample without any value of a column, e.g. no question of a DPG category) is left out; none: NaN.

    centre: the point estimate, for statistics a resample biases (FID, CMMD, FWD grow as a resample repeats
    images: ~63% of them distinct): the percentiles are moved by centre - the replicates' mean, an interval of
    the metric's spread at this set size around its point estimate (the plain percentiles may miss it)."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # all-NaN: NaN, said by the "± —" it renders as
        warnings.simplefilter("ignore", RuntimeWarning)
        replicates = np.asarray(replicates, dtype=np.float64)
        low, high = np.nanpercentile(replicates, [tail, 100 - tail], axis=0)
        shift = 0.0 if centre is None else centre - np.nanmean(replicates, axis=0)
    return low + shift, high + shift


@dataclass
class PromptScores:
    """One method's per-prompt results: for each prompt (keys, in one order for every method) and column, the
    sum and the count of its per-image values; a column's score is sum / count over the prompts. `strata` names
    each prompt's stratum; `means` adds columns that are the unweighted mean of others (GenEval's overall)."""

    keys: list[str]
    strata: list[str]
    columns: list[str]
    sums: np.ndarray  # [n, C]
    counts: np.ndarray  # [n, C]
    means: dict[str, list[str]]

    def scores(self, sums: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Column sums and counts [..., C] -> column -> score [...], derived columns included."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = sums / counts
        out = {c: ratio[..., i] for i, c in enumerate(self.columns)}
        return out | {name: np.mean([out[c] for c in parts], axis=0) for name, parts in self.means.items()}

    def point(self) -> dict[str, float]:
        return {c: float(v) for c, v in self.scores(self.sums.sum(0), self.counts.sum(0)).items()}


def check_same_prompts(scores: dict[str, PromptScores]) -> None:
    """Refuse a paired comparison of results on different prompts (or prompts in different strata)."""
    (first, a), *others = scores.items()
    for label, b in others:
        if b.keys != a.keys or b.strata != a.strata:
            only = sorted(set(a.keys) ^ set(b.keys))[:5]
            raise ValueError(
                f"{label!r} and {first!r} were scored on different prompts ({len(b.keys)} vs {len(a.keys)}; first "
                f"not in both: {only or 'same prompts, different strata'}): a paired bootstrap needs one prompt set"
            )


def replicates(scores: dict[str, PromptScores], boot: Bootstrap) -> dict[str, dict[str, np.ndarray]]:
    """label -> column -> the scores [B] of the same `boot.resamples` resampled prompt sets for every label."""
    check_same_prompts(scores)
    ref = next(iter(scores.values()))
    strata = list(dict.fromkeys(ref.strata))  # first-seen order: the order the draws are made in
    rng = np.random.default_rng(boot.seed)
    sums = {label: 0.0 for label in scores}
    counts = {label: 0.0 for label in scores}
    for stratum in strata:
        members = np.array([i for i, s in enumerate(ref.strata) if s == stratum])
        w = np.concatenate(list(count_blocks(rng, len(members), boot.resamples)))  # [B, n_s]
        for label, s in scores.items():
            sums[label] = sums[label] + w @ s.sums[members]  # [B, C]
            counts[label] = counts[label] + w @ s.counts[members]
    return {label: s.scores(sums[label], counts[label]) for label, s in scores.items()}


def interval_columns(
    points: dict[str, dict[str, float]],
    reps: dict[str, dict[str, np.ndarray]],
    base: str | None,
    level: float = LEVEL,
    centred: bool = False,
) -> dict[str, dict[str, float]]:
    """Point scores and their replicates -> label -> {<col>_ci_low, <col>_ci_high} and, for every label but
    `base` (when given), {<col>_diff_vs_base, <col>_diff_ci_low, <col>_diff_ci_high}: the score minus the base's,
    and the percentile interval of the paired replicates' differences (centred: on the point values, for the
    metrics a resample biases; see percentile_interval)."""
    out = {}
    for label, cols in reps.items():
        row = {}
        for col, r in cols.items():
            low, high = percentile_interval(r, level, points[label][col] if centred else None)
            row |= {f"{col}_ci_low": float(low), f"{col}_ci_high": float(high)}
            if base is not None and label != base and col in reps[base]:
                diff = points[label][col] - points[base][col]
                low, high = percentile_interval(r - reps[base][col], level, diff if centred else None)
                row |= {
                    f"{col}_diff_vs_base": diff,
                    f"{col}_diff_ci_low": float(low),
                    f"{col}_diff_ci_high": float(high),
                }
        out[label] = row
    return out


# ----------------------------------------------------------------------------- per-prompt results of the scorers


def geneval_prompt_scores(records: list[dict]) -> PromptScores:
    """`arrag geneval`'s per-image records -> per prompt (its folder and text) and tag: correct images, images;
    each prompt in its tag's stratum; overall = the unweighted mean of the tags (geneval.summarise)."""
    if not records:
        raise ValueError("no GenEval records: score a folder of generated images first (`arrag geneval`)")
    tags = list(dict.fromkeys(r["tag"] for r in records))
    per_prompt: dict[str, list] = {}  # key -> [tag, correct, images]
    for r in records:
        key = f"{Path(r['filename']).parent.parent.name}: {r['prompt']}"  # <00000>/samples/0000.png
        entry = per_prompt.setdefault(key, [r["tag"], 0, 0])
        if entry[0] != r["tag"]:
            raise ValueError(f"GenEval prompt {key!r} has images of two tags ({entry[0]}, {r['tag']}): mixed records")
        entry[1] += bool(r["correct"])
        entry[2] += 1
    keys = sorted(per_prompt)
    sums, counts = np.zeros((len(keys), len(tags))), np.zeros((len(keys), len(tags)))
    for i, key in enumerate(keys):
        tag, correct, images = per_prompt[key]
        sums[i, tags.index(tag)], counts[i, tags.index(tag)] = correct, images
    strata = [per_prompt[k][0] for k in keys]
    return PromptScores(keys, strata, tags, sums, counts, means={"overall": tags})


def dpg_prompt_scores(records: list[dict], last_crop_categories: bool = True, raw_categories: bool = True):
    """`arrag dpg`'s per-image records -> per item: the sums and counts of each L1 category's question values
    (dpg.summarise's options), and its image score; all x100, as the DPG-Bench summary reports them."""
    from arrag.evaluation.dpg import category_values

    scored = sorted((r for r in records if "skipped" not in r), key=lambda r: r["item_id"])
    if not scored:
        raise ValueError("no scored DPG-Bench records: score a folder of tiles first (`arrag dpg`)")
    per_item = []
    for r in scored:
        cats: dict[str, list[float]] = {}
        for broad, _, values in category_values(r, last_crop_categories, raw_categories):
            cats.setdefault(broad, []).extend(values)
        per_item.append(cats)
    columns = sorted({c for cats in per_item for c in cats}) + ["overall"]
    sums, counts = np.zeros((len(scored), len(columns))), np.zeros((len(scored), len(columns)))
    for i, (r, cats) in enumerate(zip(scored, per_item)):
        for c, values in cats.items():
            sums[i, columns.index(c)], counts[i, columns.index(c)] = 100 * sum(values), len(values)
        sums[i, -1], counts[i, -1] = 100 * r["score"], 1
    return PromptScores([r["item_id"] for r in scored], ["all"] * len(scored), columns, sums, counts, means={})


def check_matches(points: dict[str, float], row: dict, records: str, summary: str) -> None:
    """Refuse per-prompt records that do not reproduce their summary's scores (records of another run)."""
    for col, value in points.items():
        if row.get(col) is not None and not np.isclose(value, row[col], rtol=1e-9, atol=1e-9):
            raise ValueError(
                f"{records} gives {col} = {value!r} but {summary} says {row[col]!r}: the records and the summary "
                "come from different runs; give the JSONL written with that summary (--out-jsonl)"
            )
