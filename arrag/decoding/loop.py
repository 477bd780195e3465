"""Our own autoregressive image-token decoding loop over a Janus model.

transformers' `generate(generation_mode="image")` runs user logits processors before guidance and never
shows them the generated tokens, so retrieval cannot be plugged into it. This loop owns every step:
KV cache, classifier-free guidance `u + s * (c - u)`, temperature, top-k, per-image seeded sampling,
and hooks that see the generated grid, the current position, both logits and the hidden states.
With greedy decoding it reproduces `generate()` token for token (tests/test_decoding_loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arrag.decoding.kv_cache import preallocated_cache
from arrag.models.training import position_ids_from_mask, prompt_embeddings, unconditional_ids
from arrag.validation import COUNT, POSITIVE, check_fields, check_number


@dataclass
class SamplingConfig:
    guidance_scale: float = 5.0  # 1.0 switches guidance (and the unconditional branch) off
    temperature: float = 1.0
    top_k: int | None = None
    greedy: bool = False

    def __post_init__(self):
        check_fields(self, {"guidance_scale": dict(low=1), "temperature": POSITIVE})  # greedy=True: argmax
        check_number(self.top_k, "SamplingConfig.top_k", optional=True, **COUNT)


@dataclass
class StepState:
    """What a hook sees at one step. Shapes: B images, V codebook entries, H x W token grid."""

    step: int  # index (raster order) of the token being predicted
    row: int
    col: int
    grid: torch.Tensor  # [B, H, W] long, -1 where not generated yet
    cond_logits: torch.Tensor | None = None  # [B, V]
    uncond_logits: torch.Tensor | None = None  # [B, V], None without guidance
    hidden_states: tuple[torch.Tensor, ...] | None = (
        None  # per layer (embeddings first): [2B or B, D] at the last position
    )


class DecodingHook:
    """Override what you need. `before_forward` runs before the forward pass whose output predicts `state.step`
    (FAiD sets its layer inputs there); `adjust_probs` may change the next-token distribution [B, V]
    after guidance, temperature and top-k (DAiD merges retrieval there); `after_step` sees the chosen tokens."""

    wants_hidden_states = False

    def added_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the hook adds to the backbone (FAiD's modules); counted in the tables' Params column."""
        return []

    def before_forward(self, state: StepState) -> None:
        pass

    def adjust_probs(self, state: StepState, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def after_step(self, state: StepState, tokens: torch.Tensor) -> None:
        pass


def guide(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: u + s * (c - u)."""
    return uncond_logits + scale * (cond_logits - uncond_logits)


def next_token_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Guided logits [B, V] -> distribution [B, V] after top-k and temperature (greedy: temperature 1)."""
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    temperature = 1.0 if sampling.greedy else sampling.temperature
    return torch.softmax(logits.float() / temperature, dim=-1)


def sample_tokens(probs: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
    """One draw per row, each from its own generator so an image does not depend on its batch mates."""
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def make_generators(seeds: list[int], device: torch.device | str) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _special_ids(model):
    gc = model.generation_config
    boi = (gc.generation_kwargs or {}).get("boi_token_id")
    if boi is None or gc.pad_token_id is None or gc.bos_token_id is None:
        raise ValueError(
            "the model's generation_config lacks pad_token_id, bos_token_id or generation_kwargs['boi_token_id']; "
            "load the model with arrag.models.load_janus, which fills them"
        )
    return gc.bos_token_id, boi, gc.pad_token_id


@torch.no_grad()
def generate_image_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampling: SamplingConfig = SamplingConfig(),
    generators: list[torch.Generator] | None = None,
    hooks: list[DecodingHook] | tuple[DecodingHook, ...] = (),
    padding_aware_positions: bool = True,
    prefix_codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate one token grid per prompt: input_ids/attention_mask [B, L] (left-padded, ending in
    <begin_of_image>) -> codes [B, H, W].

    `prefix_codes` [B, P]: image tokens placed before each prompt (RA-CM3's retrieved reference); the
    unconditional branch of guidance does not see them (it sees neither caption nor reference).

    `padding_aware_positions=False` numbers positions as transformers' generate() does (left padding
    counted). RoPE scores depend only on position differences, so both agree up to float rounding; the
    default skips padding so a prompt's positions never depend on its batch mates.
    """
    device = input_ids.device
    b = input_ids.shape[0]
    side = int(model.model.vqmodel.config.num_patches)
    n_tokens = side * side
    use_cfg = sampling.guidance_scale != 1.0
    if generators is not None and len(generators) != b:
        raise ValueError(f"got {len(generators)} generators for {b} prompts")

    tokens, mask, prefix, visible = input_ids, attention_mask, prefix_codes, None
    if use_cfg:
        bos, boi, pad = _special_ids(model)
        tokens = torch.cat([input_ids, unconditional_ids(input_ids, bos, boi, pad)])
        mask = torch.cat([attention_mask, attention_mask])
        if prefix_codes is not None:
            prefix = torch.cat([prefix_codes, prefix_codes])
            visible = torch.arange(2 * b, device=device) < b  # conditional rows only
    embeds, mask = prompt_embeddings(model, tokens, mask, prefix, visible)
    if padding_aware_positions:
        positions = position_ids_from_mask(mask)
    else:
        positions = torch.arange(mask.shape[1], device=device).expand(mask.shape[0], -1)

    lm = model.model.language_model
    want_hidden = any(h.wants_hidden_states for h in hooks)
    # the prompt, then every image token but the last (which is never fed back)
    cache = preallocated_cache(model.config.text_config, capacity=embeds.shape[1] + n_tokens - 1)
    grid = torch.full((b, side, side), -1, dtype=torch.long, device=device)

    for step in range(n_tokens):
        state = StepState(step=step, row=step // side, col=step % side, grid=grid)
        for hook in hooks:
            hook.before_forward(state)
        out = lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            output_hidden_states=want_hidden,
        )
        # [2B or B, V]; guidance and sampling in float32 whatever the model's dtype (Janus-Pro's is bfloat16)
        logits = model.model.generation_head(out.last_hidden_state[:, -1]).float()
        state.cond_logits = logits[:b]
        state.uncond_logits = logits[b:] if use_cfg else None
        if want_hidden:
            state.hidden_states = tuple(h[:, -1] for h in out.hidden_states)
        guided = guide(state.cond_logits, state.uncond_logits, sampling.guidance_scale) if use_cfg else logits

        probs = next_token_probs(guided, sampling)
        for hook in hooks:
            probs = hook.adjust_probs(state, probs)
        next_tokens = probs.argmax(-1) if sampling.greedy else sample_tokens(probs, generators)
        grid[:, state.row, state.col] = next_tokens
        for hook in hooks:
            hook.after_step(state, next_tokens)

        if step == n_tokens - 1:
            break
        # feed the chosen token to both branches through the generation embeddings + aligner
        fed = torch.cat([next_tokens, next_tokens]) if use_cfg else next_tokens
        embeds = model.prepare_embeddings_for_image_generation(fed[:, None])  # [2B or B, 1, D]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
    return grid
