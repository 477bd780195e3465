"""Figures for a human to look at: sample grids of generated images with their prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from arrag.data.geneval_layout import read_prompt_folders
from arrag.io import atomic_path


def sample_grid(
    root: str | Path, out: str | Path, max_prompts: int = 16, upscale: int = 4, label_width: int = 300
) -> Path:
    """One row per prompt (its text on the left, its samples to the right), nearest-neighbour upscaled."""
    folders = read_prompt_folders(root)
    if not folders:
        raise ValueError(f"{root} holds no prompt folders (<00000>/samples/*.png); generate images first")
    step = max(1, len(folders) // max_prompts)  # spread the rows over the whole prompt set
    rows = folders[::step][:max_prompts]
    tiles = [[np.asarray(Image.open(p).convert("RGB")) for p in paths] for _, paths in rows]
    size = tiles[0][0].shape[0] * upscale
    cols = max(len(t) for t in tiles)
    canvas = Image.new("RGB", (label_width + cols * (size + 2), len(rows) * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, ((meta, _), row) in enumerate(zip(rows, tiles)):
        y = r * (size + 2)
        draw.text((4, y + size // 2 - 6), meta.get("prompt", ""), fill="black")
        for c, tile in enumerate(row):
            big = Image.fromarray(tile).resize((size, size), Image.NEAREST)
            canvas.paste(big, (label_width + c * (size + 2), y))
    out = Path(out)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out
