import json

import pytest
import torch
from conftest import tiny_spec

from arrag.data.mini_world import caption_vocabulary, make_split
from arrag.models import training
from arrag.models.janus import load_janus
from arrag.models.training import (
    BaseTrainingConfig,
    VQTrainingConfig,
    local_decoding_loss,
    patch_consistency_loss,
    quantise_normalised,
    restart_dead_codes,
    shuffle_tiles,
    train_base_model,
    train_vq,
)


@pytest.fixture(scope="module")
def data():
    images, records = make_split("train", 48, seed=3, size=32)
    return images, [r["caption"] for r in records]


def test_normalised_quantisation_picks_nearest_unit_codebook_row():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 3, 3)
    codebook = torch.randn(16, 8) * torch.linspace(0.1, 5, 16)[:, None]
    z_q, ids, loss = quantise_normalised(z, codebook, 0.25)
    zn = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    en = torch.nn.functional.normalize(codebook, dim=-1)
    assert torch.equal(ids.flatten(), torch.cdist(zn, en).argmin(-1))
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1).reshape(-1, 8), en[ids.flatten()])
    assert loss > 0


def test_patch_consistency_is_the_spread_among_identical_patches_over_the_whole_spread():
    x = torch.zeros(2, 3, 4, 4)  # two images of 2x2 patches of 2 px: latents in b, h, w order 0..7
    x[0, :, :2, :2] = 1.0  # latent 0: a patch of its own
    x[1, 0, 2:, 2:] = 0.5  # latent 7: another; the six others are the same (black) patch
    z = torch.randn(2, 5, 2, 2, generator=torch.Generator().manual_seed(0))
    lat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 5), dim=-1)
    groups = [[0], [1, 2, 3, 4, 5, 6], [7]]
    within = sum(((lat[g] - lat[g].mean(0)) ** 2).sum() for g in groups) / 8
    total = ((lat - lat.mean(0)) ** 2).sum() / 8
    torch.testing.assert_close(patch_consistency_loss(z, x, patch=2), within / total)
    same = z.clone()
    same.view(2, 5, 4)[:, :, :] = z[1, :, 0, 0, None]  # every latent the black patch's
    same[0, :, 0, 0], same[1, :, 1, 1] = z[0, :, 0, 0], z[1, :, 1, 1]
    assert patch_consistency_loss(same, x, patch=2) < 1e-6  # identical patches, identical latents: nothing


def test_shuffled_tiles_come_from_the_tiles_the_order_names():
    x = torch.randn(2, 3, 6, 6)
    order = torch.randperm(18, generator=torch.Generator().manual_seed(1))  # 2 images x 3 x 3 tiles of 2 px
    got = shuffle_tiles(x, 2, order)

    def tile(t, i):  # tile i in batch-major, row, column order
        b, r, c = i // 9, (i % 9) // 3, i % 3
        return t[b, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]

    for i in range(18):
        assert torch.equal(tile(got, i), tile(x, int(order[i])))
    assert torch.equal(shuffle_tiles(x, 2, torch.arange(18)), x)


def test_local_decoding_shuffles_the_codes_and_their_patches_alike():
    from types import SimpleNamespace

    patch = 4
    local = SimpleNamespace(  # a decoder that paints each code's first 3 channels over its patch, nothing else
        post_quant_conv=lambda h: h,
        decoder=lambda h: torch.nn.functional.interpolate(h[:, :3], scale_factor=patch, mode="nearest"),
    )
    z_q = torch.randn(3, 8, 2, 2)
    x = local.decoder(z_q)  # what the local decoder makes of the codes in place
    assert local_decoding_loss(local, z_q, x, patch, torch.Generator().manual_seed(0)) == 0
    shifted = torch.roll(x, shifts=patch, dims=3)  # every patch beside its code: a shuffle cannot match it
    assert local_decoding_loss(local, z_q, shifted, patch, torch.Generator().manual_seed(0)) > 0.1


def test_dead_codes_move_to_the_worst_covered_latents_farthest_first():
    e = torch.eye(4)
    codebook = torch.stack([e[0], e[0], e[1], e[1]]).clone()  # codes 1 and 3 unused
    usage = torch.tensor([5.0, 0.0, 3.0, 0.0])
    near = torch.nn.functional.normalize(e[0] + 0.01 * e[1], dim=0)  # covered by code 0
    far1 = torch.nn.functional.normalize(e[2] + 0.1 * e[3], dim=0)  # uncovered: the farthest
    far2 = torch.nn.functional.normalize(e[2] + 0.2 * e[3], dim=0)  # next to far1: covered once far1 is a code
    z = torch.stack([near, far1, far2, e[1]]).T.reshape(1, 4, 2, 2)  # [B, D, H, W], latents in h, w order
    assert restart_dead_codes(codebook, usage, z, margin=0.05) == 1  # far2 is within the margin of far1
    torch.testing.assert_close(codebook[1], far1)  # the first dead code took the farthest latent
    torch.testing.assert_close(codebook[3], e[1])  # the second stayed: nothing left uncovered
    codebook[1] = e[0]
    assert restart_dead_codes(codebook, usage, z, margin=0.0) == 2  # no margin: far2 too
    torch.testing.assert_close(codebook[3], far2)


def test_vq_training_interrupted_leaves_no_model_and_resumes(tmp_path, data, monkeypatch):
    images, _ = data
    spec = tiny_spec(image_size=32, codebook_size=16)
    out = tmp_path / "vq"
    cfg = VQTrainingConfig(steps=6, batch_size=8, checkpoint_every=2)

    real_save = training.ResumableCheckpoint.maybe_save
    calls = {"n": 0}

    def crash_after_first_checkpoint(self, step, module, opt, *extra):
        real_save(self, step, module, opt, *extra)
        calls["n"] += 1
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.ResumableCheckpoint, "maybe_save", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_vq(images, spec, cfg, out)
    assert not out.exists()  # nothing a later run would take as complete
    assert (tmp_path / "vq.partial" / "state.pt").is_file()

    monkeypatch.setattr(training.ResumableCheckpoint, "maybe_save", real_save)
    stats = train_vq(images, spec, cfg, out)
    assert stats["resumed_at"] == 4
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert not (tmp_path / "vq.partial").exists()


def test_base_training_lowers_the_loss_and_saves_a_loadable_janus(tmp_path, data):
    images, captions = data
    spec = tiny_spec(image_size=32, codebook_size=16, hidden_size=32, num_layers=1)
    train_vq(images, spec, VQTrainingConfig(steps=2, batch_size=8), tmp_path / "vq")
    cfg = BaseTrainingConfig(steps=40, batch_size=16, lr=3e-3, checkpoint_every=0)
    stats = train_base_model(images, captions, caption_vocabulary(), spec, tmp_path / "vq", cfg, tmp_path / "base")
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
    seen = [i for _, batch in training._batches(50_000, 256, 195, 0, seed=0) for i in batch]
    assert len(seen) == 195 * 256 == len(set(seen))
    second = [i for _, batch in training._batches(50_000, 256, 196, 0, seed=0) for i in batch]
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
