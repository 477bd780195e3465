"""Bad inputs and faults, continued (tests/test_bad_inputs.py has the rest): resumes under other settings, and
faults that used to end in tracebacks. Listed in docs/verification.md's "Bad input and faults" table."""

# ruff: noqa: F811  (the fixtures imported from test_bad_inputs are parameters here)

import json

import pytest
from test_bad_inputs import _snapshot, cli_error, finished_benchmark, model_dir  # noqa: F401 (fixtures)

from arrag.cli import main

# ------------------------------------------------------------------ resume only what matches


@pytest.fixture(scope="module")
def vq_images():
    from arrag.data.mini_world import make_split

    return make_split("train", 24, seed=3, size=32)[0]


def _vq_run(images, out, monkeypatch=None, kill_at=None, restart=False, **changes):
    """train_vq on the tiny spec with dead-code restarts every 2 steps and the patch-consistency loss; killed after
    saving step `kill_at`."""
    from conftest import tiny_spec

    from arrag.models import training, vq_training

    cfg = vq_training.VQTrainingConfig(
        **(
            {
                "steps": 10,
                "batch_size": 8,
                "restart_every": 2,
                "consistency": 0.1,
                "checkpoint_every": 3,
            }
            | changes
        )
    )
    if kill_at is not None:
        real = training.ResumableCheckpoint.maybe_save

        def killed(self, step, *args):
            real(self, step, *args)
            if step == kill_at:
                raise KeyboardInterrupt

        monkeypatch.setattr(training.ResumableCheckpoint, "maybe_save", killed)
        with pytest.raises(KeyboardInterrupt):
            vq_training.train_vq(images, tiny_spec(image_size=32, codebook_size=64), cfg, out)
        monkeypatch.undo()
        return None
    return vq_training.train_vq(
        images, tiny_spec(image_size=32, codebook_size=64), cfg, out, **({"restart": True} if restart else {})
    )


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(next(folder.glob("*.safetensors")))


@pytest.mark.parametrize("locality", [0.0, 1.0])  # 1.0: the colour probe's weights and moments resume too
def test_vq_resume_is_bit_identical_with_dead_code_restarts(vq_images, tmp_path, monkeypatch, locality):
    _vq_run(vq_images, tmp_path / "whole", locality=locality)
    _vq_run(vq_images, tmp_path / "killed", monkeypatch, kill_at=6, locality=locality)
    assert _vq_run(vq_images, tmp_path / "killed", locality=locality)["resumed_at"] == 6
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert all(torch_equal(whole[k], resumed[k]) for k in whole)
    assert not any("probe" in k for k in whole)  # the probe trains beside the VQ-VAE, not in it


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_resuming_with_other_settings_is_refused_and_restart_starts_over(vq_images, tmp_path, monkeypatch):
    out = tmp_path / "vq"
    _vq_run(vq_images, out, monkeypatch, kill_at=3)
    partial = _snapshot(tmp_path / "vq.partial")
    with pytest.raises(ValueError, match=r"other settings \(config\.lr: 0\.001 then, 0\.002 now\).*--restart"):
        _vq_run(vq_images, out, lr=2e-3)
    assert not out.exists() and _snapshot(tmp_path / "vq.partial") == partial  # nothing recorded, nothing lost
    assert _vq_run(vq_images, out, restart=True, lr=2e-3)["resumed_at"] == 0
    _vq_run(vq_images, tmp_path / "fresh", lr=2e-3)
    fresh, restarted = _weights(tmp_path / "fresh"), _weights(out)
    assert all(torch_equal(fresh[k], restarted[k]) for k in fresh)  # as if the old checkpoint never was


def test_saving_more_often_is_not_other_settings(vq_images, tmp_path, monkeypatch):
    _vq_run(vq_images, tmp_path / "vq", monkeypatch, kill_at=3)
    assert _vq_run(vq_images, tmp_path / "vq", checkpoint_every=5)["resumed_at"] == 3


@pytest.mark.parametrize(
    "stale, message",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:200]), "cannot be read"),  # a truncated checkpoint
        (lambda path: _drop_settings(path), "made by an older version"),
    ],
)
def test_a_stale_or_broken_partial_gets_a_clear_message(stale, message, vq_images, tmp_path, monkeypatch, capsys):
    _vq_run(vq_images, tmp_path / "vq", monkeypatch, kill_at=3)
    stale(tmp_path / "vq.partial" / "state.pt")
    with pytest.raises(ValueError, match=f"{message}.*delete .*vq.partial to start over, or rerun with --restart"):
        _vq_run(vq_images, tmp_path / "vq")


def _drop_settings(path):
    import torch

    state = torch.load(path, weights_only=True)
    del state["settings"]
    torch.save(state, path)


