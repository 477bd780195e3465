import numpy as np
import pytest
import torch

from arrag.decoding.daid import DAiD, merge_distributions, retrieval_distribution
from arrag.decoding.loop import SamplingConfig, generate_image_tokens, make_generators
from arrag.models.janus import save_janus, tokenize_prompts
from arrag.models.vq import VQTokenizer
from arrag.retrieval.database import PatchDatabase


def _direct_p_ret(sq_dists, values, vocab, temperature, unique):
    """Eq. 2-3 written out hit by hit."""
    out = torch.zeros(len(values), vocab, dtype=torch.float64)
    for b in range(len(values)):
        hits = [(d.item(), v.item()) for d, v in zip(sq_dists[b], values[b]) if v >= 0]
        if unique:
            seen, kept = set(), []
            for d, v in hits:  # ascending distances: the first occurrence is the closest
                if v not in seen:
                    seen.add(v)
                    kept.append((d, v))
            hits = kept
        if not hits:
            continue
        w = torch.softmax(torch.tensor([-d / temperature for d, _ in hits], dtype=torch.float64), 0)
        for (_, v), wj in zip(hits, w):
            out[b, v] += wj
    return out


@pytest.mark.parametrize("unique", [False, True])
def test_retrieval_distribution_matches_the_formula(unique):
    sq = torch.tensor([[0.1, 0.2, 0.2, 0.9], [0.0, 0.5, float("inf"), float("inf")], [float("inf")] * 4])
    vals = torch.tensor([[3, 5, 3, 1], [2, 2, -1, -1], [-1, -1, -1, -1]])
    p = retrieval_distribution(sq, vals, 8, temperature=0.5, unique=unique)
    torch.testing.assert_close(p.double(), _direct_p_ret(sq, vals, 8, 0.5, unique), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(p.sum(-1), torch.tensor([1.0, 1.0, 0.0]))


def test_merge_distributions_invariants():
    g = torch.Generator().manual_seed(0)
    p_model = torch.softmax(torch.randn(3, 8, generator=g), -1)
    sq = torch.rand(3, 4, generator=g).sort(-1).values
    vals = torch.randint(0, 8, (3, 4), generator=g)
    vals[2] = -1  # no hits for the third row
    assert merge_distributions(p_model, sq, vals, 0.0, 1.0) is p_model  # weight 0: the model's own distribution
    merged = merge_distributions(p_model, sq, vals, 0.3, 2.0)
    expected = 0.7 * p_model + 0.3 * retrieval_distribution(sq, vals, 8, 2.0)
    torch.testing.assert_close(merged[:2], expected[:2])
    torch.testing.assert_close(merged[2], p_model[2])
    torch.testing.assert_close(merged.sum(-1), torch.ones(3))
    only_ret = merge_distributions(p_model, sq, vals, 1.0, 2.0)
    torch.testing.assert_close(only_ret[:2], retrieval_distribution(sq, vals, 8, 2.0)[:2])
    with pytest.raises(ValueError, match="weight"):
        merge_distributions(p_model, sq, vals, 1.5, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        merge_distributions(p_model, sq, vals, 0.5, 0.0)


@pytest.fixture(scope="module")
def tiny_db(tiny_janus):
    model, _, spec = tiny_janus
    codebook = VQTokenizer.from_janus(model).codebook
    allowed = torch.tensor([3, 7, 11])  # the database only ever holds these tokens
    codes = allowed[torch.randint(0, 3, (40, spec.grid, spec.grid), generator=torch.Generator().manual_seed(0))]
    return PatchDatabase.build(codes, codebook, index="flat"), codebook, allowed


def _generate(model, processor, prompts, seeds, hooks=(), greedy=False):
    batch = tokenize_prompts(processor, prompts)
    sampling = SamplingConfig(guidance_scale=3.0, temperature=1.0, greedy=greedy)
    return generate_image_tokens(
        model, **batch, sampling=sampling, generators=make_generators(seeds, "cpu"), hooks=hooks
    )


def test_weight_zero_gives_exactly_the_vanilla_tokens(tiny_janus, tiny_db):
    model, processor, _ = tiny_janus
    db, codebook, _ = tiny_db
    prompts, seeds = ["a photo of a circle", "a photo of two red squares"], [1, 2]
    vanilla = _generate(model, processor, prompts, seeds)
    daid = _generate(model, processor, prompts, seeds, hooks=[DAiD(db, codebook, k=5, weight=0.0)])
    assert torch.equal(vanilla, daid)
    assert not torch.equal(vanilla, _generate(model, processor, prompts, seeds, [DAiD(db, codebook, weight=0.9)]))


def test_weight_one_samples_only_retrieved_tokens(tiny_janus, tiny_db):
    model, processor, _ = tiny_janus
    db, codebook, allowed = tiny_db
    codes = _generate(model, processor, ["a photo of a circle"] * 3, [4, 5, 6], [DAiD(db, codebook, k=4, weight=1.0)])
    assert torch.isin(codes, allowed).all()


def test_each_image_retrieves_with_its_own_neighbours(tiny_janus, tiny_db):
    model, processor, _ = tiny_janus
    db, codebook, _ = tiny_db
    hook = lambda: [DAiD(db, codebook, k=5, weight=0.5, temperature=0.5)]  # noqa: E731
    both = _generate(model, processor, ["a photo of a circle", "a photo of a red square"], [8, 9], hook())
    first = _generate(model, processor, ["a photo of a circle"], [8], hook())
    second = _generate(model, processor, ["a photo of a red square"], [9], hook())
    assert torch.equal(both[0], first[0]) and torch.equal(both[1], second[0])


def test_retrieve_at_limits_the_retrieving_steps(tiny_janus, tiny_db):
    model, processor, _ = tiny_janus
    db, codebook, _ = tiny_db
    calls = []
    daid = DAiD(db, codebook, weight=0.5, retrieve_at=lambda step: calls.append(step) or step >= 8)
    _generate(model, processor, ["a photo of a circle"], [1], [daid])
    assert len(calls) == 16 and daid.last_sources is not None and daid.last_sources.shape == (1, 10, 3)


def test_generate_command_with_daid(tiny_janus, tiny_db, tmp_path, capsys):
    from arrag.cli import main

    model, processor, _ = tiny_janus
    db, _, allowed = tiny_db
    save_janus(model, processor, tmp_path / "model")
    db.save(tmp_path / "db")
    base = [
        "generate",
        "--model",
        str(tmp_path / "model"),
        "--prompt",
        "a photo of a circle",
        "--n",
        "2",
        "--device",
        "cpu",
        "--guidance-scale",
        "3",
        "--method",
        "daid",
    ]
    assert main(base + ["--out", str(tmp_path / "x")]) == 2
    assert "--db" in capsys.readouterr().err
    assert main(base + ["--db", str(tmp_path / "db"), "--daid-weight", "1", "--out", str(tmp_path / "o")]) == 0
    from PIL import Image

    assert len(list((tmp_path / "o").glob("*.png"))) == 2 and Image.open(tmp_path / "o" / "prompt000_00.png")

    # a torch_compact database sharded over two (logical, CPU) devices gives the same images
    codes = db.codes.reshape(-1, *db.grid).long()
    PatchDatabase.build(codes, db.codebook, index="torch_compact").save(tmp_path / "tdb")
    daid = base + ["--db", str(tmp_path / "tdb"), "--daid-weight", "1"]
    assert main(daid + ["--out", str(tmp_path / "one")]) == 0
    assert main(daid + ["--db-devices", "cpu:0,cpu:1", "--out", str(tmp_path / "two")]) == 0
    for name in ("prompt000_00.png", "prompt000_01.png"):
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "one" / name)), np.asarray(Image.open(tmp_path / "two" / name))
        )
    flat = base + ["--db", str(tmp_path / "db"), "--db-devices", "cpu:0,cpu:1", "--out", str(tmp_path / "f")]
    assert main(flat) == 2 and "shards a torch_compact database" in capsys.readouterr().err


