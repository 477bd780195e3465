import json

import numpy as np
import pytest
from conftest import tiny_spec

from arrag.data.geneval_layout import read_prompt_folders
from arrag.data.mini_geneval import make_geneval_prompts, prompt_scene
from arrag.data.mini_world import render, write_world
from arrag.evaluation.geneval import evaluate_image, score_folder
from arrag.evaluation.shapes_detector import detect_shapes
from arrag.evaluation.vq_ceiling import write_reconstructions
from arrag.models.vq_training import VQTrainingConfig, train_vq


@pytest.mark.parametrize("world", [{}, {"backgrounds": ["plain"], "tones": 1, "snap": 4}])
def test_prompt_scenes_satisfy_their_prompts(world):
    """A ground-truth scene of every prompt passes GenEval's rules on the clean render (the detector is exact there)."""
    rng = np.random.default_rng(0)
    for meta in make_geneval_prompts(60, seed=1):
        scene = prompt_scene(meta, rng, 32, **world)
        ok, reason, _ = evaluate_image(meta, detect_shapes(render(scene, 32)))
        assert ok, (meta["prompt"], reason)
        if world:
            assert scene.background == "plain" and all(v % 4 == 0 for o in scene.objects for v in o.bbox)


@pytest.fixture(scope="module")
def world_and_vq(tmp_path_factory):
    root = tmp_path_factory.mktemp("ceiling")
    kw = dict(size=32, seed=0, underrepresented=[], keep_fraction=1.0, backgrounds=["plain"], tones=1, snap=4)
    write_world(root / "world", splits={"train": 32}, n_geneval_prompts=6, **kw)
    images = np.load(root / "world" / "train" / "images.npy")
    train_vq(images, tiny_spec(image_size=32), VQTrainingConfig(steps=2, batch_size=8), root / "vq")
    return root


def test_reconstructions_are_a_scored_geneval_folder_of_the_worlds_scenes(world_and_vq, tmp_path):
    root = world_and_vq
    record = write_reconstructions(root / "world", root / "vq", tmp_path / "ceiling", n=2, seed=3)
    generation = json.loads((tmp_path / "ceiling" / "generation.json").read_text())
    assert generation["prompts"] == 6 and generation["images_per_prompt"] == 2 and generation["parameters"] > 0
    assert record["seed"] == 3
    prompts = [json.loads(line) for line in (root / "world" / "geneval" / "evaluation_metadata.jsonl").open()]
    folders = read_prompt_folders(tmp_path / "ceiling")  # [(metadata, image paths)]
    assert [meta for meta, _ in folders] == prompts and all(len(paths) == 2 for _, paths in folders)
    rows = score_folder(tmp_path / "ceiling", detect_shapes)
    assert len(rows) == 12  # every image scored (an untrained VQ-VAE's blur need not pass)
    again = write_reconstructions(root / "world", root / "vq", tmp_path / "again", n=2, seed=3)
    assert again == record  # seeded: the same scenes, the same folder
    first, second = read_prompt_folders(tmp_path / "ceiling"), read_prompt_folders(tmp_path / "again")
    pairs = [(a, b) for (_, x), (_, y) in zip(first, second) for a, b in zip(x, y)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in pairs)


def test_a_vq_of_another_image_size_is_refused(world_and_vq, tmp_path):
    root = world_and_vq
    images = np.load(root / "world" / "train" / "images.npy")
    small = images[:, :16, :16]  # 16 px images: a VQ-VAE of another size
    cfg = VQTrainingConfig(steps=1, batch_size=8)
    train_vq(np.ascontiguousarray(small), tiny_spec(image_size=16), cfg, tmp_path / "vq16")
    with pytest.raises(ValueError, match="encodes 16 px images but .* has 32 px"):
        write_reconstructions(root / "world", tmp_path / "vq16", tmp_path / "out")
    assert not (tmp_path / "out").exists()
