"""Tests of the procedural mini world (arrag.data.mini_world)."""

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from arrag.data import mini_world as mw
from arrag.data.mini_geneval import make_geneval_prompts

SIZE = 32


def _scenes(n: int, seed: int = 0, size: int = SIZE) -> list[mw.Scene]:
    rng = np.random.default_rng(seed)
    return [mw.sample_scene(rng, size) for _ in range(n)]


def _centre(bbox):
    return ((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)


# ----------------------------------------------------------------------------- ground truth vs pixels


@pytest.mark.parametrize("size", [SIZE, 48])
def test_ground_truth_matches_pixels(size):
    for scene in _scenes(300, seed=1, size=size):
        img = mw.render(scene, size)
        assert img.dtype == np.uint8 and img.shape == (size, size, 3)
        covered = {c: np.zeros((size, size), bool) for c in mw.COLOURS}
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, "object must lie fully inside"
            exact = np.all(img == mw.COLOURS[obj.colour], axis=-1)
            ys, xs = np.nonzero(exact[y0:y1, x0:x1])
            # tight: the painted pixels span exactly the bbox
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x1 - x0, y1 - y0)
            # solid flat fill of the shape, nothing else inside the box has the colour
            assert np.array_equal(exact[y0:y1, x0:x1], mw.shape_mask(obj.shape, x1 - x0))
            covered[obj.colour][y0:y1, x0:x1] = True
        for name, rgb in mw.COLOURS.items():
            stray = np.all(img == rgb, axis=-1) & ~covered[name]
            assert not stray.any(), f"pixels of exact colour {name} outside that colour's objects"


def test_objects_do_not_overlap_and_keep_a_gap():
    for scene in _scenes(500, seed=2):
        boxes = [o.bbox for o in scene.objects]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                assert a[2] + 1 <= b[0] or b[2] + 1 <= a[0] or a[3] + 1 <= b[1] or b[3] + 1 <= a[1]


def test_shape_masks_touch_all_edges():
    for shape in mw.SHAPES:
        for side in range(4, 40):
            m = mw.shape_mask(shape, side)
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), (shape, side)


def test_each_shape_begins_differently_in_raster_order():
    """A raster-order generator commits to a shape at its first patch row: at the profile's 12 and 16 px on the
    4 px patch grid, the four shapes' top patch rows differ (the triangle points down, so that its apex does not
    begin like the diamond's), and the triangle's top row is its widest."""
    for side in (12, 16):
        top_rows = {shape: mw.shape_mask(shape, side)[:4].tobytes() for shape in mw.SHAPES}
        assert len(set(top_rows.values())) == len(mw.SHAPES), side
        triangle = mw.shape_mask("triangle", side).sum(1)
        assert triangle[0] == side and np.all(np.diff(triangle) <= 0), side


def test_shape_sizes_and_kinds():
    scenes = _scenes(2000, seed=3)
    sides = [o.bbox[2] - o.bbox[0] for s in scenes for o in s.objects]
    assert min(sides) >= 7 and max(sides) <= 16
    counts = [s for s in scenes if len(s.objects) >= 2 and len({o.shape for o in s.objects}) == 1]
    assert 0.15 < len(counts) / len(scenes) < 0.35  # counting scenes are frequent
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    assert any(s.relation for s in scenes)


def test_render_is_deterministic():
    scene = _scenes(1, seed=4)[0]
    assert np.array_equal(mw.render(scene), mw.render(scene))


# ----------------------------------------------------------------------------- backgrounds


def test_background_colours_never_near_object_colours():
    assert mw.min_background_distance() >= mw.SAFE_DISTANCE
    objs = np.array(list(mw.COLOURS.values()), dtype=float)
    for scene in _scenes(300, seed=5):
        img = mw.render(scene).astype(float)
        background = np.ones(img.shape[:2], bool)
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            background[y0:y1, x0:x1] &= ~mw.shape_mask(o.shape, x1 - x0)
        px = img[background]
        dist = np.sqrt(((px[:, None, :] - objs[None]) ** 2).sum(-1))
        assert dist.min() >= mw.SAFE_DISTANCE
    # object colours are themselves well separated
    d = np.sqrt(((objs[:, None] - objs[None]) ** 2).sum(-1)) + np.eye(len(objs)) * 1e9
    assert d.min() > 80


