"""Masked (MaskGIT-style) decoding for Show-o: all image tokens start masked and are filled in parallel over T
steps, the least confident ones put back under the mask after each step.

Show-o's schedule, step s = 0..T-1: sample a code for every masked position from the softmax over the image-code
logits (guided); mask ratio cos(pi/2 * (s+1)/T); confidence log p(sampled code) + temperature * Gumbel, the
temperature multiplied by (1 - (s+1)/T) at every step (so it compounds, as in Show-o's loop); known tokens keep
confidence +inf; the mask_len = max(1, min(unknown - 1, floor(N * ratio))) least confident positions are masked
again. After the last step every sampled code is kept.

Guidance: Show-o writes (1 + w) * c - w * u; ours is u + s * (c - u) (arrag.decoding.loop.guide), the same with
s = 1 + w (`showo_guidance_scale`). Each image draws from its own generator (codes, then Gumbel noise, step by
step), so it does not depend on its batch mates. Hooks (`MaskedDecodingHook`) see the grid, the step and the
positions being decided with their logits, and may change their probabilities (DAiD: arrag.decoding.masked_daid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arrag.decoding.loop import guide
from arrag.models.showo import (
    ShowoVocab,
    image_logits,
    omni_attention_mask,
    showo_logits,
    t2i_prompts,
    t2i_sequence,
)
from arrag.validation import COUNT, check_fields


def showo_guidance_scale(w: float) -> float:
    """Show-o's guidance weight w ((1 + w) c - w u) as our scale s (u + s (c - u)): s = 1 + w."""
    return 1.0 + w


@dataclass
class MaskedSamplingConfig:
    steps: int = 18  # T; Show-o's default at 256 px (50 at 512 px)
    guidance_scale: float = 1.0  # our s = 1 + Show-o's w; 1.0 switches guidance (and the uncond. branch) off
    temperature: float = 1.0  # Show-o's re-masking temperature: weight of the Gumbel noise, annealed each step

    def __post_init__(self):
        check_fields(self, {"steps": COUNT, "guidance_scale": dict(low=1), "temperature": dict(low=0)})


def mask_ratio(step: int, steps: int) -> torch.Tensor:
    """cos(pi/2 * (step + 1) / steps), in float32 as Show-o computes it (float32 rounding decides some counts:
    at T = 18, N = 256, step 11 it gives 127 masked tokens where exact arithmetic gives 128)."""
    return torch.cos(torch.tensor((step + 1) / steps) * torch.pi * 0.5)


def mask_length(step: int, steps: int, n: int, unknown: torch.Tensor) -> torch.Tensor:
    """How many tokens go back under the mask after `step`: max(1, min(unknown - 1, floor(n * ratio))).
    unknown [B] -> [B] long."""
    wanted = int(torch.floor(n * mask_ratio(step, steps)))
    return (unknown - 1).clamp(max=wanted).clamp(min=1)


@dataclass
class MaskedStepState:
    """What a hook sees at one step. B images, an H x W grid of N = H*W tokens, K codebook entries."""

    step: int
    steps: int
    grid: torch.Tensor  # [B, H, W] long, -1 where masked
    masked: torch.Tensor  # [B, N] bool: the positions decided at this step (raster order)
    logits: torch.Tensor | None = None  # [B, N, K] guided image-code logits (float32)
    cond_logits: torch.Tensor | None = None  # [B, N, K]
    uncond_logits: torch.Tensor | None = None  # [B, N, K], None without guidance


