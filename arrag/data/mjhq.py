"""MJHQ-30K (Playground AI; the paper's "Midjourney-30K"): 30,000 Midjourney images in 10 categories with their
prompts, the real-image side of Table 3's FID, CMMD and FWD.

The Hugging Face dataset `playgroundai/MJHQ-30K` holds two files:
    meta_data.json       {"<image id>": {"category": "animals", "prompt": "..."}, ...}
    mjhq30k_imgs.zip     <category>/<image id>.jpg, 1024 x 1024

`download_mjhq` fetches both at a pinned revision (resolving and recording the commit when none is given);
`mjhq_records` turns the metadata into prompt records for `arrag generate-benchmark` (one image per prompt);
`extract_reference` unpacks the images those records name, as the reference folder the metrics read.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from arrag.data.downloads import promote_partial
from arrag.io import atomic_path, progress, write_json

REPO_ID = "playgroundai/MJHQ-30K"
META = "meta_data.json"
IMAGES = "mjhq30k_imgs.zip"
CATEGORIES = ["animals", "art", "fashion", "food", "indoor", "landscape", "logo", "people", "plants", "vehicles"]


def resolve_revision(revision: str | None) -> str:
    """A commit id: the given one, or the dataset's current head (recorded by the caller, so reruns pin it)."""
    if revision and len(revision) == 40:
        return revision
    from huggingface_hub import HfApi

    return HfApi().dataset_info(REPO_ID, revision=revision or "main").sha


def download_mjhq(out_dir: str | Path, revision: str | None = None, mirror: str | Path | None = None) -> dict:
    """meta_data.json and mjhq30k_imgs.zip into out_dir, plus manifest.json naming the commit they came from.

    mirror: a local folder already holding both files (clusters whose compute nodes have no internet);
    otherwise huggingface_hub downloads them into out_dir.partial/, where an interrupted download resumes.
    out_dir itself appears only once both files and the manifest are complete.
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        commit = "mirror:" + str(Path(mirror).resolve())
        for name in (META, IMAGES):
            src = Path(mirror) / name
            if not src.is_file():
                raise FileNotFoundError(f"the MJHQ-30K mirror {mirror} lacks {name}: copy both {META} and {IMAGES}")
            (partial / name).unlink(missing_ok=True)
            (partial / name).symlink_to(src.resolve())
    else:
        from huggingface_hub import hf_hub_download

        commit = resolve_revision(revision)
        for name in (META, IMAGES):
            hf_hub_download(REPO_ID, name, repo_type="dataset", revision=commit, local_dir=partial)
    manifest = {"repo": REPO_ID, "revision": commit, "files": [META, IMAGES]}
    write_json(partial / "manifest.json", manifest)
    promote_partial(partial, out_dir)
    return manifest


def mjhq_records(meta_path: str | Path, categories: list[str] | None = None, limit: int | None = None) -> list[dict]:
    """Prompt records {"prompt", "item_id", "category"} in image-id order, optionally of some categories and
    the first `limit` of them (the paper's hyper-parameter sweeps use a 10K subset)."""
    meta = json.loads(Path(meta_path).read_text())
    wanted = set(categories or CATEGORIES)
    unknown = wanted - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown MJHQ-30K categories {sorted(unknown)}; the dataset has {CATEGORIES}")
    records = []
    for item_id in sorted(meta):
        entry = meta[item_id]
        if not {"category", "prompt"} <= set(entry):
            raise ValueError(f"{meta_path}: entry {item_id!r} lacks 'category' or 'prompt' (got {sorted(entry)})")
        if entry["category"] in wanted:
            records.append({"prompt": entry["prompt"], "item_id": item_id, "category": entry["category"]})
    return records[:limit] if limit else records


def extract_reference(zip_path: str | Path, records: list[dict], out_dir: str | Path) -> int:
    """The real images of `records` from the zip into out_dir/<category>/<id>.jpg, atomically; returns the count."""
    out_dir = Path(out_dir)
    with zipfile.ZipFile(zip_path) as archive, atomic_path(out_dir, directory=True) as tmp:
        names = set(archive.namelist())
        for r in progress(records, desc="MJHQ-30K reference", unit="image"):
            name = f"{r['category']}/{r['item_id']}.jpg"
            if name not in names:
                raise ValueError(f"{zip_path} has no {name}: the zip and {META} come from different revisions")
            (tmp / r["category"]).mkdir(exist_ok=True)
            (tmp / name).write_bytes(archive.read(name))
    return len(records)