def test_train_vq_cli_refuses_an_incompatible_partial(vq_images, tmp_path, monkeypatch, capsys):
    """A stale .partial of another model size: one clear line naming the field, not a load_state_dict traceback."""
    from arrag.data.mini_world import write_world

    world = tmp_path / "world"
    write_world(
        world, size=32, seed=0, splits={"train": 8}, underrepresented=[], keep_fraction=1.0, n_geneval_prompts=6
    )
    base = ["train-vq", "--world", world, "--out", tmp_path / "vq", "--set", "steps=4", "--set", "batch_size=4"]
    base += ["--set", "checkpoint_every=2", "--spec", "codebook_size=32"]
    from arrag.models import training

    real = training.ResumableCheckpoint.maybe_save

    def killed(self, step, *args):
        real(self, step, *args)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.ResumableCheckpoint, "maybe_save", killed)
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in base])
    assert (tmp_path / "vq.partial" / "state.pt").is_file()
    monkeypatch.undo()
    err = cli_error(base[:-1] + ["codebook_size=64"], capsys)
    assert "spec.codebook_size: 32 then, 64 now" in err and "--restart" in err
    assert main([str(a) for a in base[:-1] + ["codebook_size=64", "--restart"]]) == 0


# ------------------------------------------------------------------ faults: one clear line, not a traceback


def _damaged_model(model_dir, tmp_path, damage: str):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    if damage == "truncated weights":
        weights = next(copy.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no tokenizer":
        (copy / "tokenizer.json").unlink()
    elif damage == "no weights":
        next(copy.glob("*.safetensors")).unlink()
    elif damage == "broken config":
        (copy / "config.json").write_text('{"model_type": "janus", ')
    return copy


@pytest.mark.parametrize("damage", ["truncated weights", "no tokenizer", "no weights", "broken config"])
def test_a_half_written_model_folder_is_refused_naming_it(damage, model_dir, tmp_path, capsys):
    model = _damaged_model(model_dir, tmp_path, damage)
    err = cli_error(["generate", "--model", model, "--prompt", "a red circle", "--out", tmp_path / "o"], capsys)
    assert str(model) in err and not (tmp_path / "o").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_is_refused_before_any_work(model_dir, tmp_path, capsys):
    err = cli_error(
        ["generate", "--model", model_dir, "--prompt", "x", "--out", tmp_path / "o", "--device", "cuda"], capsys
    )
    assert "--device cuda" in err and "cpu" in err and not (tmp_path / "o").exists()


def test_a_device_index_past_the_gpus_is_refused():
    import torch

    from arrag.decoding.pipeline import resolve_device

    with pytest.raises(ValueError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")


@pytest.mark.parametrize("command", ["generate", "generate-benchmark"])
def test_out_pointing_at_a_file_is_refused_before_any_image(command, model_dir, tmp_path, capsys, monkeypatch):
    import arrag.decoding.pipeline as pipeline

    def no_generation(*args, **kwargs):
        raise AssertionError("images were generated before --out was checked")

    monkeypatch.setattr(pipeline.ImageGenerationPipeline, "__call__", no_generation)
    target = tmp_path / "a-file"
    target.write_text("keep me")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red circle"}) + "\n")
    what = ["--prompt", "a red circle"] if command == "generate" else ["--prompts", prompts]
    err = cli_error([command, "--model", model_dir, *what, "--out", target, "--device", "cpu"], capsys)
    assert "is a file" in err and target.read_text() == "keep me"


@pytest.fixture()
def damaged_sample(finished_benchmark):
    _, out, _ = finished_benchmark
    sample = out / "00001" / "samples" / "0000.png"
    sample.write_bytes(sample.read_bytes()[:40])  # a copy cut short
    return out, sample


def test_geneval_refuses_prompts_that_are_not_genevals(finished_benchmark, tmp_path, capsys):
    _, out, _ = finished_benchmark
    err = cli_error(
        ["geneval", "--images", out, "--out-jsonl", tmp_path / "r.jsonl", "--out-json", tmp_path / "s.json"], capsys
    )
    assert "00000/metadata.jsonl has no GenEval 'tag'" in err


def test_geneval_names_a_damaged_sample(damaged_sample, tmp_path, capsys):
    out, sample = damaged_sample
    for folder in ("00000", "00001"):  # GenEval records, so that scoring reaches the images
        meta = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
        (out / folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
    err = cli_error(
        ["geneval", "--images", out, "--out-jsonl", tmp_path / "r.jsonl", "--out-json", tmp_path / "s.json"], capsys
    )
    assert str(sample) in err and "not a readable image" in err and not (tmp_path / "s.json").exists()


def test_grid_and_fidelity_name_a_damaged_sample(damaged_sample, tmp_path, capsys):
    from arrag.evaluation.fidelity import load_images

    out, sample = damaged_sample
    assert str(sample) in cli_error(["grid", "--images", out, "--out", tmp_path / "g.png"], capsys)
    with pytest.raises(ValueError, match="not a readable image"):
        load_images(out)[0:2]
