"""DPG-Bench scoring (arrag.evaluation.dpg) and the mini-DPG prompt set (arrag.data.mini_dpg)."""

import csv
import importlib.resources
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from arrag.data.geneval_layout import write_prompt_folder
from arrag.data.mini_dpg import caption_facts, make_mini_dpg, question_rows, write_mini_dpg
from arrag.data.mini_world import make_split, render, sample_scene, write_split
from arrag.evaluation import dpg

HEADER = ",".join(dpg.COLUMNS)


def write_csv(path, rows):
    """rows: (item_id, proposition_id, dependency, tuple) -> a CSV in dpg_bench.csv's schema."""
    lines = [HEADER]
    for item, qid, dep, tup in rows:
        lines.append(f'{item},prompt {item},,{qid},"{dep}",x,y,"{tup}",question {item} {qid}?')
    path.write_text("\n".join(lines) + "\n")
    return path


def by_question(answers: dict[int, str]):
    """A VQA that answers by the question's qid (the questions read 'question <item> <qid>?')."""
    return lambda image, question, tuple_text: answers[int(question.split()[-1].rstrip("?"))]


CHAIN = [  # item a: 1 <- 2 <- 5 (a chain), 3 free ("0"), 4 <- (1, 3)
    ("a", 1, "0", "entity - whole (bicycle)"),
    ("a", 2, "1", "attribute - color (bicycle, red)"),
    ("a", 3, "0", "entity - whole (tree)"),
    ("a", 4, "1,3", "relation - spatial (bicycle, tree, left of)"),
    ("a", 5, "2", "attribute - other (bicycle, shiny)"),
]


# ----------------------------------------------------------------------------- dependencies


def test_dependency_rule_zeroes_children_of_failed_parents(tmp_path):
    q = dpg.read_questions(write_csv(tmp_path / "q.csv", CHAIN), skip_first_row=False)["a"]
    assert q.qids == (1, 2, 3, 4, 5) and q.parents[4] == (1, 3)
    # parent 1 fails: 2 and multi-parent 4 drop; 5 drops too (its parent 2 was zeroed first: cascade in row order)
    scores = dpg.score_crop({1: "no", 2: "yes", 3: "yes", 4: "yes", 5: "yes"}, q)
    assert scores == {1: 0.0, 2: 0.0, 3: 1.0, 4: 0.0, 5: 0.0}
    # all parents pass: "0" parents are ignored and nothing is zeroed
    assert dpg.score_crop({1: "yes", 2: "yes", 3: "yes", 4: "yes", 5: "yes"}, q) == {k: 1.0 for k in q.qids}
    # multi-parent: one failing parent (3) is enough; only an exact "yes" scores
    scores = dpg.score_crop({1: "yes", 2: "Yes", 3: "no", 4: "yes", 5: "yes"}, q)
    assert scores == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0}


def test_skip_first_row_quirk(tmp_path):
    rows = CHAIN + [("b", 1, "0", "entity - whole (cat)"), ("b", 2, "1", "attribute - color (cat, black)")]
    path = write_csv(tmp_path / "q.csv", rows)
    full = dpg.read_questions(path, skip_first_row=False)
    official = dpg.read_questions(path)
    assert full["a"].qids == (1, 2, 3, 4, 5) and full["a"].dropped_rows == 0
    assert official["a"].qids == (2, 3, 4, 5) and official["a"].dropped_rows == 1
    assert official["b"] == full["b"]
    # item a lost proposition 1, on which 2 and 4 depend: scoring it fails, so the image is skipped
    crops = [np.zeros((4, 4, 3), np.uint8)] * 4
    record = dpg.score_image(crops, official["a"], by_question({q: "yes" for q in range(1, 6)}))
    assert "skipped" in record and "proposition 1" in record["skipped"]
    records = [record, dpg.score_image(crops, official["b"], by_question({1: "yes", 2: "no"}))]
    summary = dpg.summarise(records)
    assert summary["images"] == 1 and summary["overall"] == pytest.approx(50.0)
    assert summary["skipped"] == {"a": record["skipped"]}
    assert summary["quirks"]["skip_first_row"] == {"rows_dropped": 1, "items": ["a"]}


def test_skip_first_row_keeps_an_item_whose_lost_question_is_no_parent(tmp_path):
    rows = [("a", 1, "0", "entity - whole (x)"), ("a", 2, "0", "entity - whole (y)"), ("a", 3, "2", "other - z (y)")]
    q = dpg.read_questions(write_csv(tmp_path / "q.csv", rows))["a"]
    record = dpg.score_image([np.zeros((2, 2, 3), np.uint8)], q, by_question({2: "yes", 3: "no"}))
    assert record["score"] == pytest.approx(0.5)  # 2 questions left, not 3