def test_every_background_is_used_and_textured():
    scenes = _scenes(400, seed=6)
    assert {s.background for s in scenes} == set(mw.BACKGROUNDS)
    textured = [s for s in scenes if s.background != "plain"]
    assert any(len(np.unique(mw.render(s).reshape(-1, 3), axis=0)) > len(s.objects) + 1 for s in textured)


def test_worlds_restricted_to_some_backgrounds(tmp_path):
    """world.backgrounds narrows every split's backgrounds (the mini profile's easier world) and is recorded;
    the default draws exactly as before the option existed."""
    kw = {"size": SIZE, "seed": 2, "splits": {"train": 40, "corpus": 30}, "underrepresented": [], "keep_fraction": 1.0}
    mw.write_world(tmp_path / "plain", n_geneval_prompts=6, backgrounds=["plain"], **kw)
    for split in kw["splits"]:
        images, records = mw.load_split(tmp_path / "plain" / split)
        assert {r["background"] for r in records} == {"plain"}
        assert all(
            len(np.unique(img.reshape(-1, 3), axis=0)) <= len(r["objects"]) + 1 for img, r in zip(images, records)
        )
    assert json.loads((tmp_path / "plain" / "world.json").read_text())["backgrounds"] == ["plain"]
    default, _ = mw.make_split("train", 20, 2)
    assert np.array_equal(default, mw.make_split("train", 20, 2, backgrounds=mw.BACKGROUNDS)[0])
    assert not np.array_equal(default, mw.make_split("train", 20, 2, backgrounds=["plain", "noise"])[0])
    for bad in ([], ["plain", "plain"], ["marble"]):
        with pytest.raises(ValueError, match="backgrounds="):
            mw.write_world(tmp_path / "bad", n_geneval_prompts=6, backgrounds=bad, **kw)


def test_world_command_takes_backgrounds(tmp_path, capsys):
    from arrag.cli import main

    args = ["world", "--out", str(tmp_path / "w"), "--split", "train=5", "--geneval-prompts", "6"]
    assert main([*args, "--background", "plain", "--background", "stripes"]) == 0
    assert json.loads((tmp_path / "w" / "world.json").read_text())["backgrounds"] == ["plain", "stripes"]
    assert main([*args, "--background", "marble"]) != 0
    assert "marble" in capsys.readouterr().err
    assert main([*args, "--snap", "4", "--tones", "2"]) == 0
    world = json.loads((tmp_path / "w" / "world.json").read_text())
    assert world["snap"] == 4 and world["tones"] == 2 and world["coloured_captions"] == 0.0
    assert main([*args, "--coloured-captions", "1"]) == 0
    assert json.loads((tmp_path / "w" / "world.json").read_text())["coloured_captions"] == 1.0
    captions = [json.loads(line)["caption"] for line in (tmp_path / "w" / "train" / "metadata.jsonl").open()]
    assert all(any(c in cap for c in mw.COLOURS) or re.search(rf"\b{_NUM}\b", cap) for cap in captions)


