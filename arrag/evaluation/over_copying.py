"""Over-copying: how much of a generated image is copied from retrieved material, and in how large a piece.

The paper claims image-level retrieval over-copies and patch-level retrieval avoids it, without
measuring it. Per generated image:
- `copied_fraction`: tokens equal to one of the candidates retrieved for their position;
- `largest_region_fraction`: the largest 4-connected region of copied tokens whose (closest matching)
  candidate comes from one source image, as a fraction of the grid; and that source image.
For an image-level method (RA-CM3) the candidates of a position are the reference image's token there.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage


def copy_sources(codes: torch.Tensor, step_values: torch.Tensor, step_sources: torch.Tensor) -> torch.Tensor:
    """codes [B, H, W]; per raster step t the hits values [T, B, k] and sources [T, B, k, 3] (-1: none).

    Returns the source image id of each copied token [B, H, W] (the closest hit with the generated
    token), -1 where the token matches no hit.
    """
    b, h, w = codes.shape
    tokens = codes.reshape(b, h * w).T  # [T, B]
    match = step_values == tokens[..., None]  # [T, B, k]
    first = match.float().argmax(-1)  # [T, B] index of the closest matching hit (hits are ascending)
    image = step_sources[..., 0].gather(-1, first[..., None]).squeeze(-1)  # [T, B]
    image = torch.where(match.any(-1), image, -1)
    return image.T.reshape(b, h, w)


def largest_single_source_region(source: np.ndarray) -> tuple[int, int]:
    """source [H, W] image ids (-1 = not copied) -> (size of the largest 4-connected same-source region, its id)."""
    best, best_id = 0, -1
    for image_id in np.unique(source[source >= 0]):
        labels, count = ndimage.label(source == image_id)  # 4-connectivity by default
        if count:
            size = int(np.bincount(labels.ravel())[1:].max())
            if size > best:
                best, best_id = size, int(image_id)
    return best, best_id


def over_copying(source: torch.Tensor, top: int = 3) -> list[dict]:
    """Per-image statistics from copy_sources' output [B, H, W]."""
    rows = []
    for grid in source.cpu().numpy():
        size, image_id = largest_single_source_region(grid)
        counts = Counter(grid[grid >= 0].tolist())
        rows.append(
            {
                "copied_fraction": float((grid >= 0).mean()),
                "largest_region_fraction": size / grid.size,
                "largest_region_source": image_id,
                "top_sources": [[int(i), int(c)] for i, c in counts.most_common(top)],
                "source_grid": grid.tolist(),  # [H][W] source image id per token, -1 = not copied
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean copied fraction and largest single-source region over images (the over-copying table's row)."""
    if not rows:
        raise ValueError("no over-copying records: generate with a recording retrieval hook first")
    copied = np.array([r["copied_fraction"] for r in rows])
    region = np.array([r["largest_region_fraction"] for r in rows])
    return {
        "images": len(rows),
        "copied_fraction_mean": float(copied.mean()),
        "largest_region_fraction_mean": float(region.mean()),
        "largest_region_fraction_max": float(region.max()),
    }


def read_copying_records(root) -> list[dict]:
    """Every copying.json under a GenEval-layout folder, flattened to one record per image."""
    rows = []
    for path in sorted(Path(root).glob("*/copying.json")):
        rows.extend(json.loads(path.read_text()))
    return rows
