import pytest
import torch
from conftest import tiny_spec

from arrag.data.mini_world import make_split
from arrag.models import training
from arrag.models.vq_training import (
    VQTrainingConfig,
    patch_colour_loss,
    patch_consistency_loss,
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


def test_patch_colour_loss_is_the_probes_squared_error_on_each_patchs_mean_colour():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 6, 4, generator=gen) * 2 - 1  # two images of 3x2 patches of 2 px
    z_q = torch.randn(2, 5, 3, 2, generator=gen)
    probe = torch.nn.Linear(5, 3)
    errors = []
    for b in range(2):
        for i in range(3):
            for j in range(2):
                mean = x[b, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean((1, 2))  # [3]
                errors.append(((probe(z_q[b, :, i, j]) - mean) ** 2).mean())
    torch.testing.assert_close(patch_colour_loss(z_q, x, 2, probe), torch.stack(errors).mean())


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
