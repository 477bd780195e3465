"""Fine-tuning pairs (image tokens, caption) for FAiD (arrag faid-trainset) and RA-CM3 (arrag train-racm3).

Two sources: code shards of captioned sources (arrag tokenise; the paper's captioned corpora), read as they are,
or a split of the mini world, tokenised here. Either way the images an exclusion list names (arrag
contamination) are left out, and pairs that read the same files as the retrieval corpus are refused: they would
retrieve their own patches, the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arrag.data.code_shards import load_code_shards, shard_captions
from arrag.data.contamination import Exclusions, kept_rows
from arrag.data.mini_world import load_split
from arrag.data.sources import shared_locations
from arrag.models import training
from arrag.models.vq import codebook_fingerprint


@dataclass(frozen=True)
class PairSource:
    """Where the pairs come from: `codes` (code shard paths) or `world` (a folder of `arrag world`) with its
    `split`; `exclude`: an exclusion list. The CLI's parsed flags (--codes/--world/--split/--exclude) fit too."""

    codes: list[str] | None = None
    world: str | None = None
    split: str = "finetune"
    exclude: str | None = None


def fine_tuning_pairs(source: PairSource, vq_of) -> tuple:
    """The fine-tuning pairs as (codes LongTensor [N, H, W], captions [N], their source specs, the fingerprint
    of the codebook the codes were made with, each pair's position in its split (int64 [N]; world only)):
    code shards of captioned sources (source.codes, read as they are), or a mini-world split
    (source.world/source.split), tokenised here by the VQTokenizer `vq_of()` returns. Pairs the exclusion list
    source.exclude names are left out."""
    if source.codes:
        codes, image_ids, metas = load_code_shards(source.codes)
        specs = {json.dumps(m["source"], sort_keys=True) for m in metas}
        keep = kept_rows(source.exclude, image_ids, metas)
        captions = [c for c, k in zip(shard_captions(source.codes, metas), keep) if k]
        return codes[keep], captions, [json.loads(s) for s in sorted(specs)], metas[0]["codebook_sha256"], None
    vq = vq_of()
    split = Path(source.world) / source.split
    images, records = load_split(split)
    positions = np.arange(len(records))
    if source.exclude:
        spec = {"type": "mini_world", "path": str(split)}
        keep = Exclusions.load(source.exclude).keep_local(spec, positions, [str(r["id"]) for r in records])
        images, records, positions = images[keep], [r for r, k in zip(records, keep) if k], positions[keep]
    codes = training.encode_images(vq, images).cpu()
    return codes, [r["caption"] for r in records], [], codebook_fingerprint(vq.codebook), positions


def refuse_shared_sources(pair_sources: list[dict], sources: list[dict], what: str) -> None:
    """Fine-tuning pairs read from files the retrieval corpus also reads would retrieve their own patches (the
    answer), and code shards carry no database ids to leave them out by: refuse, naming the files."""
    for spec in pair_sources:
        for entry in sources:
            shared = shared_locations(spec, entry["source"]) if entry.get("source") else []
            if shared:
                raise ValueError(
                    f"the fine-tuning pairs and {what} read the same data ({', '.join(shared[:3])}"
                    f"{', ...' if len(shared) > 3 else ''}): take the pairs from files the corpus does not use"
                )
