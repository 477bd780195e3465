import json

import pytest
import torch
from conftest import tiny_spec

from arrag.data.mini_world import caption_vocabulary, make_split
from arrag.models import training
from arrag.models.janus import load_janus
from arrag.models.training import BaseTrainingConfig, train_base_model
from arrag.models.vq_training import VQTrainingConfig, train_vq


@pytest.fixture(scope="module")
def data():
    images, records = make_split("train", 48, seed=3, size=32)
    return images, [r["caption"] for r in records]


def test_base_training_lowers_the_loss_and_saves_a_loadable_janus(tmp_path, data, monkeypatch):
    images, captions = data
    spec = tiny_spec(image_size=32, codebook_size=16, hidden_size=32, num_layers=1)
    train_vq(images, spec, VQTrainingConfig(steps=2, batch_size=8), tmp_path / "vq")
    betas = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            betas.append(kwargs["betas"])
            super().__init__(params, **kwargs)

    monkeypatch.setattr(training.torch.optim, "AdamW", RecordingAdamW)
    cfg = BaseTrainingConfig(steps=40, batch_size=16, lr=3e-3, beta2=0.9, checkpoint_every=0)
    stats = train_base_model(images, captions, caption_vocabulary(), spec, tmp_path / "vq", cfg, tmp_path / "base")
    assert betas == [(0.9, 0.9)]  # the configured second-moment decay reaches the optimiser
    losses = [entry["loss"] for entry in stats["log"]]
    assert losses[-1] < losses[0]
    model, processor = load_janus(tmp_path / "base")
    assert model.config.vq_config.num_embeddings == 16
    assert processor.tokenizer.boi_token == "<begin_of_image>"
    assert json.loads((tmp_path / "base" / "training.json").read_text())["trainable_parameters"] > 0
    # the VQ-VAE inside the saved model is the trained one
    from transformers.models.janus.modeling_janus import JanusVQVAE

    vq = JanusVQVAE.from_pretrained(tmp_path / "vq")
    for name, p in vq.state_dict().items():
        torch.testing.assert_close(model.model.vqmodel.state_dict()[name], p)


def test_generation_loss_is_next_token_cross_entropy_on_image_positions(tiny_janus):
    model, processor, spec = tiny_janus
    from arrag.models.janus import tokenize_prompts

    batch = tokenize_prompts(processor, ["a photo of a circle", "a photo of two red squares"])
    codes = torch.randint(0, spec.codebook_size, (2, spec.grid**2))
    loss = training.image_generation_loss(model, batch["input_ids"], batch["attention_mask"], codes)
    # direct re-computation, one image token at a time, sequence by sequence without padding
    total = []
    for b in range(2):
        keep = batch["attention_mask"][b].bool()
        ids = batch["input_ids"][b][keep][None]
        for t in range(codes.shape[1]):
            embeds = torch.cat(
                [
                    model.get_input_embeddings()(ids),
                    model.prepare_embeddings_for_image_generation(codes[b : b + 1, :t]),
                ],
                1,
            )
            h = model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
            total.append(torch.nn.functional.cross_entropy(model.model.generation_head(h), codes[b : b + 1, t]))
    torch.testing.assert_close(loss, torch.stack(total).mean(), atol=1e-4, rtol=1e-4)


def test_caption_dropout_prompt_is_the_unconditional_prompt(tiny_janus):
    _, processor, _ = tiny_janus
    tok = processor.tokenizer
    from arrag.models.janus import tokenize_prompts

    ids = tokenize_prompts(processor, ["a photo of a circle"])["input_ids"]
    u = training.unconditional_ids(ids, tok.bos_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.pad_token_id)
    assert tok.convert_ids_to_tokens(u[0].tolist()) == ["<bos>"] + ["<pad>"] * (ids.shape[1] - 2) + ["<begin_of_image>"]


def test_gradients_are_summed_bucket_by_bucket(monkeypatch):
    """sum_gradients packs gradients into buckets (a new one when full), sums each across processes in one
    collective, and unpacks every parameter's share back in place; a parameter without a gradient gets zeros."""
    import types

    import arrag.models.training as tr

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in [(3, 4), (5,), (2, 2, 2), (7,), (1,)]]
    for p in params[:-1]:
        p.grad = torch.randn_like(p)
    before = [None if p.grad is None else p.grad.clone() for p in params]
    calls = []

    def reduce(tensor, reduction):  # two processes holding the same gradients: the sum doubles them
        calls.append(tensor.numel())
        return tensor * 2

    monkeypatch.setattr(tr, "REDUCE_BUCKET", 13)
    tr.sum_gradients(params, types.SimpleNamespace(reduce=reduce))
    assert calls == [12, 13, 8]  # [12] | [5, 8] | [7, 1]: no bucket over 13 elements, every element once
    for p, g in zip(params, before):
        assert torch.equal(p.grad, 2 * g if g is not None else torch.zeros_like(p))


def test_one_epoch_is_the_full_global_batches_of_one_shuffle():
    """Appendix B.3's single epoch: 50,000 pairs at a global batch of 256 are 195 steps (the remainder of 80 is
    dropped), and those steps draw each pair at most once; a 196th step would start a second shuffle."""
    assert training.epoch_steps(50_000, 256, 1) == 195
    assert training.epoch_steps(49_990, 256, 1) == 195 and training.epoch_steps(49_900, 256, 1) == 194  # skipped
    assert training.epoch_steps(10_000, 256, 2) == 78 and training.epoch_steps(10_000, 256, 0.5) == 20
    seen = [i for _, batch in training.seeded_batches(50_000, 256, 195, 0, seed=0) for i in batch]
    assert len(seen) == 195 * 256 == len(set(seen))
    second = [i for _, batch in training.seeded_batches(50_000, 256, 196, 0, seed=0) for i in batch]
    assert len(set(second)) < len(second)  # the 196th batch repeats pairs of the first shuffle
    with pytest.raises(ValueError, match="fewer than one global batch of 256"):
        training.epoch_steps(255, 256, 1)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epochs"):
            training.epoch_steps(1000, 256, bad)


def test_epochs_set_the_steps_from_the_pairs_read():
    from arrag.baselines.racm3 import RACM3TrainingConfig
    from arrag.models.faid_training import FAiDTrainingConfig

    for cls in (FAiDTrainingConfig, RACM3TrainingConfig):
        cfg, record = training.resolve_steps(cls(steps=None, epochs=1), pairs=50_000, global_batch=256)
        assert cfg.steps == 195 and record == {
            "steps": 195,
            "epochs": 1,
            "pairs": 50_000,
            "global_batch": 256,
            "steps_per_epoch": 195,
        }
        assert training.resolve_steps(cls(steps=7), 50_000, 256)[0].steps == 7
        with pytest.raises(ValueError, match="both steps=7 and epochs=1"):
            training.resolve_steps(cls(steps=7, epochs=1), 50_000, 256)


def test_the_cli_reads_null_and_numbers_for_optional_settings():
    from arrag.cli import parse_overrides
    from arrag.models.faid_training import FAiDTrainingConfig

    cfg = parse_overrides(["steps=None", "epochs=1", "every=12", "hops=12"], FAiDTrainingConfig)
    assert cfg.steps is None and cfg.epochs == 1.0 and isinstance(cfg.epochs, float) and cfg.every == 12
    assert cfg.hops == "12"
