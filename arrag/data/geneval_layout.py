"""Images in GenEval's folder layout, the one its official evaluator reads:

    <out>/<00000>/metadata.jsonl     the prompt's metadata record (one JSON line)
    <out>/<00000>/samples/0000.png   n images per prompt
    <out>/settings.json              how the images were generated (ours; the evaluator ignores it)

Each prompt folder is written atomically, so a folder that exists is complete and an interrupted run
resumes by skipping it. Folders made with other settings are never reused, and never deleted before the new
run is complete: it writes beside them (`.<out>.next/`) and takes their place at the end.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from arrag.io import atomic_path, check_output_path, replace_directory, write_json

SETTINGS = "settings.json"
GENERATION = "generation.json"  # written last: marks a prompt-set folder complete


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


def staging_folder(root: str | Path) -> Path:
    """Where a run whose settings differ from the finished (or foreign) images in `root` writes: beside root,
    replacing it only once complete (finish_output)."""
    root = Path(root)
    return root.with_name(f".{root.name}.next")


def _settings(folder: Path) -> dict | None:
    return json.loads((folder / SETTINGS).read_text()) if (folder / SETTINGS).is_file() else None


def _holds_images(root: Path) -> bool:
    return (root / GENERATION).exists() or any(c.is_dir() and c.name.isdigit() for c in root.iterdir())


def prepare_output(root: str | Path, settings: dict) -> Path:
    """The folder this run writes its prompt folders into: `root` when it is new or holds images of these
    settings (resumed); else staging_folder(root), so that the images already in root, and their
    generation.json, stay exactly as they are until the new run is complete. Never deletes finished work.

    Shards of one run call this at the same time: a lock makes the decision and the settings file one step."""
    root = check_output_path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(root)
    with open(root / ".settings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _settings(root)
        if current == settings or (current is None and not _holds_images(root)):
            if staging.exists():  # an unfinished staged run of other settings: never complete, not kept
                shutil.rmtree(staging)
            write_json(root / SETTINGS, settings)
            return root
        if staging.exists() and _settings(staging) != settings:
            shutil.rmtree(staging)  # an unfinished staged run of yet other settings
        staging.mkdir(exist_ok=True)
        write_json(staging / SETTINGS, settings)
        return staging


def output_folder(root: str | Path) -> Path:
    """The folder the current run of `root` writes into (after prepare_output): its staging folder if any."""
    staging = staging_folder(root)
    return staging if (staging / SETTINGS).is_file() else Path(root)


def finish_output(root: str | Path, summary: dict, carry: tuple[str, ...] = ()) -> Path:
    """Mark the current run of `root` complete: generation.json last; a staged run then takes root's place in one
    rename (the old images are removed only after that). `carry`: entries of root moved into the new folder
    first (the shard markers, which the workflow expects under root)."""
    root = Path(root)
    work = output_folder(root)
    for name in carry:
        if work != root and (root / name).exists():
            shutil.rmtree(work / name, ignore_errors=True)
            (root / name).rename(work / name)
    write_json(work / GENERATION, summary)
    if work != root:
        replace_directory(work, root)
    return root


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


# ---------------------------------------------------------------- a prompt set generated in shards
# Here, beside the layout, rather than in arrag.decoding: finishing a prompt set reads files only, and its job
# should not import torch and transformers for it (seconds per job, for each prompt set of each method).


def shard_marker(root: str | Path, shard: int, num_shards: int) -> Path:
    """Where a shard of a prompt set run as separate jobs records that it is done (its summary)."""
    return Path(root) / "shards" / f"{shard:05d}-of-{num_shards:05d}.json"


def finish_prompt_set(root: str | Path, records: list[dict], n: int, num_shards: int, prompts: str = "") -> dict:
    """After every shard of a prompt set (generate_prompt_set with num_shards): check the folder is complete,
    holds `records`' prompts (read from the file `prompts`, named in errors) and was made by shards of its current
    settings, then write generation.json (the summed summary). Returns the summary."""
    from arrag.evaluation.geneval import check_benchmark_folder

    markers = [shard_marker(root, i, num_shards) for i in range(num_shards)]
    missing = [str(m) for m in markers if not m.is_file()]
    if missing:
        raise ValueError(f"shards not finished: {missing}; rerun their `arrag generate-benchmark --shard` jobs")
    work = output_folder(root)  # a staged run's folder, or root
    check_benchmark_folder(work, images_per_prompt=n)
    folders = read_prompt_folders(work)
    if len(folders) != len(records):
        raise ValueError(f"{work} holds {len(folders)} prompt folders, {prompts} has {len(records)} prompts")
    current = json.loads((Path(work) / SETTINGS).read_text())
    for i, ((meta, _), record) in enumerate(zip(folders, records)):
        if meta != {**record, "prompt": record[current["prompt_field"]]}:
            raise ValueError(f"{work}/{i:05d} was made for another prompt record than {prompts} line {i + 1}")
    # every shard must have run with the settings the folder holds now (not a marker left by an older run)
    shards = [json.loads(m.read_text()) for m in markers]
    per_shard = ("shard", "num_shards", "generated", "reused", "seconds", "parameters")
    for marker, shard in zip(markers, shards):
        own = {k: v for k, v in shard.items() if k not in per_shard}
        if own != current or shard.get("parameters") != shards[0].get("parameters"):
            raise ValueError(f"{marker} was written under other settings than {work}/{SETTINGS}: rerun that shard")
    summary = dict(current) | {"parameters": shards[0].get("parameters")}
    summary |= {k: sum(s[k] for s in shards) for k in ("generated", "reused", "seconds")}
    summary |= {"num_shards": num_shards}
    finish_output(root, summary, carry=("shards",))  # the markers go along: the workflow expects them
    return summary
