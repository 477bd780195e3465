"""DPG-Bench scoring (Hu et al. 2024, "ELLA"), re-implemented from the rules of the benchmark's evaluator
(TencentQQGYLab/ELLA, dpg_bench/compute_dpg_bench.py and dpg_bench/dist_eval.sh).

The benchmark: 1065 dense prompts (prompts/<item_id>.txt) and a question CSV, dpg_bench.csv, with one row per
question: item_id, text, keywords, proposition_id, dependency, category_broad, category_detailed, tuple,
question_natural_language. `dependency` lists the ids of the question's parents ("0": none); `tuple` names its
category, e.g. "attribute - color (bicycle, red)".

The rules:

- images: 4 samples per prompt tiled 2x2 into one PNG named after the prompt file (<item_id>.png); the evaluator
  crops the tiles top-left, top-right, bottom-left, bottom-right (dist_eval.sh's PIC_NUM=4);
- per crop, every question of the item is asked; it scores 1 if the answer is exactly "yes", else 0; then, in CSV
  row order, a question scores 0 if a non-zero parent scores 0 *at that point* (a zeroed parent zeroes its
  children in turn); the crop's score is the mean over the item's questions;
- the image's score is the mean over its crops; the DPG-Bench score is 100 x the mean over images;
- categories: L2 = the tuple's text before "(" ("entity - whole"), L1 = L2's text before the first "-"
  ("entity"); a category's score is 100 x the mean over its questions' scores.

Quirks of the official evaluator, reproduced by default and switchable here:

1. it skips the CSV's first data row (`if i == 0: continue`), so the first item loses a question;
   read_questions(skip_first_row=...);
2. its category scores take each question's score from the *last* crop only, and *before* the dependency
   zeroing (it returns the last crop's `qid2scores_orig`); summarise(last_crop_categories=...,
   raw_categories=...);
3. an image whose scoring raises is left out of every score ("Failed filename"): in particular one whose
   questions depend on a proposition missing from the CSV (quirk 1's victim, if its other questions depend on
   the lost one; the evaluator's dict lookup raises KeyError) and a tile whose name is not in the CSV. Here the
   first case gives a record with "skipped"; the second is an error unless allow_missing=True.

The VQA model is pluggable: any callable (image uint8 [S, S, 3], question, tuple text) -> answer string.
The paper profile uses the benchmark's mPLUG-large (MPLUGVQA, in the workflow/envs/dpg.yaml environment); the
mini profile uses ShapesVQA, which reads the question's tuple and answers from the analytic shapes detector.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from arrag.data.dpg_layout import COLUMNS
from arrag.data.geneval_layout import read_prompt_folders
from arrag.data.mini_world import relations_between
from arrag.evaluation.geneval import OFFICIAL, Detection, Detector, Rules, kept_detections, load_image
from arrag.io import atomic_path, progress

PIC_NUM = 4  # images per prompt, tiled 2x2 (dist_eval.sh's default)
MPLUG_MODEL = "damo/mplug_visual-question-answering_coco_large_en"  # the official script's checkpoint
_GENERATE_FIX = (
    "generate 4 images per prompt with records from arrag.evaluation.dpg.prompt_records, "
    "then tile them with write_tiled_folder"
)


# ----------------------------------------------------------------------------- prompts


def natural_key(name: str) -> tuple:
    """Sort key: numeric names by value ("2" < "10"), before the others in alphabetical order."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def dpg_prompts(folder: str | Path | None = None) -> dict[str, str]:
    """{item_id: prompt text} from a folder of <item_id>.txt files; default: the vendored 1065 DPG-Bench prompts."""
    root = Path(folder) if folder is not None else importlib.resources.files("arrag.prompt_sets") / "dpg_bench/prompts"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of DPG-Bench prompts (<item_id>.txt files)")
    prompts = {p.name[:-4]: p.read_text(encoding="utf-8").strip() for p in root.iterdir() if p.name.endswith(".txt")}
    if not prompts:
        raise ValueError(f"{root} holds no <item_id>.txt prompt files")
    return prompts


