"""GenEval scoring (Ghosh et al. 2023), re-implemented from the rules of the benchmark's evaluator
(djghosh13/geneval, evaluation/evaluate_images.py and evaluation/summary_scores.py).

The detector is pluggable: any callable image -> list[Detection]. The mini profile uses the analytic
shapes detector (arrag.evaluation.shapes_detector); the paper's Mask2Former + CLIP backend plugs in the
same way. The rules, per image:

- keep a class's detections scoring strictly above 0.3 (0.9 for "counting" prompts), the best 16 at most
  (the official default overlap limit is 1.0, i.e. no non-maximum suppression, so none is done here);
- every include clause must hold: at least `count` detections of the class; if it names a colour, the
  `count` best-scoring ones must all have it; if it names a position [relation, k], each of those must
  stand in that relation to every object that include clause k matched (and clause k must have held);
  the colour is checked before the position, and a clause that failed matches no objects;
- every exclude clause must hold: fewer than `count` detections of the class;
- relations come from box centres, with each axis' offset shrunk by 0.1 x (sum of the two boxes' sides
  along it) before it is normalised by the unshrunk offset's length (mini_world.relations_between).

Scores: accuracy per tag over images, overall = unweighted mean of the tag accuracies.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from arrag.data.geneval_layout import SETTINGS, read_prompt_folders
from arrag.data.mini_world import relations_between
from arrag.io import progress, write_jsonl, write_text


@dataclass(frozen=True)
class Rules:
    """The official evaluator's tunable options (its --options threshold=, counting_threshold=, max_objects=,
    position_threshold=); the defaults are the benchmark's."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    position_threshold: float = 0.1


OFFICIAL = Rules()


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected object: class name, confidence in [0, 1], box (x0, y0, x1, y1) in pixels,
    boolean [H, W] mask (or None) and colour name (or None for a detector that does not name colours)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    colour: str | None = None


Detector = Callable[[np.ndarray], list[Detection]]


def kept_detections(detections: Sequence[Detection], tag: str, rules: Rules = OFFICIAL) -> dict[str, list[Detection]]:
    """Detections that count, per class, best first: strictly above the tag's confidence threshold, and at
    most rules.max_objects of them."""
    threshold = rules.counting_threshold if tag == "counting" else rules.threshold
    by_class: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: -d.score):
        if d.score > threshold:
            found = by_class.setdefault(d.label, [])
            if len(found) < rules.max_objects:
                found.append(d)
    return by_class


def check_colour(req: dict, found: list[Detection]) -> str | None:
    """None if the best `count` detections all have the clause's colour, else why not."""
    colours = [d.colour for d in found]
    if None in colours:
        raise ValueError(f"a colour clause needs colours, but the detector named none for {req['class']}")
    if colours.count(req["color"]) >= req["count"]:
        return None
    return f"wanted {req['count']} {req['color']} {req['class']}, the best {req['count']} are {', '.join(colours)}"


def check_position(
    req: dict, found: list[Detection], target: list[Detection] | None, rules: Rules = OFFICIAL
) -> str | None:
    """None if every found object stands in the clause's relation to every target object, else why not."""
    relation, _ = req["position"]
    if target is None:
        return f"no target for the {req['class']} to be {relation}: its clause failed"
    for obj in found:
        for other in target:
            rels = relations_between(obj.box, other.box, rules.position_threshold)
            if relation not in rels:
                actual = " and ".join(sorted(rels)) or "not clearly placed relative to"
                return f"wanted {req['class']} {relation} {other.label}, it is {actual} it"
    return None


