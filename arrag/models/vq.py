"""The VQ tokenizer facade every stage uses: images <-> token grids, and the codebook.

Janus-Pro's tokenizer (DeepSeek's LlamaGen VQ) L2-normalises both the encoder latent and the codebook
before the nearest-neighbour search, and its decoder reads normalised codebook rows. transformers'
`JanusVQVAE.encode` searches the *unnormalised* codebook, so its `image_tokens` can differ from the
codes the model was trained on. `VQTokenizer.encode` does the normalised search itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.janus.modeling_janus import JanusVQVAE


def to_pixel_values(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images [B, S, S, 3] -> float pixel values [B, 3, S, S] in [-1, 1] (Janus' normalisation)."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(pixel_values: torch.Tensor) -> np.ndarray:
    """float pixel values [B, 3, S, S] in [-1, 1] -> uint8 images [B, S, S, 3]."""
    x = pixel_values.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def codebook_fingerprint(codebook: torch.Tensor) -> str:
    """sha256 of the codebook's float32 bytes: databases and code shards record it to refuse a mismatch."""
    data = codebook.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def normalised_nearest_codes(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codebook row after L2-normalising both: latents [N, D], codebook [K, D] -> ids [N].

    For unit vectors argmin ||z - e||^2 = argmax <z, e>, so one matmul suffices. In float32 whatever the model's
    dtype: bfloat16's 8-bit mantissa would round near-ties between codes to equal scores.
    """
    return (F.normalize(latents.float(), dim=-1) @ F.normalize(codebook.float(), dim=-1).T).argmax(dim=-1)


def vq_image_size(vq_config) -> int:
    """The square side (px) a Janus VQ config encodes: tokens per side x the encoder's downsampling."""
    return int(vq_config.num_patches) * 2 ** (len(vq_config.channel_multiplier) - 1)


def janus_image_size(model: str, revision: str | None = None) -> int:
    """The image side (px) of a Janus model or of a bare Janus VQ-VAE folder (the mini profile's train_vq): read
    from its config alone, so a job that needs only the size need not wait for a base model to be trained."""
    from transformers import AutoConfig, JanusConfig

    config = AutoConfig.from_pretrained(model, revision=revision)
    return vq_image_size(config.vq_config if isinstance(config, JanusConfig) else config)


class VQTokenizer:
    """encode(images) -> codes [B, H, W]; decode(codes) -> images; codebook [K, D] (L2-normalised)."""

    def __init__(self, vqmodel: JanusVQVAE):
        self.vqmodel = vqmodel.eval()
        self.grid = int(vqmodel.config.num_patches)  # tokens per side

    @classmethod
    def from_janus(cls, model) -> "VQTokenizer":
        return cls(model.model.vqmodel)

    @classmethod
    def from_folder(cls, vq_dir: str | Path) -> "VQTokenizer":
        """A bare Janus VQ-VAE folder (`arrag train-vq`), verified against its manifest."""
        from arrag.manifest import verify
        from arrag.models.janus import check_loaded_keys

        verify(vq_dir, "janus-vq", fix="retrain it (arrag train-vq)")
        vq, info = JanusVQVAE.from_pretrained(
            str(vq_dir), use_safetensors=True, local_files_only=True, output_loading_info=True
        )
        check_loaded_keys(info, vq_dir)
        return cls(vq)

    @property
    def device(self) -> torch.device:
        return self.vqmodel.quantize.embedding.weight.device

    @property
    def image_size(self) -> int:
        return vq_image_size(self.vqmodel.config)

    @property
    def codebook_size(self) -> int:
        return self.vqmodel.config.num_embeddings

    @property
    def codebook(self) -> torch.Tensor:
        """[K, D] float32 L2-normalised codebook: the vectors the decoder sees and retrieval keys are built from.

        Normalised on the CPU whatever the model's device: a GPU's division rounds differently, and the
        codebook's bits are its identity (`codebook_fingerprint`), which a database built on one device and a
        job searching it on another must agree on."""
        weight = self.vqmodel.quantize.embedding.weight.detach()
        return F.normalize(weight.to("cpu", torch.float32), dim=-1).to(weight.device)

    @torch.no_grad()
    def latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents [B, D, H, W] (after quant_conv), in the VQ-VAE's dtype (Janus-Pro's checkpoints
        are bfloat16, and transformers loads them so)."""
        weight = self.vqmodel.quantize.embedding.weight
        return self.vqmodel.quant_conv(self.vqmodel.encoder(pixel_values.to(weight.device, weight.dtype)))

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, S, S, 3] or float [B, 3, S, S] in [-1, 1] -> LongTensor codes [B, H, W]."""
        if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
            images = to_pixel_values(images)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} px but this tokenizer expects "
                f"{self.image_size}x{self.image_size}; resize/crop first"
            )
        z = self.latents(images)  # [B, D, H, W]
        b, d, h, w = z.shape
        ids = normalised_nearest_codes(z.permute(0, 2, 3, 1).reshape(-1, d), self.vqmodel.quantize.embedding.weight)
        return ids.view(b, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, H, W] -> float pixel values [B, 3, S, S] in [-1, 1]."""
        codes = torch.as_tensor(codes, device=self.device)
        if codes.ndim != 3 or codes.shape[1:] != (self.grid, self.grid):
            raise ValueError(f"expected codes [B, {self.grid}, {self.grid}], got {tuple(codes.shape)}")
        # HF's decode normalises the codebook rows, exactly as DeepSeek's tokenizer does
        return self.vqmodel.decode(codes.flatten(1))

    def decode_to_uint8(self, codes: torch.Tensor) -> np.ndarray:
        """codes [B, H, W] -> uint8 images [B, S, S, 3]."""
        return to_uint8(self.decode(codes))


def load_codebook(source, revision: str | None = None) -> torch.Tensor:
    """The VQ codebook [K, D] of a backbone (arrag.models.backbone): a Janus model directory or hub id at `revision`
    (L2-normalised), or a Show-o backbone folder (MAGVIT-v2's +-1 codes)."""
    from arrag.models.backbone import load_backbone

    return load_backbone(source, revision=revision).vq.codebook
