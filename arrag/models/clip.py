"""CLIP image and text towers (open_clip), loaded from pinned weights: the embedder CMMD scores images with
(arrag.evaluation.fidelity) and RA-CM3's image-level retriever embeds prompts and corpus images with
(arrag.retrieval.image_index).

`clip_embedder` returns a ClipEmbedder: float images [B, 3, H, W] in [0, 255] -> L2-normalised embeddings [B, E],
with the model's own normalisation, and `identity` naming its weights. Weights come from a local file (checked
against a SHA-256 when given) or an open_clip pretrained tag, never `hf-hub:`. CMMD's network is OpenAI's
ViT-L/14@336; with open_clip >= 2.29 its name must be `ViT-L-14-336-quickgelu` (CMMD_CLIP).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from arrag.manifest import file_sha256

CMMD_CLIP = "ViT-L-14-336-quickgelu"  # OpenAI ViT-L/14@336 needs the quickgelu name in open_clip >= 2.29


class ClipEmbedder(nn.Module):
    """open_clip image tower: [B, 3, H, W] in [0, 255] -> L2-normalised embeddings [B, E]."""

    def __init__(self, model: nn.Module, size: int, mean, std, identity: dict):
        super().__init__()
        self.model = model
        self.input_size = size
        self.identity = identity
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):  # callers outside image_features may skip the resize
            x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False, antialias=True)
        x = (x / 255.0 - self.mean) / self.std  # the model's own normalisation (open_clip preprocess_cfg)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


def refuse_activation_mismatch(model_name: str, tag: str) -> None:
    """Weights trained with QuickGELU (OpenAI's) in an architecture built with standard GELU load without an error
    in open_clip (only a warning) and give different embeddings: refuse that pairing, naming the right model."""
    import open_clip

    known = tag in open_clip.list_pretrained_tags_by_model(model_name)
    weights = open_clip.get_pretrained_cfg(model_name, tag) if known else {}  # a local file: nothing to check
    if weights.get("quick_gelu") and not open_clip.get_model_config(model_name).get("quick_gelu"):
        raise ValueError(
            f"the {tag!r} weights of {model_name} were trained with QuickGELU but {model_name} is built with standard "
            f"GELU: use the model name {model_name}-quickgelu (e.g. racm3.clip.model in the config)"
        )


def clip_embedder(
    model_name: str = CMMD_CLIP,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    sha256: str | None = None,
) -> ClipEmbedder:
    """An open_clip image embedder with weights from a local file (checked against `sha256` when given) or an
    open_clip pretrained tag such as "openai" (open_clip pins each tag to one hub repository / URL).
    `model_name` is a built-in open_clip model or a local open_clip config file ("my-clip.json" registers the
    architecture "my-clip")."""
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"{model_name}: give a built-in open_clip model name (configs from the hub are not pinned)")
    if model_name.endswith(".json"):
        if not Path(model_name).is_file():
            raise FileNotFoundError(f"open_clip model config {model_name} does not exist")
        open_clip.add_model_config(model_name)
        model_name = Path(model_name).stem
    if model_name not in open_clip.list_models():
        raise ValueError(f"{model_name} is not an open_clip model name (register a config with add_model_config)")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained is None:
        raise ValueError(f"give {model_name}'s weights: a local file or one of the pretrained tags {tags}")
    pretrained = str(pretrained)
    refuse_activation_mismatch(model_name, pretrained)
    identity = {"name": model_name, "pretrained": pretrained}
    if pretrained not in tags:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"{pretrained} is neither a weights file nor a pretrained tag of {model_name} ({tags}): "
                "download the CLIP weights first (the pipeline's download rule does)"
            )
        identity["sha256"] = file_sha256(pretrained)
        if sha256 is not None and identity["sha256"] != sha256:
            raise ValueError(f"{pretrained} has SHA-256 {identity['sha256']}, expected {sha256}")
    model = open_clip.create_model(model_name, pretrained=pretrained, device=device).eval()
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    identity.update(input_size=size, dim=int(model.visual.output_dim))
    return ClipEmbedder(model, size, cfg["mean"], cfg["std"], identity).to(device)
