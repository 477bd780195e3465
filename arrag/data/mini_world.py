"""The mini world: a seeded procedural renderer of small captioned images of coloured shapes.

It stands in for CC12M & co. in a CPU-sized miniature of the AR-RAG experiment: a tiny text-to-image
model is trained on it, a patch retrieval database is built from it, and generated images are scored by
GenEval rules with an analytic (colour segmentation + shape classification) detector. Hence:

- objects are solid flat fills of an exact COLOURS value (no anti-aliasing), bboxes are tight, and
  bboxes keep a gap of >= 1 px (2 px at size 32), so every object is one clean colour component;
- backgrounds are low-saturation grey/beige tones with low-amplitude textures, never closer than
  SAFE_DISTANCE (RGB euclidean) to any object colour (see `min_background_distance`).

Scenes come in four kinds, so that every scene fits a caption template (the templates are exactly
GenEval's prompt phrasings, since the text model is later prompted with GenEval prompts):

    kind       objects                          truthful captions (one picked uniformly at random)
    single     1                                "a photo of a {shape}", "a photo of a {colour} {shape}"
    pair       2, different shapes              "a photo of a {A} and a {B}",
                                                "a photo of a {c1} {A} and a {c2} {B}" (either object order)
    position   2, different shapes + relation   the two pair captions and "a photo of a {A} {rel} a {B}"
                                                (the relation stated either way round, both true)
    count      2-4, all the same shape          "a photo of {two|three|four} {shape}s"

`sample_scene` refuses scenes no template fits (3-4 objects of mixed shapes); `caption` does too.
Articles follow GenEval ("an" before a vowel: "a photo of an orange circle").
The default kind mixture (KIND_WEIGHTS) gives caption shares of roughly single 10%, colors 10%,
two_object 22%, color_attr 22%, position 12%, counting 25%.

Sizes: shapes are 34-50% of the image side for 1-2 objects (11-16 px at 32) and 31-38% for 3-4
objects (10-12 px), scaled with `size`: large enough that the mini VQ-VAE's 4 px patches keep their corners.
At most MAX_OBJECTS = 4 objects (number words stop at "four"); `max_objects(size)` gives the limit for a size
(>= MIN_SIZE).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from arrag.io import atomic_path, write_json, write_jsonl

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Saturated, hue-separated GenEval colour names (hues ~0, 30, 55, 130, 225, 280 degrees); pairwise RGB
# distances >= 100, so nearest-colour segmentation of a (slightly blurry) generated image is robust.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "orange": (255, 128, 0),
    "yellow": (245, 230, 30),
    "green": (35, 170, 55),
    "blue": (35, 75, 225),
    "purple": (145, 45, 200),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes", "checker")
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

MIN_SIZE = 24  # below this the smallest shapes (a quarter of the side) stop being distinguishable
MAX_OBJECTS = max(NUMBER_WORDS)
POSITION_THRESHOLD = 0.1  # GenEval's margin: centre offsets shrink by 0.1 * (sum of the two box dims)

# Background tones: grey level g with a small warm/cool tint t, tone = (g + t, g, g - t); textures add
# the same offset (|offset| <= MAX_TEXTURE_AMPLITUDE) to all three channels, so saturation stays low.
TONE_GREY = (100, 190)
TONE_TINT = (-6, 12)
MAX_TEXTURE_AMPLITUDE = 12
SAFE_DISTANCE = 80.0  # min RGB distance between any background pixel and any object colour

# Scene kinds sampled when the caller does not pin the number of objects.
KIND_WEIGHTS: dict[str, float] = {"single": 0.2, "pair": 0.2, "position": 0.35, "count": 0.25}

# GenEval's tag sizes (553 prompts), in the order the real evaluation_metadata.jsonl lists them.
GENEVAL_TAG_COUNTS: dict[str, int] = {
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}

_PLACEMENT_TRIES = 300  # whole-scene attempts before giving up
_TRIES_PER_OBJECT = 30
_RESAMPLE_LIMIT = 100_000  # consecutive scenes rejected by under-representation before giving up


# ----------------------------------------------------------------------------- scene description


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive, tight around painted pixels

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "bbox": [int(v) for v in self.bbox]}


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    background: str
    background_tone: tuple[int, int, int]
    texture_seed: int
    relation: tuple[int, str, int] | None = None  # (a, rel, b): objects[a] is `rel` objects[b]


# ----------------------------------------------------------------------------- geometry helpers


def relations_between(
    bbox_a: Sequence[float], bbox_b: Sequence[float], threshold: float = POSITION_THRESHOLD
) -> set[str]:
    """Relations of box A relative to box B by GenEval's rule: centre offset, shrunk by a margin
    proportional to the box sizes, normalised; a direction counts if its component exceeds 0.5."""
    a, b = np.asarray(bbox_a, dtype=float), np.asarray(bbox_b, dtype=float)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    margin = threshold * ((a[2:] - a[:2]) + (b[2:] - b[:2]))
    revised = np.maximum(np.abs(offset) - margin, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")  # image y grows downwards
    if dy > 0.5:
        out.add("below")
    return out


def _gap(size: int) -> int:
    """Minimum empty pixels between two objects' bboxes (2 at size 32)."""
    return max(1, size // 16)


def _side_range(size: int, n_objects: int) -> tuple[int, int]:
    """Shape side range in pixels; smaller shapes when 3-4 objects must share the image."""
    lo = round((0.34 if n_objects <= 2 else 0.31) * size)
    hi = round((0.5 if n_objects <= 2 else 0.38) * size)
    return lo, hi


def snapped_sides(size: int, n_objects: int, snap: int) -> list[int]:
    """The shape sides a scene of n objects draws from: the multiples of `snap` in the side range."""
    lo, hi = _side_range(size, n_objects)
    sides = [s for s in range(lo, hi + 1) if s % snap == 0]
    if not sides:
        raise ValueError(
            f"snap={snap}: no multiple of {snap} px lies in the {lo}-{hi} px side range of {n_objects} objects at "
            f"size {size}; use a smaller snap (1 = no snapping) or a larger size"
        )
    return sides


@cache  # sample_scene checks it for every scene; the answer depends on the two ints alone
def check_snap(snap: int, size: int) -> int:
    """`snap` must be a positive int dividing the image size (1 = shapes anywhere, at any side)."""
    if not isinstance(snap, (int, np.integer)) or snap < 1 or size % snap:
        raise ValueError(
            f"snap={snap!r}: give a positive int that divides the image size {size} (1 = no snapping; "
            "the VQ's patch size puts every shape edge at the same place inside its patch)"
        )
    for n in range(1, max_objects(size) + 1):
        snapped_sides(size, n, snap)
    return int(snap)


def max_objects(size: int = 32) -> int:
    """Most objects a scene of this size can hold: smallest shapes on a grid, capped at MAX_OBJECTS."""
    _check_size(size)
    lo, _ = _side_range(size, MAX_OBJECTS)
    per_axis = (size + _gap(size)) // (lo + _gap(size))
    return min(MAX_OBJECTS, per_axis * per_axis)


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size={size!r} is too small: use an int >= {MIN_SIZE} (default 32)")


def _boxes_clear(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    """True when the boxes are at least `gap` empty pixels apart along x or y."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def shape_template(shape: str, height: int, width: int) -> np.ndarray:
    """Boolean [height, width] ideal mask of a shape stretched to fill its box, touching all four edges.

    Pixel centres are tested against the ideal shape; no anti-aliasing by construction. The world draws square
    boxes (shape_mask); the detector fits the template to a component's box, which a blurred edge can make a
    row or column off square.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {list(SHAPES)}")
    dx = (np.arange(width) + 0.5 - width / 2)[None, :]  # pixel-centre offsets from the box centre
    dy = (np.arange(height) + 0.5 - height / 2)[:, None]
    rx, ry = width / 2, height / 2  # half-integers: the products below are exact
    if shape == "circle":  # an ellipse inscribed in the box
        m = (dx * ry) ** 2 + (dy * rx) ** 2 <= (rx * ry) ** 2
    elif shape == "square":
        m = np.ones((height, width), dtype=bool)
    elif shape == "diamond":
        m = np.abs(dx) * ry + np.abs(dy) * rx <= rx * ry
    else:  # triangle pointing down: full width in the top row, narrowing linearly to the apex row
        # (pointing up, its apex patch began like the diamond's, and a generator drew one for the other)
        m = np.abs(dx) <= (height - np.arange(height)[:, None]) / height * rx
    return np.broadcast_to(m, (height, width)).copy()


@cache
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean [side, side] mask of a shape as the world draws it: its template in a square box."""
    m = shape_template(shape, side, side)
    m.setflags(write=False)  # cached: nobody may edit it
    return m


# ----------------------------------------------------------------------------- scene sampling


def _check_names(names: Sequence[str] | None, allowed: Iterable[str], what: str, n: int) -> None:
    if names is None:
        return
    allowed = list(allowed)
    if len(names) != n:
        raise ValueError(f"{what} has {len(names)} entries but n_objects={n}: give one per object")
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown {what[:-1]} {name!r}: use one of {allowed}")


def _pick_kind(rng: np.random.Generator) -> str:
    kinds = list(KIND_WEIGHTS)
    p = np.array([KIND_WEIGHTS[k] for k in kinds])
    return kinds[int(rng.choice(len(kinds), p=p / p.sum()))]


def _distinct_shapes(rng: np.random.Generator) -> list[str]:
    return [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=2, replace=False)]


def _resolve_layout(
    rng: np.random.Generator,
    size: int,
    n_objects: int | None,
    shapes: Sequence[str] | None,
    relation: str | None,
) -> tuple[int, list[str], str | None]:
    """Decide the number of objects, their shapes and the relation, honouring what the caller pinned."""
    if n_objects is None:
        if shapes is not None:
            n_objects = len(shapes)
        elif relation is not None:
            n_objects = 2
        else:
            kind = _pick_kind(rng)
            if kind == "single":
                n_objects = 1
            elif kind in ("pair", "position"):
                n_objects, shapes = 2, _distinct_shapes(rng)
                if kind == "position":
                    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
            else:  # count
                n_objects = int(rng.integers(2, max_objects(size) + 1))
                shapes = [SHAPES[int(rng.integers(len(SHAPES)))]] * n_objects
    limit = max_objects(size)
    if not isinstance(n_objects, (int, np.integer)) or not 1 <= n_objects <= limit:
        raise ValueError(
            f"n_objects={n_objects!r} is impossible: at size {size} use 1..{limit} objects "
            f"(captions count up to '{NUMBER_WORDS[MAX_OBJECTS]}')"
        )
    n = int(n_objects)
    if relation is not None:
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r}: use one of {list(RELATIONS)}")
        if n != 2:
            raise ValueError(f"relation={relation!r} needs exactly 2 objects, got n_objects={n}")
    if shapes is None:
        if n == 1:
            shapes = [SHAPES[int(rng.integers(len(SHAPES)))]]
        elif n == 2 and (relation is not None or rng.random() >= KIND_WEIGHTS["count"]):
            shapes = _distinct_shapes(rng)
        else:  # a counting scene: every object the same shape
            shapes = [SHAPES[int(rng.integers(len(SHAPES)))]] * n
    shapes = list(shapes)
    _check_names(shapes, SHAPES, "shapes", n)
    if relation is not None and shapes[0] == shapes[1]:
        raise ValueError(
            f"relation={relation!r} needs two different shapes (got {shapes}), "
            "otherwise the position caption is ambiguous"
        )
    if n >= 3 and len(set(shapes)) > 1:
        raise ValueError(
            f"shapes={shapes}: 3-4 objects must share one shape, since only the counting "
            "template ('a photo of three circles') describes them"
        )
    return n, shapes, relation


def _place(
    rng: np.random.Generator, size: int, sides: list[int], relation: str | None, snap: int = 1
) -> list[tuple[int, int, int, int]] | None:
    """One attempt at non-overlapping boxes inside the image, corners on multiples of `snap`; None if stuck."""
    gap = _gap(size)
    boxes: list[tuple[int, int, int, int]] = []
    for s in sides:
        for _ in range(_TRIES_PER_OBJECT):
            x0, y0 = (snap * int(v) for v in rng.integers(0, (size - s) // snap + 1, size=2))
            box = (x0, y0, x0 + s, y0 + s)
            if all(_boxes_clear(box, other, gap) for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    # "Clearly holds": the requested relation is the only one GenEval's rule finds.
    if relation is not None and relations_between(boxes[0], boxes[1]) != {relation}:
        return None
    return boxes


def check_backgrounds(backgrounds: Sequence[str]) -> tuple[str, ...]:
    """The background kinds a world draws from: a non-empty subset of BACKGROUNDS, no repeats."""
    names = tuple(backgrounds)
    if not names or len(set(names)) != len(names) or any(b not in BACKGROUNDS for b in names):
        raise ValueError(
            f"backgrounds={list(names)!r}: give one or more distinct names of {list(BACKGROUNDS)} "
            "(plain only is the easiest world)"
        )
    return names


def _sample_background(
    rng: np.random.Generator, backgrounds: Sequence[str] = BACKGROUNDS, tones: int = 0
) -> tuple[str, tuple[int, int, int], int]:
    name = backgrounds[int(rng.integers(len(backgrounds)))]
    if tones:  # one of `tones` untinted greys, evenly spread over TONE_GREY
        g = round(TONE_GREY[0] + (int(rng.integers(tones)) + 0.5) * (TONE_GREY[1] - TONE_GREY[0]) / tones)
        return name, (g, g, g), int(rng.integers(0, 2**31 - 1))
    g = int(rng.integers(TONE_GREY[0], TONE_GREY[1] + 1))
    t = int(rng.integers(TONE_TINT[0], TONE_TINT[1] + 1))
    return name, (g + t, g, g - t), int(rng.integers(0, 2**31 - 1))


def check_tones(tones: int) -> int:
    if not isinstance(tones, (int, np.integer)) or tones < 0:
        raise ValueError(f"tones={tones!r}: give a non-negative int (0 = any tinted tone; N = one of N greys)")
    return int(tones)


def sample_scene(
    rng: np.random.Generator,
    size: int = 32,
    n_objects: int | None = None,
    *,
    shapes: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    relation: str | None = None,
    backgrounds: Sequence[str] = BACKGROUNDS,
    snap: int = 1,
    tones: int = 0,
) -> Scene:
    """A random scene. `shapes`/`colours` pin each object's shape/colour (one entry per object);
    `relation` asks for objects[0] to be `relation` of objects[1] (2 objects of different shapes).
    With nothing pinned a scene kind is drawn from KIND_WEIGHTS; the background from `backgrounds`.
    With `snap` > 1 every box's corners and side are multiples of `snap` px; with `tones` > 0 the background tone
    is one of that many greys."""
    _check_size(size)
    backgrounds = check_backgrounds(backgrounds)
    snap, tones = check_snap(snap, size), check_tones(tones)
    n, shapes, relation = _resolve_layout(rng, size, n_objects, shapes, relation)
    _check_names(colours, COLOURS, "colours", n)
    names = list(COLOURS)
    colours = list(colours) if colours is not None else [names[int(i)] for i in rng.integers(len(names), size=n)]
    side_choices = snapped_sides(size, n, snap)
    for _ in range(_PLACEMENT_TRIES):
        sides = [side_choices[int(i)] for i in rng.integers(len(side_choices), size=n)]
        boxes = _place(rng, size, sides, relation, snap)
        if boxes is not None:
            break
    else:
        raise ValueError(
            f"could not place {n} objects (relation={relation!r}) in a {size}px image after "
            f"{_PLACEMENT_TRIES} tries: use fewer objects or a larger size"
        )
    objects = tuple(WorldObject(s, c, b) for s, c, b in zip(shapes, colours, boxes))
    background, tone, texture_seed = _sample_background(rng, backgrounds, tones)
    return Scene(objects, background, tone, texture_seed, (0, relation, 1) if relation else None)


# ----------------------------------------------------------------------------- rendering


def _texture(name: str, texture_seed: int, size: int) -> np.ndarray:
    """Signed per-pixel offset [size, size] with |offset| <= MAX_TEXTURE_AMPLITUDE."""
    rng = np.random.default_rng(texture_seed)
    amp = int(rng.integers(4, MAX_TEXTURE_AMPLITUDE + 1))
    if name == "plain":
        return np.zeros((size, size))
    if name == "noise":
        return rng.integers(-amp, amp + 1, size=(size, size)).astype(float)
    yy, xx = np.mgrid[0:size, 0:size]
    if name == "stripes":  # sinusoidal bands; horizontal, vertical or diagonal
        period = rng.uniform(3.0, 8.0)
        theta = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])
        phase = rng.uniform(0, 2 * np.pi)
        return amp * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    if name == "checker":
        cell = int(rng.integers(3, 7))
        ox, oy = (int(v) for v in rng.integers(0, cell, size=2))
        parity = ((xx + ox) // cell + (yy + oy) // cell) % 2
        return amp * (2.0 * parity - 1.0)
    raise ValueError(f"unknown background {name!r}: use one of {list(BACKGROUNDS)}")


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """uint8 [size, size, 3]; a pure function of the scene."""
    _check_size(size)
    offset = np.rint(_texture(scene.background, scene.texture_seed, size))
    img = np.clip(np.asarray(scene.background_tone, dtype=float) + offset[..., None], 0, 255).astype(np.uint8)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        if x0 < 0 or y0 < 0 or x1 > size or y1 > size or x1 - x0 != y1 - y0:
            raise ValueError(
                f"object bbox {obj.bbox} does not fit a square shape in a {size}px image: "
                "render at the size the scene was sampled for"
            )
        if obj.colour not in COLOURS:
            raise ValueError(f"unknown colour {obj.colour!r}: use one of {list(COLOURS)}")
        img[y0:y1, x0:x1][shape_mask(obj.shape, x1 - x0)] = COLOURS[obj.colour]
    return img


def min_background_distance() -> float:
    """Smallest RGB distance between any colour a background can take and any object colour."""
    g = np.arange(TONE_GREY[0], TONE_GREY[1] + 1)
    t = np.arange(TONE_TINT[0], TONE_TINT[1] + 1)
    o = np.arange(-MAX_TEXTURE_AMPLITUDE, MAX_TEXTURE_AMPLITUDE + 1)
    grey, tint, offset = np.meshgrid(g, t, o, indexing="ij")
    bg = np.clip(np.stack([grey + tint + offset, grey + offset, grey - tint + offset], -1).reshape(-1, 3), 0, 255)
    objs = np.array(list(COLOURS.values()), dtype=float)
    return float(np.sqrt(((bg[:, None, :] - objs[None]) ** 2).sum(-1)).min())


# ----------------------------------------------------------------------------- captions


def article(word: str) -> str:
    """GenEval's article rule: "an" before a vowel letter, else "a"."""
    return "an" if word[0] in "aeiou" else "a"


def _a(word: str) -> str:
    return f"{article(word)} {word}"


def caption_options(scene: Scene) -> list[list[str]]:
    """Every truthful caption of the scene, grouped by template (each group holds its word-order variants)."""
    objs = scene.objects
    shapes = [o.shape for o in objs]
    if len(objs) == 1:
        o = objs[0]
        return [[f"a photo of {_a(o.shape)}"], [f"a photo of {_a(o.colour + ' ' + o.shape)}"]]
    if len(objs) in NUMBER_WORDS and len(set(shapes)) == 1:
        return [[f"a photo of {NUMBER_WORDS[len(objs)]} {shapes[0]}s"]]
    if len(objs) == 2:
        a, b = objs
        groups = [
            [f"a photo of {_a(a.shape)} and {_a(b.shape)}", f"a photo of {_a(b.shape)} and {_a(a.shape)}"],
            [
                f"a photo of {_a(a.colour + ' ' + a.shape)} and {_a(b.colour + ' ' + b.shape)}",
                f"a photo of {_a(b.colour + ' ' + b.shape)} and {_a(a.colour + ' ' + a.shape)}",
            ],
        ]
        if scene.relation is not None:
            i, rel, j = scene.relation
            x, y = objs[i].shape, objs[j].shape
            groups.append([f"a photo of {_a(x)} {rel} {_a(y)}", f"a photo of {_a(y)} {INVERSE_RELATION[rel]} {_a(x)}"])
        return groups
    raise ValueError(
        f"no caption template fits a scene of {len(objs)} objects with shapes {shapes}: "
        "2-4 objects of one shape, or 1-2 objects, are describable"
    )


def caption(scene: Scene, rng: np.random.Generator, coloured: float = 0.0) -> str:
    """A truthful GenEval-phrased caption: a template, then one of its word orders. With probability `coloured`
    the template that names the objects' colours (where the scene has one), else one uniformly at random."""
    groups = caption_options(scene)
    named = [g for g in groups if any(w in COLOURS for w in g[0].split())]
    if coloured and named and rng.random() < coloured:  # no draw at 0: worlds made before the option are unchanged
        group = named[0]
    else:
        group = groups[int(rng.integers(len(groups)))]
    return group[int(rng.integers(len(group)))]


def check_coloured(coloured: float) -> float:
    if not 0.0 <= coloured <= 1.0:
        raise ValueError(f"coloured captions {coloured!r}: give a probability in [0, 1] (0: templates uniformly)")
    return float(coloured)


def caption_vocabulary() -> list[str]:
    """Every word a caption or a GenEval prompt of this world can contain (split on whitespace), sorted."""
    words = {"a", "an", "photo", "of", "and"}
    words.update(SHAPES)
    words.update(s + "s" for s in SHAPES)
    words.update(COLOURS)
    words.update(NUMBER_WORDS.values())
    for rel in RELATIONS:
        words.update(rel.split())
    return sorted(words)


# ----------------------------------------------------------------------------- splits


def _stream_seed(seed: int, name: str) -> list[int]:
    """Entropy for a named random stream: the same (seed, name) always gives the same draws."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int")
    return [int(seed), zlib.crc32(name.encode())]


def _record(name: str, i: int, scene: Scene, text: str) -> dict:
    return {
        "id": f"{name}-{i:06d}",
        "caption": text,
        "objects": [o.to_dict() for o in scene.objects],
        "background": scene.background,
        "relation": list(scene.relation) if scene.relation is not None else None,
    }


def _check_pairs(underrepresented: Iterable[Sequence[str]]) -> set[tuple[str, str]]:
    pairs = set()
    for pair in underrepresented:
        if len(pair) != 2 or pair[0] not in COLOURS or pair[1] not in SHAPES:
            raise ValueError(
                f"underrepresented entry {pair!r} must be a (colour, shape) pair with colour in "
                f"{list(COLOURS)} and shape in {list(SHAPES)}"
            )
        pairs.add((pair[0], pair[1]))
    return pairs


def make_split(
    name: str,
    n: int,
    seed: int,
    size: int = 32,
    *,
    underrepresented: Iterable[Sequence[str]] = (),
    keep_fraction: float = 1.0,
    backgrounds: Sequence[str] = BACKGROUNDS,
    snap: int = 1,
    tones: int = 0,
    coloured: float = 0.0,
) -> tuple[np.ndarray, list[dict]]:
    """n rendered scenes and their records. Scenes containing an `underrepresented` (colour, shape)
    object are kept with probability `keep_fraction` only (resampled otherwise). Backgrounds are drawn
    uniformly from `backgrounds` (in one of `tones` greys when > 0); boxes snap to multiples of `snap` px;
    captions name colours with probability `coloured` before the uniform pick of a template (`caption`)."""
    _check_size(size)
    coloured = check_coloured(coloured)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative int (number of images)")
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction={keep_fraction!r} must lie in [0, 1]")
    rare = _check_pairs(underrepresented)
    rng = np.random.default_rng(_stream_seed(seed, name))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    records = []
    for i in range(n):
        for _ in range(_RESAMPLE_LIMIT):
            scene = sample_scene(rng, size, backgrounds=backgrounds, snap=snap, tones=tones)
            has_rare = any((o.colour, o.shape) in rare for o in scene.objects)
            if not has_rare or rng.random() < keep_fraction:
                break
        else:
            raise ValueError(
                f"{_RESAMPLE_LIMIT} scenes in a row were rejected: underrepresented={sorted(rare)} "
                f"with keep_fraction={keep_fraction} leaves (almost) nothing to sample"
            )
        images[i] = render(scene, size)
        records.append(_record(name, i, scene, caption(scene, rng, coloured)))
    return images, records


def _jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def write_split(out_dir: str | Path, images: np.ndarray, records: list[dict]) -> None:
    """out_dir/images.npy and out_dir/metadata.jsonl, written atomically (temp names, then os.replace)."""
    if len(images) != len(records):
        raise ValueError(f"{len(images)} images but {len(records)} records: give one record per image")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # both files replace their old versions only once both are written: never a new one beside an old one
    with atomic_path(out / "images.npy") as tmp_images, atomic_path(out / "metadata.jsonl") as tmp_records:
        with open(tmp_images, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, np.asarray(images, dtype=np.uint8))
        tmp_records.write_bytes(_jsonl_bytes(records))


def load_split(split_dir: str | Path, mmap: bool = False) -> tuple[np.ndarray, list[dict]]:
    """The (images, records) that write_split stored in split_dir; `mmap`: images memory-mapped, read only where
    indexed (a job that uses some of a split's images)."""
    d = Path(split_dir)
    for fname in ("images.npy", "metadata.jsonl"):
        if not (d / fname).is_file():
            raise FileNotFoundError(f"{d / fname} is missing: write the split first (write_split / write_world)")
    images = np.load(d / "images.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    with open(d / "metadata.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if len(records) != len(images):
        raise ValueError(f"{d}: {len(images)} images but {len(records)} metadata records; rewrite the split")
    return images, records


# ----------------------------------------------------------------------------- the whole world


def write_world(
    out_dir: str | Path,
    *,
    size: int,
    seed: int,
    splits: dict[str, int],
    underrepresented: Iterable[Sequence[str]],
    keep_fraction: float,
    n_geneval_prompts: int,
    backgrounds: Sequence[str] = BACKGROUNDS,
    snap: int = 1,
    tones: int = 0,
    coloured: float = 0.0,
) -> None:
    """out_dir/<split>/{images.npy,metadata.jsonl} per split (only "train" under-represents the rare
    combinations; every split draws its backgrounds from `backgrounds`, in one of `tones` greys when > 0, snaps
    its boxes to `snap` px and names colours in its captions by `coloured`: make_split),
    out_dir/geneval/evaluation_metadata.jsonl and out_dir/world.json."""
    out = Path(out_dir)
    rare = sorted(_check_pairs(underrepresented))
    backgrounds = check_backgrounds(backgrounds)
    snap, tones, coloured = check_snap(snap, size), check_tones(tones), check_coloured(coloured)
    split_seeds = {name: int(np.random.SeedSequence(_stream_seed(seed, name)).generate_state(1)[0]) for name in splits}
    for name, n in splits.items():
        is_train = name == "train"
        images, records = make_split(
            name,
            n,
            split_seeds[name],
            size,
            underrepresented=rare if is_train else (),
            keep_fraction=keep_fraction if is_train else 1.0,
            backgrounds=backgrounds,
            snap=snap,
            tones=tones,
            coloured=coloured,
        )
        write_split(out / name, images, records)
    from arrag.data.mini_geneval import make_geneval_prompts  # it reads this module's names

    prompts = make_geneval_prompts(n_geneval_prompts, seed)
    (out / "geneval").mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "geneval" / "evaluation_metadata.jsonl", prompts)
    params = {
        "size": size,
        "seed": seed,
        "splits": dict(splits),
        "split_seeds": split_seeds,
        "underrepresented": [list(p) for p in rare],
        "underrepresented_split": "train",
        "keep_fraction": keep_fraction,
        "n_geneval_prompts": n_geneval_prompts,
        "shapes": list(SHAPES),
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "backgrounds": list(backgrounds),
        "snap": snap,
        "tones": tones,
        "coloured_captions": coloured,
    }
    write_json(out / "world.json", params)