def test_snapped_worlds_put_every_box_on_the_patch_grid(tmp_path):
    """world.snap = the VQ patch size: every box corner and side is a multiple of it, so a shape's edge pixels
    fall at the same place inside their patches in every image; scenes stay valid and truthfully captioned."""
    rng = np.random.default_rng(5)
    scenes = [mw.sample_scene(rng, SIZE, backgrounds=["plain"], snap=4) for _ in range(300)]
    for scene in scenes:
        for obj in scene.objects:
            assert all(v % 4 == 0 for v in obj.bbox), obj.bbox
            assert obj.bbox[2] - obj.bbox[0] in mw.snapped_sides(SIZE, len(scene.objects), 4)
        assert len(mw.render(scene)) == SIZE and mw.caption(scene, rng)
    assert {len(s.objects) for s in scenes} == set(range(1, mw.max_objects(SIZE) + 1))
    kw = {"size": SIZE, "seed": 2, "splits": {"train": 20}, "underrepresented": [], "keep_fraction": 1.0}
    mw.write_world(tmp_path / "w", n_geneval_prompts=6, snap=4, **kw)
    assert json.loads((tmp_path / "w" / "world.json").read_text())["snap"] == 4
    for bad in (0, 3, 5.0):  # 3 does not divide 32; 5.0 is not an int
        with pytest.raises(ValueError, match="snap="):
            mw.sample_scene(rng, SIZE, snap=bad)


def test_worlds_with_few_background_tones():
    """world.tones = N: every background is one of N untinted greys inside the tone range, all N drawn."""
    rng = np.random.default_rng(8)
    scenes = [mw.sample_scene(rng, SIZE, backgrounds=["plain"], tones=3) for _ in range(200)]
    tones = {s.background_tone for s in scenes}
    assert len(tones) == 3 and all(r == g == b and mw.TONE_GREY[0] <= g <= mw.TONE_GREY[1] for r, g, b in tones)
    one = mw.sample_scene(rng, SIZE, backgrounds=["plain"], tones=1)
    assert one.background_tone == ((mw.TONE_GREY[0] + mw.TONE_GREY[1]) // 2,) * 3
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="tones="):
            mw.sample_scene(rng, SIZE, tones=bad)


def test_unsnapped_worlds_draw_exactly_as_before_snapping_existed():
    """The scenes (shapes, colours, boxes, captions) are those of the world before snapping existed; the pixels
    changed once since, when the triangle came to point down."""
    import hashlib

    images, records = mw.make_split("train", 50, 3, backgrounds=["plain", "noise"])
    assert hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16] == "5321d3d2f4eec6f9"
    assert hashlib.sha256(images.tobytes()).hexdigest()[:16] == "91084711a5397ce3"


# ----------------------------------------------------------------------------- captions

_SHAPE = "|".join(mw.SHAPES)
_COLOUR = "|".join(mw.COLOURS)
_REL = "|".join(mw.RELATIONS)
_NUM = "|".join(mw.NUMBER_WORDS.values())
_WORD_TO_N = {w: k for k, w in mw.NUMBER_WORDS.items()}


def _article_ok(caption: str) -> bool:
    words = caption.split()
    return all(
        nxt[0] in "aeiou" if w == "an" else nxt[0] not in "aeiou"
        for w, nxt in itertools.pairwise(words)
        if w in ("a", "an") and nxt != "photo"
    )


