"""Tests of GenEval scoring (arrag.evaluation.geneval) and the mini world's shapes detector."""

import csv
import json
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from arrag.data import mini_world as mw
from arrag.data.geneval_layout import write_prompt_folder
from arrag.data.mini_geneval import make_geneval_prompts
from arrag.evaluation import geneval as ge
from arrag.evaluation.shapes_detector import classify_shape, detect_shapes, shape_template
from arrag.io import read_jsonl

# ----------------------------------------------------------------------------- GenEval rules on hand-built detections


def det(label, box=(0, 0, 8, 8), score=0.95, colour="red"):
    return ge.Detection(label, score, tuple(float(v) for v in box), None, colour)


def prompt(tag, include, exclude=()):
    meta = {"tag": tag, "include": list(include), "prompt": f"a {tag} prompt"}
    if exclude:
        meta["exclude"] = list(exclude)
    return meta


SINGLE = prompt("single_object", [{"class": "circle", "count": 1}])
TWO = prompt("two_object", [{"class": "circle", "count": 1}, {"class": "square", "count": 1}])
TWO_CIRCLES = prompt("counting", [{"class": "circle", "count": 2}], [{"class": "circle", "count": 3}])
RED_CIRCLE = prompt("colors", [{"class": "circle", "count": 1, "color": "red"}])
RED_CIRCLE_BLUE_SQUARE = prompt(
    "color_attr", [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]
)
CIRCLE_RIGHT_OF_SQUARE = prompt(
    "position", [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["right of", 0]}]
)


def correct(meta, detections):
    return ge.evaluate_image(meta, detections)[0]


def test_single_and_two_object():
    assert correct(SINGLE, [det("circle")])
    assert correct(SINGLE, [det("circle"), det("square")])  # other classes do not matter
    assert not correct(SINGLE, [det("square")])
    assert not correct(SINGLE, [])
    assert correct(TWO, [det("circle"), det("square")])
    ok, reason, _ = ge.evaluate_image(TWO, [det("circle"), det("triangle")])
    assert not ok and "square" in reason


def test_counting_include_and_exclude():
    circles = [det("circle", (10 * i, 0, 10 * i + 8, 8)) for i in range(4)]
    assert correct(TWO_CIRCLES, circles[:2])
    assert not correct(TWO_CIRCLES, circles[:1])
    ok, reason, _ = ge.evaluate_image(TWO_CIRCLES, circles[:3])  # three found when two were asked
    assert not ok and "fewer than 3" in reason
    assert not correct(TWO_CIRCLES, circles)


def test_counting_threshold_is_0_9_and_others_0_3():
    unsure = [det("circle", score=0.85), det("circle", score=0.6)]
    assert not correct(TWO_CIRCLES, unsure)  # both below 0.9: nothing counted
    assert correct(TWO_CIRCLES, [det("circle", score=0.91), det("circle", score=0.95)])
    # a third, unsure circle is invisible to counting, so "two" still holds
    assert correct(TWO_CIRCLES, [det("circle", score=0.91), det("circle", score=0.95), det("circle", score=0.9)])
    assert correct(SINGLE, [det("circle", score=0.31)])
    assert not correct(SINGLE, [det("circle", score=0.3)])  # strictly above the threshold
    two_unsure_circles = prompt("two_object", [{"class": "circle", "count": 2}])
    assert correct(two_unsure_circles, unsure)


