"""Janus-Pro's published checkpoints are bfloat16, and transformers loads a checkpoint in its own dtype: a bfloat16
model tokenises, decodes and generates with every method, nearest codes and guidance are computed in float32, and
FAiD trains and decodes beside it."""

import copy

import numpy as np
import torch

from arrag import methods as m
from arrag.decoding.loop import DecodingHook, SamplingConfig, generate_image_tokens
from arrag.models.janus import save_janus, tokenize_prompts
from arrag.models.vq import VQTokenizer, to_pixel_values
from arrag.retrieval.database import PatchDatabase


def _bf16(tiny_janus):
    model, processor, spec = tiny_janus
    return copy.deepcopy(model).to(torch.bfloat16), processor, spec


def test_a_bfloat16_vq_encodes_to_the_nearest_codes_of_its_latents_and_decodes(tiny_janus):
    model, _, spec = _bf16(tiny_janus)
    vq = VQTokenizer.from_janus(model)
    images = np.random.default_rng(0).integers(0, 256, (3, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    codes = vq.encode(images)  # a float32 input reaches bfloat16 convolutions
    assert codes.shape == (3, spec.grid, spec.grid) and codes.dtype == torch.long
    # direct: the nearest L2-normalised codebook row of each bfloat16 latent, in float64
    z = vq.latents(to_pixel_values(images)).double().permute(0, 2, 3, 1).reshape(-1, model.config.vq_config.embed_dim)
    z = z / z.norm(dim=-1, keepdim=True)
    book = vq.vqmodel.quantize.embedding.weight.double()
    book = book / book.norm(dim=-1, keepdim=True)
    assert torch.equal(codes.flatten(), torch.cdist(z, book).argmin(-1))
    pixels = vq.decode_to_uint8(codes)
    assert pixels.dtype == np.uint8 and pixels.shape == images.shape


class _LogitsDtype(DecodingHook):
    def __init__(self):
        self.dtypes = set()

    def adjust_probs(self, state, probs):
        self.dtypes |= {state.cond_logits.dtype, state.uncond_logits.dtype, probs.dtype}
        return probs


def test_a_bfloat16_model_guides_and_samples_in_float32(tiny_janus):
    model, processor, _ = _bf16(tiny_janus)
    batch = tokenize_prompts(processor, ["a photo of a red circle", "two blue squares"])
    seen = _LogitsDtype()
    codes = generate_image_tokens(
        model, batch["input_ids"], batch["attention_mask"], SamplingConfig(guidance_scale=3.0), hooks=[seen]
    )
    assert seen.dtypes == {torch.float32}
    assert codes.min() >= 0 and codes.max() < model.config.vq_config.num_embeddings


def test_every_method_loads_a_bfloat16_checkpoint_in_bfloat16_and_generates(tiny_janus, tmp_path):
    model, processor, spec = _bf16(tiny_janus)
    save_janus(model, processor, tmp_path / "model")
    codebook = VQTokenizer.from_janus(model).codebook
    assert codebook.dtype == torch.float32
    codes = torch.randint(0, spec.codebook_size, (6, spec.grid, spec.grid), generator=torch.Generator().manual_seed(0))
    PatchDatabase.build(codes, codebook, index="flat").save(tmp_path / "db")
    for settings in (m.VanillaSettings(), m.DAiDSettings(db=tmp_path / "db", k=4, weight=0.5)):
        method = m.build_method(settings, tmp_path / "model", device="cpu")
        assert method.pipe.backbone.model.dtype == torch.bfloat16
        images, _ = method.pipe(["a photo of a circle"], n=1, hooks=method.make_hooks())
        assert images.shape == (1, spec.image_size, spec.image_size, 3) and images.dtype == np.uint8