def _check_caption(scene: mw.Scene, cap: str) -> None:
    objs = scene.objects
    pairs = sorted((o.colour, o.shape) for o in objs)
    assert _article_ok(cap), cap
    if m := re.fullmatch(rf"a photo of an? (?:({_COLOUR}) )?({_SHAPE})", cap):
        assert len(objs) == 1 and objs[0].shape == m[2] and m[1] in (None, objs[0].colour)
    elif m := re.fullmatch(rf"a photo of ({_NUM}) ({_SHAPE})s", cap):
        assert len(objs) == _WORD_TO_N[m[1]] and all(o.shape == m[2] for o in objs)
    elif m := re.fullmatch(rf"a photo of an? (?:({_COLOUR}) )?({_SHAPE}) and an? (?:({_COLOUR}) )?({_SHAPE})", cap):
        assert len(objs) == 2 and m[2] != m[4]
        assert sorted(o.shape for o in objs) == sorted([m[2], m[4]])
        if m[1] is not None:
            assert pairs == sorted([(m[1], m[2]), (m[3], m[4])])
    elif m := re.fullmatch(rf"a photo of an? ({_SHAPE}) ({_REL}) an? ({_SHAPE})", cap):
        assert len(objs) == 2 and scene.relation is not None
        a = next(o for o in objs if o.shape == m[1])
        b = next(o for o in objs if o.shape == m[3])
        assert a is not b
        assert mw.relations_between(a.bbox, b.bbox) == {m[2]}  # GenEval's rule, and only that relation
        (ax, ay), (bx, by) = _centre(a.bbox), _centre(b.bbox)  # plain centre comparison agrees
        assert {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[m[2]]
    else:
        raise AssertionError(f"caption fits no template: {cap!r}")


def test_captions_are_truthful():
    rng = np.random.default_rng(7)
    seen = set()
    for scene in _scenes(1500, seed=7):
        for _ in range(3):
            cap = mw.caption(scene, rng)
            _check_caption(scene, cap)
            seen.add(re.sub(rf"\b({_SHAPE}|{_COLOUR}|{_REL}|{_NUM})s?\b", "X", cap))
    # every template shows up
    assert {
        "a photo of a X",
        "a photo of X X",
        "a photo of a X and a X",
        "a photo of a X X and a X X",
        "a photo of a X X a X",
    } <= {s.replace(" an ", " a ") for s in seen}


def test_coloured_captions_name_colours_by_their_probability():
    """With probability p the colour-naming template, else the uniform pick: each kind's share of captions naming
    colours is p + (1 - p) / templates; counting captions have no colour template and stay as they were."""
    scenes = _scenes(3000, seed=9)
    rng = np.random.default_rng(9)
    names = lambda cap: any(w in mw.COLOURS for w in cap.split())  # noqa: E731
    by_templates = {}
    for scene in scenes:
        cap = mw.caption(scene, rng, coloured=0.5)
        _check_caption(scene, cap)
        by_templates.setdefault(len(mw.caption_options(scene)), []).append(names(cap))
    for templates, named in by_templates.items():
        has_colour_template = templates > 1
        expected = 0.5 + 0.5 / templates if has_colour_template else 0.0
        assert abs(np.mean(named) - expected) < 4 * np.sqrt(0.25 / len(named)) + 1e-9, (templates, np.mean(named))
    assert all(names(mw.caption(s, rng, coloured=1.0)) for s in scenes if len(mw.caption_options(s)) > 1)
    with pytest.raises(ValueError, match=r"coloured captions 1\.5"):
        mw.make_split("train", 2, seed=0, coloured=1.5)


def test_relation_scenes_hold():
    rng = np.random.default_rng(8)
    for rel in mw.RELATIONS:
        for _ in range(50):
            s = mw.sample_scene(rng, SIZE, relation=rel)
            a, r, b = s.relation
            assert r == rel and mw.relations_between(s.objects[a].bbox, s.objects[b].bbox) == {rel}


def test_pinned_shapes_and_colours():
    rng = np.random.default_rng(9)
    s = mw.sample_scene(rng, SIZE, shapes=["circle", "square"], colours=["red", "blue"], relation="above")
    assert [(o.shape, o.colour) for o in s.objects] == [("circle", "red"), ("square", "blue")]
    assert s.relation == (0, "above", 1)
    s = mw.sample_scene(rng, SIZE, 3)
    assert len(s.objects) == 3 and len({o.shape for o in s.objects}) == 1


def test_caption_vocabulary_covers_everything():
    vocab = mw.caption_vocabulary()
    assert vocab == sorted(set(vocab))
    rng = np.random.default_rng(10)
    words = set()
    for scene in _scenes(1000, seed=10):
        for group in mw.caption_options(scene):
            for cap in group:
                words.update(cap.split())
        words.update(mw.caption(scene, rng).split())
    for p in make_geneval_prompts(553, 0):
        words.update(p["prompt"].split())
    assert words <= set(vocab), words - set(vocab)


def test_caption_refuses_untemplated_scene():
    objs = (
        mw.WorldObject("circle", "red", (0, 0, 8, 8)),
        mw.WorldObject("square", "red", (10, 0, 18, 8)),
        mw.WorldObject("square", "blue", (20, 0, 28, 8)),
    )
    with pytest.raises(ValueError, match="no caption template"):
        mw.caption(mw.Scene(objs, "plain", (150, 150, 150), 0, None), np.random.default_rng(0))


# ----------------------------------------------------------------------------- splits


def test_make_split_records_and_determinism():
    a_img, a_rec = mw.make_split("corpus", 200, 11)
    b_img, b_rec = mw.make_split("corpus", 200, 11)
    assert a_img.shape == (200, SIZE, SIZE, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_rec == b_rec
    c_img, c_rec = mw.make_split("corpus", 200, 12)
    assert not np.array_equal(a_img, c_img) and a_rec != c_rec
    d_img, _ = mw.make_split("train", 200, 11)
    assert not np.array_equal(a_img, d_img)  # the name is part of the stream
    r = a_rec[5]
    assert list(r) == ["id", "caption", "objects", "background", "relation"]
    assert r["id"] == "corpus-000005"
    assert all(set(o) == {"shape", "colour", "bbox"} and len(o["bbox"]) == 4 for o in r["objects"])
    assert any(x["relation"] is not None for x in a_rec)
    json.dumps(a_rec)  # records are plain JSON


def _rare_fraction(records, rare) -> float:
    return np.mean([any((o["colour"], o["shape"]) in rare for o in r["objects"]) for r in records])


def test_underrepresentation():
    rare = [("red", "circle"), ("blue", "triangle")]
    _, corpus = mw.make_split("corpus", 1500, 13)
    _, train = mw.make_split("train", 1500, 13, underrepresented=rare, keep_fraction=0.05)
    full, few = _rare_fraction(corpus, set(rare)), _rare_fraction(train, set(rare))
    assert full > 0.1 and few < full / 5, (full, few)
    with pytest.raises(ValueError, match="colour, shape"):
        mw.make_split("train", 1, 0, underrepresented=[("circle", "red")], keep_fraction=0.5)


# ----------------------------------------------------------------------------- GenEval prompts

_REAL = Path("/work/shared/benchmarks/geneval/evaluation_metadata.jsonl")


def _check_prompt(p: dict) -> None:
    tag, inc = p["tag"], p["include"]
    assert list(p) == (["tag", "include", "exclude", "prompt"] if tag == "counting" else ["tag", "include", "prompt"])
    assert _article_ok(p["prompt"]), p["prompt"]
    if tag == "single_object":
        assert inc == [{"class": inc[0]["class"], "count": 1}]
        assert p["prompt"] == f"a photo of a {inc[0]['class']}"
    elif tag == "two_object":
        assert [list(i) for i in inc] == [["class", "count"]] * 2 and inc[0]["class"] != inc[1]["class"]
        assert p["prompt"] == f"a photo of a {inc[0]['class']} and a {inc[1]['class']}"
    elif tag == "counting":
        (i,), (e,) = inc, p["exclude"]
        assert list(i) == ["class", "count"] and e == {"class": i["class"], "count": i["count"] + 1}
        assert p["prompt"] == f"a photo of {mw.NUMBER_WORDS[i['count']]} {i['class']}s"
    elif tag == "colors":
        (i,) = inc
        assert list(i) == ["class", "count", "color"] and i["count"] == 1 and i["color"] in mw.COLOURS
        art = "an" if i["color"][0] in "aeiou" else "a"
        assert p["prompt"] == f"a photo of {art} {i['color']} {i['class']}"
    elif tag == "position":
        b, a = inc
        assert b == {"class": b["class"], "count": 1} and list(a) == ["class", "count", "position"]
        rel, ref = a["position"]
        assert rel in mw.RELATIONS and ref == 0 and a["class"] != b["class"]
        assert p["prompt"] == f"a photo of a {a['class']} {rel} a {b['class']}"
    elif tag == "color_attr":
        a, b = inc
        assert list(a) == list(b) == ["class", "count", "color"] and a["color"] != b["color"]
        arts = ["an" if x["color"][0] in "aeiou" else "a" for x in (a, b)]
        assert p["prompt"] == f"a photo of {arts[0]} {a['color']} {a['class']} and {arts[1]} {b['color']} {b['class']}"
    else:
        raise AssertionError(f"unknown tag {tag}")
    for i in inc:
        assert i["class"] in mw.SHAPES


def test_geneval_prompts_schema_and_spread():
    prompts = make_geneval_prompts(200, 0)
    assert len(prompts) == 200
    for p in prompts:
        _check_prompt(p)
    tags = [p["tag"] for p in prompts]
    assert set(tags) == set(mw.GENEVAL_TAG_COUNTS)
    # grouped by tag in GenEval's order and in its proportions (+-1 prompt)
    assert list(dict.fromkeys(tags)) == list(mw.GENEVAL_TAG_COUNTS)
    for tag, c in mw.GENEVAL_TAG_COUNTS.items():
        assert abs(tags.count(tag) - 200 * c / 553) <= 1
    # duplicates only once a tag's pool of distinct prompts is exhausted, and then balanced
    n_sh, n_col, n_rel = len(mw.SHAPES), len(mw.COLOURS), len(mw.RELATIONS)
    pool = {
        "single_object": n_sh,
        "two_object": n_sh * (n_sh - 1),
        "counting": n_sh * len(mw.NUMBER_WORDS),
        "colors": n_sh * n_col,
        "position": n_sh * (n_sh - 1) * n_rel,
        "color_attr": n_sh * (n_sh - 1) * n_col * (n_col - 1),
    }
    for tag, u in pool.items():
        texts = [p["prompt"] for p in prompts if p["tag"] == tag]
        reps = Counter(texts).values()
        assert len(set(texts)) == min(len(texts), u) and max(reps) - min(reps) <= 1, tag
    assert make_geneval_prompts(200, 0) == prompts
    assert make_geneval_prompts(200, 1) != prompts
    assert {p["tag"] for p in make_geneval_prompts(6, 0)} == set(mw.GENEVAL_TAG_COUNTS)
    assert len(make_geneval_prompts(150, 0)) == 150
    with pytest.raises(ValueError, match=">= 6"):
        make_geneval_prompts(5, 0)


def test_geneval_article_an_orange():
    prompts = make_geneval_prompts(553, 0)
    orange = [p["prompt"] for p in prompts if any(i.get("color") == "orange" for i in p["include"])]
    assert orange and all("an orange" in t and "a orange" not in t for t in orange)


@pytest.mark.skipif(not _REAL.exists(), reason="real GenEval metadata not available")
def test_geneval_schema_matches_real_file():
    real = [json.loads(line) for line in _REAL.read_text().splitlines()]
    shape_of = {}
    for r in real:
        shape_of.setdefault(r["tag"], (list(r), [list(i) for i in r["include"]]))
    for p in make_geneval_prompts(553, 0):
        keys, inc_keys = shape_of[p["tag"]]
        assert list(p) == keys and [list(i) for i in p["include"]] == inc_keys


# ----------------------------------------------------------------------------- impossible requests


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_objects": 0}, r"1\.\.4 objects"),
        ({"n_objects": 5}, r"at size 32 use 1\.\.4"),
        ({"n_objects": 1, "colours": ["magenta"]}, r"unknown colour 'magenta'.*red"),
        ({"n_objects": 1, "shapes": ["hexagon"]}, r"unknown shape 'hexagon'.*circle"),
        ({"n_objects": 2, "shapes": ["circle"]}, "one per object"),
        ({"relation": "behind"}, "unknown relation"),
        ({"n_objects": 3, "relation": "above"}, "exactly 2 objects"),
        ({"shapes": ["circle", "circle"], "relation": "above"}, "different shapes"),
        ({"shapes": ["circle", "square", "square"]}, "share one shape"),
        ({"size": 8}, r"too small.*>= 24"),
    ],
)
def test_impossible_requests_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mw.sample_scene(np.random.default_rng(0), **kwargs)


