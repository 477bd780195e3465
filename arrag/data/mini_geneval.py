"""The mini world's GenEval prompt list (`make_geneval_prompts`): prompts in GenEval's tag proportions, drawn
from every scene the world can caption, with the metadata GenEval's evaluator reads; `prompt_scene` draws a
ground-truth scene for a prompt (the detector's ceiling: arrag.evaluation.vq_ceiling)."""

from __future__ import annotations

import copy

import numpy as np

from arrag.data.mini_world import (
    COLOURS,
    GENEVAL_TAG_COUNTS,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    Scene,
    _a,
    _stream_seed,
    sample_scene,
)


def _tag_counts(n: int) -> dict[str, int]:
    """Split n over the tags in GenEval's proportions (largest remainder, at least one each)."""
    total = sum(GENEVAL_TAG_COUNTS.values())
    exact = {t: n * c / total for t, c in GENEVAL_TAG_COUNTS.items()}
    counts = {t: max(1, int(v)) for t, v in exact.items()}
    by_remainder = sorted(exact, key=lambda t: exact[t] - int(exact[t]), reverse=True)
    i = 0
    while sum(counts.values()) < n:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > n:  # only when the minimum of one per tag overshot
        biggest = max(counts, key=counts.get)
        counts[biggest] -= 1
    return counts


def _prompt_pool(tag: str) -> list[dict]:
    """Every distinct prompt of a tag, in a fixed order; field order as in GenEval's file."""
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if tag == "single_object":
        return [{"tag": tag, "include": [{"class": s, "count": 1}], "prompt": f"a photo of {_a(s)}"} for s in SHAPES]
    if tag == "two_object":
        return [
            {
                "tag": tag,
                "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {_a(a)} and {_a(b)}",
            }
            for a, b in pairs
        ]
    if tag == "counting":
        return [
            {
                "tag": tag,
                "include": [{"class": s, "count": k}],
                "exclude": [{"class": s, "count": k + 1}],
                "prompt": f"a photo of {w} {s}s",
            }
            for s in SHAPES
            for k, w in NUMBER_WORDS.items()
        ]
    if tag == "colors":
        return [
            {
                "tag": tag,
                "include": [{"class": s, "count": 1, "color": c}],
                "prompt": f"a photo of {_a(c + ' ' + s)}",
            }
            for s in SHAPES
            for c in COLOURS
        ]
    if tag == "position":  # include[1] (A) is `rel` of include[0] (B)
        return [
            {
                "tag": tag,
                "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of {_a(a)} {rel} {_a(b)}",
            }
            for a, b in pairs
            for rel in RELATIONS
        ]
    if tag == "color_attr":
        return [
            {
                "tag": tag,
                "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
                "prompt": f"a photo of {_a(c1 + ' ' + a)} and {_a(c2 + ' ' + b)}",
            }
            for a, b in pairs
            for c1 in COLOURS
            for c2 in COLOURS
            if c1 != c2
        ]
    raise ValueError(f"unknown GenEval tag {tag!r}: use one of {list(GENEVAL_TAG_COUNTS)}")


def make_geneval_prompts(n: int, seed: int) -> list[dict]:
    """n GenEval-schema prompts over the six tags in the benchmark's proportions, grouped by tag.
    Within a tag, prompts are drawn without replacement; a tag repeats only once its pool is used up
    (single_object has 4 distinct prompts, two_object and counting 12)."""
    n_tags = len(GENEVAL_TAG_COUNTS)
    if not isinstance(n, (int, np.integer)) or n < n_tags:
        raise ValueError(f"n={n!r} GenEval prompts: need an int >= {n_tags} (one per tag; the benchmark has 553)")
    rng = np.random.default_rng(_stream_seed(seed, "geneval"))
    prompts = []
    for tag, k in _tag_counts(int(n)).items():
        pool = _prompt_pool(tag)
        picks: list[int] = []
        while len(picks) < k:  # reshuffle the whole pool each round: repeats stay balanced
            picks.extend(int(j) for j in rng.permutation(len(pool))[: k - len(picks)])
        prompts.extend(copy.deepcopy(pool[j]) for j in picks)
    return prompts


def prompt_scene(metadata: dict, rng: np.random.Generator, size: int = 32, **world) -> Scene:
    """A random scene that satisfies a GenEval prompt's metadata: its objects, counts, colours and relation, the
    rest (sizes, places, the other colours) drawn as the world draws them; `world` are sample_scene's keywords
    (backgrounds, snap, tones), as world.json records them."""
    include = metadata["include"]
    if metadata["tag"] == "counting":
        n = include[0]["count"]
        return sample_scene(rng, size, n, shapes=[include[0]["class"]] * n, **world)
    if metadata["tag"] == "position":  # include[1] is `relation` of include[0]
        shapes = [include[1]["class"], include[0]["class"]]
        return sample_scene(rng, size, shapes=shapes, relation=include[1]["position"][0], **world)
    colours = [o["color"] for o in include] if all("color" in o for o in include) else None
    return sample_scene(rng, size, shapes=[o["class"] for o in include], colours=colours, **world)
