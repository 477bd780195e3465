"""The mini Show-o: its masked-token objective, and `arrag train-showo` writing a backbone folder that loads through
the same loader as the real one and generates."""

import json

import numpy as np
import torch
import torch.nn.functional as F

from arrag.cli import main
from arrag.data.mini_world import make_split, write_split
from arrag.models.backbone import ShowoBackbone, load_backbone
from arrag.models.showo_training import lfq_losses, mask_draw, masked_token_loss, quantise


def test_mask_draw_is_seeded_by_the_batch_and_masks_at_least_one_token():
    idx = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    a, b = mask_draw(idx, 0, 64), mask_draw(idx, 0, 64)
    assert torch.equal(a, b) and not torch.equal(a, mask_draw(idx, 1, 64))
    assert (a.sum(1) >= 1).all() and a.sum(1).float().std() > 0  # a ratio per example


def test_masked_token_loss_is_the_cross_entropy_of_the_masked_positions():
    from test_backbone import tiny_showo_parts

    model, spec, magvit, tokenizer = tiny_showo_parts()
    backbone = ShowoBackbone(model, spec, magvit, tokenizer)
    prompts = backbone.prompts(["a photo of a red circle", "a photo of a square"])
    codes = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(0))
    masked = mask_draw(torch.tensor([0, 1]), 0, 16)
    with torch.no_grad():
        loss = masked_token_loss(model, spec.vocab, prompts.texts, codes, masked)
        logits = backbone.image_logits(prompts, torch.where(masked, -1, codes))
    assert torch.allclose(loss, F.cross_entropy(logits[masked], codes[masked]))


def test_lfq_quantiser_and_entropy_term():
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    q = quantise(z)
    assert set(q.unique().tolist()) <= {-1.0, 1.0}
    q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight through
    codebook = torch.tensor([[1.0 if (i >> (3 - b)) & 1 else -1.0 for b in range(4)] for i in range(16)])
    spread = lfq_losses(torch.randn(64, 4, 1, 1) * 5, codebook)[0]
    collapsed = lfq_losses(torch.full((64, 4, 1, 1), 5.0), codebook)[0]
    assert spread < collapsed  # every code used across the batch scores better than one code everywhere


def test_train_showo_writes_a_backbone_that_loads_and_generates(tmp_path):
    images, records = make_split("train", 24, seed=0)
    write_split(tmp_path / "world" / "train", images, records)
    spec = ["bits=4", "hidden_size=32", "num_layers=1", "num_heads=2"]
    sets = ["magvit_steps=2", "steps=2", "batch_size=8", "checkpoint_every=1"]
    argv = ["train-showo", "--world", str(tmp_path / "world"), "--out", str(tmp_path / "showo")]
    argv += [a for s in spec for a in ("--spec", s)] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    stats = json.loads((tmp_path / "showo" / "training.json").read_text())
    assert stats["showo"]["steps"] == 2 and stats["magvit"]["codes_used"] >= 1
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*-magvit.partial"))  # discarded
    backbone = load_backbone(tmp_path / "showo")
    assert isinstance(backbone, ShowoBackbone) and backbone.vq.grid == 8 and backbone.vq.image_size == 32
    from arrag.decoding.loop import SamplingConfig
    from arrag.decoding.pipeline import ImageGenerationPipeline

    pipe = ImageGenerationPipeline(backbone, device="cpu")
    out, codes = pipe([records[0]["caption"]], n=2, sampling=SamplingConfig(guidance_scale=2.0))
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8 and codes.shape == (2, 8, 8)
