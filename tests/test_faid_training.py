"""FAiD training: the training-set format and its refusals, training lowers the loss, resume equals an
uninterrupted run, and checkpoints refuse another base model."""

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import arrag.models.faid_training as ft
from arrag.models.janus import save_janus
from arrag.models.vq import VQTokenizer
from arrag.retrieval.database import PatchDatabase

CAPTIONS = ["a photo of a red circle", "a photo of two squares", "a photo of a triangle", "a photo of a blue circle"]


@pytest.fixture()
def setup(tiny_janus, tmp_path):
    """The tiny model saved as a base model, a database over 30 random grids, and a training set of 8 images."""
    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "base")
    vq = VQTokenizer.from_janus(model)
    gen = torch.Generator().manual_seed(0)
    corpus = torch.randint(0, spec.codebook_size, (30, spec.grid, spec.grid), generator=gen)
    db = PatchDatabase.build(corpus, vq.codebook, index="flat")
    db.save(tmp_path / "db")  # a database has an identity (its manifest's digest) once saved
    ft.build_trainset(model, db, corpus[:8], (CAPTIONS * 2)[:8], k=4, out_dir=tmp_path / "trainset")
    return model, db, corpus[:8], tmp_path


def test_trainset_format_and_refusals(setup, tiny_janus):
    model, db, grids, tmp = setup
    codes, candidates, captions, meta = ft.load_trainset(tmp / "trainset", db)
    assert codes.shape == (8, 4, 4) and candidates.shape == (8, 16, 4) and captions == (CAPTIONS * 2)[:8]
    assert meta["database"] == ft.database_identity(db) and not meta["excluded_same_image"]
    # candidates are the database's answers to the ground-truth neighbourhoods
    from arrag.decoding.faid import training_candidates

    assert torch.equal(candidates, training_candidates(db, codes, VQTokenizer.from_janus(model).codebook, 4))
    other = PatchDatabase.build(codes, VQTokenizer.from_janus(model).codebook, index="flat")
    other.save(tmp / "other_db")
    with pytest.raises(ValueError, match="another database .* than the one given"):
        ft.load_trainset(tmp / "trainset", other)
    with pytest.raises(FileNotFoundError, match="arrag faid-trainset"):
        ft.load_trainset(tmp / "nothing")
    with pytest.raises(ValueError, match="between 1 and the database size"):
        ft.build_trainset(model, db, grids, (CAPTIONS * 2)[:8], k=0, out_dir=tmp / "x")
    with pytest.raises(ValueError, match="8 images but 4 captions"):
        ft.build_trainset(model, db, grids, CAPTIONS, k=2, out_dir=tmp / "x")


def test_same_image_exclusion_in_the_trainset(setup):
    """Images that are themselves in the database never get their own patches as candidates."""
    model, _, _, tmp = setup
    vq = VQTokenizer.from_janus(model)
    codes = torch.arange(16).view(1, 4, 4).repeat(6, 1, 1) % 7  # six identical images: every key repeats
    codes[0] = 9  # image 0 is the only one holding token 9
    db = PatchDatabase.build(codes, vq.codebook, index="flat", image_ids=torch.arange(100, 106))
    db.save(tmp / "own_db")
    # the fine-tuning image is exactly database image 0 (id 100)
    ft.build_trainset(model, db, codes[:1], CAPTIONS[:1], k=3, out_dir=tmp / "own", image_ids=np.array([100]))
    ft.build_trainset(model, db, codes[:1], CAPTIONS[:1], k=3, out_dir=tmp / "leaky")
    leaky = ft.load_trainset(tmp / "leaky")[1]
    assert (leaky[0, 1:, 0] == 9).all()  # without exclusion its own patch is the top hit (past the empty key)
    own = ft.load_trainset(tmp / "own")
    assert not (own[1] == 9).any() and own[3]["excluded_same_image"]


