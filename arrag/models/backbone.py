"""The backbones behind one interface: what the decoding layer needs from a text-to-image model.

    backbone = load_backbone("results/mini/models/base")      # Janus (autoregressive) or Show-o (masked)
    prompts = backbone.prompts(["a red circle"])                # conditional prompts and their unconditional twins
    logits = backbone.image_logits(prompts, codes)              # one forward over [prompt | image]: [B, N, K]
    codes = backbone.generate_codes(["a red circle"], [seed], sampling, hooks)   # its own decoding loop
    backbone.vq.encode(images), backbone.vq.decode(codes), backbone.vq.codebook, backbone.vq.grid

`loop` says which decoding loop a backbone runs: "autoregressive" (arrag.decoding.loop, raster order, one
token per step, DecodingHook) or "masked" (arrag.decoding.masked, Show-o's parallel filling, MaskedDecodingHook);
the methods (arrag.methods) build their hooks for that loop.

A Show-o backbone is a folder holding `showo/` (the LM: a showlab/show-o snapshot or one arrag trained),
`magvitv2/` (its tokenizer) and the text tokenizer, in `showo/` (arrag's mini model) or `tokenizer/`
(microsoft/phi-1_5's tokenizer files), or a folder whose `backbone.json` names where those parts are (the
downloaded snapshots: `arrag assemble-showo`); each part is checked against its own manifest when loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arrag.models.vq import to_pixel_values, to_uint8

AUTOREGRESSIVE, MASKED = "autoregressive", "masked"
SHOWO_PARTS = ("showo", "magvitv2")  # sub-folders of a Show-o backbone folder


PARTS_FILE = "backbone.json"  # an assembled Show-o backbone: {"showo": DIR, "magvitv2": DIR, "tokenizer": DIR}


def is_showo(source: str | Path) -> bool:
    """A Show-o backbone folder (its LM in showo/, or its parts named in backbone.json), rather than a Janus
    model directory or hub id."""
    return (Path(source) / "showo" / "config.json").is_file() or (Path(source) / PARTS_FILE).is_file()


def showo_parts(path: Path) -> dict[str, Path]:
    """Where a Show-o backbone's parts are: showo, magvitv2 and tokenizer (the text tokenizer's folder)."""
    from arrag.manifest import verify
    from arrag.models.janus import ModelLoadError

    if (path / PARTS_FILE).is_file():
        verify(path, "showo-backbone", fix="assemble it again (arrag assemble-showo)")
        listed = json.loads((path / PARTS_FILE).read_text())
        missing = sorted({"showo", "magvitv2", "tokenizer"} - set(listed))
        if missing:
            raise ModelLoadError(f"{path / PARTS_FILE} names no {missing}; assemble it again (arrag assemble-showo)")
        return {name: path / listed[name] for name in ("showo", "magvitv2", "tokenizer")}
    text = path / "showo" if (path / "showo" / "tokenizer.json").is_file() else path / "tokenizer"
    return {"showo": path / "showo", "magvitv2": path / "magvitv2", "tokenizer": text}


def assemble_showo(showo: Path, magvitv2: Path, tokenizer: Path, out: Path) -> dict:
    """A Show-o backbone folder naming downloaded parts (paths relative to it): backbone.json and a manifest whose
    inputs are the parts' identities (their manifests' digests), so that what is made with it records them."""
    from arrag.io import atomic_path, write_json
    from arrag.manifest import identity, write_manifest

    parts = {"showo": Path(showo), "magvitv2": Path(magvitv2), "tokenizer": Path(tokenizer)}
    listed = {
        name: os.path.relpath(p.resolve(), Path(out).resolve().parent / Path(out).name) for name, p in parts.items()
    }
    with atomic_path(Path(out), directory=True) as tmp:
        write_json(tmp / PARTS_FILE, listed)
        return write_manifest(tmp, "showo-backbone", {name: identity(p) for name, p in parts.items()})


# ---------------------------------------------------------------- Janus


class JanusBackbone:
    """Janus (Janus-Pro or the mini model): chat-formatted prompts, the autoregressive loop, its VQ tokenizer."""

    loop = AUTOREGRESSIVE
    name = "janus"

    def __init__(self, model, processor):
        from arrag.models.vq import VQTokenizer

        self.model, self.processor = model, processor
        self.vq = VQTokenizer.from_janus(model)

    @classmethod
    def load(cls, source, *, revision=None, device="cpu", dtype=None) -> "JanusBackbone":
        from arrag.models.janus import load_janus

        return cls(*load_janus(source, revision=revision, device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def sampling_config(self, sampling):
        return sampling

    def prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompt ids ending in <begin_of_image>: input_ids, attention_mask and uncond_ids [B, L]."""
        from arrag.decoding.loop import _special_ids
        from arrag.models.janus import tokenize_prompts
        from arrag.models.training import unconditional_ids

        batch = tokenize_prompts(self.processor, prompts, device=self.device)
        bos, boi, pad = _special_ids(self.model)
        return batch | {"uncond_ids": unconditional_ids(batch["input_ids"], bos, boi, pad)}

    def prompt_lengths(self, prompts: list[str]) -> list[int]:
        from arrag.models.janus import tokenize_prompts

        return tokenize_prompts(self.processor, prompts)["attention_mask"].sum(1).tolist()

    def prompt_room(self, reserved: int) -> tuple[int, str]:
        """The most prompt tokens that fit beside `reserved` image tokens, and why."""
        return (
            self.context - reserved,
            f"with the {reserved} image tokens it exceeds the model's context of {self.context} positions",
        )

    def image_logits(self, prompts: dict, codes: torch.Tensor, unconditional: bool = False) -> torch.Tensor:
        """Teacher-forced: the logits [B, N, K] predicting each of the image tokens codes [B, N] from its prefix."""
        from arrag.models.training import image_token_logits

        ids = prompts["uncond_ids"] if unconditional else prompts["input_ids"]
        return image_token_logits(self.model, ids, prompts["attention_mask"], codes)

    def generate_codes(self, prompts, seeds, sampling, hooks=(), prefix_codes=None) -> torch.Tensor:
        """One token grid per (prompt, seed) in one batch with the autoregressive loop: codes [B, H, W]."""
        from arrag.decoding.loop import generate_image_tokens, make_generators
        from arrag.models.janus import tokenize_prompts

        batch = tokenize_prompts(self.processor, prompts, device=self.device)
        generators = None if sampling.greedy else make_generators(seeds, self.device)
        return generate_image_tokens(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            sampling,
            generators=generators,
            hooks=hooks,
            prefix_codes=prefix_codes,
        )


