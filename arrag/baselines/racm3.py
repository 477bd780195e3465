"""RA-CM3 on the Janus backbone (paper appendix B.1): image-level retrieval augmentation.

For a prompt, an image-level retriever (arrag.retrieval.image_index) picks the single most similar
corpus image; its VQ tokens are embedded through the model's generation embeddings + aligner and placed
before the prompt embeddings. The model is fine-tuned on [reference | prompt | image] sequences of the
fine-tuning split and generates through the same decoding loop as every other method.

Guidance: the unconditional branch sees neither caption nor reference (the reference is masked out), and
caption dropout during fine-tuning drops both together, so guidance amplifies the whole condition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from arrag.decoding.pipeline import ImageGenerationPipeline, resolve_device
from arrag.manifest import require_input
from arrag.models.janus import load_janus, model_identity, save_janus
from arrag.models.training import (
    CAPTION_DROPOUT,
    artefact_id,
    caption_inputs,
    captions_digest,
    check_training_fields,
    fit_generation_path,
    fit_record,
    image_generation_loss,
    resolve_steps,
)
from arrag.models.vq import VQTokenizer, codebook_fingerprint
from arrag.retrieval.image_index import ImageLevelIndex
from arrag.validation import COUNT, POSITIVE


@dataclass
class RACM3TrainingConfig:
    steps: int | None = 300  # optimiser steps; None: derived from `epochs` and the pairs read
    epochs: float | None = None  # passes over the fine-tuning pairs; then `steps` must be None
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    caption_dropout: float = 0.1  # drops caption and reference together (the unconditional branch)
    checkpoint_every: int = 100
    seed: int = 0
    grad_accum: int = 1  # global batch = batch_size * grad_accum * processes

    def __post_init__(self):
        check_training_fields(
            self,
            {
                "steps": COUNT | {"optional": True},  # None: derived from epochs
                "epochs": POSITIVE | {"optional": True},
                "weight_decay": dict(low=0),
                "caption_dropout": CAPTION_DROPOUT,
                "grad_accum": COUNT,
            },
        )


def train_racm3(
    base_dir: str | Path,
    codes: torch.Tensor,
    captions: list[str],
    index: ImageLevelIndex,
    cfg: RACM3TrainingConfig,
    out_dir: str | Path,
    device: str | None = None,
    codes_codebook_sha256: str | None = None,
    restart: bool = False,
) -> dict:
    """Fine-tune the base model's generation path on the pairs (codes [N, H, W] = the images' VQ tokens under
    the base model, captions [N]), each caption's retrieved reference as a prefix. Runs as one process on
    `device`, or under `accelerate launch`/torchrun as several (one per GPU; each takes its share of every
    global batch and the gradients are summed, as FAiD's training does). `codes_codebook_sha256`: the
    fingerprint of the codebook `codes` were made with, refused when it is not the base model's."""
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    acc = Accelerator(cpu=resolve_device(device).type == "cpu")
    device = acc.device
    model, processor = load_janus(base_dir, device=device)
    base_identity = model_identity(model)  # before training changes the weights
    vq = VQTokenizer.from_janus(model)
    sha = codebook_fingerprint(vq.codebook)
    index.check_codebook(sha, f"the base model {base_dir}")
    if not index.identity:
        raise ValueError("the image index has no identity: save it first (ImageLevelIndex.save)")
    if codes_codebook_sha256 is not None and codes_codebook_sha256 != sha:
        raise ValueError(f"the fine-tuning codes were tokenised with another codebook than {base_dir}; re-tokenise")
    codes = codes.to(device).flatten(1)  # [N, T]
    rows = index.to(device).retrieve(captions, device)  # [N] top-1 reference per caption (on this process' GPU)
    references = index.reference_codes(rows, device)  # [N, T]
    ids, mask, uncond = caption_inputs(processor, captions, device)

    def batch_loss(idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        idx, drop = idx.to(device), drop.to(device)
        batch_ids = torch.where(drop[:, None], uncond[idx], ids[idx])
        return image_generation_loss(model, batch_ids, mask[idx], codes[idx], references[idx], prefix_visible=~drop)

    cfg, schedule = resolve_steps(cfg, len(codes), cfg.batch_size * cfg.grad_accum * acc.num_processes)
    settings = {"trainer": "racm3", "base": artefact_id(base_dir), "captions": captions_digest(captions)}
    settings |= {"index": index.metadata, "processes": acc.num_processes}
    params, start, log, t0, ckpt = fit_generation_path(
        model, len(codes), batch_loss, cfg, out_dir, "RA-CM3", acc, settings=settings, restart=restart
    )
    stats = {
        "method": "racm3",
        "base_model": str(base_dir),
        **fit_record(cfg, schedule, start, t0),
        "log": log,
        "trainable_parameters": sum(p.numel() for p in params),
        "config": asdict(cfg),
        "image_index": index.metadata | {"encoder": index.encoder.name, "identity": index.identity},
        "distinct_references": int(len(np.unique(rows))),
        "processes": acc.num_processes,
        "global_batch": cfg.batch_size * cfg.grad_accum * acc.num_processes,
    }
    if acc.is_main_process:
        inputs = {"base_model": base_identity, "image_index": index.identity}
        save_janus(model, processor, out_dir, inputs=inputs, extra={"training.json": stats})
        ckpt.discard()
    acc.wait_for_everyone()
    return stats


class RACM3Pipeline(ImageGenerationPipeline):
    """ImageGenerationPipeline whose prompts carry their retrieved reference image as a token prefix.

    After each call, `copy_candidates()` gives the reference token at every position (with the reference's
    image id as provenance) for the over-copying measurement.
    """

    def __init__(self, model, processor, index: ImageLevelIndex, device: str | torch.device | None = None):
        super().__init__(model, processor, device)
        index.check_codebook(codebook_fingerprint(self.vq.codebook))
        if index.grid != (self.vq.grid, self.vq.grid):
            raise ValueError(f"the image index holds {index.grid} token grids, the model makes {self.vq.grid}^2")
        self.index = index
        self._rows: list[np.ndarray] = []

    @classmethod
    def from_pretrained(
        cls, source: str | Path, index: str | Path, *, revision: str | None = None, device: str | None = None
    ):
        """An RA-CM3 model and the image index it was trained with: another index is refused (its references
        are not the ones the model learnt to copy from)."""
        device = resolve_device(device)
        model, processor = load_janus(source, revision=revision, device=device)
        image_index = ImageLevelIndex.load(index, device)
        if not image_index.identity:
            raise ValueError(f"{index} has no manifest: rebuild it with `arrag build-image-index`")
        fix = f"pass the index it was trained with (see {source}/MANIFEST.json) or retrain RA-CM3 with this one"
        require_input(
            {"inputs": model.arrag_inputs}, "image_index", image_index.identity, f"the RA-CM3 model {source}", fix
        )
        return cls(model, processor, image_index, device)

    def prefix_length(self) -> int:
        return self.vq.grid**2

    def prefix_codes(self, prompts: list[str]) -> torch.Tensor:
        """The top-1 reference image of each prompt, flattened: [B, H*W]."""
        rows = self.index.retrieve(prompts, self.device)
        self._rows.append(rows)
        return self.index.reference_codes(rows, self.device)

    def __call__(self, *args, **kwargs):
        self._rows = []
        return super().__call__(*args, **kwargs)

    def copy_candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For the images of the last call: values [T, B, 1] = the reference's token at each raster position,
        sources [T, B, 1, 3] = (reference image id, row, col), as DAiD.recorded() lays out its hits."""
        rows = np.concatenate(self._rows)
        values = self.index.reference_codes(rows).T[:, :, None]  # [T, B, 1]
        h, w = self.index.grid
        t, b = values.shape[:2]
        image = torch.from_numpy(self.index.image_ids[rows]).expand(t, b)
        pos = torch.arange(t)[:, None].expand(t, b)
        sources = torch.stack([image, pos // w, pos % w], dim=-1)[:, :, None]  # [T, B, 1, 3]
        return values, sources
