"""Training of the mini base model's image-generation path, and the loop every fine-tuning shares (`fit`).

The VQ-VAE it generates with is trained first, by arrag.models.vq_training.

Only the mini profile trains a backbone (Janus-Pro-1B arrives pretrained). Both trainers write their
output directory atomically and keep a resumable `*.partial` checkpoint while they run, so an
interrupted run continues where it stopped and never leaves a model that looks complete.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import JanusForConditionalGeneration

from arrag.io import atomic_path, fingerprint, progress
from arrag.manifest import identity
from arrag.models.janus import (
    MiniJanusSpec,
    build_processor,
    build_word_tokenizer,
    configure_image_generation,
    mini_janus_config,
    save_janus,
    tokenize_prompts,
)
from arrag.models.vq import VQTokenizer
from arrag.validation import COUNT, INDEX, POSITIVE, check_fields

# ---------------------------------------------------------------- checkpoints


class ResumableCheckpoint:
    """`<out>.partial/state.pt`: model + optimiser + step + the RNG state (and `extra` tensors such as the VQ-VAE's
    code usage), written atomically every `every` steps, with the settings it was made with. A checkpoint of
    other settings (or unreadable, or of another layout) is refused with what to do; `restart=True` discards it.
    `settings` is anything JSON can hold; `checkpoint_every` in it is ignored (saving more or less often is not
    another run)."""

    def __init__(self, out_dir: Path, every: int, settings: dict, restart: bool = False):
        self.path = out_dir.with_name(out_dir.name + ".partial") / "state.pt"
        self.every = every
        self.settings = json.dumps(_without_checkpoint_every(settings), sort_keys=True, default=str)
        self.restart = restart
        self.fix = f"delete {self.path.parent} to start over, or rerun with --restart"

    def load(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict | None = None) -> int:
        if not self.path.is_file():
            return 0
        if self.restart:
            self.discard()
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: never a traceback, never silently ignored
            raise ValueError(f"{self.path} cannot be read ({type(err).__name__}: {err}): {self.fix}") from None
        saved = state.get("settings")
        if saved != self.settings:
            raise ValueError(
                f"{self.path} was made with other settings ({_settings_diff(saved, self.settings)}): {self.fix}"
            )
        try:
            module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for name, tensor in (extra or {}).items():
                tensor.copy_(state["extra"][name])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(f"{self.path} does not fit this model ({type(err).__name__}: {err}): {self.fix}") from None
        torch.set_rng_state(state["rng"])  # e.g. the VQ-VAE's dead-code restarts draw from it
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"])

    def maybe_save(
        self, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict | None = None
    ) -> None:
        if self.every <= 0 or step % self.every:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        state |= {"settings": self.settings, "rng": torch.get_rng_state(), "extra": dict(extra or {})}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


def _without_checkpoint_every(settings):
    if isinstance(settings, dict):
        return {k: _without_checkpoint_every(v) for k, v in settings.items() if k != "checkpoint_every"}
    return settings


def _settings_diff(saved: str | None, current: str) -> str:
    """What differs between two checkpoints' settings, for the refusal's message."""
    if not isinstance(saved, str):
        return "it records none: made by an older version"
    old, new = json.loads(saved), json.loads(current)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    old, new = flat(old), flat(new)
    diff = [
        f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    ]
    return "; ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")


def warmup_cosine_lr(step: int, total: int, peak: float, warmup_frac: float = 0.05) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    warmup = max(1, int(warmup_frac * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    done = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


# Gradient-norm clipping of every fine-tuning step. The paper does not mention it; the authors' released training
# script (PLUM-Lab/AR-RAG, arrag/train/train_FAiD.py) runs transformers' Trainer with max_grad_norm=1.0, so
# their fine-tuning clipped at 1.0 and ours does too.
GRAD_CLIP = 1.0

# AdamW's (beta1, beta2) of the fine-tunings: torch's defaults. The base model, trained from scratch in a short run,
# sets its own beta2 (BaseTrainingConfig.beta2).
ADAM_BETAS = (0.9, 0.999)

# The bounds of the settings every trainer's config holds (the training loop reads them) and of caption dropout
# (< 1: dropping every caption would train the unconditional branch only): one place for each.
TRAINING_FIELDS = {"steps": COUNT, "batch_size": COUNT, "lr": POSITIVE, "checkpoint_every": INDEX, "seed": INDEX}
CAPTION_DROPOUT = dict(low=0, high=1, high_open=True)


def check_training_fields(cfg, own: dict[str, dict]) -> None:
    """Check a trainer's settings dataclass by TRAINING_FIELDS and its `own` rules (which may override one, e.g.
    an optional `steps`), field by field in the order the dataclass declares them: the first bad field declared
    is the one reported."""
    rules, order = TRAINING_FIELDS | own, [f.name for f in fields(cfg)]
    check_fields(cfg, dict(sorted(rules.items(), key=lambda rule: order.index(rule[0]))))


def epoch_steps(pairs: int, global_batch: int, epochs: float) -> int:
    """Optimiser steps of `epochs` passes over `pairs` examples at `global_batch` per step.

    An epoch is the full global batches of one shuffle (`seeded_batches` drops the remainder, as the authors'
    Trainer does with dataloader_drop_last): 50,000 pairs at 256 make 195 steps, and a 196th would start a
    second shuffle. `pairs` is what the training set holds, after any pair the sources skipped."""
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs must be a finite number > 0, got {epochs!r}")
    per_epoch = pairs // global_batch
    if per_epoch < 1:
        raise ValueError(
            f"{pairs} training pairs are fewer than one global batch of {global_batch} (batch_size x grad_accum x "
            "processes): lower batch_size or grad_accum, or give more pairs"
        )
    return max(1, round(epochs * per_epoch))


def resolve_steps(cfg, pairs: int, global_batch: int):
    """`cfg` with its number of steps fixed: derived from `cfg.epochs` when set (then `cfg.steps` must be unset),
    else `cfg.steps` as given. -> (cfg, record for the training statistics)."""
    if cfg.epochs is None:
        if cfg.steps is None:
            raise ValueError("set either steps or epochs in the training settings")
        return cfg, {"steps": cfg.steps, "epochs": None, "pairs": pairs, "global_batch": global_batch}
    if cfg.steps is not None:
        raise ValueError(
            f"the training settings give both steps={cfg.steps} and epochs={cfg.epochs}: set steps to null to "
            "derive the steps from the epochs, or epochs to null"
        )
    steps = epoch_steps(pairs, global_batch, cfg.epochs)
    record = {"steps": steps, "epochs": cfg.epochs, "pairs": pairs, "global_batch": global_batch}
    return replace(cfg, steps=steps), record | {"steps_per_epoch": pairs // global_batch}


def seeded_batches(n: int, batch_size: int, steps: int, start: int, seed: int):
    """Yield `steps - start` index batches from a seeded stream of epochs (resumes at the same batch)."""
    rng = np.random.default_rng(seed)
    per_epoch = max(1, n // batch_size)
    order = None
    for step in range(steps):
        if step % per_epoch == 0:
            order = rng.permutation(n)
        if step >= start:
            i = step % per_epoch
            yield step, order[i * batch_size : (i + 1) * batch_size]


# ---------------------------------------------------------------- base model


@dataclass
class BaseTrainingConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta2: float = 0.95  # AdamW's second-moment decay; 0.999 remembers the first steps' large gradients through
    # a short run and damps its later steps (docs/mini-profile.md, "A shorter memory")
    caption_dropout: float = 0.1  # trains the unconditional branch classifier-free guidance needs
    guidance_scale: float = 5.0  # stored in the generation config as the default
    checkpoint_every: int = 250
    seed: int = 0
    grad_accum: int = 1  # micro-batches per step (fit_generation_path)

    def __post_init__(self):
        check_training_fields(
            self,
            {
                "weight_decay": dict(low=0),
                "beta2": dict(low=0, high=1, high_open=True),
                "caption_dropout": CAPTION_DROPOUT,
                "guidance_scale": dict(low=1),
                "grad_accum": COUNT,
            },
        )


def unconditional_ids(input_ids: torch.Tensor, bos_id: int, boi_id: int, pad_id: int) -> torch.Tensor:
    """Janus' unconditional prompt: every token but BOS and <begin_of_image> becomes padding."""
    keep = (input_ids == bos_id) | (input_ids == boi_id)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a prompt's positions do not depend on its batch."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_embeddings(
    model: JanusForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix_codes: torch.Tensor | None = None,
    prefix_visible: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings [B, P+L, D] and mask [B, P+L], optionally behind a prefix of image tokens.

    input_ids/attention_mask [B, L] (left-padded, ending in <begin_of_image>). `prefix_codes` [B, P] are
    image tokens (RA-CM3's retrieved reference) embedded through the generation embeddings + aligner and
    placed before the prompt; rows with `prefix_visible[b] = False` mask it out (the unconditional branch
    of guidance, dropped captions), so one tensor shape serves both branches.
    """
    text = model.get_input_embeddings()(input_ids)  # [B, L, D]
    if prefix_codes is None:
        return text, attention_mask
    prefix = model.prepare_embeddings_for_image_generation(prefix_codes).to(text.dtype)  # [B, P, D]
    visible = torch.ones(len(input_ids), dtype=torch.bool, device=input_ids.device)
    if prefix_visible is not None:
        visible = prefix_visible.to(input_ids.device)
    prefix_mask = visible[:, None].expand(-1, prefix_codes.shape[1]).to(attention_mask.dtype)
    return torch.cat([prefix, text], dim=1), torch.cat([prefix_mask, attention_mask], dim=1)


def image_token_logits(
    model: JanusForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    codes: torch.Tensor,
    prefix_codes: torch.Tensor | None = None,
    prefix_visible: torch.Tensor | None = None,
    during: Callable[[int], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Teacher-forced logits [B, T, K] of the image tokens of [prefix | prompt | image] sequences.

    input_ids/attention_mask [B, L] (left-padded, ending in <begin_of_image>), codes [B, T] flat image tokens;
    the optional image-token prefix [B, P] is RA-CM3's reference (see prompt_embeddings). `during(start)`,
    given the sequence index of image token 0, wraps the language model's forward (FAiD plans its pass there).
    """
    prompt, prompt_mask = prompt_embeddings(model, input_ids, attention_mask, prefix_codes, prefix_visible)
    image = model.prepare_embeddings_for_image_generation(codes[:, :-1]).to(prompt.dtype)  # [B, T-1, D]
    embeds = torch.cat([prompt, image], dim=1)
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(codes[:, :-1].shape)], dim=1)
    with during(prompt.shape[1]) if during else nullcontext():
        hidden = model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).last_hidden_state  # [B, P+L+T-1, D]
    # the hidden state at <begin_of_image> predicts token 0, the one at token t-1 predicts token t
    return model.model.generation_head(hidden[:, prompt.shape[1] - 1 :])  # [B, T, K]