# ---------------------------------------------------------------- Show-o


class MagvitTokenizer:
    """The VQ facade over MAGVIT-v2 (arrag.models.magvit2), as VQTokenizer is over Janus' VQ: encode/decode,
    the codebook (the LFQ codes' +-1 vectors [2**bits, bits], what retrieval keys are built from), the grid."""

    def __init__(self, magvit, grid: int):
        self.magvit, self.grid = magvit.eval(), grid

    @property
    def device(self) -> torch.device:
        return self.magvit.quantize.embedding.device

    @property
    def image_size(self) -> int:
        return self.grid * self.magvit.cfg.downsampling

    @property
    def codebook_size(self) -> int:
        return self.magvit.cfg.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        return self.magvit.quantize.embedding.detach().float()

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, S, S, 3] or float [B, 3, S, S] in [-1, 1] -> codes [B, H, W]."""
        if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
            images = to_pixel_values(images)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} px but this tokenizer expects "
                f"{self.image_size}x{self.image_size}; resize/crop first"
            )
        return self.magvit.encode(images.to(self.device))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes, device=self.device)
        if codes.ndim != 3 or codes.shape[1:] != (self.grid, self.grid):
            raise ValueError(f"expected codes [B, {self.grid}, {self.grid}], got {tuple(codes.shape)}")
        return self.magvit.decode(codes)

    def decode_to_uint8(self, codes: torch.Tensor) -> np.ndarray:
        return to_uint8(self.decode(codes))


@dataclass(frozen=True)
class ShowoPrompts:
    """Show-o's prompts: text ids per prompt (no special tokens); the unconditional twin is the empty text."""

    texts: list[list[int]]

    @property
    def uncond_texts(self) -> list[list[int]]:
        return [[] for _ in self.texts]


