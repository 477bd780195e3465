import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arrag.models.janus import ModelLoadError, load_janus, save_janus, tokenize_prompts
from arrag.models.vq import VQTokenizer, to_pixel_values, to_uint8


def _vq_with_uneven_codebook(model):
    """Codebook rows of very different norms: unnormalised and normalised nearest neighbours then disagree."""
    vq = VQTokenizer(copy.deepcopy(model.model.vqmodel))  # do not touch the shared fixture
    with torch.no_grad():
        w = vq.vqmodel.quantize.embedding.weight
        w.copy_(torch.randn_like(w) * torch.logspace(-2, 1, w.shape[0])[:, None])
    return vq


def test_encode_uses_the_l2_normalised_nearest_neighbour(tiny_janus):
    model, _, spec = tiny_janus
    vq = _vq_with_uneven_codebook(model)
    images = np.random.default_rng(0).integers(0, 256, (6, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    codes = vq.encode(images)
    assert codes.shape == (6, spec.grid, spec.grid) and codes.dtype == torch.long

    # brute force: every latent against every normalised codebook row by squared distance
    z = vq.latents(to_pixel_values(images)).permute(0, 2, 3, 1).reshape(-1, spec.codebook_dim)
    e = vq.vqmodel.quantize.embedding.weight
    d = torch.cdist(F.normalize(z, dim=-1), F.normalize(e, dim=-1))
    assert torch.equal(codes.flatten(), d.argmin(-1))

    # transformers' own quantizer does not normalise, so on this codebook it picks other codes
    hf_codes = vq.vqmodel.encode(to_pixel_values(images)).image_tokens
    assert not torch.equal(hf_codes.flatten(), codes.flatten())


def test_codebook_is_normalised_and_decode_shapes(tiny_janus):
    model, _, spec = tiny_janus
    vq = VQTokenizer.from_janus(model)
    assert vq.codebook.shape == (spec.codebook_size, spec.codebook_dim)
    torch.testing.assert_close(vq.codebook.norm(dim=-1), torch.ones(spec.codebook_size))
    assert vq.image_size == spec.image_size and vq.grid == spec.grid
    codes = torch.randint(0, spec.codebook_size, (3, spec.grid, spec.grid))
    images = vq.decode_to_uint8(codes)
    assert images.shape == (3, spec.image_size, spec.image_size, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match="expected codes"):
        vq.decode(codes.flatten(1))
    with pytest.raises(ValueError, match="resize"):
        vq.encode(np.zeros((1, spec.image_size * 2, spec.image_size * 2, 3), np.uint8))


def test_the_codebook_has_the_same_bits_whatever_the_models_device_or_dtype(tiny_janus):
    """Its bits are the database's identity: a codebook normalised on a GPU rounded differently and a database
    built on a CPU was refused by a GPU job (seen on an H200). It is always normalised on the CPU in float32."""
    model, _, _ = tiny_janus
    weight = model.model.vqmodel.quantize.embedding.weight.detach()
    reference = F.normalize(weight.to(torch.float32), dim=-1)
    for vqmodel in (model.model.vqmodel, copy.deepcopy(model.model.vqmodel).double()):
        codebook = VQTokenizer(vqmodel).codebook
        assert codebook.dtype == torch.float32 and torch.equal(codebook, reference)


def test_pixel_round_trip():
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(to_pixel_values(images)), images)
    with pytest.raises(ValueError, match="uint8"):
        to_pixel_values(images.astype(np.float32))


def test_save_and_load_by_path_round_trip(tiny_janus, tmp_path):
    model, processor, _ = tiny_janus
    save_janus(model, processor, tmp_path)
    assert list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))
    loaded, loaded_proc = load_janus(tmp_path)
    assert (
        loaded.generation_config.generation_kwargs["boi_token_id"]
        == model.generation_config.generation_kwargs["boi_token_id"]
    )
    prompts = ["a photo of a red circle", "a photo of two squares"]
    a, b = tokenize_prompts(processor, prompts), tokenize_prompts(loaded_proc, prompts)
    assert torch.equal(a["input_ids"], b["input_ids"])
    text = loaded_proc.tokenizer.decode(b["input_ids"][0], skip_special_tokens=True)
    assert text.split() == prompts[0].split()
    for name, p in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p)


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_janus(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_janus(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="not a Janus model"):
        load_janus(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_janus(tmp_path)
    with pytest.raises(ModelLoadError, match="pinned revision"):
        load_janus("deepseek-community/Janus-Pro-1B")


def test_janus_pro_vq_architecture_loads_by_path_and_encodes_with_normalised_codes(tmp_path):
    """A random-weight model whose VQ is Janus-Pro's own (transformers' JanusVQVAEConfig defaults: 16384 codes of
    dimension 8, 384 px -> 24 x 24), built from the real JanusConfig class with a tiny language model, saved with
    safetensors and loaded through load_janus (the code the hub path runs after its download); the VQ facade's
    codes are the L2-normalised nearest neighbours, which transformers' own quantizer does not give."""
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    from arrag.models.janus import IMAGE_TOKEN, build_processor, build_word_tokenizer, configure_image_generation

    tok = build_word_tokenizer("a photo of".split())
    vq_config = JanusVQVAEConfig(projection_dim=32, image_token_embed_dim=32)  # the encoder/decoder are Janus-Pro's
    assert (vq_config.num_embeddings, vq_config.embed_dim) == (16384, 8)
    config = JanusConfig(
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=JanusVisionConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=384,
            patch_size=16,
            projection_dim=32,
            num_image_tokens=576,
        ),
        vq_config=vq_config,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config).eval()
    configure_image_generation(model, tok)
    save_janus(model, build_processor(tok, 384, 576), tmp_path)
    loaded, _ = load_janus(tmp_path)
    vq = VQTokenizer.from_janus(loaded)
    assert (vq.image_size, vq.grid, vq.codebook_size) == (384, 24, 16384)

    image = np.random.default_rng(0).integers(0, 256, (1, 384, 384, 3), dtype=np.uint8)
    codes = vq.encode(image)  # [1, 24, 24]
    z = vq.latents(to_pixel_values(image)).permute(0, 2, 3, 1).reshape(-1, 8)
    e = vq.vqmodel.quantize.embedding.weight
    assert torch.equal(codes.flatten(), torch.cdist(F.normalize(z, dim=-1), F.normalize(e, dim=-1)).argmin(-1))
    assert not torch.equal(codes.flatten(), torch.cdist(z, e).argmin(-1))  # the unnormalised choice differs


def test_the_encoder_benchmark_builds_janus_pros_vq():
    from arrag.bench.encoders import janus_pro_vq

    with torch.device("meta"):  # the architecture only: no memory, no time
        vq = janus_pro_vq("meta")
    assert (vq.grid, vq.vqmodel.config.num_embeddings, vq.vqmodel.config.embed_dim) == (24, 16384, 8)
    assert sum(p.numel() for p in vq.vqmodel.encoder.parameters()) > 20_000_000  # the full-size encoder