def test_daid_generation_writes_over_copying_records(tiny_janus, tiny_db, tmp_path):
    from arrag.decoding.pipeline import ImageGenerationPipeline, generate_prompt_set
    from arrag.evaluation.over_copying import read_copying_records

    model, processor, _ = tiny_janus
    db, codebook, allowed = tiny_db
    pipe = ImageGenerationPipeline(model, processor, "cpu")
    hook = DAiD(db, codebook, k=4, weight=1.0, record=True)
    records = [{"prompt": "a photo of a circle"}, {"prompt": "a photo of a square"}]
    generate_prompt_set(pipe, records, tmp_path, n=2, sampling=SamplingConfig(guidance_scale=3.0), hooks=[hook])
    rows = read_copying_records(tmp_path)
    assert len(rows) == 4
    # weight 1: every token is one of the retrieved candidates of its step
    assert all(r["copied_fraction"] == 1.0 for r in rows)
    assert all(0 < r["largest_region_fraction"] <= 1 for r in rows)


def test_generation_bench_rows_and_ratios(tiny_janus, tiny_db):
    from arrag.bench.generate import markdown_table, run_generation_bench
    from arrag.decoding.pipeline import ImageGenerationPipeline

    model, processor, _ = tiny_janus
    db, codebook, _ = tiny_db
    pipe = ImageGenerationPipeline(model, processor, "cpu")
    methods = {"vanilla": (pipe, list), "daid": (pipe, lambda: [DAiD(db, codebook, k=4, weight=0.2)])}
    result = run_generation_bench(
        methods, ["a photo of a circle"], batch_size=2, repeats=1, sampling=SamplingConfig(guidance_scale=3.0)
    )
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["vanilla"]["overhead_vs_vanilla"] == 0.0 and len(rows["daid"]["runs"]) == 1
    assert rows["daid"]["seconds_per_step"] == rows["daid"]["seconds_per_batch"] / 16
    # Table 4's Params and Total (s): DAiD adds no parameters; the total is every timed image's time
    assert rows["daid"]["parameters"] == rows["vanilla"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert rows["daid"]["images"] == 2 and rows["daid"]["total_seconds"] == sum(rows["daid"]["runs"])
    assert "| daid |" in markdown_table(result)


def test_bad_settings_are_refused_before_generation(tiny_db):
    db, codebook, _ = tiny_db
    for kwargs, match in [
        ({"weight": 1.5}, "weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"k": 0}, "between 1 and the database size"),
        ({"k": len(db) + 1}, "between 1 and the database size"),
    ]:
        with pytest.raises(ValueError, match=match):
            DAiD(db, codebook, **kwargs)


def test_generation_bench_can_time_the_first_steps_and_estimate_the_batch(tiny_janus, tiny_db, monkeypatch):
    """--steps: decoding stops after the timed steps; a batch's time is the first token's + the remaining steps at
    the later steps' mean + one VQ decode. Under a clock that advances 1 s per reading, every interval is 1 s:
    1 + 15 x 1 + 1 for the tiny model's 4 x 4 grid."""
    import itertools
    import time

    from arrag.bench.generate import markdown_table, run_generation_bench
    from arrag.decoding.pipeline import ImageGenerationPipeline

    model, processor, _ = tiny_janus
    pipe = ImageGenerationPipeline(model, processor, "cpu")
    steps = []
    pipe_generate = pipe.generate_codes

    def counting(*args, **kwargs):
        codes = pipe_generate(*args, **kwargs)  # never returns: the timer stops decoding
        steps.append(codes)
        return codes

    monkeypatch.setattr(pipe, "generate_codes", counting)
    clock = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    result = run_generation_bench({"vanilla": (pipe, list)}, ["a circle"], batch_size=2, repeats=1, timed_steps=4)
    (row,) = result["rows"]
    assert row["seconds_per_batch"] == 1 + 15 * 1 + 1 and steps == []
    assert result["timed_steps"] == 4 and "first 4 of 16 steps" in markdown_table(result)
    full = run_generation_bench({"vanilla": (pipe, list)}, ["a circle"], batch_size=1, repeats=1, timed_steps=16)
    assert full["timed_steps"] == 16 and "first" not in markdown_table(full) and len(steps) == 2
    with pytest.raises(ValueError, match="at least 2 steps"):
        run_generation_bench({"vanilla": (pipe, list)}, ["a circle"], batch_size=1, repeats=1, timed_steps=1)
