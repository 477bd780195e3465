"""`arrag bench generate`: images per second and time per decoding step, methods side by side (paper Table 4).

Methods run interleaved (vanilla, DAiD, RA-CM3, vanilla, ...) on the same prompts at the same batch size
after one warm-up batch each, so machine noise spreads evenly; ratios are to vanilla in the same run.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from arrag.decoding.loop import DecodingHook, SamplingConfig
from arrag.decoding.pipeline import ImageGenerationPipeline, method_parameters
from arrag.io import write_json, write_text
from arrag.methods import MethodSettings, VanillaSettings


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- timing a window of steps


class _Enough(Exception):
    """Raised by a timer once it has timed its steps: decoding stops there."""


class StepTimer(DecodingHook):
    """The last hook of a row: the time at the end of each step; stops the decoding after `steps` steps."""

    def __init__(self, steps: int):
        self.steps, self.times = steps, []

    def after_step(self, state, tokens) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) == self.steps:
            raise _Enough


def timed(run: Callable[[object], None], timer, device: torch.device) -> tuple[float, list[float]]:
    """(seconds to the first token, seconds of each later step) of run(timer), which decodes until the timer
    stops it."""
    _synchronise(device)
    t0 = time.perf_counter()
    try:
        run(timer)
    except _Enough:
        pass
    _synchronise(device)
    if len(timer.times) != timer.steps:
        raise RuntimeError(f"the row stopped after {len(timer.times)} steps, not {timer.steps}")
    marks = [t0, *timer.times]
    return marks[1] - marks[0], list(np.diff(marks[1:]))


def load_methods(
    settings: list[MethodSettings],
    model: str,
    *,
    racm3_model: str | None = None,
    revision: str | None = None,
    device: str | None = None,
    db_devices: str | None = None,
) -> dict[str, tuple[ImageGenerationPipeline, Callable[[], list[DecodingHook]]]]:
    """The methods to time side by side, as run_generation_bench takes them, loaded from their settings
    (arrag.methods): vanilla and DAiD share `model`'s pipeline, FAiD gets a copy of its own (its attached modules
    must not touch the other rows) and RA-CM3 decodes with `racm3_model` on the same device."""
    if any(method.name == "racm3" for method in settings) and not racm3_model:
        raise ValueError("the RA-CM3 row needs its model (arrag train-racm3; --racm3-model)")
    pipe = VanillaSettings().pipeline(model, revision=revision, device=device)
    methods = {}
    for method in settings:
        own = pipe
        if method.name == "faid":
            own = method.pipeline(model, revision=revision, device=device)
        if method.name == "racm3":
            own = method.pipeline(racm3_model, device=str(pipe.device))
        methods[method.name] = (own, method.hook_factory(own, db_devices))
    return methods


def decoding_steps(pipe: ImageGenerationPipeline, sampling: SamplingConfig) -> int:
    """Forward passes per image: one per token (autoregressive), or the masked loop's T (Show-o)."""
    from arrag.models.backbone import MASKED

    return pipe.sampling_config(sampling).steps if pipe.backbone.loop == MASKED else pipe.vq.grid**2


def estimates(pipe: ImageGenerationPipeline, sampling: SamplingConfig, timed_steps: int | None) -> bool:
    """Whether a batch's time is estimated from its first `timed_steps` steps (time_batch): only on an
    autoregressive backbone, and only when they are fewer than the image's steps. Show-o decodes in a few masked
    steps (18 by default at 256 px), all timed."""
    from arrag.models.backbone import MASKED

    if timed_steps is None or pipe.backbone.loop == MASKED:
        return False
    return timed_steps < decoding_steps(pipe, sampling)


def time_batch(pipe, batch, seeds, sampling, hooks: list[DecodingHook], timed_steps: int | None = None) -> float:
    """Seconds to generate and decode one batch. With `timed_steps` (when `estimates`), decoding stops after that
    many steps and the batch's time is estimated as: the time to the first token (prompt pass, retrieval set-up)
    + the remaining steps at the mean of the timed ones after the first + one VQ decode."""
    total = decoding_steps(pipe, sampling)
    if not estimates(pipe, sampling, timed_steps):
        _synchronise(pipe.device)
        t0 = time.perf_counter()
        pipe.vq.decode(pipe.generate_codes(batch, seeds, sampling, hooks))
        _synchronise(pipe.device)
        return time.perf_counter() - t0
    timer = StepTimer(timed_steps)
    run = lambda t: pipe.generate_codes(batch, seeds, sampling, [*hooks, t])  # noqa: E731
    first, later = timed(run, timer, pipe.device)  # [timed_steps - 1] seconds of each later step
    codes = torch.zeros(len(batch), pipe.vq.grid, pipe.vq.grid, dtype=torch.long, device=pipe.device)
    _synchronise(pipe.device)
    t0 = time.perf_counter()
    pipe.vq.decode(codes)  # the decoder's cost does not depend on the codes' values
    _synchronise(pipe.device)
    return first + (total - 1) * sum(later) / len(later) + time.perf_counter() - t0


