"""The detector's ceiling for a VQ-VAE: its reconstructions of ground-truth scenes of the mini world's GenEval
prompts, in GenEval's folder layout, for `arrag geneval` to score.

What a generator that always chose the right tokens would score: the bar the mini base model is measured
against (the issue's "VQ reconstructions >= 0.85"), and what the tokenizer alone costs the detector. The scenes
are drawn as the world draws its own (its backgrounds, tones and grid snap, from world.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from arrag.data.geneval_layout import write_prompt_folder
from arrag.data.mini_geneval import prompt_scene
from arrag.data.mini_world import BACKGROUNDS, render
from arrag.io import atomic_path, progress, read_jsonl, write_json
from arrag.manifest import identity
from arrag.models.vq import VQTokenizer


def world_scene_settings(world_dir: str | Path) -> dict:
    """sample_scene's size and keywords as the world recorded them (world.json)."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: give a folder written by `arrag world`")
    params = json.loads(path.read_text())
    # a world.json without backgrounds, snap or tones predates those options: its world drew every background,
    # unsnapped boxes and tinted tones (write_world records all three now)
    return {
        "size": params["size"],
        "backgrounds": params.get("backgrounds", list(BACKGROUNDS)),
        "snap": params.get("snap", 1),
        "tones": params.get("tones", 0),
    }


@torch.no_grad()
def write_reconstructions(
    world_dir: str | Path, vq_dir: str | Path, out: str | Path, n: int = 4, seed: int = 0
) -> dict:
    """n ground-truth scenes per prompt of <world>/geneval, encoded and decoded by the VQ-VAE, as a GenEval folder
    (written atomically, `generation.json` last). Prompt i's scenes draw from the seed (seed, i)."""
    world_dir, out = Path(world_dir), Path(out)
    prompts = read_jsonl(world_dir / "geneval" / "evaluation_metadata.jsonl")
    settings = world_scene_settings(world_dir)
    size = settings.pop("size")
    vq = VQTokenizer.from_folder(vq_dir)
    if vq.image_size != size:
        raise ValueError(
            f"{vq_dir} encodes {vq.image_size} px images but {world_dir} has {size} px: use the world's VQ-VAE"
        )
    with atomic_path(out, directory=True) as tmp:
        for i, meta in enumerate(progress(prompts, desc="VQ reconstructions")):
            rng = np.random.default_rng([seed, i])
            scenes = np.stack([render(prompt_scene(meta, rng, size, **settings), size) for _ in range(n)])
            write_prompt_folder(tmp, i, meta, vq.decode_to_uint8(vq.encode(scenes)))
        record = {"world": str(world_dir), "vq": identity(vq_dir), "images_per_prompt": n, "seed": seed}
        record["parameters"] = sum(p.numel() for p in vq.vqmodel.parameters())  # what made the images: Params
        write_json(tmp / "generation.json", record | {"prompts": len(prompts)})
    return record