class MaskedDecodingHook:
    """Override what you need. `before_forward` runs before the step's forward pass; `adjust_probs` may change the
    code distribution probs [B, N, K] (only the rows of `state.masked` are used); `after_step` sees the grid after
    re-masking (the last step: the finished grid)."""

    def added_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def before_forward(self, state: MaskedStepState) -> None:
        pass

    def adjust_probs(self, state: MaskedStepState, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def after_step(self, state: MaskedStepState, grid: torch.Tensor) -> None:
        pass


def sample_codes(probs: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
    """One code per position: probs [B, N, K] -> [B, N], image b drawing from generators[b] only."""
    if generators is None:
        return torch.multinomial(probs.flatten(0, 1), 1).view(probs.shape[:2])
    return torch.stack([torch.multinomial(p, 1, generator=g).squeeze(-1) for p, g in zip(probs, generators)])


def gumbel_noise(shape: tuple[int, int], generators: list[torch.Generator] | None, device) -> torch.Tensor:
    """Gumbel(0, 1) noise [B, N], row b from generators[b]."""
    if generators is None:
        u = torch.rand(shape, device=device)
    else:
        u = torch.stack([torch.rand(shape[1], generator=g, device=device) for g in generators])
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


def remask(confidence: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The `count[b]` least confident positions of each row: confidence [B, N], count [B] -> bool [B, N]."""
    rank = confidence.argsort(dim=-1, stable=True).argsort(dim=-1)  # [B, N]: 0 = least confident
    return rank < count[:, None]


@torch.no_grad()
def generate_masked_tokens(
    model,
    texts: list[list[int]],
    vocab: ShowoVocab,
    num_image_tokens: int,
    sampling: MaskedSamplingConfig = MaskedSamplingConfig(),
    generators: list[torch.Generator] | None = None,
    hooks: list[MaskedDecodingHook] | tuple[MaskedDecodingHook, ...] = (),
) -> torch.Tensor:
    """Generate one token grid per text with Show-o: texts (text token ids, no special tokens) -> codes [B, H, W].

    Each step runs the whole sequence (text block, <|soi|>, the image tokens with the mask token where unknown,
    <|eoi|>) under the omni-attention mask, positions 0..L-1 including padding (arrag.models.showo), the
    unconditional twins (empty text) in the same batch when guidance is on.
    """
    b, n = len(texts), num_image_tokens
    if b == 0:
        raise ValueError("no texts to generate images for")
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"num_image_tokens must be a square grid (256 = 16x16), got {n}")
    if generators is not None and len(generators) != b:
        raise ValueError(f"got {len(generators)} generators for {b} prompts")
    device = model.device
    use_cfg = sampling.guidance_scale != 1.0
    codes = torch.full((b, n), -1, dtype=torch.long, device=device)  # -1 = masked
    temperature = sampling.temperature
    # the text blocks and the omni-attention mask do not change between steps: built once, only the image
    # tokens are written at each step
    seq = t2i_prompts(texts, codes, vocab) if use_cfg else t2i_sequence(texts, codes, vocab)  # [2B or B, L]
    mask = omni_attention_mask(seq, vocab, dtype=model.dtype)
    image_slice = slice(seq.shape[1] - n - 1, seq.shape[1] - 1)  # the sequence ends <image...> <|eoi|>

    for step in range(sampling.steps):
        unknown = codes < 0  # [B, N]
        state = MaskedStepState(step=step, steps=sampling.steps, grid=codes.view(b, side, side), masked=unknown)
        for hook in hooks:
            hook.before_forward(state)
        image = torch.where(codes < 0, vocab.mask_id, codes + vocab.image_offset)  # [B, N]
        seq[:, image_slice] = torch.cat([image, image]) if use_cfg else image
        logits = image_logits(showo_logits(model, seq, vocab, mask), vocab, n).float()  # [2B or B, N, K]
        state.cond_logits = logits[:b]
        state.uncond_logits = logits[b:] if use_cfg else None
        state.logits = guide(logits[:b], logits[b:], sampling.guidance_scale) if use_cfg else logits
        probs = torch.softmax(state.logits, dim=-1)  # float32 (Show-o takes the softmax in the model's dtype)
        for hook in hooks:
            probs = hook.adjust_probs(state, probs)

        sampled = torch.where(unknown, sample_codes(probs, generators), codes)  # known tokens stay
        ratio = (step + 1) / sampling.steps
        confidence = probs.gather(-1, sampled[..., None]).squeeze(-1).log()
        temperature = temperature * (1.0 - ratio)
        confidence = confidence + temperature * gumbel_noise((b, n), generators, device)
        confidence = confidence.masked_fill(~unknown, torch.inf)  # Show-o: log(float max) + noise, never re-masked
        if step == sampling.steps - 1:
            codes = sampled  # the last step keeps every sampled code
        else:
            count = mask_length(step, sampling.steps, n, unknown.sum(-1))
            codes = torch.where(remask(confidence, count), -1, sampled)
        for hook in hooks:
            hook.after_step(state, codes.view(b, side, side))
    return codes.view(b, side, side)