def test_read_questions_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER.replace(",dependency", "") + "\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*missing column.*'dependency'"):
        dpg.read_questions(path)
    bad_dep = write_csv(tmp_path / "dep.csv", [("a", 1, "0", "entity - whole (x)"), ("a", 2, "one", "e - w (y)")])
    with pytest.raises(ValueError, match=r"dep\.csv: line 3: dependency"):
        dpg.read_questions(bad_dep, skip_first_row=False)
    dangling = write_csv(tmp_path / "dangling.csv", [("a", 1, "0", "e - w (x)"), ("a", 2, "7", "e - w (y)")])
    with pytest.raises(ValueError, match=r"line 3: item 'a' question 2 depends on proposition 7"):
        dpg.read_questions(dangling, skip_first_row=False)
    split = write_csv(tmp_path / "split.csv", [("a", 1, "0", "e (x)"), ("b", 1, "0", "e (x)"), ("a", 2, "0", "e (y)")])
    with pytest.raises(ValueError, match="not contiguous"):
        dpg.read_questions(split, skip_first_row=False)
    with pytest.raises(FileNotFoundError, match="dpg_bench.csv"):
        dpg.read_questions(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- summaries


def crop_vqa(table):
    """A VQA whose answer depends on the crop (its constant pixel value) and the question's qid."""
    return lambda image, question, tuple_text: table[int(image[0, 0, 0])][int(question.split()[-1].rstrip("?"))]


def test_overall_and_category_quirks_match_a_direct_computation(tmp_path):
    rows = CHAIN + [("b", 1, "0", "entity - whole (cat)"), ("b", 2, "1", "attribute - color (cat, black)")]
    questions = dpg.read_questions(write_csv(tmp_path / "q.csv", rows), skip_first_row=False)
    crops = [np.full((3, 3, 3), c, np.uint8) for c in range(4)]
    table_a = [  # per crop: answers to questions 1..5
        {1: "yes", 2: "yes", 3: "yes", 4: "yes", 5: "yes"},
        {1: "no", 2: "yes", 3: "yes", 4: "yes", 5: "yes"},
        {1: "yes", 2: "no", 3: "no", 4: "yes", 5: "yes"},
        {1: "no", 2: "yes", 3: "no", 4: "no", 5: "yes"},
    ]
    table_b = [{1: "yes", 2: "yes"}, {1: "yes", 2: "no"}, {1: "no", 2: "yes"}, {1: "yes", 2: "yes"}]
    records = [
        dpg.score_image(crops, questions["a"], crop_vqa(table_a)),
        dpg.score_image(crops, questions["b"], crop_vqa(table_b)),
    ]
    # by hand, after the dependency rule: a's crop 1 keeps only 3 (1 fails, taking 2, 4 and, through 2, 5 with it);
    # crop 2 keeps only 1 (2 and 3 fail, taking 5 and 4); crop 3 keeps nothing
    assert records[0]["crop_scores"] == pytest.approx([1.0, 0.2, 0.2, 0.0])
    assert records[1]["crop_scores"] == pytest.approx([1.0, 0.5, 0.0, 1.0])
    summary = dpg.summarise(records)
    assert summary["overall"] == pytest.approx(100 * np.mean([np.mean([1, 0.2, 0.2, 0]), np.mean([1, 0.5, 0, 1])]))
    assert summary["images"] == 2 and summary["questions"] == 7
    assert dpg.summarise(json.loads(json.dumps(records))) == summary  # records survive a JSONL round trip

    def direct(crop_ids, filtered):
        """100 x mean per L1 category over the chosen crops' raw or filtered scores."""
        per = {}
        for record, table, qs in ((records[0], table_a, questions["a"]), (records[1], table_b, questions["b"])):
            for c in crop_ids:
                scores = dpg.score_crop(table[c], qs) if filtered else {q: float(table[c][q] == "yes") for q in qs.qids}
                for q in qs.qids:
                    per.setdefault(qs.tuples[q].split(" - ")[0], []).append(scores[q])
        return {k: 100 * np.mean(v) for k, v in per.items()}

    official = direct([3], filtered=False)  # the last crop, before the dependency rule
    assert summary["categories"] == pytest.approx(official)
    assert official["attribute"] == pytest.approx(100 * 3 / 3)  # a2 yes, a5 yes, b2 yes on crop 3 (raw)
    every_crop = dpg.summarise(records, last_crop_categories=False, raw_categories=False)["categories"]
    assert every_crop == pytest.approx(direct(range(4), filtered=True))
    assert every_crop != pytest.approx(summary["categories"])  # the quirk changes the numbers here
    assert dpg.summarise(records, last_crop_categories=False)["categories"] == pytest.approx(direct(range(4), False))
    assert summary["categories_l2"]["relation - spatial"] == 0.0  # a4 answered "no" on the last crop
    assert summary["quirks"]["last_crop_categories"] and summary["quirks"]["raw_categories"]


def test_categories_split_like_the_official_script():
    assert dpg.categories("attribute - color (bicycle, red)") == ("attribute", "attribute - color")
    assert dpg.categories("relation - non-spatial (man, horse, riding)") == ("relation", "relation - non-spatial")
    assert dpg.categories("global - ()") == ("global", "global -")


# ----------------------------------------------------------------------------- tiles


def test_tile_and_crop_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    grid = dpg.tile_grid(images)
    assert grid.shape == (12, 12, 3)
    np.testing.assert_array_equal(grid[:6, 6:], images[1])  # top-right, the evaluator's second crop
    np.testing.assert_array_equal(grid[6:, :6], images[2])
    np.testing.assert_array_equal(np.stack(dpg.crop_tiles(grid)), images)
    assert len(dpg.crop_tiles(grid, 1)) == 1
    with pytest.raises(ValueError, match="2x2 grid"):
        dpg.crop_tiles(grid[:, :11])
    with pytest.raises(ValueError, match="4 square images"):
        dpg.tile_grid(images[:3])


def layout(root, metas, n=4, side=4):
    for i, meta in enumerate(metas):
        images = np.full((n, side, side, 3), 10 * i, np.uint8)
        images[:, 0, 0] = np.arange(n)[:, None]  # tell the samples apart
        write_prompt_folder(root, i, meta, images)
    return root


def test_write_tiled_folder(tmp_path):
    records = dpg.prompt_records({"10": "ten", "2": "two", "x": "ex"})
    assert [r["item_id"] for r in records] == ["2", "10", "x"] and records[0] == {"prompt": "two", "item_id": "2"}
    root = layout(tmp_path / "gen", records)
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "stale.png").write_bytes(b"")
    assert dpg.write_tiled_folder(root, tmp_path / "tiles") == 3
    assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == ["10.png", "2.png", "x.png"]
    grid = np.asarray(Image.open(tmp_path / "tiles" / "10.png"))
    assert grid.shape == (8, 8, 3) and [c[0, 0, 0] for c in dpg.crop_tiles(grid)] == [0, 1, 2, 3]
    assert grid[1, 1, 0] == 10  # prompt folder 1 holds item "10"


