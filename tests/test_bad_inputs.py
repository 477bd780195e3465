"""Bad inputs and faults, each with its specific clear error (or logged skip), and no output lost or half-written.

The README's "Bad input" table lists these cases. Each class: values that pass no check (NaN, inf, zero counts,
over-long prompts), finished work replaced only on success, truncated archives and incomplete folders, config
strings reaching the shell, resumes under other settings, and faults that used to end in tracebacks.
"""

import json

import numpy as np
import pytest

from arrag.cli import main

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_janus):
    model, processor, _ = tiny_janus
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def cli_error(args: list[str], capsys) -> str:
    """Run the CLI expecting a refusal (exit status 2, argparse's or ours); return its message."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------ numbers: finite, in range, integral


GEN = ["generate", "--model", "unused", "--prompt", "x", "--out", "unused"]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--daid-temperature", "nan"),
        ("--daid-temperature", "0"),
        ("--daid-weight", "inf"),
        ("--daid-weight", "1.5"),
        ("--temperature", "-inf"),
        ("--guidance-scale", "nan"),
        ("--n", "0"),
        ("--batch-size", "-3"),
        ("--top-k", "2.5"),
        ("--daid-k", "0"),
        ("--seed", "-1"),
    ],
)
def test_cli_refuses_bad_numbers_naming_the_flag(flag, value, capsys):
    err = cli_error(GEN + [f"{flag}={value}"], capsys)
    assert flag in err and repr(value) in err


@pytest.mark.parametrize(
    "command, setting",
    [
        ("train-vq", "lr=nan"),
        ("train-vq", "steps=0"),
        ("train-base", "caption_dropout=inf"),
        ("train-base", "batch_size=-1"),
    ],
)
def test_training_settings_refuse_nan_inf_and_zero_counts(command, setting, tmp_path, capsys):
    world = tmp_path / "world"  # never read: the settings are checked first
    extra = ["--vq", tmp_path / "vq"] if command == "train-base" else []
    err = cli_error(
        [command, "--world", world, "--split", "train", "--out", tmp_path / "out", "--set", setting] + extra, capsys
    )
    key, value = setting.split("=")
    assert key in err and value in err
    assert not (tmp_path / "out").exists()


def _library_cases():
    from arrag.baselines.racm3 import RACM3TrainingConfig
    from arrag.decoding.daid import DAiD, merge_distributions
    from arrag.decoding.loop import SamplingConfig
    from arrag.evaluation.features import MiniFeatureConfig
    from arrag.models.faid_training import FAiDTrainingConfig
    from arrag.models.training import BaseTrainingConfig, VQTrainingConfig

    db = [0] * 20  # only its size is read before the checks refuse
    p = np.full((1, 4), 0.25)
    return [
        ("DAiD temperature", lambda: DAiD(db, None, temperature=NAN)),
        ("DAiD weight", lambda: DAiD(db, None, weight=INF)),
        ("DAiD k", lambda: DAiD(db, None, k=0)),
        ("DAiD k", lambda: DAiD(db, None, k=21)),
        ("DAiD weight", lambda: merge_distributions(p, p, p, NAN, 1.0)),
        ("SamplingConfig.temperature", lambda: SamplingConfig(temperature=NAN)),
        ("SamplingConfig.guidance_scale", lambda: SamplingConfig(guidance_scale=INF)),
        ("SamplingConfig.top_k", lambda: SamplingConfig(top_k=0)),
        ("FAiDTrainingConfig.lr", lambda: FAiDTrainingConfig(lr=INF)),
        ("FAiDTrainingConfig.warmup_frac", lambda: FAiDTrainingConfig(warmup_frac=NAN)),
        ("RACM3TrainingConfig.caption_dropout", lambda: RACM3TrainingConfig(caption_dropout=NAN)),
        ("BaseTrainingConfig.batch_size", lambda: BaseTrainingConfig(batch_size=0)),
        ("VQTrainingConfig.steps", lambda: VQTrainingConfig(steps=2.5)),
        ("MiniFeatureConfig.heldout_fraction", lambda: MiniFeatureConfig(heldout_fraction=NAN)),
    ]


@pytest.mark.parametrize("case", range(14))
def test_library_constructors_refuse_bad_numbers(case):
    name, build = _library_cases()[case]
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        build()


def test_config_nan_and_inf_are_refused_naming_the_key():
    from arrag.validation import check_config_finite

    config = {"daid": {"weight": 0.1, "temperature": NAN}, "sweeps": {"daid": {"weight": [0.1, -INF]}}}
    with pytest.raises(ValueError, match=r"daid\.temperature = nan.*sweeps\.daid\.weight\[1\] = -inf"):
        check_config_finite(config)
    check_config_finite({"a": 1.0, "b": [1, 2.5], "c": "nan"})  # strings are not numbers


def test_prompt_longer_than_the_context_is_refused_before_any_image(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    long = " ".join(["red circle"] * 200)
    prompts.write_text(json.dumps({"prompt": "a red circle"}) + "\n" + json.dumps({"prompt": long}) + "\n")
    out = tmp_path / "out"
    err = cli_error(
        ["generate-benchmark", "--model", model_dir, "--prompts", prompts, "--n", 1, "--out", out, "--device", "cpu"],
        capsys,
    )
    assert "context" in err and "shorten" in err
    assert not out.exists()


@pytest.mark.parametrize("yaml", ["daid: {temperature: .nan}", "generation: {guidance_scale: .inf}"])
def test_workflow_config_refuses_nan_and_inf(yaml, tmp_path):
    from test_workflow import _snakemake, _workdir

    work = _workdir(tmp_path)
    (work / "bad.yaml").write_text(yaml + "\n")
    result = _snakemake(work, "-n", "--configfile", "config/toy.yaml", "bad.yaml")
    out = result.stdout + result.stderr
    key = yaml.split(":")[0] + "." + yaml.split("{")[1].split(":")[0]
    assert result.returncode != 0 and key in out and "finite" in out
