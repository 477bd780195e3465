"""DAiD: Distribution-Augmentation in Decoding (paper section 3.2), training-free.

At every step the query is built from the image's already generated causal neighbours, the database
returns the k nearest patches, their tokens form a retrieval distribution (Eq. 2-3) and it is merged
into the model's next-token distribution (Eq. 4): (1 - weight) * p_model + weight * p_ret.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from arrag.decoding.loop import DecodingHook, StepState
from arrag.methods import DAID_BOUNDS, DAiDSettings, check_daid
from arrag.retrieval.keys import query_from_grid
from arrag.validation import check_number


def retrieval_distribution(
    sq_dists: torch.Tensor, values: torch.Tensor, vocab_size: int, temperature: float, unique: bool = False
) -> torch.Tensor:
    """p_ret [B, V]: softmax(-sq_dists / temperature) over the k hits, each hit's mass on its token.

    sq_dists, values [B, k] as PatchDatabase.search returns them (ascending; missing hits: inf / -1).
    `unique=True` keeps only the closest hit of each token (the authors' code). A row without any hit
    is all zeros.
    """
    check_number(temperature, "retrieval temperature", **DAID_BOUNDS["temperature"])
    valid = values >= 0  # [B, k]
    if unique:
        # a hit is a repeat when an earlier (closer) hit carries the same token
        same = values[:, :, None] == values[:, None, :]  # [B, k, k]
        earlier = torch.ones_like(same[0]).tril(-1).bool()  # [k, k]: j' < j
        valid &= ~(same & earlier).any(-1)
    logits = torch.where(valid, -sq_dists.float() / temperature, float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all -inf (no hit) -> zeros
    p_ret = torch.zeros(values.shape[0], vocab_size, dtype=weights.dtype, device=values.device)
    return p_ret.scatter_add_(1, values.clamp(min=0), weights)


def merge_distributions(
    p_model: torch.Tensor,
    sq_dists: torch.Tensor,
    values: torch.Tensor,
    weight: float,
    temperature: float,
    unique: bool = False,
) -> torch.Tensor:
    """DAiD's merged distribution [B, V] = (1 - weight) * p_model + weight * p_ret (paper Eq. 4).

    Rows whose retrieval found nothing keep p_model. weight = 0 returns p_model itself.
    """
    check_number(weight, "DAiD weight", **DAID_BOUNDS["weight"])
    if weight == 0:
        return p_model
    p_ret = retrieval_distribution(sq_dists, values, p_model.shape[-1], temperature, unique).to(p_model.dtype)
    found = (values >= 0).any(-1, keepdim=True)  # [B, 1]
    merged = (1 - weight) * p_model + weight * p_ret
    return torch.where(found, merged, p_model)


class DAiD(DecodingHook):
    """The DAiD decoding hook: batched retrieval for every image at every retrieving step.

    Everything stays on the queries' device (a `torch_compact` database on the GPU needs no host sync).
    `retrieve_at(step)` chooses which steps retrieve (default: all). With `record=True` the hits of every
    step are kept for the over-copying measurement (`recorded()`). Defaults and checks: arrag.methods.DAiDSettings.
    """

    def __init__(
        self,
        db,
        codebook: torch.Tensor,
        k: int = DAiDSettings.k,
        weight: float = DAiDSettings.weight,
        temperature: float = DAiDSettings.temperature,
        unique: bool = DAiDSettings.unique,
        retrieve_at: Callable[[int], bool] | None = None,
        record: bool = False,
    ):
        check_number(k, f"DAiD k (between 1 and the database size {len(db)})", high=len(db), **DAID_BOUNDS["k"])
        check_daid(k, weight, temperature)
        self.db, self.codebook = db, codebook
        self.k, self.weight, self.temperature, self.unique = k, weight, temperature, unique
        self.retrieve_at = retrieve_at or (lambda step: True)
        self.last_sources: torch.Tensor | None = None  # [B, k, 3] provenance of the last step's hits
        self.record = record
        self._values: list[torch.Tensor] = []
        self._sources: list[torch.Tensor] = []

    def before_forward(self, state: StepState) -> None:
        if state.step == 0:  # a new batch of images
            self._values, self._sources = [], []

    def adjust_probs(self, state: StepState, probs: torch.Tensor) -> torch.Tensor:
        if self.weight == 0 or not self.retrieve_at(state.step):
            if self.record:
                b = probs.shape[0]
                self._values.append(torch.full((b, self.k), -1, dtype=torch.long, device=probs.device))
                self._sources.append(torch.full((b, self.k, 3), -1, dtype=torch.long, device=probs.device))
            return probs
        query = query_from_grid(
            state.grid,
            state.row,
            state.col,
            self._codebook_on(state.grid.device),
            hops=self.db.hops,
            causal=self.db.causal,
        )  # [B, n*D]
        sq_dists, values, sources = self.db.search(query, self.k)
        self.last_sources = sources
        if self.record:
            self._values.append(values)
            self._sources.append(sources)
        return merge_distributions(probs, sq_dists, values, self.weight, self.temperature, self.unique)

    def _codebook_on(self, device: torch.device) -> torch.Tensor:
        """The codebook on the decoding device, copied once rather than at every step."""
        if self.codebook.device != device:
            self.codebook = self.codebook.to(device)
        return self.codebook

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last batch's hits per raster step: values [T, B, k], sources [T, B, k, 3] (-1 = none)."""
        if not self.record or not self._values:
            raise ValueError("nothing recorded: create the hook with record=True and generate first")
        return torch.stack(self._values), torch.stack(self._sources)