def run_generation_bench(
    methods: dict[str, tuple[ImageGenerationPipeline, Callable[[], list[DecodingHook]]]],
    prompts: list[str],
    *,
    batch_size: int = 16,
    repeats: int = 3,
    sampling: SamplingConfig = SamplingConfig(),
    timed_steps: int | None = None,
) -> dict:
    """methods: name -> (pipeline, factory of fresh hooks). Vanilla is (base pipeline, list), DAiD the base
    pipeline with DAiD hooks, RA-CM3 its own pipeline (it retrieves a reference per prompt) with no hooks.
    All pipelines must share a device and a token grid. Returns rows with images/s and s/step. With
    `timed_steps`, each batch decodes only its first steps and its time is estimated from them (`time_batch`)."""
    if timed_steps is not None and timed_steps < 2:
        raise ValueError(f"timed_steps={timed_steps}: time at least 2 steps (the first one includes the prompt)")
    pipe = next(iter(methods.values()))[0]
    batch = (prompts * batch_size)[:batch_size]
    seeds = list(range(batch_size))
    steps = decoding_steps(pipe, sampling)
    seconds = {name: [] for name in methods}
    for rep in range(repeats + 1):  # repetition 0 is the warm-up
        for name, (pipe, make_hooks) in methods.items():
            elapsed = time_batch(pipe, batch, seeds, sampling, make_hooks(), timed_steps)
            if rep:
                seconds[name].append(elapsed)
    base = sum(seconds["vanilla"]) / repeats if "vanilla" in seconds else None
    rows = []
    for name, ts in seconds.items():
        mean = sum(ts) / len(ts)
        pipe, make_hooks = methods[name]
        rows.append(
            {
                "method": name,
                "parameters": method_parameters(pipe.model, make_hooks()),
                "images": batch_size * len(ts),
                "total_seconds": sum(ts),
                "seconds_per_batch": mean,
                "images_per_second": batch_size / mean,
                "seconds_per_step": mean / steps,
                "overhead_vs_vanilla": (mean / base - 1) if base else None,
                "runs": ts,
            }
        )
    return {
        "batch_size": batch_size,
        "repeats": repeats,
        "tokens_per_image": pipe.vq.grid**2,
        "steps_per_image": steps,
        "timed_steps": timed_steps if estimates(pipe, sampling, timed_steps) else steps,
        "backbone": pipe.backbone.name,
        "guidance_scale": sampling.guidance_scale,
        "device": str(pipe.device),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name(pipe.device)}" if pipe.device.type == "cuda" else ""),
        "rows": rows,
    }


def markdown_table(result: dict) -> str:
    lines = ["| method | images/s | s per batch | ms per step | vs vanilla |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        over = r["overhead_vs_vanilla"]
        lines.append(
            f"| {r['method']} | {r['images_per_second']:.2f} | {r['seconds_per_batch']:.3f} | "
            f"{1000 * r['seconds_per_step']:.2f} | {'–' if over is None else f'{100 * over:+.1f}%'} |"
        )
    return "\n".join(lines) + (
        f"\n\n{result.get('backbone', 'janus')} backbone, batch {result['batch_size']} (CFG doubles it inside the "
        f"model), {result['tokens_per_image']} tokens per image in "
        f"{result.get('steps_per_image', result['tokens_per_image'])} steps, {result['repeats']} interleaved "
        f"repeats after a warm-up, device {result['device']}; {result['machine']}.{_estimated(result)}\n"
    )


def _estimated(result: dict) -> str:
    total = result.get("steps_per_image", result["tokens_per_image"])
    timed = result.get("timed_steps", total)
    if timed >= total:
        return ""
    return (
        f" Each batch decoded its first {timed} of {total} steps: its time is the first token's plus {total - 1} "
        "steps at the mean of the later timed ones, plus one VQ decode."
    )


def write_results(result: dict, out_json, out_md) -> None:
    write_json(out_json, result)
    write_text(out_md, markdown_table(result))
