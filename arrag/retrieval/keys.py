"""Neighbourhood keys (paper section 3.1): a patch is looked up by the codebook vectors of its neighbours.

The key of position (r, c) concatenates the codebook rows of the tokens within Chebyshev distance `hops`,
in top-to-bottom, left-to-right order, the centre excluded; a neighbour outside the grid is a zero vector.
Causal keys keep only the neighbours that precede the centre in raster order, i.e. the ones an
autoregressive decoder has already generated when it predicts (r, c). Keys and queries are both built
from codebook vectors (never encoder latents), so a query is exactly comparable to the keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbour_offsets(hops: int, causal: bool) -> list[tuple[int, int]]:
    """(dr, dc) of the neighbours within Chebyshev distance `hops`, raster order, centre excluded.

    hop 1: 4 causal / 8 full; hop 2: 12 causal / 24 full.
    """
    if not isinstance(hops, int) or hops < 1:
        raise ValueError(f"hops must be an integer >= 1, got {hops!r}")
    offsets = [(dr, dc) for dr in range(-hops, hops + 1) for dc in range(-hops, hops + 1) if (dr, dc) != (0, 0)]
    if causal:  # strictly before the centre in raster order
        offsets = [(dr, dc) for dr, dc in offsets if dr < 0 or (dr == 0 and dc < 0)]
    return offsets


def _window_index(hops: int, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each neighbour inside the (2*hops+1)^2 window centred on the patch."""
    offsets = neighbour_offsets(hops, causal)
    rows = torch.tensor([hops + dr for dr, _ in offsets])
    cols = torch.tensor([hops + dc for _, dc in offsets])
    return rows, cols


def check_codebook(codebook: torch.Tensor) -> None:
    if codebook.ndim != 2:
        raise ValueError(f"codebook must be 2-D [K, D], got shape {tuple(codebook.shape)}")
    if not codebook.is_floating_point():
        raise ValueError(f"codebook must be a float tensor, got {codebook.dtype}")


def check_codes(codes: torch.Tensor, num_codes: int | None = None, name: str = "codes") -> None:
    if codes.ndim != 3:
        raise ValueError(f"{name} must be a [N, H, W] grid of token ids, got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got {codes.dtype}")
    if codes.numel() == 0:
        return
    if codes.dtype == torch.uint16:  # torch has no min/max for it; numpy does, without a widened copy
        lo, hi = 0, int(codes.cpu().numpy().max())
    else:
        lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or (num_codes is not None and hi >= num_codes):
        bound = f"[0, {num_codes})" if num_codes is not None else ">= 0"
        raise ValueError(f"{name} ids must be in {bound} (the codebook's rows), found values in [{lo}, {hi}]")


def extended_codebook(codebook: torch.Tensor) -> torch.Tensor:
    """codebook [K, D] -> [K+1, D]: row K is the zero vector that stands for a missing neighbour."""
    check_codebook(codebook)
    return torch.cat([codebook, codebook.new_zeros(1, codebook.shape[1])])


def neighbourhood_ids(codes: torch.Tensor, hops: int = 1, causal: bool = True, *, pad_id: int) -> torch.Tensor:
    """Token id of every neighbour of every position: codes [N, H, W] -> [N, H, W, n]; `pad_id` off the grid."""
    check_codes(codes)
    rows, cols = _window_index(hops, causal)
    padded = F.pad(codes.long(), (hops, hops, hops, hops), value=pad_id)  # [N, H+2h, W+2h]
    size = 2 * hops + 1
    windows = padded.unfold(1, size, 1).unfold(2, size, 1)  # [N, H, W, size, size], a view
    return windows[..., rows.to(codes.device), cols.to(codes.device)]  # [N, H, W, n]


def neighbourhood_keys(codes: torch.Tensor, codebook: torch.Tensor, hops: int = 1, causal: bool = True) -> torch.Tensor:
    """Key of every position, edges included: codes [N, H, W] -> [N, H, W, n*D] (zeros off the grid)."""
    ext = extended_codebook(codebook)  # [K+1, D]
    check_codes(codes, codebook.shape[0])
    ids = neighbourhood_ids(codes.to(codebook.device), hops, causal, pad_id=codebook.shape[0])  # [N, H, W, n]
    return ext[ids].flatten(-2)  # [N, H, W, n*D]


def query_from_grid(
    grid: torch.Tensor, row: int, col: int, codebook: torch.Tensor, hops: int = 1, causal: bool = True
) -> torch.Tensor:
    """Query for predicting (row, col) while decoding: grid [B, H, W] with -1 = not generated -> [B, n*D].

    Neighbours off the grid or not generated yet are zero vectors. With causal keys and a generated prefix
    this equals neighbourhood_keys(full_codes)[:, row, col].
    """
    ext = extended_codebook(codebook)  # [K+1, D]
    num_codes = codebook.shape[0]
    if grid.device.type == "cpu":  # value checks on an accelerator would cost a device sync every step
        check_codes(grid.clamp(min=0), num_codes, name="grid")
        if grid.numel() and int(grid.min()) < -1:
            raise ValueError(f"grid holds token ids or -1 (not generated yet), found {int(grid.min())}")
    elif grid.ndim != 3:
        raise ValueError(f"grid must be [B, H, W], got shape {tuple(grid.shape)}")
    _, height, width = grid.shape
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"position ({row}, {col}) is outside the {height}x{width} grid")
    ids = torch.where(grid < 0, num_codes, grid.long()).to(codebook.device)  # not generated -> zero row
    padded = F.pad(ids, (hops, hops, hops, hops), value=num_codes)  # [B, H+2h, W+2h]
    window = padded[:, row : row + 2 * hops + 1, col : col + 2 * hops + 1]  # centred on (row, col)
    rows, cols = _window_index(hops, causal)
    return ext[window[:, rows.to(ids.device), cols.to(ids.device)]].flatten(-2)  # [B, n*D]