def evaluate_image(metadata: dict, detections: Sequence[Detection], rules: Rules = OFFICIAL) -> tuple[bool, str, dict]:
    """One image against its prompt's metadata -> (correct, reasons joined by newlines, kept boxes per class).

    The details map each class to [x0, y0, x1, y1, score] rows of its kept detections, as the official
    evaluator writes them.
    """
    objects = kept_detections(detections, metadata["tag"], rules)
    reasons = []
    matched: list[list[Detection] | None] = []  # per include clause: the objects it matched, None if it failed
    for req in metadata.get("include", []):
        found = objects.get(req["class"], [])[: req["count"]]
        reason = None
        if len(found) < req["count"]:
            reason = f"wanted at least {req['count']} {req['class']}, detected {len(found)}"
        if reason is None and "color" in req:
            reason = check_colour(req, found)
        if reason is None and "position" in req:
            target_index = req["position"][1]
            if target_index >= len(matched):
                raise ValueError(f"position clause {req} refers to include[{target_index}], which must come before it")
            reason = check_position(req, found, matched[target_index], rules)
        matched.append(found if reason is None else None)
        if reason is not None:
            reasons.append(reason)
    for req in metadata.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= req["count"]:
            reasons.append(f"wanted fewer than {req['count']} {req['class']}, detected {n}")
    details = {name: [[*d.box, d.score] for d in found] for name, found in objects.items()}
    return not reasons, "\n".join(reasons), details


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3]; a damaged file is refused naming it (never a PIL traceback, never scored as something)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError, truncated data
        raise ValueError(
            f"{path} is not a readable image ({type(err).__name__}: {err}): delete its prompt folder and rerun "
            "`arrag generate-benchmark` to make it again"
        ) from None


def score_image(path: str | Path, metadata: dict, detector: Detector, rules: Rules = OFFICIAL) -> dict:
    """One result record in the official evaluator's JSONL schema (metadata and details as JSON strings)."""
    correct, reason, details = evaluate_image(metadata, detector(load_image(path)), rules)
    return {
        "filename": str(path),
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": correct,
        "reason": reason,
        "metadata": json.dumps(metadata),
        "details": json.dumps(details),
    }


def _score_prompt(job: tuple[dict, list[Path], Detector, Rules]) -> list[dict]:
    metadata, paths, detector, rules = job
    return [score_image(p, metadata, detector, rules) for p in paths]


def check_benchmark_folder(root: str | Path, images_per_prompt: int | None = None) -> None:
    """Refuse a folder that is not a complete GenEval-layout image set, saying what to run: prompt folders
    00000/ ... numbered without gaps, each with metadata.jsonl and samples/0000.png ... numbered without gaps,
    the same number in every folder (images_per_prompt when given), and nothing else in samples/."""
    root = Path(root)
    fix = "generate it with `arrag generate-benchmark --prompts evaluation_metadata.jsonl --out DIR`"
    layout = "<dir>/00000/metadata.jsonl + <dir>/00000/samples/0000.png, ..."
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory of GenEval images ({layout}): {fix}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not folders:
        raise ValueError(f"{root} holds no prompt folders ({layout}): {fix}")
    # settings.json (arrag generate-benchmark) records how many prompts the prompt file had: missing folders at
    # the end are refused like missing ones in the middle
    made_for = json.loads((root / SETTINGS).read_text()).get("prompts") if (root / SETTINGS).is_file() else None
    gaps = sorted(set(range(max(len(folders), made_for or 0))) - {int(p.name) for p in folders})
    if gaps:
        of = f" of the {made_for} prompts in {root / SETTINGS}" if made_for else ""
        raise ValueError(f"{root}: prompt folders {[f'{i:05d}' for i in gaps[:5]]}{of} are missing: {fix}")
    counts = {}
    for folder in folders:
        if not (folder / "metadata.jsonl").is_file():
            raise ValueError(f"{folder} has no metadata.jsonl ({layout}): {fix}")
        samples = sorted(p.name for p in (folder / "samples").glob("*")) if (folder / "samples").is_dir() else []
        expected = [f"{i:04d}.png" for i in range(len(samples))]
        if not samples or samples != expected:
            extra = sorted(set(samples) - set(expected))
            raise ValueError(
                f"{folder}/samples holds {samples[:6]}{'...' if len(samples) > 6 else ''}, expected 0000.png ... "
                f"numbered without gaps{f' and no other files ({extra[:3]})' if extra else ''}: {fix}"
            )
        counts.setdefault(len(samples), folder)
    if images_per_prompt is not None and set(counts) != {images_per_prompt}:
        wrong = next(n for n in counts if n != images_per_prompt)
        raise ValueError(f"{counts[wrong]} has {wrong} samples, expected {images_per_prompt} per prompt: {fix}")
    if len(counts) > 1:
        (a, fa), (b, fb) = list(counts.items())[:2]
        raise ValueError(f"{fa} has {a} samples but {fb} has {b}: an interrupted or mixed run; {fix}")


