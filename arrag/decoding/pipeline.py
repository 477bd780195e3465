"""Text -> images: prompts through the decoding loop and the VQ decoder, with per-image seeds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from arrag.data.geneval_layout import (
    is_complete,
    prepare_output,
    prompt_folder,
    shard_of,
    write_prompt_folder,
)
from arrag.decoding.loop import DecodingHook, SamplingConfig
from arrag.io import progress
from arrag.models.backbone import JanusBackbone, load_backbone


def image_seed(base_seed: int, prompt: str, sample: int) -> int:
    """A stable seed per (run seed, prompt text, sample index): an image does not depend on which other
    prompts share its batch or on the order of the prompt list, so runs are resumable and reproducible."""
    digest = hashlib.sha256(f"{base_seed}\x00{prompt}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def resolve_device(device: str | None) -> torch.device:
    """auto/None: cuda when available; else the device named, refused when it is not there (a clear error rather
    than a driver traceback halfway into a run)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise ValueError(
                f"--device {device}: this machine has {count} CUDA GPU(s) visible; use --device cpu or auto"
            )
    return resolved


def method_parameters(model, hooks: list[DecodingHook]) -> int:
    """Parameters of what makes a method's images: every parameter of the loaded model plus those its hooks add
    (FAiD's modules). Retrievers are not counted (a database holds no parameters; RA-CM3's CLIP text encoder is
    left out as the paper leaves it out: RA-CM3 at Janus-Pro's 1.0B)."""
    params = {id(p): p for p in model.parameters()}
    params |= {id(p): p for hook in hooks for p in hook.added_parameters()}
    return sum(p.numel() for p in params.values())


class ImageGenerationPipeline:
    """model + processor + VQ decoder. `pipe(prompts, n=4)` -> (uint8 images [P*n, S, S, 3], codes [P*n, H, W])."""

    def __init__(self, model, processor=None, device: str | torch.device | None = None):
        """`model` + `processor` (a Janus model), or a backbone (arrag.models.backbone) alone."""
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.backbone = model if hasattr(model, "generate_codes") else JanusBackbone(model, processor)
        self.model = self.backbone.model.to(self.device).eval()
        self.processor = processor
        self.vq = self.backbone.vq

    @classmethod
    def from_pretrained(cls, source: str | Path, *, revision: str | None = None, device: str | None = None):
        device = resolve_device(device)
        return cls(load_backbone(source, revision=revision, device=device), device=device)

    def sampling_config(self, sampling: SamplingConfig):
        """The backbone's loop settings from the shared sampling settings (Show-o's masked loop has its own)."""
        return self.backbone.sampling_config(sampling)

    def generate_codes(
        self,
        prompts: list[str],
        seeds: list[int],
        sampling: SamplingConfig = SamplingConfig(),
        hooks: list[DecodingHook] = (),
    ) -> torch.Tensor:
        """One token grid per (prompt, seed) pair, all in one batch, by the backbone's loop: codes [B, H, W]."""
        return self.backbone.generate_codes(prompts, seeds, sampling, hooks, prefix_codes=self.prefix_codes(prompts))

    def check_prompt_lengths(self, prompts: list[str]) -> None:
        """Refuse prompts whose tokens, with the image's tokens and any reference prefix, do not fit the model's
        context (Show-o: its text block): positions past it were never trained, the images would be wrong."""
        reserved = self.vq.grid**2 * (2 if self.prefix_length() else 1)  # the image, and RA-CM3's reference
        limit, room = self.backbone.prompt_room(reserved)
        for start in range(0, len(prompts), 1024):
            chunk = list(prompts[start : start + 1024])
            for prompt, length in zip(chunk, self.backbone.prompt_lengths(chunk)):
                if length > limit:
                    raise ValueError(
                        f"prompt {prompt[:60]!r}{'...' if len(prompt) > 60 else ''} is {length} tokens; {room}: "
                        "shorten it"
                    )

    def prefix_length(self) -> int:
        """Image tokens placed before each prompt: none here (RA-CM3's pipeline places its reference)."""
        return 0

    def prefix_codes(self, prompts: list[str]) -> torch.Tensor | None:
        """Image tokens [B, P] to place before each prompt: none here (RA-CM3's pipeline adds its reference)."""
        return None

    def copy_candidates(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Retrieved material of the last call's images for the over-copying measurement, if the pipeline
        itself retrieves (RA-CM3); retrieval hooks (DAiD) record their own."""
        return None

    def __call__(
        self,
        prompts: list[str] | str,
        n: int = 1,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
        batch_size: int = 32,
        hooks: list[DecodingHook] = (),
        first_sample: list[int] | None = None,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """n images per prompt; `first_sample[j]` offsets prompt j's sample indices (so a prompt listed twice
        in a benchmark gets new samples rather than the same images again)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.check_prompt_lengths(sorted(set(prompts)))
        offsets = first_sample or [0] * len(prompts)
        jobs = [(p, image_seed(seed, p, o + i)) for p, o in zip(prompts, offsets) for i in range(n)]
        images, codes = [], []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            c = self.generate_codes([p for p, _ in chunk], [s for _, s in chunk], sampling, hooks)
            codes.append(c.cpu())
            images.append(self.vq.decode_to_uint8(c))
        return np.concatenate(images), torch.cat(codes)