def test_training_lowers_the_loss_and_saves_only_faid(setup):
    model, db, _, tmp = setup
    cfg = ft.FAiDTrainingConfig(steps=20, batch_size=4, lr=3e-3, every=1, k=4, rank=8, checkpoint_every=0)
    stats = ft.train_faid(tmp / "base", tmp / "trainset", cfg, tmp / "faid", db=db, cpu=True)
    losses = [e["loss"] for e in stats["log"]]
    assert losses[-1] < losses[0]
    saved = load_file(tmp / "faid" / "faid.safetensors")
    assert sum(v.numel() for v in saved.values()) == stats["trainable_parameters"]
    assert not any("language_model" in name for name in saved)
    faid = ft.load_faid(tmp / "faid", model)
    assert len(faid.blocks) == model.config.text_config.num_hidden_layers


def test_resume_after_an_interruption_gives_the_same_parameters(setup, monkeypatch):
    _, db, _, tmp = setup
    cfg = ft.FAiDTrainingConfig(steps=8, batch_size=4, lr=3e-3, every=1, k=4, rank=8, checkpoint_every=3)
    ft.train_faid(tmp / "base", tmp / "trainset", cfg, tmp / "straight", cpu=True)

    real_lr_at = ft.lr_at

    def crash_at_step_7(step, c):
        if step == 7:
            raise KeyboardInterrupt
        return real_lr_at(step, c)

    monkeypatch.setattr(ft, "lr_at", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        ft.train_faid(tmp / "base", tmp / "trainset", cfg, tmp / "resumed", cpu=True)
    assert not (tmp / "resumed").exists() and (tmp / "resumed.partial" / "state.pt").is_file()
    monkeypatch.setattr(ft, "lr_at", real_lr_at)
    stats = ft.train_faid(tmp / "base", tmp / "trainset", cfg, tmp / "resumed", cpu=True)
    assert stats["resumed_at"] == 6
    a, b = load_file(tmp / "straight" / "faid.safetensors"), load_file(tmp / "resumed" / "faid.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_checkpoint_for_another_base_model_is_refused(setup):
    model, db, _, tmp = setup
    cfg = ft.FAiDTrainingConfig(steps=2, batch_size=4, every=1, k=4, rank=8, checkpoint_every=0)
    ft.train_faid(tmp / "base", tmp / "trainset", cfg, tmp / "faid", cpu=True)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.generation_head.vision_head.weight.add_(0.01)
    with pytest.raises(ValueError, match="another base model"):
        ft.load_faid(tmp / "faid", other)
    with pytest.raises(FileNotFoundError, match="arrag train-faid"):
        ft.load_faid(tmp / "missing", model)


def test_faid_trainset_command_excludes_the_images_own_entries(tmp_path, capsys):
    """`arrag faid-trainset --exclude-self` on the database's own source split: image id = position."""
    from conftest import WORDS, tiny_spec
    from transformers import JanusForConditionalGeneration

    from arrag.cli import main
    from arrag.data.mini_world import load_split, write_world
    from arrag.models.janus import (
        build_processor,
        build_word_tokenizer,
        configure_image_generation,
        mini_janus_config,
        save_janus,
    )

    spec = tiny_spec(image_size=32)
    tok = build_word_tokenizer(WORDS)
    model = JanusForConditionalGeneration(mini_janus_config(spec, tok)).eval()
    configure_image_generation(model, tok)
    save_janus(model, build_processor(tok, spec.image_size, spec.grid**2), tmp_path / "base")
    write_world(
        tmp_path / "world",
        size=32,
        seed=0,
        splits={"corpus": 12},
        underrepresented=[],
        keep_fraction=1.0,
        n_geneval_prompts=6,
    )
    images, _ = load_split(tmp_path / "world" / "corpus")
    vq = VQTokenizer.from_janus(model)
    PatchDatabase.build(vq.encode(images), vq.codebook, index="flat").save(tmp_path / "db")
    args = [
        "faid-trainset",
        "--model",
        str(tmp_path / "base"),
        "--db",
        str(tmp_path / "db"),
        "--world",
        str(tmp_path / "world"),
        "--split",
        "corpus",
        "--k",
        "3",
        "--device",
        "cpu",
    ]
    assert main(args + ["--exclude-self", "--out", str(tmp_path / "own")]) == 0
    assert main(args + ["--out", str(tmp_path / "all")]) == 0
    own, everything = ft.load_trainset(tmp_path / "own"), ft.load_trainset(tmp_path / "all")
    assert own[3]["excluded_same_image"] and not everything[3]["excluded_same_image"]
    db = PatchDatabase.load(tmp_path / "db", codebook=vq.codebook)
    expected = training_candidates_excluding_self(db, own[0], vq.codebook)
    assert torch.equal(own[1], expected) and not torch.equal(own[1], everything[1])

    # the same pairs as code shards of a captioned source (how the paper profile gives its 50K pairs)
    from arrag.data.code_shards import shard_paths, tokenise_shard

    source = {"type": "mini_world", "path": str(tmp_path / "world" / "corpus")}
    for shard in range(2):
        tokenise_shard(source, shard, 2, vq, tmp_path / "codes")
    shards = [str(shard_paths(tmp_path / "codes", s, 2)[0]) for s in range(2)]
    pairs = args[:5] + ["--codes", *shards, "--k", "3", "--device", "cpu", "--out", str(tmp_path / "shards")]
    assert main(pairs) == 0
    from_shards = ft.load_trainset(tmp_path / "shards")
    order = torch.tensor([0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11])  # shard 0 holds the even images, shard 1 the odd
    assert torch.equal(from_shards[0], everything[0][order]) and torch.equal(from_shards[1], everything[1][order])
    assert from_shards[2] == [everything[2][i] for i in order]  # each caption stays with its image
    assert main(pairs + ["--exclude-self"]) == 2  # a code shard's image ids are not the database's
    assert "--exclude-self needs --world" in capsys.readouterr().err
    # pairs from the very files the database was built from would retrieve their own patches: refused
    sources = [{"source": source, "offset": 0}]
    PatchDatabase.build(vq.encode(images), vq.codebook, index="flat", sources=sources).save(tmp_path / "db_src")
    assert main([*pairs[:4], str(tmp_path / "db_src"), *pairs[5:-1], str(tmp_path / "leak")]) == 2
    assert "read the same data" in capsys.readouterr().err and not (tmp_path / "leak").exists()


def training_candidates_excluding_self(db, codes, codebook):
    from arrag.decoding.faid import training_candidates

    return training_candidates(db, codes, codebook, 3, image_ids=torch.arange(len(codes)))


def test_two_processes_train_exactly_like_one(setup):
    """`torchrun` (what `accelerate launch` starts) with 2 CPU processes on gloo: each takes every other example
    of each global batch and the gradients are summed, so the result equals one process accumulating the
    same global batch in two micro-batches."""
    import os
    import subprocess
    import sys

    _, _, _, tmp = setup
    common = ["--model", str(tmp / "base"), "--trainset", str(tmp / "trainset"), "--cpu"]
    common += [f"--set={kv}" for kv in ("steps=6", "batch_size=2", "lr=3e-3", "every=1", "k=4", "rank=8")]
    common += ["--set=checkpoint_every=0", "--set=caption_dropout=0.25"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "arrag", "train-faid", *common, "--set=grad_accum=2", "--out", str(tmp / "one")]
    subprocess.run(one, check=True, env=env, capture_output=True, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = [*torchrun, "-m", "arrag", "train-faid", *common, "--out", str(tmp / "two")]
    result = subprocess.run(two, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(tmp / "one" / "faid.safetensors"), load_file(tmp / "two" / "faid.safetensors")
    assert a.keys() == b.keys()
    moved = [name for name in a if not torch.equal(a[name], torch.zeros_like(a[name]))]
    assert moved  # training changed the zero-initialised output projections
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_epochs_derive_the_steps_from_the_training_set_and_are_recorded(setup):
    """8 pairs at a global batch of 4 (2 x grad_accum 2): one epoch is 2 steps, recorded in faid.json."""
    _, db, _, tmp = setup
    cfg = ft.FAiDTrainingConfig(
        steps=None, epochs=1, batch_size=2, grad_accum=2, every=1, k=4, rank=8, checkpoint_every=0
    )
    stats = ft.train_faid(tmp / "base", tmp / "trainset", cfg, tmp / "faid", db=db, cpu=True)
    assert stats["steps"] == 2 and stats["config"]["steps"] == 2 and stats["config"]["epochs"] == 1
    assert stats["schedule"] == {"steps": 2, "epochs": 1, "pairs": 8, "global_batch": 4, "steps_per_epoch": 2}
    saved = json.loads((tmp / "faid" / "faid.json").read_text())
    assert saved["schedule"]["steps"] == 2