def test_placement_failure_is_bounded(monkeypatch):
    monkeypatch.setattr(mw, "_place", lambda *a, **k: None)
    with pytest.raises(ValueError, match="could not place"):
        mw.sample_scene(np.random.default_rng(0), SIZE, 2)


def test_bad_split_arguments():
    with pytest.raises(ValueError, match="n=-1"):
        mw.make_split("x", -1, 0)
    with pytest.raises(ValueError, match="keep_fraction"):
        mw.make_split("x", 1, 0, keep_fraction=2.0)
    with pytest.raises(ValueError, match="seed"):
        mw.make_split("x", 1, -3)


# ----------------------------------------------------------------------------- files


def test_write_load_round_trip(tmp_path):
    images, records = mw.make_split("finetune", 20, 14)
    mw.write_split(tmp_path / "ft", images, records)
    got_images, got_records = mw.load_split(tmp_path / "ft")
    assert np.array_equal(got_images, images) and got_records == records
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["images.npy", "metadata.jsonl"]


def test_load_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images.npy"):
        mw.load_split(tmp_path)
    images, records = mw.make_split("x", 3, 0)
    mw.write_split(tmp_path, images, records)
    (tmp_path / "metadata.jsonl").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(ValueError, match="3 images but 1"):
        mw.load_split(tmp_path)