def check_detector_classes(root: str | Path, classnames: Sequence[str] | None, detector: str) -> None:
    """Refuse prompts naming classes the detector cannot detect: they would all fail, silently (e.g. the mini
    world's shapes scored by the COCO detector)."""
    if classnames is None:
        return
    clauses = [c for meta, _ in read_prompt_folders(root) for c in meta.get("include", []) + meta.get("exclude", [])]
    wanted = {c["class"] for c in clauses}
    unknown = sorted(wanted - set(classnames))
    if unknown:
        raise ValueError(
            f"{root}: its prompts name {unknown}, which the {detector} detector cannot detect: score GenEval's own "
            "prompts with it (evaluation.geneval.prompts: official), or the mini world's with --detector shapes"
        )


def score_folder(
    root: str | Path,
    detector: Detector,
    workers: int = 1,
    rules: Rules = OFFICIAL,
    images_per_prompt: int | None = None,
) -> list[dict]:
    """Score every image of a GenEval-layout folder: one record per image, in prompt then sample order.

    workers > 1 scores prompt folders in that many processes (the detector must then be picklable,
    e.g. a module-level function such as shapes_detector.detect_shapes).
    """
    check_benchmark_folder(root, images_per_prompt)
    jobs = [(meta, paths, detector, rules) for meta, paths in read_prompt_folders(root)]
    for i, (meta, *_) in enumerate(jobs):  # before any scoring: a folder of another benchmark's prompts
        if not {"tag", "include"} <= set(meta):
            raise ValueError(
                f"{Path(root) / f'{i:05d}'}/metadata.jsonl has no GenEval 'tag' and 'include' (fields: "
                f"{sorted(meta)}): generate from GenEval's evaluation_metadata.jsonl"
            )
    bar = dict(total=len(jobs), desc=f"GenEval {Path(root).name}", unit="prompt")
    if workers <= 1:
        per_prompt = [_score_prompt(job) for job in progress(jobs, **bar)]
    else:  # spawn: the caller may hold threads (torch) that a fork would copy mid-lock
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            per_prompt = list(progress(pool.map(_score_prompt, jobs, chunksize=8), **bar))
    return [row for rows in per_prompt for row in rows]


def write_results_jsonl(rows: list[dict], path: str | Path) -> None:
    """The per-image records, atomically (the official evaluator's results.jsonl)."""
    write_jsonl(path, rows)


def summarise(rows: list[dict]) -> dict:
    """Accuracy per tag (in order of first appearance), overall = their unweighted mean, and the image- and
    prompt-level rates the official summary prints (a prompt is its metadata string; correct if any image is)."""
    if not rows:
        raise ValueError("no GenEval records to summarise: score a folder of generated images first")
    tags: dict[str, list[bool]] = {}
    prompts: dict[str, bool] = {}
    for r in rows:
        tags.setdefault(r["tag"], []).append(bool(r["correct"]))
        prompts[r["metadata"]] = prompts.get(r["metadata"], False) or bool(r["correct"])
    per_tag = {t: {"accuracy": float(np.mean(c)), "correct": int(sum(c)), "images": len(c)} for t, c in tags.items()}
    return {
        "overall": float(np.mean([v["accuracy"] for v in per_tag.values()])),
        "tags": per_tag,
        "images": len(rows),
        "prompts": len(prompts),
        "correct_images": float(np.mean([bool(r["correct"]) for r in rows])),
        "correct_prompts": float(np.mean(list(prompts.values()))),
    }


def summary_csv(summary: dict, path: str | Path) -> None:
    """tag,accuracy,correct,images rows, then the overall score, atomically."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["tag", "accuracy", "correct", "images"])
    for tag, v in summary["tags"].items():
        out.writerow([tag, f"{v['accuracy']:.6f}", v["correct"], v["images"]])
    correct = sum(v["correct"] for v in summary["tags"].values())
    out.writerow(["overall", f"{summary['overall']:.6f}", correct, summary["images"]])
    write_text(path, buf.getvalue())
