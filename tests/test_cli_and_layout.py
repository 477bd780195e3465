import csv
import json

import numpy as np
import pytest
from PIL import Image

from arrag.cli import main, parse_overrides
from arrag.data.geneval_layout import output_folder, read_prompt_folders, write_prompt_folder
from arrag.decoding.pipeline import image_seed
from arrag.evaluation.tables import GENEVAL_COLUMNS
from arrag.models.training import BaseTrainingConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_janus):
    model, processor, _ = tiny_janus
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def test_parse_overrides_converts_types_and_names_bad_keys():
    cfg = parse_overrides(["steps=12", "lr=0.5", "caption_dropout=0"], BaseTrainingConfig)
    assert (cfg.steps, cfg.lr, cfg.caption_dropout) == (12, 0.5, 0.0)
    with pytest.raises(SystemExit, match="steps"):
        parse_overrides(["stepz=3"], BaseTrainingConfig)
    with pytest.raises(SystemExit, match="int"):
        parse_overrides(["steps=many"], BaseTrainingConfig)


def test_generate_writes_reproducible_pngs(model_dir, tmp_path, capsys):
    args = [
        "generate",
        "--model",
        str(model_dir),
        "--prompt",
        "a photo of a red circle",
        "--n",
        "2",
        "--guidance-scale",
        "3",
        "--device",
        "cpu",
    ]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    files = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert files == ["prompt000_00.png", "prompt000_01.png"]
    for name in files:
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "b" / name))
        )


def test_generate_with_a_bad_model_dir_says_so(tmp_path, capsys):
    code = main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_benchmark_generation_resumes_and_never_reuses_other_settings(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    records = [
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": f"a photo of a {s}"}
        for s in ("circle", "square", "triangle")
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "geneval"
    base = [
        "generate-benchmark",
        "--model",
        str(model_dir),
        "--prompts",
        str(prompts),
        "--n",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "2",
    ]
    assert main(base) == 0
    folders = read_prompt_folders(out)
    assert [meta for meta, _ in folders] == records and all(len(s) == 2 for _, s in folders)

    # a run that died after the first folder: the rerun regenerates only what is missing, identically
    first = np.asarray(Image.open(out / "00001" / "samples" / "0000.png"))
    import shutil

    shutil.rmtree(out / "00001")
    assert main(base) == 0
    summary = json.loads((out / "generation.json").read_text())
    assert (summary["generated"], summary["reused"]) == (1, 2)
    assert np.array_equal(np.asarray(Image.open(out / "00001" / "samples" / "0000.png")), first)

    # other settings: old folders are not trusted
    assert main(base + ["--guidance-scale", "2"]) == 0
    assert json.loads((out / "generation.json").read_text())["generated"] == 3


def test_prompt_folder_write_is_atomic(tmp_path, monkeypatch):
    images = np.zeros((2, 8, 8, 3), np.uint8)

    def broken_save(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        write_prompt_folder(tmp_path, 0, {"prompt": "x"}, images)
    assert list(tmp_path.iterdir()) == []


def test_image_seed_depends_on_prompt_sample_and_run_seed_only():
    assert image_seed(0, "a", 0) == image_seed(0, "a", 0)
    assert len({image_seed(0, "a", 0), image_seed(0, "a", 1), image_seed(1, "a", 0), image_seed(0, "b", 0)}) == 4


def test_grid_of_generated_images(model_dir, tmp_path):
    for i in range(3):
        write_prompt_folder(tmp_path / "imgs", i, {"prompt": f"p{i}"}, np.full((2, 16, 16, 3), 40 * i, np.uint8))
    assert main(["grid", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "grid.png")]) == 0
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size[1] == 3 * (16 * 4 + 2)
    assert main(["grid", "--images", str(tmp_path), "--out", str(tmp_path / "g2.png")]) == 2


def test_a_repeated_prompt_gets_new_samples_not_the_same_images(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(2 * (json.dumps({"prompt": "a photo of a circle"}) + "\n"))
    out = tmp_path / "out"
    args = ["generate-benchmark", "--model", str(model_dir), "--prompts", str(prompts), "--n", "2", "--out", str(out)]
    assert main(args + ["--device", "cpu"]) == 0
    first = np.asarray(Image.open(out / "00000" / "samples" / "0000.png"))
    repeat = np.asarray(Image.open(out / "00001" / "samples" / "0000.png"))
    assert not np.array_equal(first, repeat)


def test_sharded_generation_equals_one_job_and_is_checked_when_finished(model_dir, tiny_janus, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"a photo of a {s}"}) + "\n" for s in ("circle", "square", "triangle"))
    )
    common = ["--model", str(model_dir), "--prompts", str(prompts), "--n", "2", "--device", "cpu", "--batch-size", "2"]
    assert main(["generate-benchmark", *common, "--out", str(tmp_path / "one")]) == 0
    sharded = tmp_path / "sharded"
    finish = ["finish-benchmark", "--prompts", str(prompts), "--n", "2", "--num-shards", "2", "--out", str(sharded)]
    assert main(["generate-benchmark", *common, "--out", str(sharded), "--shard", "1", "--num-shards", "2"]) == 0
    assert [p.name for p in sorted(sharded.glob("0*"))] == ["00001"]  # shard 1 of 2: prompt 1 only
    assert main(finish) == 2  # shard 0 has not run: no generation.json
    assert not (sharded / "generation.json").exists()
    assert main(["generate-benchmark", *common, "--out", str(sharded), "--shard", "0", "--num-shards", "2"]) == 0
    assert main(finish) == 0
    summary = json.loads((sharded / "generation.json").read_text())
    assert (summary["generated"], summary["num_shards"]) == (3, 2)
    # the parameter count of the generating model, which `arrag table --params` reads into the Params column
    assert summary["parameters"] == sum(p.numel() for p in tiny_janus[0].parameters())
    geneval = {"tags": {tag: {"accuracy": 0.5} for tag, _ in GENEVAL_COLUMNS}, "overall": 0.5, "images": 6}
    (tmp_path / "summary.json").write_text(json.dumps(geneval))
    table = ["table", "geneval", "--result", str(tmp_path / "summary.json"), "--label", "vanilla"]
    assert main([*table, "--params", str(sharded / "generation.json"), "--out", str(tmp_path / "t")]) == 0
    assert float(next(csv.DictReader((tmp_path / "t.csv").open()))["params"]) == summary["parameters"]
    one, two = sorted((tmp_path / "one").glob("0*/samples/*.png")), sorted(sharded.glob("0*/samples/*.png"))
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))  # same images as one job
    (sharded / "00002" / "samples" / "0001.png").unlink()
    assert main(finish) == 2  # a missing sample is caught before generation.json is written again