def test_write_tiled_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder.*prompt_records"):
        dpg.write_tiled_folder(tmp_path / "none", tmp_path / "out")
    three = layout(tmp_path / "three", [{"prompt": "p", "item_id": "1"}], n=3)
    with pytest.raises(ValueError, match=r"00000: expected 4 samples.*found 3.*n=4"):
        dpg.write_tiled_folder(three, tmp_path / "out")
    no_id = layout(tmp_path / "no_id", [{"prompt": "p"}])
    with pytest.raises(ValueError, match=r"00000: its metadata has no item_id"):
        dpg.write_tiled_folder(no_id, tmp_path / "out")
    twice = layout(tmp_path / "twice", [{"prompt": "p", "item_id": "1"}] * 2)
    with pytest.raises(ValueError, match="both hold item '1'"):
        dpg.write_tiled_folder(twice, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_score_folder_missing_and_extra_tiles(tmp_path):
    rows = [("1", 1, "0", "entity - whole (x)"), ("2", 1, "0", "entity - whole (y)")]
    questions = dpg.read_questions(write_csv(tmp_path / "q.csv", rows), skip_first_row=False)
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for name in ("1", "3"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiles / f"{name}.png")
    vqa = by_question({1: "yes"})
    with pytest.raises(ValueError, match=r"1 question-CSV items have no .* tile.*\['2'\].*1 tiles are not in the CSV"):
        dpg.score_folder(tiles, questions, vqa)
    records = dpg.score_folder(tiles, questions, vqa, allow_missing=True)
    assert [(r["item_id"], r.get("skipped")) for r in records] == [
        ("1", None),
        ("2", "no tile"),
        ("3", "not in the question CSV"),
    ]
    assert records[0]["crop_scores"] == [1.0] * 4 and records[0]["questions"]["1"]["answers"] == ["yes"] * 4
    assert dpg.summarise(records)["images"] == 1


# ----------------------------------------------------------------------------- prompts and backends


def test_vendored_prompts_and_licence():
    prompts = dpg.dpg_prompts()
    assert len(prompts) == 1065
    assert all(text and text == text.strip() for text in prompts.values())
    licence = importlib.resources.files("arrag.prompt_sets") / "dpg_bench" / "LICENSE"
    assert "Apache License" in licence.read_text()
    records = dpg.prompt_records(prompts)
    assert [r["item_id"] for r in records[:3]] == ["0", "1", "2"]


@pytest.mark.skipif(importlib.util.find_spec("modelscope") is not None, reason="modelscope is installed")
def test_mplug_without_modelscope_points_to_the_env():
    with pytest.raises(ImportError, match="workflow/envs/dpg.yaml"):
        dpg.MPLUGVQA()


def test_shapes_vqa_answers_from_the_tuple():
    rng = np.random.default_rng(1)
    scene = sample_scene(rng, 32, shapes=["triangle", "circle"], colours=["red", "blue"], relation="left of")
    image, vqa = render(scene), dpg.ShapesVQA()
    ask = lambda tup: vqa(image, "?", tup)  # noqa: E731
    assert ask("entity - whole (triangle)") == "yes" and ask("entity - whole (square)") == "no"
    assert ask("attribute - color (circle, blue)") == "yes" and ask("attribute - color (circle, red)") == "no"
    assert ask("relation - spatial (triangle, circle, left of)") == "yes"
    assert ask("relation - spatial (circle, triangle, left of)") == "no"
    assert ask("other - count (circles, ==1)") == "yes" and ask("other - count (circles, ==2)") == "no"
    with pytest.raises(ValueError, match="cannot answer"):
        ask("global - ()")


# ----------------------------------------------------------------------------- mini-DPG


def test_caption_facts_and_rows():
    assert caption_facts("a photo of an orange circle") == {
        "objects": [("circle", "orange")],
        "relation": None,
        "count": None,
        "tag": "colors",
    }
    assert caption_facts("a photo of a square below a circle")["relation"] == (0, "below", 1)
    assert caption_facts("a photo of three diamonds")["count"] == 3
    rows = question_rows("7", "a photo of a red circle and a blue square")
    assert [(r["tuple"], r["dependency"]) for r in rows] == [
        ("entity - whole (circle)", "0"),
        ("entity - whole (square)", "0"),
        ("attribute - color (circle, red)", "1"),
        ("attribute - color (square, blue)", "2"),
    ]
    rows = question_rows("8", "a photo of a triangle left of a diamond")
    assert rows[-1]["tuple"] == "relation - spatial (triangle, diamond, left of)" and rows[-1]["dependency"] == "1,2"
    with pytest.raises(ValueError, match="not 'a \\[colour\\] shape'"):
        caption_facts("a photo of a hexagon")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    images, records = make_split("reference", 150, seed=3)
    write_split(root / "reference", images, records)
    return root, images, records


def test_mini_dpg_schema_and_clean_renders_score_high(world, tmp_path):
    root, images, records = world
    write_mini_dpg(root, tmp_path / "mini_dpg", n=40, seed=0)
    with open(tmp_path / "mini_dpg" / "dpg_bench.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == dpg.COLUMNS
    prompts = dpg.dpg_prompts(tmp_path / "mini_dpg" / "prompts")
    questions = dpg.read_questions(tmp_path / "mini_dpg" / "dpg_bench.csv", skip_first_row=False)
    assert len(prompts) == len(set(prompts.values())) == 40 and set(questions) == set(prompts)
    assert make_mini_dpg(root, 40, 0) == make_mini_dpg(root, 40, 0)
    by_id = {r["id"]: i for i, r in enumerate(records)}
    same_caption = {}
    for image, r in zip(images, records):
        same_caption.setdefault(r["caption"], []).append(image)

    def tiles(folder, pick):
        folder.mkdir()
        for item, text in prompts.items():
            four = pick(item, text)
            Image.fromarray(dpg.tile_grid(np.stack(four))).save(folder / f"{item}.png")
        return folder

    # the ground truth plus (up to) 3 other renders of the same caption: every question holds
    truthful = tiles(tmp_path / "truth", lambda item, text: (same_caption[text] * 4)[:4])
    summary = dpg.summarise(dpg.score_folder(truthful, questions, dpg.ShapesVQA()))
    assert summary["overall"] == pytest.approx(100.0) and summary["images"] == 40
    # each prompt tiled with another prompt's image: the score collapses (the VQA can say no)
    ids = list(prompts)
    shifted = tiles(tmp_path / "shifted", lambda item, text: [images[by_id[ids[(ids.index(item) + 1) % 40]]]] * 4)
    assert dpg.summarise(dpg.score_folder(shifted, questions, dpg.ShapesVQA()))["overall"] < 60
    with pytest.raises(ValueError, match="distinct captions, fewer than n=1000"):
        make_mini_dpg(root, 1000, 0)
