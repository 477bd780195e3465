"""Throughput of the corpus encoders at the paper's architectures, with random weights (no download needed;
random weights cost what trained ones do): Janus-Pro's VQ encoder, which `arrag tokenise` runs on every corpus
image (384 px -> 24 x 24 codes, normalised nearest-neighbour search included), and CLIP ViT-B/32's image tower,
which `arrag embed-images` runs for RA-CM3's index (224 px -> 512-d). Image decoding and resizing are not
included: they run in the same loop on the CPU and are measured by the tokenise jobs' own logs."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from arrag.bench.scoring import time_scorer
from arrag.io import write_json, write_text


def janus_pro_vq(device: str | torch.device = "cpu"):
    """A VQTokenizer over a random-weight JanusVQVAE of Janus-Pro's configuration (transformers' defaults)."""
    from transformers import JanusVQVAEConfig
    from transformers.models.janus.modeling_janus import JanusVQVAE

    from arrag.models.vq import VQTokenizer

    torch.manual_seed(0)
    # num_patches as JanusConfig sets it from Janus-Pro's 384 px / 16 px vision patches (the bare default is 32)
    return VQTokenizer(JanusVQVAE(JanusVQVAEConfig(num_patches=24)).to(device))


def clip_vit_b32(device: str | torch.device = "cpu"):
    """A random-weight open_clip ViT-B-32 image tower in arrag's embedder wrapper (what embed-images runs)."""
    import open_clip

    from arrag.models.clip import ClipEmbedder

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None, device=device).eval()
    cfg = model.visual.preprocess_cfg
    identity = {"name": "ViT-B-32", "pretrained": None, "dim": int(model.visual.output_dim)}
    return ClipEmbedder(model, 224, cfg["mean"], cfg["std"], identity).to(device)


def run_encoder_bench(device: str = "cpu", batch_size: int = 8, batches: int = 2, repeats: int = 2) -> dict:
    """images/s of each encoder on `batches` batches of random uint8 images, `repeats` timed runs after a warm-up."""
    rng = np.random.default_rng(0)
    vq = janus_pro_vq(device)
    clip = clip_vit_b32(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def run(encode, size: int):
        images = [rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8) for _ in range(batches)]

        def once() -> int:
            with torch.no_grad():
                for batch in images:
                    encode(batch)
            sync()
            return batch_size * batches

        return once

    def embed(batch: np.ndarray) -> torch.Tensor:
        return clip(torch.from_numpy(batch).permute(0, 3, 1, 2).float().to(device))

    encoders = {
        "Janus-Pro VQ encoder (384 px -> 24x24 codes)": run(vq.encode, 384),
        "CLIP ViT-B/32 image tower (224 px -> 512-d)": run(embed, 224),
    }
    rows = [{"encoder": name, "batch_size": batch_size, **time_scorer(fn, repeats)} for name, fn in encoders.items()]
    gpu = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None
    return {
        "device": str(device),
        "gpu": gpu,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "repeats": repeats,
        "rows": rows,
    }


def markdown_table(result: dict) -> str:
    lines = ["| encoder | batch | images | seconds | images/s |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        rate = f"{r['images_per_second']:.2f}"
        lines.append(f"| {r['encoder']} | {r['batch_size']} | {r['images']} | {r['seconds']:.2f} | {rate} |")
    where = result["gpu"] or f"{result['threads']} CPU threads"
    return "\n".join(lines) + f"\n\n{result['repeats']} runs after a warm-up on {where}; {result['machine']}.\n"


def write_results(result: dict, out_json, out_md) -> None:
    write_json(out_json, result)
    write_text(out_md, markdown_table(result))
