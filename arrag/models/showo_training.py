"""The mini Show-o: a small MAGVIT-v2 tokenizer (LFQ) and a small Phi LM of Show-o's classes, trained from scratch
on the mini world, written as a Show-o backbone folder (arrag.models.backbone) that loads like the real one:

    out/showo/      config.json + pytorch_model.safetensors (showo.-prefixed) + the word-level text tokenizer
    out/magvitv2/   config.json + pytorch_model.safetensors (MAGVIT-v2's tensor names)
    out/training.json, out/MANIFEST.json (last)

Both stages run through `arrag.models.training.fit` (AdamW, seeded batches, resumable checkpoints beside `out`).
The tokenizer learns reconstruction with a straight-through sign quantiser, a commitment term and LFQ's entropy
term (confident bits per position, every code used across the batch). The LM learns Show-o's masked-token
objective: a mask ratio cos(pi/2 * u), u ~ U(0, 1), per image, the cross-entropy of the masked positions, the
caption dropped (the unconditional prompt) at `caption_dropout`.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arrag.io import atomic_path, write_json
from arrag.manifest import write_manifest
from arrag.models.magvit2 import Magvit2, Magvit2Config, save_magvit2
from arrag.models.showo import ShowoSpec, build_showo, omni_attention_mask, phi_config, save_showo, t2i_sequence
from arrag.models.training import CAPTION_DROPOUT, captions_digest, check_training_fields, fit, warmup_cosine_lr
from arrag.models.vq import to_pixel_values
from arrag.validation import COUNT, POSITIVE, check_fields


@dataclass
class MiniShowoSpec:
    """Sizes of the mini Show-o; the defaults train in a few CPU-minutes on 32 px images."""

    image_size: int = 32
    levels: int = 3  # MAGVIT-v2 levels: downsampling 2**(levels-1), 32 px -> an 8x8 grid
    channels: int = 32  # MAGVIT-v2 width (multiples of 32: GroupNorm(32))
    bits: int = 10  # LFQ bits: 1,024 codes, as many as the mini Janus' codebook
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_text_len: int = 24  # the text block: the mini world's longest caption is 10 words (Show-o's own: 128)

    def __post_init__(self):
        check_fields(self, {k: COUNT for k in ("image_size", "levels", "channels", "bits", "hidden_size")})
        check_fields(self, {"max_text_len": dict(COUNT, low=3)})
        if self.image_size % 2 ** (self.levels - 1):
            raise ValueError(f"image_size {self.image_size} is not a multiple of the downsampling 2**(levels-1)")

    def magvit(self) -> Magvit2Config:
        return Magvit2Config(
            channels=self.channels,
            encoder_mult=(1,) * (self.levels - 1) + (2,),
            encoder_blocks=(1,) * self.levels,
            decoder_mult=(1,) * (self.levels - 1) + (2,),
            decoder_blocks=(1,) * self.levels,
            bits=self.bits,
        )

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** (self.levels - 1)


@dataclass
class ShowoTrainingConfig:
    """Both stages' settings: the tokenizer's (magvit_*) and the LM's; fit() reads the stage's view."""

    magvit_steps: int = 300
    magvit_lr: float = 2e-3
    entropy_weight: float = 0.1
    commitment: float = 0.25
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        check_training_fields(
            self,
            {
                "magvit_steps": COUNT,
                "magvit_lr": POSITIVE,
                "entropy_weight": dict(low=0),
                "commitment": dict(low=0),
                "weight_decay": dict(low=0),
                "caption_dropout": CAPTION_DROPOUT,
            },
        )


@dataclass
class _Stage:
    """What fit() reads of one stage."""

    steps: int
    batch_size: int
    lr: float
    caption_dropout: float
    checkpoint_every: int
    seed: int
    grad_accum: int = 1


# ---------------------------------------------------------------- tokenizer


def lfq_losses(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LFQ's entropy term and the commitment term of latents z [B, bits, H, W] against the +-1 codes [K, bits]:
    entropy = mean per-position entropy - entropy of the batch's mean code distribution (both over softmax of
    2 <z, c>, i.e. -||z - c||^2 up to a constant per position)."""
    flat = z.permute(0, 2, 3, 1).flatten(0, 2)  # [P, bits]
    probs = torch.softmax(2 * flat @ codebook.T, dim=-1)  # [P, K]
    per_position = -(probs * probs.clamp(min=1e-9).log()).sum(-1).mean()
    mean = probs.mean(0)
    batch = -(mean * mean.clamp(min=1e-9).log()).sum()
    commitment = F.mse_loss(flat, torch.where(flat > 0, 1.0, -1.0).detach())
    return per_position - batch, commitment


