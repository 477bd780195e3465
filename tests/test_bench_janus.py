"""`arrag bench janus-pro-1b` (arrag/bench/janus_size.py) on the toy widths of Janus-Pro-1B's shapes."""

import pytest
import torch

from arrag.bench import JANUS_BENCH_ROWS
from arrag.bench.janus_size import (
    StepTimer,
    _Enough,
    generate_timer,
    janus_size_model,
    markdown_table,
    patch_tokens,
    run_janus_bench,
    scene_token_grids,
)
from arrag.decoding.loop import DecodingHook, SamplingConfig
from arrag.decoding.pipeline import ImageGenerationPipeline
from arrag.models.janus import tokenize_prompts


def test_patch_tokens_pick_the_nearest_normalised_code_of_each_projected_patch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
    codebook, projection = torch.randn(50, 8, generator=gen), torch.randn(768, 8, generator=gen)
    codes = patch_tokens(images, codebook, projection)  # [2, 2, 2]
    assert codes.shape == (2, 2, 2)
    for n, r, c in [(0, 0, 0), (1, 1, 0), (1, 0, 1)]:
        patch = torch.from_numpy(images[n, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16]).float() / 127.5 - 1
        z = torch.nn.functional.normalize(patch.reshape(-1) @ projection, dim=0)
        distances = ((torch.nn.functional.normalize(codebook, dim=1) - z) ** 2).sum(1)
        assert codes[n, r, c] == distances.argmin()


def test_scene_grids_are_janus_pro_shaped_deterministic_and_captioned():
    codebook = torch.randn(16384, 8)
    codes, captions = scene_token_grids(3, codebook, seed=1, chunk=2)
    again, _ = scene_token_grids(3, codebook, seed=1, chunk=2)
    assert codes.shape == (3, 24, 24) and codes.dtype == torch.uint16 and len(captions) == 3
    assert torch.equal(codes.int(), again.int()) and len(torch.unique(codes.int())) > 3


class Tokens(DecodingHook):
    def __init__(self):
        self.tokens = []

    def after_step(self, state, tokens):
        self.tokens.append(tokens.clone())


def test_the_timers_stop_decoding_after_their_steps_and_leave_the_tokens_alone():
    model, processor, params = janus_size_model(depth=1, toy=True)
    assert params["architecture"] > params["built"]  # the text vocabulary and SigLIP are cut
    pipe = ImageGenerationPipeline(model, processor, "cpu")
    sampling = SamplingConfig(greedy=True)
    full, timed = Tokens(), Tokens()
    pipe.generate_codes(["a red circle"], [0], sampling, [full])
    timer = StepTimer(5)
    with pytest.raises(_Enough):
        pipe.generate_codes(["a red circle"], [0], sampling, [timed, timer])
    assert len(timer.times) == 5 and len(full.tokens) == 576
    assert all(torch.equal(a, b) for a, b in zip(timed.tokens, full.tokens[:5]))
    timer = generate_timer(3)
    with pytest.raises(_Enough):
        batch = tokenize_prompts(processor, ["a red circle"])
        model.generate(**batch, generation_mode="image", do_sample=False, logits_processor=[timer])
    assert len(timer.times) == 3


def test_the_bench_times_every_row_interleaved_and_reports_windows():
    result = run_janus_bench(depth=2, toy=True, grids=8, steps=5, repeats=2, window=2, log=lambda _: None)
    assert list(result["rows"]) == list(JANUS_BENCH_ROWS)
    assert result["database"]["entries"] == 8 * 576 and result["tokens_per_image"] == 576
    for name, row in result["rows"].items():
        assert len(row["window_means"]) == 2 and row["seconds_per_step"] > 0  # 4 step intervals in windows of 2
        want = row["first_token_seconds"] + 575 * row["seconds_per_step"] + result["vq_decode_seconds"]
        assert row["seconds_per_image"] == pytest.approx(want)
        assert (row["added_parameters"] > 0) == name.startswith("faid")
    assert result["rows"]["vanilla"]["overhead_per_image"] == 0
    fastest = min(result["rows"]["vanilla"]["step_means_per_repeat"])
    for row in result["rows"].values():  # the fastest repeat of each row against vanilla's fastest
        assert row["overhead_per_step_best_repeat"] == pytest.approx(min(row["step_means_per_repeat"]) / fastest - 1)
    table = markdown_table(result)
    assert all(f"| {name} |" in table for name in JANUS_BENCH_ROWS) and "≤ +36%" in table


def test_the_bench_refuses_unknown_rows_and_step_counts():
    with pytest.raises(ValueError, match="choose among"):
        run_janus_bench(rows=("vanilla", "dait"))
    with pytest.raises(ValueError, match="steps=1"):
        run_janus_bench(steps=1)
