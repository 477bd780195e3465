"""mini-DPG: a DPG-Bench-shaped prompt set and question CSV for the mini world, so that the mini profile runs the
same DPG scoring code (arrag.evaluation.dpg) as the paper profile, with ShapesVQA in place of mPLUG.

Prompts are captions of the world's held-out reference split (distinct captions, picked at random): the tiny
model only knows the caption vocabulary. The questions ask exactly what a caption states, in DPG-Bench's CSV
schema (arrag.data.dpg_layout.COLUMNS), parents before children:

    caption states          tuple                                            parents
    each object             entity - whole (circle)                          none ("0")
    its colour              attribute - color (circle, red)                  the object's entity
    a relation              relation - spatial (triangle, diamond, left of)  both entities
    a count                 entity - whole (circles), other - count (circles, ==3)   the count: the entity

keywords holds the caption's GenEval tag (single_object, colors, two_object, color_attr, position, counting).
Read the CSV with read_questions(skip_first_row=False): unlike dpg_bench.csv it has no row to spare (with the
official quirk its first item loses its first question and, with it, its score).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from arrag.data.dpg_layout import COLUMNS
from arrag.data.mini_world import COLOURS, NUMBER_WORDS, RELATIONS, SHAPES, load_split
from arrag.io import atomic_path

_COUNTS = {w: k for k, w in NUMBER_WORDS.items()}
_PREFIX = "a photo of "


def _noun_phrase(words: list[str], caption: str) -> tuple[str, str | None]:
    """["a", "red", "circle"] -> ("circle", "red"); ["an", "orange", "square"] -> ("square", "orange")."""
    if len(words) not in (2, 3) or words[0] not in ("a", "an") or words[-1] not in SHAPES:
        raise ValueError(f"caption {caption!r}: {' '.join(words)!r} is not 'a [colour] shape'")
    if len(words) == 3 and words[1] not in COLOURS:
        raise ValueError(f"caption {caption!r}: unknown colour {words[1]!r}")
    return words[-1], words[1] if len(words) == 3 else None


def caption_facts(caption: str) -> dict:
    """What a mini-world caption states: {"objects": [(shape, colour or None)], "relation": (0, rel, 1) or None,
    "count": int or None, "tag": GenEval tag}. Raises ValueError on text no caption template makes."""
    if not caption.startswith(_PREFIX):
        raise ValueError(f"caption {caption!r} does not start with {_PREFIX!r}")
    words = caption[len(_PREFIX) :].split()
    if words and words[0] in _COUNTS:  # "three circles"
        if len(words) != 2 or words[1][:-1] not in SHAPES or not words[1].endswith("s"):
            raise ValueError(f"caption {caption!r}: a count must be followed by one plural shape")
        return {"objects": [(words[1][:-1], None)], "relation": None, "count": _COUNTS[words[0]], "tag": "counting"}
    text = " ".join(words)
    relation = next((r for r in RELATIONS if f" {r} " in text), None)
    parts = text.split(f" {relation} ") if relation else text.split(" and ")
    if len(parts) > 2:
        raise ValueError(f"caption {caption!r} names more than two objects")
    objects = [_noun_phrase(p.split(), caption) for p in parts]
    if relation is not None and any(c is not None for _, c in objects):
        raise ValueError(f"caption {caption!r}: relation captions name no colours")
    coloured = any(c is not None for _, c in objects)
    if relation is not None:
        tag = "position"
    elif len(objects) == 1:
        tag = "colors" if coloured else "single_object"
    else:
        tag = "color_attr" if coloured else "two_object"
    return {"objects": objects, "relation": (0, relation, 1) if relation else None, "count": None, "tag": tag}


def question_rows(item_id: str, caption: str) -> list[dict]:
    """The caption's questions as CSV rows (dpg_layout.COLUMNS), proposition ids from 1 in parent-first order."""
    facts = caption_facts(caption)
    rows: list[dict] = []

    def add(parents: list[int], broad: str, detailed: str, args: str, question: str) -> int:
        rows.append(
            {
                "item_id": item_id,
                "text": caption,
                "keywords": facts["tag"],
                "proposition_id": len(rows) + 1,
                "dependency": ",".join(str(p) for p in parents) or "0",
                "category_broad": broad,
                "category_detailed": detailed,
                "tuple": f"{broad} - {detailed} ({args})",
                "question_natural_language": question,
            }
        )
        return len(rows)

    if facts["count"] is not None:
        (shape, _), k = facts["objects"][0], facts["count"]
        entity = add([], "entity", "whole", f"{shape}s", f"Are there {shape}s?")
        add([entity], "other", "count", f"{shape}s, =={k}", f"Are there {NUMBER_WORDS[k]} {shape}s?")
        return rows
    entities = [add([], "entity", "whole", shape, f"Is there a {shape}?") for shape, _ in facts["objects"]]
    for (shape, colour), entity in zip(facts["objects"], entities):
        if colour is not None:
            add([entity], "attribute", "color", f"{shape}, {colour}", f"Is the {shape} {colour}?")
    if facts["relation"] is not None:
        a, rel, b = facts["relation"]
        (x, _), (y, _) = facts["objects"][a], facts["objects"][b]
        add([entities[a], entities[b]], "relation", "spatial", f"{x}, {y}, {rel}", f"Is the {x} {rel} the {y}?")
    return rows


def make_mini_dpg(world_dir: str | Path, n: int, seed: int) -> tuple[dict[str, str], list[dict]]:
    """n distinct reference-split captions, picked at random -> ({item_id: prompt}, CSV rows).

    The item id is the reference record's id, so the ground-truth image of each prompt stays findable.
    """
    _, records = load_split(Path(world_dir) / "reference")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} mini-DPG prompts: need a positive int")
    rng = np.random.default_rng(seed)
    picked: dict[str, dict] = {}  # caption -> record: each caption once
    for i in rng.permutation(len(records)):
        picked.setdefault(records[i]["caption"], records[i])
        if len(picked) == n:
            break
    if len(picked) < n:
        raise ValueError(
            f"{world_dir}/reference has {len(picked)} distinct captions, fewer than n={n}: lower n or enlarge the split"
        )
    chosen = sorted(picked.values(), key=lambda r: r["id"])
    prompts = {r["id"]: r["caption"] for r in chosen}
    rows = [row for r in chosen for row in question_rows(r["id"], r["caption"])]
    return prompts, rows


def csv_text(rows: list[dict]) -> str:
    """Rows -> CSV text with dpg_bench.csv's header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_mini_dpg(world_dir: str | Path, out_dir: str | Path, n: int, seed: int) -> None:
    """out_dir/prompts/<item_id>.txt and out_dir/dpg_bench.csv, DPG-Bench's layout, written as one folder atomically."""
    prompts, rows = make_mini_dpg(world_dir, n, seed)
    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / "prompts").mkdir()
        for item_id, text in prompts.items():
            (tmp / "prompts" / f"{item_id}.txt").write_text(text + "\n", encoding="utf-8")
        (tmp / "dpg_bench.csv").write_text(csv_text(rows), encoding="utf-8")