def test_colour_reads_the_top_count_detections_by_score():
    assert correct(RED_CIRCLE, [det("circle", colour="red")])
    assert not correct(RED_CIRCLE, [det("circle", colour="blue")])
    red_best = [det("circle", score=0.5, colour="blue"), det("circle", score=0.9, colour="red")]
    assert correct(RED_CIRCLE, red_best)
    blue_best = [det("circle", score=0.9, colour="blue"), det("circle", score=0.5, colour="red")]
    ok, reason, _ = ge.evaluate_image(RED_CIRCLE, blue_best)  # a red circle exists, but not among the top 1
    assert not ok and "blue" in reason
    two_red = prompt("colors", [{"class": "circle", "count": 2, "color": "red"}])
    green_second = [det("circle", score=0.9), det("circle", score=0.8, colour="green"), det("circle", score=0.7)]
    assert not correct(two_red, green_second)
    green_third = [det("circle", score=0.9), det("circle", score=0.8), det("circle", score=0.7, colour="green")]
    assert correct(two_red, green_third)
    with pytest.raises(ValueError, match="colour"):
        ge.evaluate_image(RED_CIRCLE, [det("circle", colour=None)])


def test_color_attr_needs_both_colours():
    assert correct(RED_CIRCLE_BLUE_SQUARE, [det("circle", colour="red"), det("square", colour="blue")])
    assert not correct(RED_CIRCLE_BLUE_SQUARE, [det("circle", colour="blue"), det("square", colour="red")])
    assert not correct(RED_CIRCLE_BLUE_SQUARE, [det("circle", colour="red"), det("square", colour="red")])


@pytest.mark.parametrize("dx, expected", [(3.3, True), (3.1, False), (1.0, False), (-3.3, False)])
def test_position_margin_on_a_horizontal_offset(dx, expected):
    # two 8 px boxes: the margin is 0.1 * (8 + 8) = 1.6 px, and "right of" needs (dx - 1.6) / dx > 0.5, i.e. dx > 3.2
    square = det("square", (10, 10, 18, 18))
    circle = det("circle", (10 + dx, 10, 18 + dx, 18))
    assert correct(CIRCLE_RIGHT_OF_SQUARE, [square, circle]) is expected


def test_position_margin_on_a_diagonal_offset():
    square = det("square", (10, 10, 18, 18))
    # offset (5, 3): shrunk by 1.6 to (3.4, 1.4), over |offset| = 5.83 -> (0.58, 0.24): right of, not below
    circle = det("circle", (15, 13, 23, 21))
    assert correct(CIRCLE_RIGHT_OF_SQUARE, [square, circle])
    below = prompt(
        "position", [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["below", 0]}]
    )
    ok, reason, _ = ge.evaluate_image(below, [square, circle])
    assert not ok and "right of" in reason
    # margins grow with the boxes: the same centres with 16 px boxes are too close to be anything
    big_square, big_circle = det("square", (6, 6, 22, 22)), det("circle", (11, 9, 27, 25))
    assert not correct(CIRCLE_RIGHT_OF_SQUARE, [big_square, big_circle])


def test_position_needs_its_target_clause_to_hold():
    ok, reason, _ = ge.evaluate_image(CIRCLE_RIGHT_OF_SQUARE, [det("circle", (20, 0, 28, 8))])
    assert not ok and "no target" in reason
    with pytest.raises(ValueError, match="before"):
        bad = prompt("position", [{"class": "circle", "count": 1, "position": ["right of", 1]}])
        ge.evaluate_image(bad, [det("circle")])


def test_at_most_16_detections_per_class():
    many = [det("circle", (i, 0, i + 8, 8), score=0.5 + i / 100) for i in range(20)]
    at_least_17 = prompt("two_object", [{"class": "circle", "count": 17}])
    assert not correct(at_least_17, many)
    at_most_16 = prompt("counting", [{"class": "circle", "count": 1}], [{"class": "circle", "count": 17}])
    many_sure = [det("circle", (i, 0, i + 8, 8), score=0.95) for i in range(20)]
    ok, _, details = ge.evaluate_image(at_most_16, many_sure)
    assert ok and len(details["circle"]) == 16
    _, _, details = ge.evaluate_image(at_least_17, many)
    assert [row[4] for row in details["circle"]] == sorted((d.score for d in many), reverse=True)[:16]


