"""Retrieval accuracy (paper appendix C.1, Figure 6).

Every position's query is built from its ground-truth neighbours; for the i-th retrieved token (i = 1..k) we
measure the Euclidean distance between its codebook vector and the ground-truth token's, averaged over positions,
against the same distance for a uniformly random codebook token. We also report how often the i-th retrieved
token *is* the ground-truth token. Two query sets:

- `heldout`: images that are not in the database, searched here (`retrieval_accuracy`);
- `train`: the paper's, instances of FAiD's training set with the candidates retrieved for them when it was built
  (`trainset_accuracy`; the image's own entries were left out when it is in the database).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from arrag.io import atomic_path
from arrag.retrieval.database import PatchDatabase
from arrag.retrieval.keys import neighbourhood_keys

QUERY_SETS = {
    "heldout": "held-out images (not in the database)",
    "train": "FAiD training-set instances with their training candidates (as appendix C.1)",
}


def _sample(m: int, max_queries: int, gen: torch.Generator) -> torch.Tensor | None:
    """Indices of at most max_queries of m positions (None: all of them)."""
    return torch.randperm(m, generator=gen)[:max_queries] if m > max_queries else None


def rank_statistics(values: torch.Tensor, truth: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """values [B, k] retrieved tokens, truth [B] -> sums over the batch per rank: distance, squared distance, hits."""
    d = (codebook[values] - codebook[truth][:, None]).norm(dim=-1).double()  # [B, k]
    return d.sum(0), (d**2).sum(0), (values == truth[:, None]).double().sum(0)


def _result(sums, m: int, k: int, truth: torch.Tensor, codebook: torch.Tensor, gen: torch.Generator) -> dict:
    dist_sum, dist_sq, hits = sums
    mean = dist_sum / m
    std = (dist_sq / m - mean**2).clamp(min=0).sqrt()
    random_tokens = torch.randint(0, len(codebook), truth.shape, generator=gen)
    rand = (codebook[random_tokens] - codebook[truth]).norm(dim=-1).double()
    return {
        "queries": m,
        "k": k,
        "rank": list(range(1, k + 1)),
        "mean_distance": mean.tolist(),
        "std_distance": std.tolist(),
        "exact_match": (hits / m).tolist(),
        "random_mean_distance": rand.mean().item(),
        "random_std_distance": rand.std().item(),
        "random_exact_match": (random_tokens == truth).double().mean().item(),
    }


def retrieval_accuracy(
    db: PatchDatabase,
    codes: torch.Tensor,
    codebook: torch.Tensor,
    k: int = 10,
    max_queries: int = 20000,
    batch_size: int = 4096,
    seed: int = 0,
) -> dict:
    """codes [N, H, W] held-out token grids (not in `db`) -> per-rank distances and exact-match rates."""
    meta = db.metadata
    keys = neighbourhood_keys(codes, codebook, hops=meta["hops"], causal=meta["causal"])  # [N, H, W, n*D]
    queries, truth = keys.flatten(0, 2), codes.flatten()  # [M, n*D], [M]
    gen = torch.Generator().manual_seed(seed)
    pick = _sample(len(truth), max_queries, gen)
    if pick is not None:
        queries, truth = queries[pick], truth[pick]
    sums = [torch.zeros(k, dtype=torch.float64) for _ in range(3)]
    for start in range(0, len(truth), batch_size):
        t = truth[start : start + batch_size]
        _, values, _ = db.search(queries[start : start + batch_size], k)  # [B, k]
        sums = [a + b for a, b in zip(sums, rank_statistics(values.cpu(), t, codebook))]
    return _result(sums, len(truth), k, truth, codebook, gen) | {"query_set": "heldout"}


def trainset_accuracy(
    codes: torch.Tensor,
    candidates: torch.Tensor,
    codebook: torch.Tensor,
    k: int = 10,
    max_queries: int = 20000,
    seed: int = 0,
) -> dict:
    """codes [N, H, W] and candidates [N, H*W, K] of a FAiD training set (arrag.models.faid_training) -> the same
    statistics over its positions whose first k candidates all exist (a position with fewer hits is left out)."""
    if candidates.shape[-1] < k:
        raise ValueError(f"the training set holds {candidates.shape[-1]} candidates per position, fewer than k={k}")
    values, truth = candidates[..., :k].flatten(0, 1), codes.flatten()  # [M, k], [M]
    complete = (values >= 0).all(dim=1)
    values, truth = values[complete], truth[complete]
    if not len(truth):
        raise ValueError(f"no training-set position has {k} candidates: rebuild the training set with k >= {k}")
    gen = torch.Generator().manual_seed(seed)
    pick = _sample(len(truth), max_queries, gen)
    if pick is not None:
        values, truth = values[pick], truth[pick]
    sums = rank_statistics(values, truth, codebook)
    extra = {"query_set": "train", "incomplete_positions": int((~complete).sum())}
    return _result(sums, len(truth), k, truth, codebook, gen) | extra


def plot_accuracy(result: dict, path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=150)
    ranks = np.array(result["rank"])
    mean, std = np.array(result["mean_distance"]), np.array(result["std_distance"])
    ax.plot(ranks, mean, "o-", label="i-th retrieved token")
    ax.fill_between(ranks, mean - std, mean + std, alpha=0.2)
    ax.axhline(result["random_mean_distance"], color="tab:red", ls="--", label="random token")
    ax.set_xlabel("retrieval rank i")
    ax.set_ylabel("distance to ground-truth token")
    where = "training-set" if result.get("query_set") == "train" else "held-out"
    ax.set_title(title or f"Retrieval accuracy ({result['queries']} {where} positions)")
    ax.legend(frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
