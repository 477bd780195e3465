"""FAiD's retrieval side (paper section 3.3): the decoding hook that hands each step's k candidates to the
attached FAiD modules (arrag.models.faid), and the candidates of ground-truth grids FAiD is fine-tuned with.

Both query the patch database exactly as DAiD does (arrag.decoding.daid): the neighbourhood of the position
predicted, from the generated grid while decoding, from the ground-truth grid for training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arrag.decoding.loop import DecodingHook, StepState
from arrag.models.faid import FAiD
from arrag.retrieval.keys import neighbourhood_keys, query_from_grid

# ---------------------------------------------------------------- decoding


class FAiDHook(DecodingHook):
    """Retrieves the k candidates of every image at every step (like DAiD, batched) and hands them to the
    attached FAiD modules before the forward pass that predicts the step.

    `retrieve_at(step)` chooses the retrieving steps (default all); with `record=True` the hits of every step
    are kept (`recorded()`: values [T, B, k], sources [T, B, k, 3], -1 where a step did not retrieve).
    """

    def __init__(
        self,
        db,
        codebook: torch.Tensor,
        faid: FAiD,
        k: int | None = None,
        retrieve_at: Callable[[int], bool] | None = None,
        record: bool = False,
    ):
        if not faid.attached:
            raise ValueError("attach the FAiD modules to the model (faid.attach(model)) before decoding with them")
        self.db, self.codebook, self.faid = db, codebook, faid
        self.k = k or faid.cfg.k
        self.retrieve_at = retrieve_at or (lambda step: True)
        self.record = record
        self._values: list[torch.Tensor] = []
        self._sources: list[torch.Tensor] = []

    def added_parameters(self) -> list[nn.Parameter]:
        return list(self.faid.parameters())

    def before_forward(self, state: StepState) -> None:
        b = state.grid.shape[0]
        if state.step == 0:
            self._values, self._sources = [], []
        values = sources = None
        if self.retrieve_at(state.step):
            if self.codebook.device != state.grid.device:
                self.codebook = self.codebook.to(state.grid.device)
            query = query_from_grid(
                state.grid, state.row, state.col, self.codebook, hops=self.db.hops, causal=self.db.causal
            )  # [B, n*D]
            _, values, sources = self.db.search(query, self.k)  # [B, k], [B, k, 3]
        if self.record:
            if values is None:  # a step without retrieval: record "no hits" (built only then)
                none = torch.full((b, self.k), -1, dtype=torch.long, device=state.grid.device)
                self._values.append(none)
                self._sources.append(none[..., None].expand(-1, -1, 3))
            else:
                self._values.append(values)
                self._sources.append(sources)
        self.faid.set_step(state.step, values, rows=b)

    def after_step(self, state: StepState, tokens: torch.Tensor) -> None:
        self.faid.clear()

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.record or not self._values:
            raise ValueError("nothing recorded: create the hook with record=True and generate first")
        return torch.stack(self._values), torch.stack(self._sources)


# ---------------------------------------------------------------- training


@torch.no_grad()
def training_candidates(
    db,
    codes: torch.Tensor,
    codebook: torch.Tensor,
    k: int,
    image_ids: torch.Tensor | None = None,
    batch: int = 4096,
) -> torch.Tensor:
    """The k candidates of every position of ground-truth grids codes [N, H, W] -> ids [N, H*W, k].

    Queries are the database's keys of the ground-truth neighbourhoods (what decoding would see after a
    perfect prefix). With `image_ids` [N], hits from the image itself are dropped (its own patch would be
    an exact, leaking hit): 4k hits are fetched and the first k from other images kept, -1 if fewer remain.
    """
    n, h, w = codes.shape
    keys = neighbourhood_keys(codes, codebook.to(codes.device), db.hops, db.causal).reshape(n * h * w, -1)
    fetch = k if image_ids is None else min(len(db), 4 * k)
    own = None if image_ids is None else torch.as_tensor(image_ids).repeat_interleave(h * w)  # [N*H*W]
    out = []
    for start in range(0, len(keys), batch):
        _, values, sources = db.search(keys[start : start + batch], fetch)  # [q, fetch], [q, fetch, 3]
        if own is not None:
            keep = sources[..., 0] != own[start : start + batch, None].to(sources.device)
            order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)  # kept hits first, in distance order
            values = torch.where(keep, values, -1).gather(-1, order)
        out.append(values[:, :k])
    return torch.cat(out).view(n, h * w, k)