def generate_prompt_set(
    pipe: ImageGenerationPipeline,
    records: list[dict],
    root: str | Path,
    *,
    n: int,
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 32,
    prompt_field: str = "prompt",
    hooks: list[DecodingHook] = (),
    settings: dict | None = None,
    shard: int = 0,
    num_shards: int = 1,
) -> dict:
    """Generate `n` images for each record into GenEval's folder layout under `root` (resumable).

    `records` are GenEval metadata dicts (or any dicts with `prompt_field`); each folder's metadata.jsonl
    holds the record with the prompt under "prompt", as the GenEval evaluator expects. With num_shards > 1
    this call makes only the prompts of `shard` (index % num_shards == shard): shards run as separate jobs
    (one per GPU) into the same root, each writing its own prompt folders.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards}: need 0 <= shard < num_shards")
    for i, r in enumerate(records):
        if prompt_field not in r:
            raise ValueError(f"prompt record {i} has no {prompt_field!r} field (fields: {sorted(r)})")
    sampling = pipe.sampling_config(sampling)  # recorded as the loop ran it (Show-o: its masked settings)
    run_settings = {
        "n": n,
        "seed": seed,
        "sampling": vars(sampling),
        "prompt_field": prompt_field,
        "prompts": len(records),
        # other prompts under the same count must not reuse the old images
        "prompts_sha256": hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16],
        **(settings or {}),
    }
    pipe.check_prompt_lengths(sorted({r[prompt_field] for r in records}))  # all of them, before any image
    root = prepare_output(root, run_settings)  # a staging folder when root holds images of other settings
    # the k-th repeat of a prompt text draws samples k*n .. k*n+n-1, not the first prompt's images again
    seen: dict[str, int] = {}
    occurrence = []
    for r in records:
        occurrence.append(seen.get(r[prompt_field], 0))
        seen[r[prompt_field]] = occurrence[-1] + 1
    mine = [i for i in range(len(records)) if shard_of(i, shard, num_shards)]
    todo = [i for i in mine if not is_complete(prompt_folder(root, i), n)]
    per_batch = max(1, batch_size // n)  # whole prompts per batch, so each folder is written at once
    for start in progress(range(0, len(todo), per_batch), desc=f"generating {len(todo)} prompts", unit="batch"):
        chunk = todo[start : start + per_batch]
        prompts = [records[i][prompt_field] for i in chunk]
        offsets = [occurrence[i] * n for i in chunk]
        images, codes = pipe(
            prompts, n=n, sampling=sampling, seed=seed, batch_size=len(chunk) * n, hooks=hooks, first_sample=offsets
        )
        copying = _over_copying(pipe, hooks, codes)
        for j, i in enumerate(chunk):
            meta = {**records[i], "prompt": records[i][prompt_field]}
            extra = {"copying.json": copying[j * n : (j + 1) * n]} if copying else None
            write_prompt_folder(root, i, meta, images[j * n : (j + 1) * n], extra)
    done = {"generated": len(todo), "reused": len(mine) - len(todo)}
    return {**run_settings, "shard": shard, "num_shards": num_shards, **done}


def _over_copying(pipe: ImageGenerationPipeline, hooks, codes: torch.Tensor) -> list[dict] | None:
    """Per-image over-copying statistics against what was retrieved: the hits of the first hook that recorded
    them (DAiD), else the pipeline's own retrieval (RA-CM3's reference), else None."""
    from arrag.evaluation.over_copying import copy_sources, over_copying

    candidates = next((hook.recorded() for hook in hooks if getattr(hook, "record", False)), None)
    candidates = candidates or pipe.copy_candidates()
    if candidates is None:
        return None
    values, sources = candidates
    return over_copying(copy_sources(codes.to(values.device), values, sources))