def image_generation_loss(
    model: JanusForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    codes: torch.Tensor,
    prefix_codes: torch.Tensor | None = None,
    prefix_visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy on the image tokens (paper Eq. 1); arguments as image_token_logits."""
    logits = image_token_logits(model, input_ids, attention_mask, codes, prefix_codes, prefix_visible)
    return F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten())


def caption_inputs(processor, captions: list[str], device="cpu") -> tuple[torch.Tensor, ...]:
    """Tokenised captions: input_ids, attention_mask and the unconditional input_ids [N, L] that caption
    dropout swaps in (Janus' unconditional prompt)."""
    prompts = tokenize_prompts(processor, captions, device=device)
    ids, mask, tok = prompts["input_ids"], prompts["attention_mask"], processor.tokenizer
    uncond = unconditional_ids(ids, tok.bos_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.pad_token_id)
    return ids, mask, uncond


def build_base_model(spec: MiniJanusSpec, words: list[str], vq_dir: str | Path, guidance_scale: float):
    tokenizer = build_word_tokenizer(words)
    model = JanusForConditionalGeneration(mini_janus_config(spec, tokenizer))
    model.model.vqmodel.load_state_dict(VQTokenizer.from_folder(vq_dir).vqmodel.state_dict())
    configure_image_generation(model, tokenizer, guidance_scale)
    processor = build_processor(tokenizer, spec.image_size, spec.grid**2)
    return model, processor


def trainable_generation_parameters(model: JanusForConditionalGeneration) -> list[torch.nn.Parameter]:
    """The image-generation path: language model, generation embeddings/aligner/head (not VQ, not SigLIP)."""
    for p in model.parameters():
        p.requires_grad_(False)
    modules = [
        model.model.language_model,
        model.model.generation_embeddings,
        model.model.generation_aligner,
        model.model.generation_head,
    ]
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def caption_dropout_mask(n: int, rate: float, seed: int, step: int) -> torch.Tensor:
    """Which of a step's n examples lose their condition: drawn from (seed, step) alone, so a resumed run
    drops exactly what the uninterrupted run would have."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(n, generator=gen) < rate


def accumulate_gradients(
    idx: torch.Tensor, drop: torch.Tensor, micro_batch: int, micro_loss, params, acc=None
) -> float:
    """Backward of one global batch of example indices idx [B] (drop [B]: condition dropped) and its mean loss.

    This process takes every n-th example (n processes under `accelerate`/torchrun; `acc` None: one process),
    in micro-batches of `micro_batch`; each example weighs 1/B whichever process holds it, and with several
    processes the gradients and the loss are summed across them. So the step equals one process on the whole
    batch, up to floating-point order. `micro_loss(idx [b], drop [b])` is the mean loss of a micro-batch."""
    n, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
    total = 0.0
    for micro in torch.arange(len(idx))[rank::n].split(micro_batch):
        loss = micro_loss(idx[micro], drop[micro])
        (loss * len(micro) / len(idx)).backward()
        total += loss.item() * len(micro) / len(idx)
    if n > 1:  # summed by hand: FAiD runs through hooks and RA-CM3 through a prefix, neither wrapped in DDP
        sum_gradients(params, acc)
        total = float(acc.reduce(torch.tensor(total, device=acc.device), reduction="sum"))
    return total


REDUCE_BUCKET = 1 << 24  # gradient elements summed across processes in one collective (64 MB of float32)


def sum_gradients(params, acc) -> None:
    """Sum every parameter's gradient across processes, a bucket of parameters per collective (as DDP buckets):
    a 1B-parameter model then needs a few dozen all-reduces per step rather than one per tensor."""
    buckets, current, size = [], [], 0
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if current and (size + p.numel() > REDUCE_BUCKET or p.grad.dtype != current[0].grad.dtype):
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += p.numel()
    buckets += [current] if current else []
    for bucket in buckets:
        flat = acc.reduce(torch.cat([p.grad.flatten() for p in bucket]), reduction="sum")  # [size]
        for p, part in zip(bucket, flat.split([p.numel() for p in bucket])):
            p.grad.copy_(part.view_as(p.grad))


def fit(
    module: torch.nn.Module,
    params: list[torch.nn.Parameter],
    n: int,
    micro_loss,
    cfg,
    lr_at,
    out_dir: Path,
    desc: str,
    settings: dict,
    weight_decay: float = 0.0,
    acc=None,
    restart: bool = False,
    log_every: int = 50,
    betas: tuple[float, float] = ADAM_BETAS,
):
    """The training loop of every fine-tuning (base model, RA-CM3, FAiD): AdamW (`betas`) over `params`, the
    learning rate `lr_at(step)`, seeded global batches of `n` examples (batch_size x grad_accum x processes; `acc`: an
    accelerate.Accelerator when several processes train), caption dropout, gradient clipping, and a resumable
    checkpoint of `module` (whose state holds `params`) and the optimiser. `micro_loss(idx [b], drop [b] bool)`
    gives the mean loss of a micro-batch of example indices, `drop` marking the examples whose condition is
    dropped. `cfg` has steps, batch_size, grad_accum, lr, caption_dropout, checkpoint_every and seed; `settings`:
    everything a resumed checkpoint must have been made with (refused otherwise, unless `restart`).
    Returns (resumed-at step, loss log every `log_every` steps, start time, checkpoint): discard the checkpoint
    once the trained model is saved."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=weight_decay, betas=betas)
    ckpt = ResumableCheckpoint(out_dir, cfg.checkpoint_every, settings, restart)
    start = ckpt.load(module, opt)
    main_process = acc is None or acc.is_main_process
    global_batch = cfg.batch_size * cfg.grad_accum * (acc.num_processes if acc is not None else 1)
    log, t0 = [], time.time()
    stream = seeded_batches(n, global_batch, cfg.steps, start, cfg.seed)
    bar = progress(stream, total=cfg.steps - start, desc=desc, disable=not main_process)
    for step, idx in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.as_tensor(idx)
        drop = caption_dropout_mask(len(idx), cfg.caption_dropout, cfg.seed, step)  # same on every process
        loss = accumulate_gradients(idx, drop, cfg.batch_size, micro_loss, params, acc)
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == cfg.steps - 1:
            log.append({"step": step, "loss": loss})
            bar.set_postfix(loss=f"{loss:.3f}")
        if main_process:
            ckpt.maybe_save(step + 1, module, opt)
    return start, log, t0, ckpt


def fit_record(cfg, schedule: dict, start: int, t0: float) -> dict:
    """What a fine-tuning's statistics say of its `fit` run, in this order: its steps, how they were set
    (resolve_steps' record), the step it resumed at and the seconds since `t0` (fit's start time)."""
    return {"steps": cfg.steps, "schedule": schedule, "resumed_at": start, "seconds": time.time() - t0}


def fit_generation_path(
    model, n: int, batch_loss, cfg, out_dir: Path, desc: str, acc=None, settings=None, restart=False, betas=ADAM_BETAS
):
    """`fit` of the generation path (base model, RA-CM3): the whole path trains (trainable_generation_parameters),
    with cfg.weight_decay and a warm-up + cosine schedule. `settings`: what else a resumed checkpoint must have
    been made with besides `cfg`. Returns (trainable params, resumed-at step, loss log, start time, checkpoint)."""
    params = trainable_generation_parameters(model)
    model.train()
    model.model.vqmodel.eval()
    start, log, t0, ckpt = fit(
        model,
        params,
        n,
        batch_loss,
        cfg,
        lr_at=lambda step: warmup_cosine_lr(step, cfg.steps, cfg.lr),
        out_dir=out_dir,
        desc=desc,
        settings={"config": asdict(cfg), **(settings or {})},
        weight_decay=cfg.weight_decay,
        acc=acc,
        restart=restart,
        betas=betas,
    )
    model.eval()
    return params, start, log, t0, ckpt


def train_base_model(
    images: np.ndarray,
    captions: list[str],
    words: list[str],
    spec: MiniJanusSpec,
    vq_dir: str | Path,
    cfg: BaseTrainingConfig,
    out_dir: str | Path,
    restart: bool = False,
) -> dict:
    """Train the mini Janus' generation path on caption -> image-token sequences; save_pretrained to out_dir."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    model, processor = build_base_model(spec, words, vq_dir, cfg.guidance_scale)
    codes = encode_images(VQTokenizer.from_janus(model), images).flatten(1)  # [N, T]
    ids, mask, uncond = caption_inputs(processor, captions)

    def batch_loss(idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        batch_ids = torch.where(drop[:, None], uncond[idx], ids[idx])
        return image_generation_loss(model, batch_ids, mask[idx], codes[idx])

    settings = {
        "trainer": "base",
        "spec": asdict(spec),
        "captions": captions_digest(captions),
        "vq": artefact_id(vq_dir),
    }
    betas = (ADAM_BETAS[0], cfg.beta2)
    params, start, log, t0, ckpt = fit_generation_path(
        model, len(images), batch_loss, cfg, out_dir, "base model", settings=settings, restart=restart, betas=betas
    )
    stats = {
        "steps": cfg.steps,
        "resumed_at": start,
        "seconds": time.time() - t0,
        "log": log,
        "trainable_parameters": sum(p.numel() for p in params),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "config": asdict(cfg),
        "spec": asdict(spec),
    }
    save_janus(model, processor, out_dir, inputs={"vq": identity(vq_dir)}, extra={"training.json": stats})
    ckpt.discard()
    return stats


def artefact_id(path: str | Path) -> str:
    """A local artefact's identity (its manifest's digest; a folder without one, e.g. a world split: its files'
    names, sizes and mtimes), or the hub id itself, for checkpoint settings."""
    if (Path(path) / "MANIFEST.json").is_file():
        return identity(path)
    return fingerprint(path) if Path(path).exists() else str(path)


def captions_digest(captions: list[str]) -> str:
    """A short digest of a training set's captions (and so of its size and order), for checkpoint settings."""
    import hashlib

    return hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]


@torch.no_grad()
def encode_images(vq: VQTokenizer, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """uint8 images [N, S, S, 3] -> codes [N, H, W], encoded in batches."""
    return torch.cat([vq.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