def quantise(z: torch.Tensor) -> torch.Tensor:
    """Straight-through sign: forward +-1 (as LookupFreeQuantizer.indices reads it), backward identity."""
    return z + (torch.where(z > 0, 1.0, -1.0) - z).detach()


def train_magvit(images: np.ndarray, spec: MiniShowoSpec, cfg: ShowoTrainingConfig, out_dir: Path, restart: bool):
    """The tokenizer, trained to reconstruct uint8 images [N, S, S, 3]. Returns (model, stats)."""
    torch.manual_seed(cfg.seed)
    magvit = Magvit2(spec.magvit()).train()
    pixels = to_pixel_values(images)
    codebook = magvit.quantize.embedding

    def micro_loss(idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        x = pixels[idx]
        z = magvit.encoder(x)  # [b, bits, h, w]
        entropy, commitment = lfq_losses(z, codebook)
        recon = magvit.decoder(quantise(z))
        return F.mse_loss(recon, x) + cfg.entropy_weight * entropy + cfg.commitment * commitment

    stage = _Stage(cfg.magvit_steps, cfg.batch_size, cfg.magvit_lr, 0.0, cfg.checkpoint_every, cfg.seed)
    settings = {"trainer": "mini-magvit", "spec": asdict(spec), "config": asdict(cfg), "images": len(images)}
    start, log, t0, ckpt = fit(
        magvit,
        list(magvit.parameters()),
        len(images),
        micro_loss,
        stage,
        lr_at=lambda step: warmup_cosine_lr(step, stage.steps, stage.lr),
        out_dir=out_dir.with_name(out_dir.name + "-magvit"),
        desc="mini MAGVIT-v2",
        settings=settings,
    )
    magvit.eval()
    with torch.no_grad():
        codes = torch.cat([magvit.encode(pixels[i : i + 256]) for i in range(0, len(pixels), 256)])
    used = int(torch.unique(codes).numel())
    stats = {"steps": stage.steps, "resumed_at": start, "seconds": time.time() - t0, "log": log, "codes_used": used}
    return magvit, codes, stats, ckpt


# ---------------------------------------------------------------- LM


def mask_draw(idx: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """Which of the n image tokens of each example are masked [b, n] bool: ratio cos(pi/2 * u) per example, at
    least one token; drawn from the batch's examples and `seed` alone, so a resumed run masks as the first did."""
    digest = hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes() + seed.to_bytes(8, "little")).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    ratio = torch.cos(torch.rand(len(idx), generator=gen) * math.pi / 2)  # [b]
    count = (ratio * n).ceil().clamp(min=1)
    rank = torch.rand(len(idx), n, generator=gen).argsort(-1).argsort(-1)  # a random order of the positions
    return rank < count[:, None]


def masked_token_loss(model, vocab, texts: list[list[int]], codes: torch.Tensor, masked: torch.Tensor):
    """Show-o's objective: the cross-entropy of the masked image tokens of codes [b, N] (masked [b, N] bool) given
    the text and the unmasked tokens."""
    seq = t2i_sequence(texts, torch.where(masked, -1, codes), vocab)
    mask = omni_attention_mask(seq, vocab, dtype=next(model.parameters()).dtype)
    positions = torch.arange(seq.shape[1], device=seq.device).expand_as(seq)
    logits = model(input_ids=seq, attention_mask=mask, position_ids=positions, use_cache=False).logits
    n = codes.shape[1]
    image = logits[:, -(n + 1) : -1, vocab.image_offset : vocab.mask_id]  # [b, N, K]
    return F.cross_entropy(image[masked].float(), codes[masked])


def train_showo(
    images: np.ndarray,
    captions: list[str],
    words: list[str],
    spec: MiniShowoSpec,
    cfg: ShowoTrainingConfig,
    out_dir: str | Path,
    restart: bool = False,
) -> dict:
    """Train the mini Show-o (tokenizer, then LM) on images [N, S, S, 3] and their captions; write the backbone
    folder atomically (the manifest last)."""
    from arrag.models.janus import build_word_tokenizer
    from arrag.models.showo import encode_texts, vocab_for_tokenizer

    out_dir = Path(out_dir)
    if images.shape[1] != spec.image_size:
        raise ValueError(f"the images are {images.shape[1]} px, the spec's image_size is {spec.image_size}")
    magvit, codes, magvit_stats, magvit_ckpt = train_magvit(images, spec, cfg, out_dir, restart)
    codes = codes.flatten(1)  # [N, T]
    tokenizer = build_word_tokenizer(words)
    vocab = vocab_for_tokenizer(tokenizer, spec.magvit().codebook_size, spec.max_text_len)
    shape = dict(
        hidden_size=spec.hidden_size,
        intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=256 * math.ceil((vocab.max_text_len + 3 + spec.grid**2) / 256),
    )
    showo_spec = ShowoSpec(vocab, spec.grid**2, phi_config(vocab, **shape))
    torch.manual_seed(cfg.seed)
    model = build_showo(showo_spec).train()
    texts = encode_texts(tokenizer, captions)

    def micro_loss(idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        batch = [[] if d else texts[i] for i, d in zip(idx.tolist(), drop.tolist())]
        return masked_token_loss(model, vocab, batch, codes[idx], mask_draw(idx, cfg.seed, codes.shape[1]))

    stage = _Stage(cfg.steps, cfg.batch_size, cfg.lr, cfg.caption_dropout, cfg.checkpoint_every, cfg.seed)
    settings = {"trainer": "mini-showo", "spec": asdict(spec), "config": asdict(cfg)}
    settings |= {"captions": captions_digest(captions), "tokenizer_steps": magvit_stats["steps"]}
    start, log, t0, ckpt = fit(
        model,
        list(model.parameters()),
        len(codes),
        micro_loss,
        stage,
        lr_at=lambda step: warmup_cosine_lr(step, stage.steps, stage.lr),
        out_dir=out_dir,
        desc="mini Show-o",
        settings=settings,
        weight_decay=cfg.weight_decay,
    )
    model.eval()
    stats = {
        "magvit": magvit_stats,
        "showo": {"steps": stage.steps, "resumed_at": start, "seconds": time.time() - t0, "log": log},
        "parameters": {
            "showo": sum(p.numel() for p in model.parameters()),
            "magvit": sum(p.numel() for p in magvit.parameters()),
        },
        "config": asdict(cfg),
        "spec": asdict(spec),
    }
    save_showo_backbone(model, showo_spec, magvit, tokenizer, out_dir, stats)
    ckpt.discard()
    magvit_ckpt.discard()
    return stats


def save_showo_backbone(model, spec: ShowoSpec, magvit, tokenizer, out_dir: str | Path, stats: dict | None = None):
    """Write a Show-o backbone folder atomically: showo/ (with the text tokenizer), magvitv2/, the manifest last."""
    with atomic_path(Path(out_dir), directory=True) as tmp:
        save_showo(model, spec, tmp / "showo", extra=lambda d: tokenizer.save_pretrained(d))
        save_magvit2(magvit, tmp / "magvitv2")
        if stats is not None:
            write_json(tmp / "training.json", stats)
        write_manifest(tmp, "showo-backbone")