def prompt_records(prompts: dict[str, str]) -> list[dict]:
    """Generator records {"prompt", "item_id"} in natural item order (generate_prompt_set's input)."""
    return [{"prompt": prompts[k], "item_id": k} for k in sorted(prompts, key=natural_key)]


# ----------------------------------------------------------------------------- tiles


def tile_grid(images: np.ndarray) -> np.ndarray:
    """uint8 [4, S, S, 3] -> [2S, 2S, 3]: images 0, 1 on the top row, 2, 3 below (the evaluator's crop order)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != PIC_NUM or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected {PIC_NUM} square images [4, S, S, 3], got shape {images.shape}")
    return np.concatenate([np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)], axis=0)


def crop_tiles(image: np.ndarray, n: int = PIC_NUM) -> list[np.ndarray]:
    """[2S, 2S, 3] grid -> its first n tiles [S, S, 3], in the order top-left, top-right, bottom-left,
    bottom-right (the evaluator crops `pic_num` tiles of `resolution` px; here S is half the grid's side)."""
    h, w = image.shape[:2]
    if h != w or h % 2:
        raise ValueError(f"a DPG-Bench image is a square 2x2 grid with an even side, got {h}x{w}")
    if not 1 <= n <= PIC_NUM:
        raise ValueError(f"n={n}: a 2x2 grid holds 1..{PIC_NUM} tiles")
    s = h // 2
    corners = [(0, 0), (0, s), (s, 0), (s, s)]  # (y, x)
    return [image[y : y + s, x : x + s] for y, x in corners[:n]]


def write_tiled_folder(geneval_layout_dir: str | Path, out_dir: str | Path) -> int:
    """Tile each prompt folder's 4 samples into <out_dir>/<item_id>.png (the layout the evaluator reads).

    The folder is written atomically as a whole, so no tile of an older run survives. Returns the tile count.
    """
    root = Path(geneval_layout_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of generated images: {_GENERATE_FIX}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())  # read_prompt_folders' order
    if not folders:
        raise ValueError(f"{root} holds no prompt folders (00000/, 00001/, ...): {_GENERATE_FIX}")
    for folder in folders:
        if not (folder / "metadata.jsonl").is_file():
            raise ValueError(f"{folder} has no metadata.jsonl: {_GENERATE_FIX}")
    seen: dict[str, Path] = {}
    with atomic_path(out_dir, directory=True) as tmp:
        for folder, (meta, paths) in zip(folders, read_prompt_folders(root)):
            item_id = meta.get("item_id")
            if not isinstance(item_id, str) or not item_id:
                raise ValueError(f"{folder}: its metadata has no item_id (the prompt file's name): {_GENERATE_FIX}")
            if item_id in seen:
                raise ValueError(f"{folder} and {seen[item_id]} both hold item {item_id!r}: one folder per prompt")
            if len(paths) != PIC_NUM:
                raise ValueError(
                    f"{folder}: expected {PIC_NUM} samples (DPG-Bench tiles 4 per prompt 2x2), found {len(paths)}: "
                    "generate with n=4"
                )
            seen[item_id] = folder
            images = np.stack([load_image(p) for p in paths])  # [4, S, S, 3]
            Image.fromarray(tile_grid(images)).save(tmp / f"{item_id}.png")
    return len(seen)


# ----------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Questions:
    """One item's questions, in CSV row order. dropped_rows: rows of this item that skip_first_row dropped."""

    item_id: str
    text: str
    qids: tuple[int, ...]
    tuples: dict[int, str]
    questions: dict[int, str]
    parents: dict[int, tuple[int, ...]]
    dropped_rows: int = 0


def read_questions(csv_path: str | Path, skip_first_row: bool = True) -> dict[str, Questions]:
    """{item_id: Questions} from a question CSV in dpg_bench.csv's schema (item ids kept as strings).

    skip_first_row=True drops the first data row, as the official evaluator does (quirk 1); a parent that row
    held is then tolerated in its item (scoring that item fails, and the image is skipped, as there). Any other
    parent id missing from its item, a row that does not parse, or an item's rows not being contiguous is an error.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give DPG-Bench's dpg_bench.csv or a mini-DPG CSV")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; a DPG-Bench question CSV has {list(COLUMNS)}")
        rows = [(reader.line_num, row) for row in reader]  # (line number in the file, row)
    dropped = None  # (item_id, qid) of the skipped first row
    if skip_first_row and rows:
        line, first = rows.pop(0)
        dropped = (first["item_id"], _int(first["proposition_id"], path, line, "proposition_id"))
    items: dict[str, dict] = {}
    lines: dict[tuple[str, int], int] = {}  # (item, qid) -> line, for errors
    previous = None
    for line, row in rows:
        item_id = row["item_id"]
        if not item_id:
            raise ValueError(f"{path}: line {line} has an empty item_id")
        if item_id != previous and item_id in items:
            raise ValueError(f"{path}: line {line}: the rows of item {item_id!r} are not contiguous")
        previous = item_id
        qid = _int(row["proposition_id"], path, line, "proposition_id")
        parents = tuple(_int(d, path, line, "dependency") for d in (row["dependency"] or "").split(","))
        if qid <= 0:
            raise ValueError(f"{path}: line {line}: proposition_id must be a positive int, got {qid}")
        if not row["tuple"] or not row["question_natural_language"]:
            raise ValueError(f"{path}: line {line}: empty tuple or question_natural_language")
        item = items.setdefault(item_id, {"text": row["text"], "tuples": {}, "questions": {}, "parents": {}})
        if qid in item["tuples"]:
            raise ValueError(f"{path}: line {line}: item {item_id!r} has proposition {qid} twice")
        item["tuples"][qid] = row["tuple"]
        item["questions"][qid] = row["question_natural_language"]
        item["parents"][qid] = parents
        lines[item_id, qid] = line
    out = {}
    for item_id, item in items.items():
        for qid, parents in item["parents"].items():
            for p in parents:
                if p != 0 and p not in item["parents"] and (item_id, p) != dropped:
                    raise ValueError(
                        f"{path}: line {lines[item_id, qid]}: item {item_id!r} question {qid} depends on "
                        f"proposition {p}, which the item does not have"
                    )
        out[item_id] = Questions(
            item_id=item_id,
            text=item["text"],
            qids=tuple(item["parents"]),
            tuples=item["tuples"],
            questions=item["questions"],
            parents=item["parents"],
            dropped_rows=int(dropped is not None and dropped[0] == item_id),
        )
    if not out:
        raise ValueError(f"{path} holds no question rows")
    return out


def _int(text: str | None, path: Path, line: int, column: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise ValueError(f"{path}: line {line}: {column} {text!r} is not an int (list)") from None


def categories(tuple_text: str) -> tuple[str, str]:
    """Tuple text -> (L1, L2): "attribute - color (bicycle, red)" -> ("attribute", "attribute - color")."""
    l2 = tuple_text.split("(")[0].strip()
    return l2.split("-")[0].strip(), l2


# ----------------------------------------------------------------------------- scoring


class VQA(Protocol):
    def __call__(self, image: np.ndarray, question: str, tuple_text: str) -> str: ...


class MissingParent(KeyError):
    """A question depends on a proposition its item does not have (the official evaluator's KeyError)."""


def score_crop(answers: dict[int, str], questions: Questions) -> dict[int, float]:
    """One crop's answers -> per-question scores after the dependency rule.

    A question scores 1.0 if its answer is exactly "yes". Then, in CSV order, it drops to 0 if one of its non-zero
    parents scores 0 at that point: the parents are checked in order, already zeroed parents count as 0, and a
    missing parent raises MissingParent unless an earlier parent already failed (as in the official loop).
    """
    scores = {q: float(answers[q] == "yes") for q in questions.qids}
    for q in questions.qids:
        for p in questions.parents[q]:
            if p == 0:
                continue
            if p not in scores:
                raise MissingParent(f"item {questions.item_id!r} question {q} depends on missing proposition {p}")
            if scores[p] == 0:
                scores[q] = 0.0
                break
    return scores


def score_image(crops: Sequence[np.ndarray], questions: Questions, vqa: VQA) -> dict:
    """Ask every question of every crop -> one JSON-friendly record.

    {"item_id", "score" (mean over crops), "crop_scores": [per crop], "dropped_rows",
     "questions": {qid (str): {"tuple", "question", "parents", "answers": [per crop], "raw": [per crop, before
     the dependency rule], "scores": [per crop, after it]}}}; or {"item_id", "skipped": reason, "dropped_rows"}
    when scoring fails as it does in the official evaluator (a missing parent).
    """
    answers = [{q: vqa(crop, questions.questions[q], questions.tuples[q]) for q in questions.qids} for crop in crops]
    try:
        scores = [score_crop(a, questions) for a in answers]
    except MissingParent as err:
        return {"item_id": questions.item_id, "skipped": str(err.args[0]), "dropped_rows": questions.dropped_rows}
    crop_scores = [float(np.mean(list(s.values()))) for s in scores]
    per_question = {
        str(q): {
            "tuple": questions.tuples[q],
            "question": questions.questions[q],
            "parents": list(questions.parents[q]),
            "answers": [a[q] for a in answers],
            "raw": [float(a[q] == "yes") for a in answers],
            "scores": [s[q] for s in scores],
        }
        for q in questions.qids
    }
    return {
        "item_id": questions.item_id,
        "score": float(np.mean(crop_scores)),
        "crop_scores": crop_scores,
        "dropped_rows": questions.dropped_rows,
        "questions": per_question,
    }


def tile_paths(tiled_dir: str | Path) -> dict[str, Path]:
    """{item_id: path} of a tile folder; the id is the file name before its first dot, as in the evaluator."""
    root = Path(tiled_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of DPG-Bench tiles: {_GENERATE_FIX}")
    return {p.name.split(".")[0]: p for p in root.glob("*.png")}


def score_folder(
    tiled_dir: str | Path,
    questions: dict[str, Questions],
    vqa: VQA,
    *,
    n_crops: int = PIC_NUM,
    allow_missing: bool = False,
) -> list[dict]:
    """Score every <item_id>.png of a tile folder: one score_image record per item, in natural item order.

    Every CSV item needs a tile and every tile a CSV item. allow_missing=True scores the intersection instead, as
    the official evaluator does (which scores the tiles it finds and leaves out tiles not in the CSV); the
    items left out then get {"item_id", "skipped": reason} records.
    """
    tiles = tile_paths(tiled_dir)
    no_tile = sorted(set(questions) - set(tiles), key=natural_key)
    no_questions = sorted(set(tiles) - set(questions), key=natural_key)
    if (no_tile or no_questions) and not allow_missing:
        raise ValueError(
            f"{tiled_dir}: {len(no_tile)} question-CSV items have no <item_id>.png tile (e.g. {no_tile[:3]}) and "
            f"{len(no_questions)} tiles are not in the CSV (e.g. {no_questions[:3]}): generate and tile every "
            "prompt of the CSV's prompt set, or pass allow_missing=True to score only the items with both"
        )
    records = [{"item_id": i, "skipped": "no tile", "dropped_rows": questions[i].dropped_rows} for i in no_tile]
    records += [{"item_id": i, "skipped": "not in the question CSV", "dropped_rows": 0} for i in no_questions]
    todo = sorted(set(tiles) & set(questions), key=natural_key)
    for item_id in progress(todo, desc=f"DPG-Bench {Path(tiled_dir).name}", unit="image"):
        crops = crop_tiles(load_image(tiles[item_id]), n_crops)
        records.append(score_image(crops, questions[item_id], vqa))
    return sorted(records, key=lambda r: natural_key(r["item_id"]))


def category_values(record: dict, last_crop_categories: bool = True, raw_categories: bool = True):
    """Each question of a scored image as (L1, L2, the values it adds to those categories' scores): its raw
    scores or those after the dependency rule, of the last crop only or of every crop (see summarise)."""
    for q in record["questions"].values():
        values = q["raw"] if raw_categories else q["scores"]
        yield (*categories(q["tuple"]), values[-1:] if last_crop_categories else values)


def summarise(records: list[dict], *, last_crop_categories: bool = True, raw_categories: bool = True) -> dict:
    """The DPG-Bench score and category scores, all x100.

    {"overall": 100 x mean image score, "categories": {L1: score}, "categories_l2": {L2: score},
     "images": images scored, "questions": question-image pairs scored, "skipped": {item_id: reason},
     "quirks": {"skip_first_row": {"rows_dropped", "items"}, "last_crop_categories", "raw_categories"}}

    Category scores follow the official evaluator by default (quirk 2): each question counts once, with its
    score on the last crop before the dependency rule. last_crop_categories=False counts every crop;
    raw_categories=False takes the scores after the dependency rule (the ones the overall score averages).
    """
    scored = [r for r in records if "skipped" not in r]
    if not scored:
        raise ValueError("no scored DPG-Bench images to summarise: score a folder of tiles first")
    l1: dict[str, list[float]] = {}
    l2: dict[str, list[float]] = {}
    for r in scored:
        for broad, detailed, values in category_values(r, last_crop_categories, raw_categories):
            l1.setdefault(broad, []).extend(values)
            l2.setdefault(detailed, []).extend(values)
    dropped = [r["item_id"] for r in records if r.get("dropped_rows")]
    return {
        "overall": 100 * float(np.mean([r["score"] for r in scored])),
        "categories": {k: 100 * float(np.mean(v)) for k, v in sorted(l1.items())},
        "categories_l2": {k: 100 * float(np.mean(v)) for k, v in sorted(l2.items())},
        "images": len(scored),
        "questions": sum(len(r["questions"]) for r in scored),
        "skipped": {r["item_id"]: r["skipped"] for r in records if "skipped" in r},
        "quirks": {
            "skip_first_row": {"rows_dropped": sum(r.get("dropped_rows", 0) for r in records), "items": dropped},
            "last_crop_categories": last_crop_categories,
            "raw_categories": raw_categories,
        },
    }


# ----------------------------------------------------------------------------- VQA backends


class MPLUGVQA:
    """The benchmark's VQA model: mPLUG-large fine-tuned on VQA, through a ModelScope pipeline (paper profile).

    modelscope is imported here only, so arrag imports without it; it lives in the workflow/envs/dpg.yaml
    environment. `model` may also be a local download of the checkpoint (ModelScope now lists it as
    iic/mplug_visual-question-answering_coco_large_en); `revision` pins a hub revision (ModelScope's default
    otherwise, as in the official script). Returns the pipeline's answer text unchanged: only an exact "yes" scores.
    """

    def __init__(self, model: str = MPLUG_MODEL, device: str = "gpu", revision: str | None = None):
        try:
            from modelscope.pipelines import pipeline
            from modelscope.utils.constant import Tasks
        except ImportError as err:
            raise ImportError(
                "MPLUGVQA needs modelscope and mPLUG's dependencies, which arrag does not install: create the "
                "DPG-Bench environment with `conda env create -f workflow/envs/dpg.yaml` (or run the rule with "
                "`snakemake --use-conda`), or use ShapesVQA for the mini profile"
            ) from err
        extra = {} if revision is None else {"model_revision": revision}
        self.pipeline = pipeline(Tasks.visual_question_answering, model=model, device=device, **extra)

    def __call__(self, image: np.ndarray, question: str, tuple_text: str = "") -> str:
        return self.pipeline({"image": Image.fromarray(np.asarray(image)), "question": question})["text"]


_TUPLE = re.compile(r"^\s*(?P<category>[^(]*?)\s*\((?P<args>.*)\)\s*$")
_COMPARE = {"==": int.__eq__, ">=": int.__ge__, "<=": int.__le__, ">": int.__gt__, "<": int.__lt__}


def parse_tuple(tuple_text: str) -> tuple[str, list[str]]:
    """Tuple text -> (category, arguments):
    "relation - spatial (triangle, diamond, left of)" -> ("relation - spatial", ["triangle", "diamond", "left of"])."""
    m = _TUPLE.match(tuple_text)
    if m is None:
        raise ValueError(f"tuple {tuple_text!r} is not of the form 'category - detail (arg, ...)'")
    args = [a.strip() for a in m["args"].split(",")] if m["args"].strip() else []
    return m["category"], args


class ShapesVQA:
    """Structured VQA for the mini world: answers a question from its *tuple*, not its words, using an object
    detector (default: the analytic shapes detector). It is not natural-language VQA; it understands

        entity - whole (circle)                 a circle is detected ("circles" works too)
        attribute - color (circle, red)         a red circle is detected
        relation - spatial (circle, square, left of)   the best circle is left of the best square (GenEval's rule)
        other - count (circle, ==3)             exactly 3 circles are detected (also >=, <=, >, <)

    and raises ValueError on any other tuple. Detections count above GenEval's thresholds (0.9 when counting).
    The last image's detections are cached: the evaluator asks all of a crop's questions in a row.
    """

    def __init__(self, detector: Detector | None = None, rules: Rules = OFFICIAL):
        if detector is None:
            from arrag.evaluation.shapes_detector import detect_shapes as detector
        self.detector, self.rules = detector, rules
        self._cache: tuple[bytes, list[Detection]] | None = None

    def detections(self, image: np.ndarray) -> list[Detection]:
        image = np.ascontiguousarray(image)
        key = hashlib.sha1(repr(image.shape).encode() + image.tobytes()).digest()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.detector(image))
        return self._cache[1]

    def __call__(self, image: np.ndarray, question: str, tuple_text: str) -> str:
        category, args = parse_tuple(tuple_text)
        counting = category == "other - count"
        found = kept_detections(self.detections(image), "counting" if counting else "", self.rules)
        if category == "entity - whole" and len(args) == 1:
            ok = bool(self._of(found, args[0]))
        elif category == "attribute - color" and len(args) == 2:
            ok = any(d.colour == args[1] for d in self._of(found, args[0]))
        elif category == "relation - spatial" and len(args) == 3:
            a, b = self._of(found, args[0]), self._of(found, args[1])
            ok = bool(a and b) and args[2] in relations_between(a[0].box, b[0].box, self.rules.position_threshold)
        elif counting and len(args) == 2:
            m = re.fullmatch(r"(==|>=|<=|>|<)\s*(\d+)", args[1])
            if m is None:
                raise ValueError(f"tuple {tuple_text!r}: the count must look like '==2'")
            ok = _COMPARE[m[1]](len(self._of(found, args[0])), int(m[2]))
        else:
            raise ValueError(f"ShapesVQA cannot answer tuple {tuple_text!r} (question {question!r}): see its docstring")
        return "yes" if ok else "no"

    @staticmethod
    def _of(found: dict[str, list[Detection]], name: str) -> list[Detection]:
        """Detections of a class named in the singular or the plural ("circles"), best first."""
        return found.get(name) or (found.get(name[:-1], []) if name.endswith("s") else [])