class ShowoBackbone:
    """Show-o: the Phi LM (arrag.models.showo), MAGVIT-v2 and the text tokenizer; the masked loop."""

    loop = MASKED
    name = "showo"

    def __init__(self, model, spec, magvit, tokenizer, steps: int = 18):
        side = int(round(spec.num_image_tokens**0.5))
        if side * side != spec.num_image_tokens:
            raise ValueError(f"Show-o's num_vq_tokens {spec.num_image_tokens} is not a square grid")
        if magvit.cfg.codebook_size != spec.vocab.codebook_size:
            raise ValueError(
                f"the MAGVIT-v2 tokenizer has {magvit.cfg.codebook_size} codes, the Show-o LM "
                f"{spec.vocab.codebook_size}: they are not one model's parts"
            )
        self.model, self.spec, self.vocab, self.tokenizer = model, spec, spec.vocab, tokenizer
        self.vq = MagvitTokenizer(magvit.to(model.device), side)
        self.steps = steps  # the masked loop's T when a SamplingConfig (which has no steps) is converted

    @classmethod
    def load(cls, source, *, revision=None, device="cpu", dtype=None) -> "ShowoBackbone":
        from arrag.models.janus import ModelLoadError, load_tokenizer
        from arrag.models.magvit2 import load_magvit2
        from arrag.models.showo import load_showo

        if revision is not None:
            raise ModelLoadError(f"a Show-o backbone is a local folder ({source}); --revision applies to hub ids only")
        parts = showo_parts(Path(source))
        model, spec = load_showo(parts["showo"], device=device, dtype=dtype)
        magvit = load_magvit2(parts["magvitv2"], device=device)
        text = parts["tokenizer"]
        if not (text / "tokenizer.json").is_file() and not (text / "vocab.json").is_file():
            raise ModelLoadError(
                f"Show-o backbone {source} has no text tokenizer (in showo/ or tokenizer/): download "
                "microsoft/phi-1_5's tokenizer files into tokenizer/"
            )
        tokenizer = load_tokenizer(text)
        if len(tokenizer) != spec.vocab.text_vocab_size:
            raise ModelLoadError(
                f"the text tokenizer in {text} has {len(tokenizer)} tokens, the Show-o LM "
                f"{spec.vocab.text_vocab_size}: another tokenizer"
            )
        return cls(model, spec, magvit, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context(self) -> int:
        return self.model.config.max_position_embeddings

    def sampling_config(self, sampling):
        """The masked loop's settings from the shared sampling flags: guidance scale as ours (1 + Show-o's w),
        temperature as Show-o's re-masking temperature, `self.steps` steps; top-k and greedy do not apply."""
        from arrag.decoding.masked import MaskedSamplingConfig

        if isinstance(sampling, MaskedSamplingConfig):
            return sampling
        if sampling.greedy or sampling.top_k is not None:
            raise ValueError(
                "Show-o decodes by masked sampling: --greedy and --top-k do not apply to it; leave them unset"
            )
        return MaskedSamplingConfig(self.steps, sampling.guidance_scale, sampling.temperature)

    def prompts(self, prompts: list[str]) -> ShowoPrompts:
        from arrag.models.showo import encode_texts

        return ShowoPrompts(encode_texts(self.tokenizer, list(prompts)))

    def prompt_lengths(self, prompts: list[str]) -> list[int]:
        """Text tokens of each prompt plus <bos> and <eos> (what the text block must hold)."""
        return [len(t) + 2 for t in self.prompts(prompts).texts]

    def prompt_room(self, reserved: int) -> tuple[int, str]:
        """Show-o's text block has a fixed size (the image tokens come after it): <|t2i|> <bos> text <eos>."""
        room = self.vocab.max_text_len
        return room, f"this Show-o's text block holds <bos>, {room - 2} text tokens and <eos>"

    def image_logits(self, prompts: ShowoPrompts, codes: torch.Tensor, unconditional: bool = False) -> torch.Tensor:
        """The logits [B, N, K] at the image positions of [text block | <|soi|> codes <|eoi|>]; codes [B, N], -1
        where masked (each position predicts its own code)."""
        from arrag.models.showo import image_logits as image_slice
        from arrag.models.showo import showo_logits, t2i_sequence

        texts = prompts.uncond_texts if unconditional else prompts.texts
        seq = t2i_sequence(texts, codes.to(self.device), self.vocab)
        return image_slice(showo_logits(self.model, seq, self.vocab), self.vocab, codes.shape[1])

    def generate_codes(self, prompts, seeds, sampling, hooks=(), prefix_codes=None) -> torch.Tensor:
        """One token grid per (prompt, seed) in one batch with the masked loop: codes [B, H, W]."""
        from arrag.decoding.loop import make_generators
        from arrag.decoding.masked import generate_masked_tokens

        if prefix_codes is not None:
            raise ValueError("Show-o takes no image-token prefix (RA-CM3 is a Janus baseline)")
        return generate_masked_tokens(
            self.model,
            self.prompts(prompts).texts,
            self.vocab,
            self.spec.num_image_tokens,
            self.sampling_config(sampling),
            generators=make_generators(seeds, self.device),
            hooks=hooks,
        )


def load_backbone(source: str | Path, *, revision=None, device="cpu", dtype=None):
    """The backbone at `source`: a Show-o backbone folder (showo/ + magvitv2/), else a Janus model directory or
    hub id (arrag.models.janus.load_janus)."""
    cls = ShowoBackbone if is_showo(source) else JanusBackbone
    return cls.load(source, revision=revision, device=device, dtype=dtype)
