import json
from pathlib import Path

import numpy as np
import pytest
import torch

from arrag.cli import main
from arrag.data.mini_world import COLOURS, SHAPES, write_split
from arrag.evaluation.caption_reliance import mean_interval, swap_costs, swap_word
from arrag.evaluation.intervals import Bootstrap
from arrag.models.janus import save_janus
from arrag.models.training import caption_inputs, image_generation_loss
from arrag.models.vq import VQTokenizer

# captions in the tiny model's vocabulary (tests/conftest.py WORDS)
CAPTIONS = [
    "a photo of a red circle",  # one shape, one colour
    "a photo of a square",  # one shape
    "a photo of a blue triangle and a green square",  # two of each: nothing to swap
    "a photo of two circles",  # plural: not a shape word
    "a photo of a green triangle",
    "a photo of a circle left of a square",
]


def test_swap_word_replaces_the_one_word_of_its_kind_and_fixes_articles():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = swap_word("a photo of an orange circle", tuple(COLOURS), rng)
        tokens = out.split()
        assert tokens[:3] == ["a", "photo", "of"] and tokens[5] == "circle"
        assert tokens[4] in COLOURS and tokens[4] != "orange"
        assert tokens[3] == "a"  # no colour but orange begins with a vowel
        seen.add(tokens[4])
    assert seen == set(COLOURS) - {"orange"}  # every other word is drawn
    assert swap_word("a photo of a red triangle", ("triangle", "circle"), rng) == "a photo of a red circle"
    assert swap_word("a photo of a square", ("square", "orange"), rng) == "a photo of an orange"
    for caption in CAPTIONS[2:4] + CAPTIONS[5:]:
        assert swap_word(caption, SHAPES, rng) is None
    assert swap_word("a photo of a square", tuple(COLOURS), rng) is None


def test_swap_costs_equal_a_direct_per_image_recomputation(tiny_janus):
    """Batched, left-padded captions of different lengths give each image the cost computed alone."""
    model, processor, spec = tiny_janus
    images = np.random.default_rng(1).integers(0, 256, (4, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    captions = ["a photo of a red circle", "a photo of a square", "a photo of a green triangle", "a photo of a circle"]
    swapped = ["a photo of a red square", "a photo of a triangle", "a photo of a blue triangle", "a photo of a square"]
    vq = VQTokenizer.from_janus(model)
    costs = swap_costs(model, processor, vq, images, captions, swapped)
    codes = vq.encode(images).flatten(1)  # [4, T]
    with torch.no_grad():
        for i in range(4):

            def nll(caption):
                ids, mask, _ = caption_inputs(processor, [caption])
                return image_generation_loss(model, ids, mask, codes[i : i + 1]) * codes.shape[1]  # mean -> sum

            assert costs[i] == pytest.approx(float(nll(swapped[i]) - nll(captions[i])), rel=1e-4, abs=1e-4)
    assert costs.abs().max() > 0.1  # the random model reads its prompt: a test that can fail


def test_mean_interval_is_the_percentile_bootstrap_of_the_mean():
    costs = np.random.default_rng(2).normal(3, 2, 57)
    boot = Bootstrap(resamples=300, seed=5)
    draws = np.random.default_rng(5).integers(0, 57, size=(300, 57))
    low, high = np.percentile(costs[draws].mean(1), [2.5, 97.5])
    assert mean_interval(costs, boot) == pytest.approx((low, high), rel=1e-9)


def test_caption_reliance_command_over_a_split(tiny_janus, tmp_path, capsys):
    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    n = len(CAPTIONS)
    images = np.random.default_rng(3).integers(0, 256, (n, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    write_split(tmp_path / "split", images, [{"id": f"x{i}", "caption": c} for i, c in enumerate(CAPTIONS)])
    args = ["caption-reliance", "--model", tmp_path / "model", "--split", tmp_path / "split"]
    assert main([str(a) for a in args + ["--out", tmp_path / "r.json", "--bootstrap", "200"]]) in (0, None)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["shape"]["images"] == 3 and record["colour"]["images"] == 2  # captions 0, 1, 4 and 0, 4
    for kind in ("shape", "colour"):
        r = record[kind]
        assert np.isfinite(r["nats_per_image"]) and r["ci_low"] <= r["nats_per_image"] <= r["ci_high"]
    assert record["ci_resamples"] == 200
    capsys.readouterr()
    main([str(a) for a in args + ["--bootstrap", "200"]])  # printed, not written: the same seeded record
    assert json.loads(capsys.readouterr().out) == record


def test_a_split_without_single_word_captions_is_refused_by_name(tiny_janus, tmp_path, capsys):
    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    images = np.zeros((2, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    write_split(tmp_path / "split", images, [{"id": f"x{i}", "caption": c} for i, c in enumerate(CAPTIONS[2:4])])
    code = main(["caption-reliance", "--model", str(tmp_path / "model"), "--split", str(tmp_path / "split")])
    err = capsys.readouterr().err
    assert code == 2 and "no caption names exactly one shape or one colour" in err and str(tmp_path / "split") in err


def test_select_base_copies_the_candidate_whose_words_cost_most_to_swap(tiny_janus, tmp_path, monkeypatch):
    """The choice is the highest shape + colour swap cost (a kind a split cannot measure counts 0; ties: the first),
    and the chosen folder is copied whole. caption_reliance itself is checked above against a direct computation."""
    from arrag.evaluation import caption_reliance as cr

    model, processor, _ = tiny_janus
    for name in ("a", "b", "c"):
        save_janus(model, processor, tmp_path / name)
    (tmp_path / "b" / "marker.txt").write_text("b")  # tells the copies apart
    costs = {"a": (3.0, 1.0), "b": (2.0, 2.5), "c": (4.5, None)}  # scores 4.0, 4.5, 4.5

    def fake(model_dir, split_dir, limit, boot=None):
        shape, colour = costs[Path(model_dir).name]
        return {
            "shape": {"images": 3, "nats_per_image": shape},
            "colour": {"images": 0} if colour is None else {"images": 2, "nats_per_image": colour},
        }

    monkeypatch.setattr(cr, "caption_reliance", fake)
    record = cr.select_base_model([tmp_path / n for n in "abc"], tmp_path / "split", tmp_path / "base")
    assert record["chosen"] == str(tmp_path / "b")  # b and c tie at 4.5: the first
    assert record["scores"] == {str(tmp_path / n): v for n, v in zip("abc", (4.0, 4.5, 4.5))}
    assert {f.name: f.read_bytes() for f in (tmp_path / "base").iterdir()} == {
        f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()
    }
    assert cr.select_base_model([tmp_path / "a", tmp_path / "c"], tmp_path / "split", tmp_path / "base")[
        "chosen"
    ] == str(tmp_path / "c")  # the unmeasured colour counts 0, not against c; the old copy is replaced
    assert not (tmp_path / "base" / "marker.txt").exists()
