"""Scoring throughput: images per second of each benchmark's scorer on already generated folders, measured in one
process (no import or start-up time), each scorer run `repeats` times after a warm-up run."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

from arrag.io import write_json, write_text


def time_scorer(score: Callable[[], int], repeats: int = 3) -> dict:
    """score() scores a folder and returns how many images it scored; -> images/s over `repeats` timed runs."""
    score()  # warm-up: caches, lazy imports
    seconds, images = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        images = score()
        seconds.append(time.perf_counter() - t0)
    mean = sum(seconds) / len(seconds)
    return {"images": images, "seconds": mean, "images_per_second": images / mean, "runs": seconds}


def run_scoring_bench(scorers: dict[str, Callable[[], int]], repeats: int = 3) -> dict:
    rows = [{"scorer": name, **time_scorer(fn, repeats)} for name, fn in scorers.items()]
    return {
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "rows": rows,
    }


def markdown_table(result: dict) -> str:
    lines = ["| scorer | images | seconds | images/s |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['scorer']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_second']:.1f} |")
    return "\n".join(lines) + (
        f"\n\n{result['repeats']} runs after a warm-up, {result['threads']} torch threads; {result['machine']}.\n"
    )


def write_results(result: dict, out_json, out_md) -> None:
    write_json(out_json, result)
    write_text(out_md, markdown_table(result))
