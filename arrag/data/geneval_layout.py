"""Images in GenEval's folder layout, the one its official evaluator reads:

    <out>/<00000>/metadata.jsonl     the prompt's metadata record (one JSON line)
    <out>/<00000>/samples/0000.png   n images per prompt
    <out>/settings.json              how the images were generated (ours; the evaluator ignores it)

Each prompt folder is written atomically, so a folder that exists is complete and an interrupted run
resumes by skipping it. Folders made with other settings are never reused.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from arrag.io import atomic_path, write_json

SETTINGS = "settings.json"


def prompt_folder(root: str | Path, index: int) -> Path:
    return Path(root) / f"{index:05d}"


def is_complete(folder: Path, n: int) -> bool:
    return (folder / "metadata.jsonl").is_file() and all(
        (folder / "samples" / f"{i:04d}.png").is_file() for i in range(n)
    )


def write_prompt_folder(
    root: str | Path, index: int, metadata: dict, images: np.ndarray, extra: dict | None = None
) -> Path:
    """images uint8 [n, S, S, 3] -> <root>/<index>/{metadata.jsonl, samples/NNNN.png}, atomically.

    `extra` maps file names to JSON-serialisable objects written beside them (e.g. copying.json).
    """
    final = prompt_folder(root, index)
    with atomic_path(final, directory=True) as tmp:
        (tmp / "samples").mkdir()
        (tmp / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1) + "\n")
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp / "samples" / f"{i:04d}.png")
    return final


def prepare_output(root: str | Path, settings: dict) -> None:
    """Create `root`; if it holds images made with different settings, remove them (never trust them).

    Shards of one run call this at the same time: a lock makes the check, the removal and the new
    settings.json one step, so no shard removes folders another has written under the same settings."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings_file = root / SETTINGS
    with open(root / ".settings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
            for child in root.iterdir():
                if child.is_dir() and child.name.isdigit():
                    shutil.rmtree(child)
        write_json(settings_file, settings)


def shard_of(index: int, shard: int, num_shards: int) -> bool:
    """Prompt `index` belongs to shard `shard` of `num_shards` (round robin, so shards get alike prompts)."""
    return index % num_shards == shard


def read_prompt_folders(root: str | Path) -> list[tuple[dict, list[Path]]]:
    """[(metadata, sample paths)] for every prompt folder under root, in index order."""
    out = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name.isdigit()):
        meta = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])
        out.append((meta, sorted((folder / "samples").glob("*.png"))))
    return out
