"""Figures for a human to look at: sample grids of generated images with their prompts, and attribution
pictures (a generated image beside the corpus images it copied tokens from)."""

from __future__ import annotations

import json
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
    from arrag.evaluation.geneval import load_image  # damaged files refused by name

    tiles = [[load_image(p) for p in paths] for _, paths in rows]
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


# Distinct, saturated overlay colours for the top sources of an attribution row (then grey for the rest).
SOURCE_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


def source_map(source_grid: np.ndarray, sources: list[int], size: int) -> np.ndarray:
    """[H, W] source ids -> an RGB picture [size, size, 3]: each copied token in its source's colour
    (the i-th of `sources`), copied from another source in grey, not copied in white."""
    h, w = source_grid.shape
    tile = np.full((h, w, 3), 255, dtype=np.uint8)
    tile[source_grid >= 0] = (150, 150, 150)
    for colour, image_id in zip(SOURCE_COLOURS, sources):
        tile[source_grid == image_id] = colour
    return np.asarray(Image.fromarray(tile).resize((size, size), Image.NEAREST))


def attribution_rows(root: str | Path, n: int, top: int = 3) -> list[dict]:
    """The `n` images of a generated folder (GenEval layout with copying.json) that copied the largest
    single-source region, each with its prompt, sample path, source grid and top sources."""
    rows = []
    for meta, paths in read_prompt_folders(root):
        copying = Path(paths[0]).parent.parent / "copying.json"
        if not copying.is_file():
            raise ValueError(f"{copying} is missing: generate with a retrieval method (daid, racm3) first")
        for path, record in zip(paths, json.loads(copying.read_text())):
            rows.append({"prompt": meta.get("prompt", ""), "path": path, **record})
    if not rows:
        raise ValueError(f"{root} holds no prompt folders; generate images first")
    rows.sort(key=lambda r: -r["largest_region_fraction"])
    for r in rows:
        r["top_sources"] = r["top_sources"][:top]
    return rows[:n]


def attribution_figure(
    panels: dict[str, list[dict]], source_images: dict[int, np.ndarray], out: str | Path, upscale: int = 4
) -> Path:
    """One row per generated image: the image, its copy map (tokens coloured by source), then its top source
    images with the number of tokens taken from each. `panels`: method label -> attribution_rows(...)."""
    first = next(r for rows in panels.values() for r in rows)
    side = np.asarray(Image.open(first["path"])).shape[0] * upscale
    cols = 2 + max(len(r["top_sources"]) for rows in panels.values() for r in rows)
    label_h, n_rows = 14, sum(len(rows) for rows in panels.values())
    canvas = Image.new("RGB", (120 + cols * (side + 4), n_rows * (side + label_h + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for method, rows in panels.items():
        for r in rows:
            draw.text((4, y + side // 2), f"{method}\n{100 * r['largest_region_fraction']:.0f}% region", fill="black")
            generated = Image.open(r["path"]).convert("RGB").resize((side, side), Image.NEAREST)
            sources = [image_id for image_id, _ in r["top_sources"]]
            tiles = [
                (generated, r["prompt"][:28]),
                (Image.fromarray(source_map(np.array(r["source_grid"]), sources, side)), "copied from"),
            ]
            for (image_id, count), colour in zip(r["top_sources"], SOURCE_COLOURS):
                tile = Image.fromarray(source_images[image_id]).resize((side, side), Image.NEAREST)
                ImageDraw.Draw(tile).rectangle([0, 0, side - 1, side - 1], outline=colour, width=3)
                tiles.append((tile, f"#{image_id}: {count} tok"))
            for c, (tile, caption) in enumerate(tiles):
                x = 120 + c * (side + 4)
                canvas.paste(tile, (x, y + label_h))
                draw.text((x, y), caption, fill="black")
            y += side + label_h + 4
    out = Path(out)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def load_database_images(db_dir: str | Path, image_ids: set[int], size: int) -> dict[int, np.ndarray]:
    """The images behind a database's image ids, through its source table (one or several corpora)."""
    from arrag.data.code_shards import image_source

    sources = json.loads((Path(db_dir) / "metadata.json").read_text()).get("sources") or []
    if not sources:
        raise ValueError(f"{db_dir} records no image sources (built before arrag kept them): pass --source instead")
    by_source: dict[str, dict[int, int]] = {}  # source spec (JSON) -> local id -> global id
    for image_id in image_ids:
        spec, local = image_source(sources, image_id)
        by_source.setdefault(json.dumps(spec, sort_keys=True), {})[local] = image_id
    found = {}
    for key, ids in by_source.items():
        images = load_source_images(json.loads(key), set(ids), size)
        found |= {ids[local]: image for local, image in images.items()}
    return found


def load_source_images(spec: dict, image_ids: set[int], size: int) -> dict[int, np.ndarray]:
    """The corpus images with the given ids, read by one pass over the source (any arrag.data.sources spec)."""
    from arrag.data.sources import iter_source

    found = {}
    for record in iter_source(spec, size=size):
        if record.image_id in image_ids and record.image is not None:
            found[record.image_id] = record.image
            if len(found) == len(image_ids):
                break
    missing = sorted(image_ids - set(found))
    if missing:
        raise ValueError(f"source {spec} has no readable images with ids {missing[:10]}: is it the database's corpus?")
    return found
