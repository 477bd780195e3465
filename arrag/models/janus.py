"""Janus backbones: one loader for a local directory or a pinned hub snapshot, and the tiny mini-profile config.

Every stage loads its backbone through `load_janus`, whether it is the mini model the DAG trains or
`deepseek-community/Janus-Pro-1B`: one code path, safetensors only, no remote code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

from arrag.io import atomic_path, write_json
from arrag.manifest import verify, write_manifest

# Special tokens of the mini word-level tokenizer; the three image tokens carry the names
# JanusProcessor looks up on its tokenizer (image_token, boi_token, eoi_token), as in Janus-Pro.
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
IMAGE_TOKEN, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, USER, ASSISTANT, IMAGE_TOKEN, BOI, EOI]

# "<|User|> {prompt} <|Assistant|>"; the processor appends <begin_of_image> in image mode.
MINI_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}<|User|> {{ message['content'] }} "
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}<|User|> {{ part['text'] }} {% endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>{%- endif -%}"
)

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelLoadError(ValueError):
    """A model directory or hub id that cannot be used as a Janus backbone."""


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over a closed vocabulary; prepends BOS like Janus-Pro's tokenizer."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(set(words) - set(SPECIAL_TOKENS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIAL_TOKENS)
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI, "eoi_token": EOI},
        padding_side="left",  # Janus pads prompts on the left so every row ends at <begin_of_image>
    )


def build_processor(tokenizer, image_size: int, num_image_tokens: int) -> JanusProcessor:
    image_processor = JanusImageProcessorPil(size={"height": image_size, "width": image_size}, min_size=4)
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=MINI_CHAT_TEMPLATE,
        num_image_tokens=num_image_tokens,
    )


@dataclass
class MiniJanusSpec:
    """Sizes of the mini-profile Janus; defaults train in minutes on 2 CPU cores."""

    image_size: int = 32
    patch_size: int = 4  # VQ downsampling factor: a 32 px image becomes an 8x8 token grid
    codebook_size: int = 1024
    codebook_dim: int = 8  # Janus-Pro's VQ also uses 8-dimensional codes
    vq_base_channels: int = 32  # GroupNorm(32) inside JanusVQVAE needs multiples of 32
    vq_latent_channels: int = 64
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 256

    def __post_init__(self):
        if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
            raise ValueError(
                f"patch_size must be a power of two >= 2 (one VQ level per halving), got {self.patch_size}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def vq_channel_multiplier(self) -> list[int]:
        # one resolution level per halving; widen only the last level (where the attention block is)
        halvings = self.patch_size.bit_length() - 1
        return [1] * halvings + [2]

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def mini_janus_config(spec: MiniJanusSpec, tokenizer) -> JanusConfig:
    """A real JanusConfig, scaled down. The vision (understanding) tower is tiny: it is never trained here."""
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=3 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,  # JanusConfig derives the VQ grid from image_size // patch_size
        projection_dim=spec.hidden_size,
        num_image_tokens=spec.grid**2,
    )
    vq_config = JanusVQVAEConfig(
        embed_dim=spec.codebook_dim,
        num_embeddings=spec.codebook_size,
        latent_channels=spec.vq_latent_channels,
        base_channels=spec.vq_base_channels,
        channel_multiplier=spec.vq_channel_multiplier,
        num_res_blocks=1,
        projection_dim=spec.hidden_size,
        image_token_embed_dim=spec.hidden_size,
    )
    return JanusConfig(
        text_config=text_config,
        vision_config=vision_config,
        vq_config=vq_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )


def configure_image_generation(model: JanusForConditionalGeneration, tokenizer, guidance_scale: float = 5.0):
    """Fill the generation config `generate(generation_mode="image")` needs (see docs/design.md)."""
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.guidance_scale = guidance_scale
    gc.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)}
    gc._from_model_config = False  # otherwise boi_token_id is dropped when the model is reloaded


def _check_model_dir(path: Path) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"model directory {path} has no config.json; point --model at a directory written by "
            "`save_pretrained` (e.g. results/mini/models/base) or at a hub id with a pinned revision"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{config_file} is not valid JSON ({err}): a half-written copy; write it again") from None
    if model_type != "janus":
        raise ModelLoadError(
            f"{config_file} describes a {model_type!r} model, not a Janus model (model_type 'janus'); "
            "arrag's backbone is transformers' JanusForConditionalGeneration"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} holds no *.safetensors weights; arrag loads safetensors only")


SEAL_HINT = "if you trust the directory as it is, seal it with `arrag verify --seal janus-model DIR`"


def load_janus(
    source: str | Path,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[JanusForConditionalGeneration, JanusProcessor]:
    """Load a Janus model and its processor from a local directory, or from the hub at a pinned revision.

    Weights are read from safetensors only and no remote code runs. A local directory is checked against its
    manifest first (arrag.manifest); the weights must fill every parameter and buffer of the architecture, with
    nothing left over. `model.arrag_inputs` is what the directory's manifest says the model was built from
    (e.g. an RA-CM3 model's base model and image index; {} for a hub model).
    """
    path = Path(source)
    if path.exists() or not _HUB_ID.match(str(source)):
        if not path.is_dir():
            raise ModelLoadError(f"model directory {path} does not exist")
        _check_model_dir(path)
        # any kind: arrag's own models ("janus-model") and downloaded snapshots ("hub-model"); config.json says Janus
        manifest = verify(path, fix=f"retrain or re-download it; {SEAL_HINT}")
        inputs = manifest["inputs"]
        location, kwargs = str(path), {"local_files_only": True}
    else:
        if revision is None:
            raise ModelLoadError(f"hub model {source!r} needs a pinned revision (a commit hash); pass revision=...")
        location, kwargs, inputs = str(source), {"revision": revision}, {}

    try:
        model, info = JanusForConditionalGeneration.from_pretrained(
            location, use_safetensors=True, trust_remote_code=False, dtype=dtype, output_loading_info=True, **kwargs
        )
        processor = JanusProcessor.from_pretrained(location, trust_remote_code=False, **kwargs)
    except Exception as err:  # truncated weights, a missing tokenizer, a broken json: one line naming the folder
        if not path.is_dir():
            raise
        raise ModelLoadError(
            f"model directory {path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
            "a half-written or damaged copy; write it again (train or download it anew)"
        ) from None
    check_loaded_keys(info, location)
    if model.generation_config.generation_kwargs.get("boi_token_id") is None:
        configure_image_generation(model, processor.tokenizer, model.generation_config.guidance_scale or 5.0)
    model.arrag_inputs = inputs
    return model.to(device).eval(), processor


def model_identity(model) -> str:
    """What the whole model is, for artefacts built from it (FAiD, RA-CM3) to record and check: the SHA-256 of
    every tensor of its state dict (name, dtype, shape, bytes), as it is in memory now, however it was loaded.
    It costs one pass over the weights (about 9 s for Janus-Pro-7B's 14 GB of bfloat16 at 1.6 GB/s)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no extra copy
    return "weights:" + digest.hexdigest()


def check_loaded_keys(info: dict, source: str | Path) -> None:
    """Refuse weights that leave tensors of the architecture unset (they would stay randomly initialised) or
    hold tensors it has no place for (another architecture or config); `info` is from_pretrained's
    output_loading_info."""
    for field, meaning in (
        ("missing_keys", "lack tensors the model needs (they would stay random)"),
        ("unexpected_keys", "hold tensors this architecture has no place for"),
        ("mismatched_keys", "hold tensors of the wrong shape"),
    ):
        keys = sorted(str(k) for k in info.get(field) or ())
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            raise ModelLoadError(
                f"the weights of {source} {meaning}: {shown}; the checkpoint is incomplete or for another model"
            )


def save_janus(model, processor, directory: str | Path, *, inputs: dict | None = None, extra: dict | None = None):
    """Write a model directory atomically: safetensors, configs, processor, the json files in `extra` (name ->
    object), and its manifest last, recording `inputs` (the digests of what the model was made from)."""
    with atomic_path(directory, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        for name, obj in (extra or {}).items():
            write_json(tmp / name, obj)
        write_manifest(tmp, "janus-model", inputs)


def load_tokenizer(path: str | Path):
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def format_prompts(processor: JanusProcessor, prompts: list[str]) -> list[str]:
    """Wrap each prompt in the backbone's chat template, as Janus-Pro expects for image generation."""
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": p}]}], add_generation_prompt=True
        )
        for p in prompts
    ]


def tokenize_prompts(processor: JanusProcessor, prompts: list[str], device="cpu") -> dict[str, torch.Tensor]:
    """Chat-formatted, left-padded prompt ids ending in <begin_of_image>: {input_ids, attention_mask} [B, L]."""
    batch = processor(
        text=format_prompts(processor, prompts), generation_mode="image", padding=True, return_tensors="pt"
    )
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