def test_other_prompts_or_a_rebuilt_model_are_never_served_old_images(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"a photo of a {s}"}) + "\n" for s in ("circle", "square")))
    out = tmp_path / "out"
    base = ["generate-benchmark", "--model", str(model_dir), "--prompts", str(prompts), "--n", "1", "--out", str(out)]
    base += ["--device", "cpu", "--num-shards", "1"]
    finish = ["finish-benchmark", "--prompts", str(prompts), "--n", "1", "--num-shards", "1", "--out", str(out)]
    assert main(base) == 0 and main(finish) == 0
    # the same number of prompts, other texts: everything is made again
    prompts.write_text("".join(json.dumps({"prompt": f"a photo of a {s}"}) + "\n" for s in ("triangle", "diamond")))
    assert main(base) == 0
    assert json.loads((out / "shards" / "00000-of-00001.json").read_text())["generated"] == 2
    staged = output_folder(out)  # the finished folder stays until finish-benchmark swaps the new one in
    assert json.loads((staged / "00000" / "metadata.jsonl").read_text())["prompt"] == "a photo of a triangle"
    # a rebuilt model under the same path (its files rewritten): the images are made again too
    for f in model_dir.glob("*.json"):
        f.write_text(f.read_text())
    assert main(base) == 0
    assert json.loads((out / "shards" / "00000-of-00001.json").read_text())["generated"] == 2
    # a shard marker left by another run is refused, and so is a folder made for other prompts
    marker = out / "shards" / "00000-of-00001.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "seed": 99}))
    assert main(finish) == 2
    assert main(base) == 0 and main(finish) == 0
    prompts.write_text("".join(json.dumps({"prompt": f"a photo of a {s}"}) + "\n" for s in ("circle", "diamond")))
    assert main(finish) == 2
