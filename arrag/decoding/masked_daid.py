"""DAiD on masked decoding (paper appendix B.2): during the last half of the steps, every masked position queries
the database with all its neighbours (full-ring keys, `causal=False`; a neighbour off the grid or still masked is
a zero vector), and its code distribution is merged with its retrieval distribution before sampling
(arrag.decoding.daid.merge_distributions, the same Eq. 4 as the autoregressive hook).
"""

from __future__ import annotations

import torch

from arrag.decoding.daid import merge_distributions
from arrag.decoding.masked import MaskedDecodingHook, MaskedStepState
from arrag.methods import DAID_BOUNDS, DAiDSettings, check_daid
from arrag.retrieval.keys import extended_codebook, neighbourhood_ids
from arrag.validation import check_number


def retrieves_at(step: int, steps: int) -> bool:
    """The last half of the steps: step index >= steps / 2 (T = 18: steps 9..17)."""
    return 2 * step >= steps


def grid_queries(grid: torch.Tensor, codebook: torch.Tensor, hops: int = 1) -> torch.Tensor:
    """Full-ring query of every position: grid [B, H, W] (-1 = masked) -> [B, H, W, n*D], zero vectors for
    neighbours off the grid or masked (the same values query_from_grid(..., causal=False) gives one position)."""
    missing = codebook.shape[0]  # the zero row of the extended codebook
    ids = torch.where(grid < 0, missing, grid.long())
    neighbours = neighbourhood_ids(ids, hops, causal=False, pad_id=missing)  # [B, H, W, n]
    return extended_codebook(codebook)[neighbours].flatten(-2)


class MaskedDAiD(MaskedDecodingHook):
    """DAiD for masked decoding: all masked positions of all images retrieve at once, in the last half of the steps.
    `db` must hold full-ring keys (`arrag build-db --full`). Defaults and checks: arrag.methods.DAiDSettings."""

    def __init__(
        self,
        db,
        k: int = DAiDSettings.k,
        weight: float = DAiDSettings.weight,
        temperature: float = DAiDSettings.temperature,
        unique: bool = DAiDSettings.unique,
    ):
        check_number(k, f"DAiD k (between 1 and the database size {len(db)})", high=len(db), **DAID_BOUNDS["k"])
        check_daid(k, weight, temperature)
        if db.causal:
            raise ValueError(
                "DAiD on masked decoding queries all 8 neighbours, but the database holds causal keys; "
                "build it with full-ring keys (arrag build-db --full)"
            )
        self.db, self.codebook = db, db.codebook
        self.k, self.weight, self.temperature, self.unique = k, weight, temperature, unique

    def adjust_probs(self, state: MaskedStepState, probs: torch.Tensor) -> torch.Tensor:
        """probs [B, N, K] -> the same with every masked position's row merged with its retrieval distribution."""
        if self.weight == 0 or not retrieves_at(state.step, state.steps) or not state.masked.any():
            return probs
        if self.codebook.device != state.grid.device:  # copied once, not at every step
            self.codebook = self.codebook.to(state.grid.device)
        queries = grid_queries(state.grid, self.codebook, self.db.hops).flatten(1, 2)  # [B, N, n*D]
        sq_dists, values, _ = self.db.search(queries[state.masked], self.k)  # [M, k] each
        merged = merge_distributions(
            probs[state.masked], sq_dists, values, self.weight, self.temperature, self.unique
        )  # [M, K]
        out = probs.clone()
        out[state.masked] = merged
        return out