def test_rules_options_change_the_thresholds():
    unsure = [det("circle", score=0.85), det("circle", score=0.86)]
    assert not correct(TWO_CIRCLES, unsure)
    assert ge.evaluate_image(TWO_CIRCLES, unsure, ge.Rules(counting_threshold=0.8))[0]
    three = [det("circle", (10 * i, 0, 10 * i + 8, 8)) for i in range(3)]
    assert ge.evaluate_image(TWO_CIRCLES, three, ge.Rules(max_objects=2))[0]  # the third is never seen
    square, circle = det("square", (10, 10, 18, 18)), det("circle", (13.1, 10, 21.1, 18))
    assert not correct(CIRCLE_RIGHT_OF_SQUARE, [square, circle])
    assert ge.evaluate_image(CIRCLE_RIGHT_OF_SQUARE, [square, circle], ge.Rules(position_threshold=0.0))[0]


def test_summary_is_the_unweighted_mean_of_tag_accuracies(tmp_path):
    rows = [
        {"tag": "single_object", "correct": True, "metadata": "a"},
        {"tag": "counting", "correct": True, "metadata": "b"},
        {"tag": "counting", "correct": False, "metadata": "b"},
        {"tag": "counting", "correct": False, "metadata": "c"},
    ]
    s = ge.summarise(rows)
    assert s["overall"] == pytest.approx((1 + 1 / 3) / 2)  # not the image mean 2/4
    assert s["tags"]["counting"] == {"accuracy": pytest.approx(1 / 3), "correct": 1, "images": 3}
    assert s["images"] == 4 and s["prompts"] == 3
    assert s["correct_images"] == 0.5 and s["correct_prompts"] == pytest.approx(2 / 3)
    ge.summary_csv(s, tmp_path / "summary.csv")
    table = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["tag"] for r in table] == ["single_object", "counting", "overall"]
    assert float(table[-1]["accuracy"]) == pytest.approx(s["overall"])
    with pytest.raises(ValueError, match="no GenEval records"):
        ge.summarise([])


# ----------------------------------------------------------------------------- the shapes detector


def ground_truth(scene):
    return Counter((o.shape, o.colour) for o in scene.objects)


def detected(image, threshold=ge.OFFICIAL.threshold):
    return Counter((d.label, d.colour) for d in detect_shapes(image) if d.score > threshold)


def test_templates_are_the_renderers_masks():
    for shape in mw.SHAPES:
        for side in range(4, 24):
            assert np.array_equal(shape_template(shape, side, side), mw.shape_mask(shape, side))


def test_detector_on_single_objects():
    """Clean renders: the exact class, colour, box and mask, with confidence 1."""
    rng = np.random.default_rng(0)
    scenes = [mw.sample_scene(rng, 32, 1) for _ in range(400)]
    exact = 0
    for scene in scenes:
        (obj,) = scene.objects
        found = detect_shapes(mw.render(scene))
        exact += [(d.label, d.colour, d.box, d.score) for d in found] == [
            (obj.shape, obj.colour, tuple(float(v) for v in obj.bbox), 1.0)
        ]
        x0, y0, x1, y1 = obj.bbox
        truth = np.zeros((32, 32), bool)
        truth[y0:y1, x0:x1] = mw.shape_mask(obj.shape, x1 - x0)
        assert np.array_equal(found[0].mask, truth)
    assert exact / len(scenes) >= 0.99  # measured 1.0


def test_detector_on_multi_object_scenes():
    images, records = mw.make_split("detector", 300, seed=1)
    truth = [Counter((o["shape"], o["colour"]) for o in r["objects"]) for r in records]
    exact = sum(detected(img, ge.OFFICIAL.counting_threshold) == t for img, t in zip(images, truth))
    assert exact / len(images) >= 0.99  # measured 1.0


