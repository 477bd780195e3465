"""How much a text-to-image model reads a word of its caption: the caption-swap cost.

For held-out images whose caption names exactly one shape (or colour), the cost is the image tokens' extra
negative log-likelihood, in nats per image, when that word is swapped for another of its kind ("a photo of a red
circle" -> "a photo of a red square"), teacher-forced. A model that ignores the word pays nothing: it draws the
shape its image context suggests. One that reads it pays for every token the swapped word makes it expect
differently. In the mini profile this number tells a base model that follows the shape word from one that does
not, which loss and mini-GenEval's sampling noise hide (docs/mini-profile.md, "Reading the caption").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arrag.data.mini_world import COLOURS, SHAPES, article, load_split
from arrag.evaluation.intervals import Bootstrap, count_blocks, percentile_interval
from arrag.io import atomic_path, progress

WORD_KINDS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS)}


def swap_word(caption: str, words: tuple[str, ...], rng: np.random.Generator) -> str | None:
    """The caption with its one word from `words` replaced by another drawn uniformly, articles fixed ("a" / "an"
    as GenEval writes them); None when the caption holds no such word or several (nothing unambiguous to swap)."""
    tokens = caption.split()
    hits = [i for i, t in enumerate(tokens) if t in words]
    if len(hits) != 1:
        return None
    others = [w for w in words if w != tokens[hits[0]]]
    tokens[hits[0]] = others[int(rng.integers(len(others)))]
    for i in range(len(tokens) - 1):
        if tokens[i] in ("a", "an"):
            tokens[i] = article(tokens[i + 1])
    return " ".join(tokens)


@torch.no_grad()
def image_nll(model, processor, captions: list[str], codes: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Teacher-forced negative log-likelihood of each image's tokens codes [N, T] under its caption: [N] nats."""
    from arrag.models.training import caption_inputs, image_token_logits

    out = []
    for start in range(0, len(captions), batch_size):
        ids, mask, _ = caption_inputs(processor, captions[start : start + batch_size], device=codes.device)
        batch = codes[start : start + batch_size]
        logits = image_token_logits(model, ids, mask, batch)  # [b, T, K]
        out.append(F.cross_entropy(logits.transpose(1, 2).float(), batch, reduction="none").sum(1))  # [b]
    return torch.cat(out)


def swap_costs(model, processor, vq, images: np.ndarray, captions: list[str], swapped: list[str]) -> torch.Tensor:
    """nll(swapped caption) - nll(true caption) [N] of uint8 images [N, S, S, 3], in nats per image."""
    from arrag.models.training import encode_images

    codes = encode_images(vq, images).flatten(1).to(model.device)  # [N, T]
    return image_nll(model, processor, swapped, codes) - image_nll(model, processor, captions, codes)


def mean_interval(costs: np.ndarray, boot: Bootstrap) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the mean cost, over images."""
    rng = np.random.default_rng(boot.seed)
    reps = np.concatenate([counts @ costs / len(costs) for counts in count_blocks(rng, len(costs), boot.resamples)])
    low, high = percentile_interval(reps, boot.level)
    return float(low), float(high)


def caption_reliance(
    model_dir: str | Path, split_dir: str | Path, limit: int = 1000, seed: int = 0, boot: Bootstrap | None = Bootstrap()
) -> dict:
    """The shape- and colour-swap costs of a Janus model on a mini-world split (held out from its training), over
    the first `limit` images whose caption names one word of the kind; swaps drawn from `seed`; the mean's
    interval from `boot` (None: no interval)."""
    from arrag.models.janus import load_janus
    from arrag.models.vq import VQTokenizer

    images, records = load_split(split_dir, mmap=True)  # read only the images used
    captions = [r["caption"] for r in records]
    model, processor = load_janus(model_dir)
    model.eval()
    vq = VQTokenizer.from_janus(model)
    record = {"model": str(model_dir), "split": str(split_dir), "swap_seed": seed, **(boot.record() if boot else {})}
    for k, (kind, words) in enumerate(progress(WORD_KINDS.items(), desc="caption swaps")):
        rng = np.random.default_rng([seed, k])
        pairs = [(i, s) for i, c in enumerate(captions) if (s := swap_word(c, words, rng)) is not None][:limit]
        if not pairs:  # a small split may name no colour alone: that kind is left unmeasured
            record[kind] = {"images": 0}
            continue
        rows = np.array([i for i, _ in pairs])
        costs = swap_costs(
            model, processor, vq, np.asarray(images[rows]), [captions[i] for i in rows], [s for _, s in pairs]
        )
        costs = costs.double().cpu().numpy()
        if not np.isfinite(costs).all():
            raise ValueError(f"{model_dir}: non-finite likelihoods on {split_dir}; the model's weights are broken")
        record[kind] = {"images": len(costs), "nats_per_image": float(costs.mean())}
        if boot:
            record[kind] |= dict(zip(("ci_low", "ci_high"), mean_interval(costs, boot)))
    if not any(record[kind]["images"] for kind in WORD_KINDS):
        raise ValueError(
            f"{split_dir}: no caption names exactly one {' or one '.join(WORD_KINDS)}; give a split of the mini world"
        )
    return record


def reliance_score(record: dict) -> float:
    """The nats per image a model's captions' shape and colour words are worth together (unmeasured kinds: 0)."""
    return sum(record[kind].get("nats_per_image", 0.0) for kind in WORD_KINDS)


def select_base_model(candidates: list[str | Path], split_dir: str | Path, out: str | Path, limit: int = 1000) -> dict:
    """Copy to `out` the candidate model (e.g. one per training seed) that reads its captions most: the highest
    reliance_score on a split none of them trained on (ties: the first). Returns the record of the choice.

    A small model learns to read the shape and colour words in some runs and not in others, and its benchmark
    scores follow (docs/mini-profile.md, "Reading the caption"); choosing by held-out likelihoods, never by the
    benchmark's prompts, keeps the instrument's choice out of what it measures."""
    records = [caption_reliance(c, split_dir, limit, boot=None) for c in candidates]
    scores = [reliance_score(r) for r in records]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    with atomic_path(out, directory=True) as tmp:
        shutil.copytree(candidates[best], tmp, dirs_exist_ok=True)
    return {
        "chosen": str(candidates[best]),
        "criterion": "shape + colour caption-swap cost (nats per image), highest",
        "scores": dict(zip(map(str, candidates), scores)),
        "candidates": records,
    }
