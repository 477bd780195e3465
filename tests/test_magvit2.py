"""MAGVIT-v2 without its weights: the full-size model on the meta device against the published checkpoint's
names and shapes, the LFQ index <-> bits mapping, and a tiny config's shapes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from arrag.manifest import write_manifest
from arrag.models.magvit2 import (
    AttnBlock,
    LookupFreeQuantizer,
    Magvit2,
    Magvit2Config,
    load_magvit2,
    read_config,
    save_magvit2,
)
from arrag.models.showo import ModelLoadError

TINY = Magvit2Config(
    channels=32, encoder_mult=(1, 2), encoder_blocks=(1, 2), decoder_mult=(1, 2), decoder_blocks=(2, 1), bits=4
)


def conv(cout, cin, k):
    return {"weight": (cout, cin, k, k), "bias": (cout,)}


def norm(c):
    return {"weight": (c,), "bias": (c,)}


def published_tensors() -> dict[str, tuple]:
    """showlab/magvitv2's state dict as Show-o's models/modeling_magvitv2.py (MAGVITv2: encoder VQGANEncoder,
    decoder VQGANDecoder, quantize LFQuantizer) and models/common_modules.py (ResnetBlock without temb_proj as
    temb_channels is 0, AttnBlock, Downsample/Upsample with a conv) build it, with their default arguments:
    ch 128, encoder ch_mult [1,2,2,4,4] / num_res_blocks [4,3,4,3,4], decoder ch_mult [1,1,2,2,4] /
    num_res_blocks [4,4,3,4,3], z_channels 13, attn_resolutions [5] (never reached: no per-level attention)."""
    out = {}

    def add(prefix, tensors):
        out.update({f"{prefix}.{name}": shape for name, shape in tensors.items()})

    def resnet(prefix, cin, cout):
        add(f"{prefix}.norm1", norm(cin)), add(f"{prefix}.conv1", conv(cout, cin, 3))
        add(f"{prefix}.norm2", norm(cout)), add(f"{prefix}.conv2", conv(cout, cout, 3))
        if cin != cout:
            add(f"{prefix}.nin_shortcut", conv(cout, cin, 1))

    def mid(prefix, c):
        resnet(f"{prefix}.block_1", c, c), resnet(f"{prefix}.block_2", c, c)
        add(f"{prefix}.attn_1.norm", norm(c))
        for name in ("q", "k", "v", "proj_out"):
            add(f"{prefix}.attn_1.{name}", conv(c, c, 1))

    ch, mult, blocks = 128, [1, 2, 2, 4, 4], [4, 3, 4, 3, 4]
    add("encoder.conv_in", conv(ch, 3, 3))
    in_mult = [1] + mult
    for i in range(5):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(blocks[i]):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != 4:
            add(f"encoder.down.{i}.downsample.conv", conv(block_out, block_out, 3))
    mid("encoder.mid", 512)
    (
        add("encoder.norm_out", norm(512)),
        add("encoder.conv_out", conv(13, 512, 3)),
        add("encoder.quant_conv", conv(13, 13, 1)),
    )

    mult, blocks = [1, 1, 2, 2, 4], [4, 4, 3, 4, 3]
    add("decoder.post_quant_conv", conv(13, 13, 1)), add("decoder.conv_in", conv(512, 13, 3))
    mid("decoder.mid", 512)
    block_in = 512
    for i in reversed(range(5)):
        block_out = ch * mult[i]
        for j in range(blocks[i]):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != 0:
            add(f"decoder.up.{i}.upsample.conv", conv(block_out, block_out, 3))
    add("decoder.norm_out", norm(128)), add("decoder.conv_out", conv(3, 128, 3))
    out["quantize.embedding"], out["quantize.power_vals"] = (8192, 13), (13,)  # LFQuantizer's (persistent) buffers
    return out


def test_full_size_model_matches_the_published_checkpoint():
    with torch.device("meta"):
        model = Magvit2()
    # 95,387,004 parameters (~95.4M) plus the LFQ codebook: 382 MB of fp32 tensors, showlab/magvitv2's file size
    assert sum(p.numel() for p in model.parameters()) == 95_387_004
    assert 381e6 < sum(t.numel() * 4 for t in model.state_dict().values()) < 383e6
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == published_tensors()
    assert model.cfg.downsampling == 16 and model.cfg.codebook_size == 8192


def test_lfq_index_is_the_bits_most_significant_first():
    q = LookupFreeQuantizer(13)
    assert q.embedding.shape == (8192, 13) and set(q.embedding.unique().tolist()) == {-1.0, 1.0}
    assert q.embedding[1].tolist() == [-1.0] * 12 + [1.0]  # index 1: only the last (least significant) bit set
    assert q.embedding[4096].tolist() == [1.0] + [-1.0] * 12  # 2**12: only the first bit
    every = torch.arange(8192).reshape(2, 64, 64)
    assert torch.equal(q.indices(q.latents(every)), every)  # index -> bits -> index
    z = torch.randn(3, 13, 5, 7)
    bits = q.latents(q.indices(z))
    assert torch.equal(bits, torch.where(z > 0, 1.0, -1.0))  # bits -> index -> bits keeps every sign
    assert q.indices(torch.zeros(1, 13, 1, 1)).item() == 0  # zero counts as the -1 side
    with pytest.raises(ValueError, match=r"\[0, 8192\)"):
        q.latents(torch.tensor([[[8192]]]))


def test_attention_is_single_head_softmax_over_positions():
    torch.manual_seed(0)
    block, x = AttnBlock(32).eval(), torch.randn(2, 32, 3, 4)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (c(h).flatten(2) for c in (block.q, block.k, block.v))  # [B, C, HW]
        w = torch.softmax(q.transpose(1, 2) @ k / 32**0.5, dim=-1)  # [B, HW(query), HW(key)]
        direct = x + block.proj_out((v @ w.transpose(1, 2)).reshape(2, 32, 3, 4))
        assert torch.allclose(block(x), direct, atol=1e-5)


def test_tiny_config_encodes_and_decodes_shapes():
    torch.manual_seed(0)
    model = Magvit2(TINY).eval()
    assert TINY.downsampling == 2 and TINY.codebook_size == 16
    pixels = torch.rand(2, 3, 8, 12) * 2 - 1
    with torch.no_grad():
        codes = model.encode(pixels)
        assert codes.shape == (2, 4, 6) and codes.dtype == torch.long
        assert 0 <= codes.min() and codes.max() < 16
        # the codes are the signs of the encoder's latents, read as binary numbers
        bits = (model.encoder(pixels) > 0).long()
        assert torch.equal(codes, sum(bits[:, i] << (3 - i) for i in range(4)))
        assert model.decode(codes).shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="multiples of 2"):
        model.encode(torch.zeros(1, 3, 7, 8))


def test_config_is_checked():
    with pytest.raises(ValueError, match="one entry per level"):
        Magvit2Config(encoder_mult=(1, 2))
    with pytest.raises(ValueError, match="multiples of 32"):
        Magvit2Config(channels=48)
    with pytest.raises(ValueError, match="bits"):
        Magvit2Config(bits=0)


# ---- folders


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Magvit2(TINY).eval()
    save_magvit2(model, tmp_path / "t")
    loaded = load_magvit2(tmp_path / "t")
    assert loaded.cfg == TINY
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(pixels), model.encode(pixels))
        codes = model.encode(pixels)
        assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_published_config_means_the_defaults(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}))
    assert read_config(tmp_path) == Magvit2Config()
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "Showo"}))
    with pytest.raises(ModelLoadError, match="not a MAGVITv2"):
        read_config(tmp_path)


def reseal(folder, edit):
    state = load_file(str(folder / "pytorch_model.safetensors"))
    edit(state)
    save_file(state, str(folder / "pytorch_model.safetensors"))
    (folder / "MANIFEST.json").unlink()
    write_manifest(folder, "magvit2-model")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("decoder.conv_out.bias"), "lack tensors.*decoder.conv_out.bias"),
        (lambda s: s.update({"encoder.extra": torch.zeros(1)}), "no place for: encoder.extra"),
        (lambda s: s["quantize.embedding"].neg_(), "quantize.embedding is not the 4-bit LFQ table"),
    ],
)
def test_loader_refuses_what_is_not_this_tokenizer(tmp_path, edit, match):
    save_magvit2(Magvit2(TINY), tmp_path / "t")
    reseal(tmp_path / "t", edit)
    with pytest.raises(ModelLoadError, match=match):
        load_magvit2(tmp_path / "t")