def degrade(image, rng, blur=0.7, noise=8.0):
    """Soft edges and pixel noise, roughly what a VQ decoder does to a flat-colour image."""
    x = ndimage.gaussian_filter(image.astype(float), (blur, blur, 0)) + rng.normal(0, noise, image.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def test_detector_on_soft_noisy_images():
    rng = np.random.default_rng(2)
    images, records = mw.make_split("soft", 200, seed=2)
    truth = [Counter((o["shape"], o["colour"]) for o in r["objects"]) for r in records]
    soft = [degrade(img, rng) for img in images]
    assert np.mean([detected(img) == t for img, t in zip(soft, truth)]) >= 0.93  # measured 0.98
    assert np.mean([detected(img, ge.OFFICIAL.counting_threshold) == t for img, t in zip(soft, truth)]) >= 0.9  # 0.95


def test_non_shapes_score_low():
    bar = np.ones((3, 12), bool)
    ell = np.zeros((10, 10), bool)
    ell[:, :4] = ell[6:, :] = True
    upside_down = mw.shape_mask("triangle", 10)[::-1]
    assert classify_shape(bar)[1] < ge.OFFICIAL.threshold
    assert classify_shape(ell)[1] < 0.7 and classify_shape(upside_down)[1] < 0.75
    assert classify_shape(mw.shape_mask("diamond", 10)) == ("diamond", 1.0)


def test_touching_objects_of_different_colours_are_split():
    tone = (140, 140, 140)
    objects = (mw.WorldObject("square", "red", (4, 8, 14, 18)), mw.WorldObject("circle", "blue", (14, 8, 24, 18)))
    found = detect_shapes(mw.render(mw.Scene(objects, "plain", tone, 0)))
    assert sorted((d.label, d.colour, d.box) for d in found) == [
        ("circle", "blue", (14.0, 8.0, 24.0, 18.0)),
        ("square", "red", (4.0, 8.0, 14.0, 18.0)),
    ]
    assert all(d.score == 1.0 for d in found)


def test_detector_ignores_backgrounds_and_rejects_bad_input():
    rng = np.random.default_rng(3)
    for _ in range(50):
        scene = mw.sample_scene(rng, 32, 1)
        empty = mw.Scene((), scene.background, scene.background_tone, scene.texture_seed)
        assert detect_shapes(mw.render(empty)) == []
    with pytest.raises(ValueError, match="uint8"):
        detect_shapes(np.zeros((32, 32), np.uint8))


# ----------------------------------------------------------------------------- scoring folders of rendered prompts


def scene_for(meta, rng):
    """A ground-truth scene of a mini-world GenEval prompt."""
    inc = meta["include"]
    colours = [c["color"] for c in inc] if all("color" in c for c in inc) else None
    if meta["tag"] == "counting":
        return mw.sample_scene(rng, 32, inc[0]["count"], shapes=[inc[0]["class"]] * inc[0]["count"])
    if meta["tag"] == "position":  # include[1] is `rel` of include[0]
        return mw.sample_scene(rng, 32, shapes=[inc[1]["class"], inc[0]["class"]], relation=inc[1]["position"][0])
    return mw.sample_scene(rng, 32, shapes=[c["class"] for c in inc], colours=colours)


@pytest.fixture(scope="module")
def rendered_benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    rng = np.random.default_rng(4)
    prompts = make_geneval_prompts(60, seed=4)
    for i, meta in enumerate(prompts):
        images = np.stack([mw.render(scene_for(meta, rng)) for _ in range(2)])
        write_prompt_folder(root, i, meta, images)
    return root, prompts


def test_rendered_ground_truth_of_every_prompt_passes(rendered_benchmark, tmp_path):
    root, prompts = rendered_benchmark
    rows = ge.score_folder(root, detect_shapes)
    assert len(rows) == 2 * len(prompts)
    failed = [(r["prompt"], r["reason"]) for r in rows if not r["correct"]]
    assert not failed
    summary = ge.summarise(rows)
    assert summary["overall"] == 1.0 and set(summary["tags"]) == set(mw.GENEVAL_TAG_COUNTS)
    ge.write_results_jsonl(rows, tmp_path / "results.jsonl")
    back = read_jsonl(tmp_path / "results.jsonl")
    assert back == rows
    assert set(back[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert json.loads(back[0]["metadata"]) == prompts[0]
    assert back[0]["filename"].endswith("00000/samples/0000.png")


def test_wrong_prompts_fail_on_rendered_images():
    rng = np.random.default_rng(5)
    two = mw.render(mw.sample_scene(rng, 32, 2, shapes=["circle", "circle"], colours=["red", "red"]))
    three = prompt("counting", [{"class": "circle", "count": 3}], [{"class": "circle", "count": 4}])
    blue = prompt("colors", [{"class": "circle", "count": 1, "color": "blue"}])
    assert correct(TWO_CIRCLES, detect_shapes(two))
    assert not correct(three, detect_shapes(two)) and not correct(blue, detect_shapes(two))


def test_captioned_split_scenes_pass_their_prompts():
    """make_split scenes whose caption is a GenEval prompt pass that prompt."""
    by_text = {p["prompt"]: p for p in make_geneval_prompts(2000, seed=0)}
    images, records = mw.make_split("captioned", 150, seed=6)
    matched = [(img, by_text[r["caption"]]) for img, r in zip(images, records) if r["caption"] in by_text]
    assert len(matched) >= 100
    assert all(correct(meta, detect_shapes(img)) for img, meta in matched)


def test_parallel_scoring_matches_serial(rendered_benchmark):
    root, _ = rendered_benchmark
    assert ge.score_folder(root, detect_shapes, workers=2) == ge.score_folder(root, detect_shapes)


def test_incomplete_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="generate-benchmark"):
        ge.score_folder(tmp_path / "missing", detect_shapes)
    with pytest.raises(ValueError, match="no prompt folders"):
        ge.score_folder(tmp_path, detect_shapes)
    write_prompt_folder(tmp_path, 0, SINGLE, np.zeros((1, 32, 32, 3), np.uint8))
    (tmp_path / "00001" / "samples").mkdir(parents=True)
    (tmp_path / "00001" / "metadata.jsonl").write_text(json.dumps(SINGLE) + "\n")
    with pytest.raises(ValueError, match=r"00001/samples holds \[\].*generate-benchmark"):
        ge.score_folder(tmp_path, detect_shapes)
    (tmp_path / "00001" / "metadata.jsonl").unlink()
    with pytest.raises(ValueError, match=r"00001 has no metadata"):
        ge.score_folder(tmp_path, detect_shapes)


def test_missing_extra_and_uneven_samples_are_refused(tmp_path):
    for i in range(3):
        write_prompt_folder(tmp_path, i, SINGLE, np.zeros((2, 32, 32, 3), np.uint8))
    assert len(ge.score_folder(tmp_path, detect_shapes, images_per_prompt=2)) == 6
    with pytest.raises(ValueError, match=r"00000 has 2 samples, expected 4 per prompt"):
        ge.score_folder(tmp_path, detect_shapes, images_per_prompt=4)
    (tmp_path / "00001" / "samples" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"00001/samples holds .*no other files \(\['notes.txt'\]\)"):
        ge.score_folder(tmp_path, detect_shapes)
    (tmp_path / "00001" / "samples" / "notes.txt").unlink()
    (tmp_path / "00002" / "samples" / "0001.png").unlink()
    with pytest.raises(ValueError, match=r"00000 has 2 samples but .*00002 has 1"):
        ge.score_folder(tmp_path, detect_shapes)
    import shutil

    shutil.rmtree(tmp_path / "00001")
    with pytest.raises(ValueError, match=r"prompt folders \['00001'\] are missing"):
        ge.score_folder(tmp_path, detect_shapes)