def test_failed_write_leaves_nothing_at_final_name(tmp_path, monkeypatch):
    images, records = mw.make_split("x", 4, 0)

    def boom(f, *a, **k):
        f.write(b"half a header")
        raise OSError("disk full")

    monkeypatch.setattr(mw.np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        mw.write_split(tmp_path / "s", images, records)
    assert list((tmp_path / "s").iterdir()) == []  # no final file, no temp file
    monkeypatch.undo()

    # an existing good split survives a failed rewrite untouched
    mw.write_split(tmp_path / "s", images, records)
    monkeypatch.setattr(mw, "_jsonl_bytes", lambda rows: (_ for _ in ()).throw(RuntimeError("bad record")))
    with pytest.raises(RuntimeError, match="bad record"):
        mw.write_split(tmp_path / "s", images[:2], records[:2])
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["images.npy", "metadata.jsonl"]
    monkeypatch.undo()
    got_images, got_records = mw.load_split(tmp_path / "s")
    assert np.array_equal(got_images, images) and got_records == records


def test_write_world(tmp_path):
    rare = [["red", "circle"]]
    kw = {
        "size": SIZE,
        "seed": 3,
        "splits": {"corpus": 60, "train": 40, "finetune": 10, "reference": 10},
        "underrepresented": rare,
        "keep_fraction": 0.0,
        "n_geneval_prompts": 150,
    }
    mw.write_world(tmp_path, **kw)
    for name, n in kw["splits"].items():
        images, records = mw.load_split(tmp_path / name)
        assert len(images) == n and all(r["id"].startswith(name + "-") for r in records)
    _, train = mw.load_split(tmp_path / "train")
    assert _rare_fraction(train, {("red", "circle")}) == 0.0  # keep_fraction 0: train has none
    corpus_img, _ = mw.load_split(tmp_path / "corpus")
    ref_img, _ = mw.load_split(tmp_path / "reference")
    assert not np.array_equal(corpus_img[:10], ref_img)  # disjoint draws
    lines = (tmp_path / "geneval" / "evaluation_metadata.jsonl").read_text().splitlines()
    assert len(lines) == 150
    for line in lines:
        _check_prompt(json.loads(line))
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["size"] == SIZE and world["seed"] == 3 and world["splits"] == kw["splits"]
    assert world["underrepresented"] == rare and world["keep_fraction"] == 0.0
    assert len(set(world["split_seeds"].values())) == 4
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []
    # deterministic
    mw.write_world(tmp_path / "again", **kw)
    assert (tmp_path / "again" / "world.json").read_text() == (tmp_path / "world.json").read_text()
    assert np.array_equal(mw.load_split(tmp_path / "again" / "train")[0], mw.load_split(tmp_path / "train")[0])
