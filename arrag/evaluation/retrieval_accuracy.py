"""Retrieval accuracy (paper appendix C.1, Figure 6).

For held-out images, every position's query is built from its ground-truth neighbours; for the i-th
retrieved token (i = 1..k) we measure the Euclidean distance between its codebook vector and the
ground-truth token's, averaged over positions, against the same distance for a uniformly random
codebook token. We also report how often the i-th retrieved token *is* the ground-truth token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from arrag.io import atomic_path
from arrag.retrieval.database import PatchDatabase
from arrag.retrieval.keys import neighbourhood_keys


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
    if len(truth) > max_queries:
        pick = torch.randperm(len(truth), generator=gen)[:max_queries]
        queries, truth = queries[pick], truth[pick]
    random_tokens = torch.randint(0, len(codebook), truth.shape, generator=gen)

    dist_sum = torch.zeros(k, dtype=torch.float64)
    dist_sq = torch.zeros(k, dtype=torch.float64)
    hits = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(truth), batch_size):
        q, t = queries[start : start + batch_size], truth[start : start + batch_size]
        _, values, _ = db.search(q, k)  # [B, k]
        d = (codebook[values.cpu()] - codebook[t][:, None]).norm(dim=-1).double()  # [B, k]
        dist_sum += d.sum(0)
        dist_sq += (d**2).sum(0)
        hits += (values.cpu() == t[:, None]).double().sum(0)
    m = len(truth)
    mean = dist_sum / m
    std = (dist_sq / m - mean**2).clamp(min=0).sqrt()
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
    ax.set_title(title or f"Retrieval accuracy ({result['queries']} held-out positions)")
    ax.legend(frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
