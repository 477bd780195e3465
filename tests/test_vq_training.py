import collections

import numpy as np
import pytest
import torch
from conftest import tiny_spec
from transformers.models.janus.modeling_janus import JanusVQVAE

from arrag.data.mini_world import make_split
from arrag.models import training
from arrag.models.janus import build_word_tokenizer, mini_janus_config
from arrag.models.vq import normalised_nearest_codes
from arrag.models.vq_training import (
    VQTrainingConfig,
    canonical_codes,
    code_choice_loss,
    encoder_latents,
    frequent_blocks,
    patch_consistency_loss,
    pixel_blocks,
    quantise_normalised,
    restart_dead_codes,
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


def test_frequent_blocks_counts_pixel_identical_patches_most_frequent_first():
    images = np.zeros((2, 4, 4, 3), np.uint8)  # 2 images of 2x2 patches of 2 px: 8 patches, 6 of them black
    images[0, :2, :2] = 255  # one white patch ...
    images[1, 2:, 2:] = 255  # ... and another: white occurs twice
    images[1, :2, 2:] = (255, 0, 0)  # one red patch
    blocks = frequent_blocks(images, patch=2, min_count=2)
    assert blocks.shape == (2, 12)
    assert (blocks[0] == 0).all() and (blocks[1] == 255).all()  # black (5 times) before white (twice); red is rare
    assert pixel_blocks(images, 2)[1, 1].reshape(4, 3).tolist() == [[255, 0, 0]] * 4  # raster order: row 0, column 1


@pytest.fixture(scope="module")
def snapped():
    """Images of the mini profile's world: one plain tone, shapes on the patch grid (few distinct patches)."""
    return make_split("train", 48, seed=3, size=32, backgrounds=("plain",), tones=1, snap=4)[0]


def test_canonical_codes_give_each_frequent_block_a_code_of_its_own(snapped):
    images = snapped[:16]
    spec = tiny_spec(image_size=32, codebook_size=512)
    torch.manual_seed(0)
    vq = JanusVQVAE(mini_janus_config(spec, build_word_tokenizer([])).vq_config).eval()
    blocks = frequent_blocks(images, spec.patch_size, min_count=2)  # 65 blocks
    lat = encoder_latents(vq, images).reshape(-1, spec.codebook_dim)  # [N*T, D]
    tiles = [t.tobytes() for t in pixel_blocks(images, spec.patch_size).reshape(-1, blocks.shape[1])]
    mine = [torch.tensor([t == b.tobytes() for t in tiles]) for b in blocks]  # each block's patches

    # a random encoder: blocks, most frequent first, take their commonest code not yet taken (direct re-computation)
    ids = normalised_nearest_codes(lat, vq.quantize.embedding.weight).tolist()
    codes = canonical_codes(vq, images, blocks, spec.patch_size).tolist()
    taken, expected, spare = set(), [], sorted(set(range(spec.codebook_size)) - set(ids))
    for m in mine:
        seen = collections.Counter(i for i, here in zip(ids, m.tolist()) if here)
        free = [c for c, _ in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])) if c not in taken]
        expected.append(free[0] if free else spare.pop(0))  # a block whose codes were all taken: a spare one
        taken.add(expected[-1])
    assert codes == expected and len(set(codes)) == len(blocks) == 65  # distinct: no two blocks share a code

    # one code for everything: the commonest block keeps it, the others take spare codes at their mean latent
    with torch.no_grad():
        vq.quantize.embedding.weight[:] = vq.quantize.embedding.weight[0]
    codes = canonical_codes(vq, images, blocks, spec.patch_size).tolist()
    assert codes == list(range(len(blocks)))  # code 0 (argmin's tie-break), then the spares in order
    for g in range(1, len(blocks)):
        torch.testing.assert_close(
            vq.quantize.embedding.weight[g], torch.nn.functional.normalize(lat[mine[g]].mean(0), dim=0)
        )
    assert (vq.quantize.embedding.weight[len(blocks) :] == vq.quantize.embedding.weight[0]).all()  # the rest unmoved


def test_code_choice_loss_is_the_cross_entropy_of_scaled_cosine_similarities():
    torch.manual_seed(0)
    z, codebook = torch.randn(1, 4, 2, 2), torch.randn(6, 4)
    target = torch.tensor([[[2, -1], [5, 0]]])
    lat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
    logits = 10.0 * lat @ torch.nn.functional.normalize(codebook, dim=-1).T
    keep = [0, 2, 3]  # position (0, 1) is -1: any code
    direct = torch.nn.functional.cross_entropy(logits[keep], target.flatten()[keep])
    torch.testing.assert_close(code_choice_loss(z, codebook, target), direct)


def test_canonical_phase_leaves_the_encoder_choosing_the_assigned_codes(tmp_path, snapped):
    images = snapped
    spec = tiny_spec(image_size=32, codebook_size=256)
    cfg = VQTrainingConfig(steps=30, batch_size=16, canonical_steps=20, canonical_images=48, canonical_min_count=2)
    stats = train_vq(images, spec, cfg, tmp_path / "vq")
    assert stats["canonical"]["codes"] == stats["canonical"]["blocks"] > 0
    assert stats["canonical"]["agreement"] > 0.5  # a random encoder agrees with a distinct assignment far less


def test_canonical_steps_beyond_the_run_are_refused():
    with pytest.raises(ValueError, match="canonical_steps=20 is more than steps=10"):
        VQTrainingConfig(steps=10, canonical_steps=20)
