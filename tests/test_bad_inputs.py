"""Bad inputs and faults, each with its specific clear error (or logged skip), and no output lost or half-written.

The "Bad input" table of docs/verification.md lists these cases. Each class: values that pass no check (NaN, inf,
zero counts, over-long prompts), finished work replaced only on success, truncated archives and incomplete folders,
config strings reaching the shell, resumes under other settings, and faults that used to end in tracebacks.
"""

import json

import numpy as np
import pytest

from arrag.cli import main
from arrag.models.janus import save_janus

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_janus):
    model, processor, _ = tiny_janus
    path = tmp_path_factory.mktemp("model")
    save_janus(model, processor, path)
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
    from arrag.models.training import BaseTrainingConfig
    from arrag.models.vq_training import VQTrainingConfig

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
        ("BaseTrainingConfig.beta2", lambda: BaseTrainingConfig(beta2=1.0)),
        ("VQTrainingConfig.steps", lambda: VQTrainingConfig(steps=2.5)),
        ("MiniFeatureConfig.heldout_fraction", lambda: MiniFeatureConfig(heldout_fraction=NAN)),
    ]


@pytest.mark.parametrize("case", range(15))
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


# ------------------------------------------------------------------ finished work is replaced only on success


def _snapshot(folder) -> dict:
    """Every file under `folder` with its bytes: what a failed run must leave untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def finished_benchmark(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"a photo of a {s}"}) + "\n" for s in ("circle", "square")))
    out = tmp_path / "out"
    base = ["generate-benchmark", "--model", model_dir, "--prompts", prompts, "--n", 1, "--device", "cpu"]
    base = [str(a) for a in base]
    assert main(base + ["--out", str(out)]) == 0
    return base, out, prompts


def _fail_after_first_folder(monkeypatch):
    import arrag.decoding.pipeline as pipeline

    real, calls = pipeline.write_prompt_folder, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # a kill midway through the new run
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "write_prompt_folder", flaky)


def test_a_failed_rerun_with_other_settings_leaves_the_finished_images(finished_benchmark, monkeypatch):
    base, out, _ = finished_benchmark
    before = _snapshot(out)
    _fail_after_first_folder(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main(base + ["--out", str(out), "--seed", "7", "--batch-size", "1"])
    after = {k: v for k, v in _snapshot(out).items() if k != ".settings.lock"}
    assert after == {
        k: v for k, v in before.items() if k != ".settings.lock"
    }  # images and generation.json as they were


def test_a_successful_rerun_with_other_settings_replaces_the_images_at_the_end(finished_benchmark, monkeypatch):
    base, out, _ = finished_benchmark
    _fail_after_first_folder(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main(base + ["--out", str(out), "--seed", "7", "--batch-size", "1"])
    monkeypatch.undo()
    assert main(base + ["--out", str(out), "--seed", "7", "--batch-size", "1"]) == 0  # resumes the staged run
    summary = json.loads((out / "generation.json").read_text())
    assert summary["seed"] == 7 and (summary["generated"], summary["reused"]) == (1, 1)
    assert json.loads((out / "settings.json").read_text())["seed"] == 7
    assert not list(out.parent.glob(".out.*"))  # no staging or old folder left behind


def test_a_sharded_rerun_with_other_settings_swaps_only_when_finished(finished_benchmark):
    base, out, prompts = finished_benchmark
    before = _snapshot(out)
    shard = base + ["--out", str(out), "--seed", "3", "--num-shards", "2"]
    finish = ["finish-benchmark", "--prompts", str(prompts), "--n", "1", "--num-shards", "2", "--out", str(out)]
    assert main(shard + ["--shard", "0"]) == 0
    assert main(finish) == 2  # shard 1 missing: nothing replaced
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith((".", "shards"))} == {
        k: v for k, v in before.items() if not k.startswith(".")
    }
    assert main(shard + ["--shard", "1"]) == 0
    assert main(finish) == 0
    assert json.loads((out / "generation.json").read_text())["seed"] == 3
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000-of-00002.json", "00001-of-00002.json"]


def test_images_of_unknown_settings_are_not_reused_or_deleted(model_dir, tmp_path):
    from arrag.data.geneval_layout import write_prompt_folder

    out = tmp_path / "out"
    write_prompt_folder(out, 0, {"prompt": "a photo of a circle"}, np.zeros((1, 16, 16, 3), np.uint8))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a photo of a circle"}) + "\n")
    args = ["generate-benchmark", "--model", model_dir, "--prompts", prompts, "--n", 1, "--out", out, "--device", "cpu"]
    assert main([str(a) for a in args]) == 0
    assert json.loads((out / "generation.json").read_text())["generated"] == 1  # not the foreign black image


def test_a_table_that_fails_to_render_leaves_the_old_files(tmp_path, monkeypatch):
    from arrag.evaluation import tables

    measured = {"vanilla": {"fid": 1.0, "cmmd": 0.1, "fwd": 2.0}}
    tables.write_table(tables.TABLES["fidelity"], measured, tmp_path / "fidelity")
    before = _snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise ValueError("cannot render")

    monkeypatch.setattr(tables, "render_latex", broken)
    with pytest.raises(ValueError, match="cannot render"):
        tables.write_table(
            tables.TABLES["fidelity"], {"daid": {"fid": 9.0, "cmmd": 0.9, "fwd": 9.0}}, tmp_path / "fidelity"
        )
    assert _snapshot(tmp_path) == before  # not a new .csv beside an old .tex


def test_a_failed_mjhq_extraction_leaves_the_old_prompts_and_images(tmp_path, capsys):
    import zipfile

    from arrag.data import mjhq

    src = tmp_path / "src"
    src.mkdir()
    (src / mjhq.META).write_text(json.dumps({"a1": {"category": "animals", "prompt": "a fox"}}))
    with zipfile.ZipFile(src / mjhq.IMAGES, "w") as z:
        z.writestr("animals/a1.jpg", b"jpeg")
    out = tmp_path / "out"
    args = ["mjhq-prompts", "--dataset", src, "--out-prompts", out / "p.jsonl", "--out-reference", out / "ref"]
    assert main([str(a) for a in args]) == 0
    before = _snapshot(out)
    (src / mjhq.META).write_text(json.dumps({"b2": {"category": "animals", "prompt": "a cat"}}))  # not in the zip
    assert "has no animals/b2.jpg" in cli_error(args, capsys)
    assert _snapshot(out) == before


# ------------------------------------------------------------------ archives and folders: complete or refused


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _webdataset(path, n: int = 3, mode: str = "w"):
    import io
    import tarfile

    with tarfile.open(path, mode) as tar:
        for i in range(n):
            for ext, data in (("png", _png(20 * i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _cut_points(path) -> dict[str, int]:
    """Byte offsets cutting a tar at a member boundary, inside a member's data and inside a header."""
    import tarfile

    with tarfile.open(path) as tar:
        members = tar.getmembers()
    end_of = lambda m: m.offset_data + -(-m.size // 512) * 512  # noqa: E731
    return {
        "member boundary": end_of(members[3]),
        "inside a member": members[4].offset_data + 10,
        "inside a header": end_of(members[3]) + 100,
        "end blocks missing": end_of(members[-1]),
    }


@pytest.mark.parametrize("cut", ["member boundary", "inside a member", "inside a header", "end blocks missing"])
def test_a_truncated_tar_is_skipped_and_reported_naming_the_file(cut, tmp_path):
    from arrag.data.sources import iter_source

    whole = _webdataset(tmp_path / "whole.tar")
    good = _webdataset(tmp_path / "good.tar")
    data = whole.read_bytes()
    cut_tar = tmp_path / "cut.tar"
    cut_tar.write_bytes(data[: _cut_points(whole)[cut]])
    spec = {"type": "webdataset", "urls": [str(cut_tar), str(good)], "caption_key": "txt"}
    records = list(iter_source(spec, size=8))
    bad = [r for r in records if r.image is None]
    assert (
        len(bad) == 1 and str(cut_tar) in bad[0].error and ("truncated" in bad[0].error or "unreadable" in bad[0].error)
    )
    assert [r.caption for r in records if r.image is not None] == ["caption 0", "caption 1", "caption 2"]  # good.tar


def test_a_cut_compressed_tar_is_skipped_and_reported(tmp_path):
    from arrag.data.sources import iter_source

    whole = _webdataset(tmp_path / "whole.tar.gz", mode="w:gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[:-20])
    records = list(iter_source({"type": "webdataset", "urls": str(cut)}, size=8))
    assert [r.image for r in records] == [None] and str(cut) in records[0].error
    assert [r.image is not None for r in iter_source({"type": "webdataset", "urls": str(whole)}, size=8)] == [True] * 3


def test_a_skipped_tar_is_logged_and_listed_in_the_shard(tmp_path, caplog):
    from arrag.data.sources import encode_shard

    whole = _webdataset(tmp_path / "whole.tar")
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:1500])
    spec = {"type": "webdataset", "urls": [str(tmp_path / "cut.tar"), str(whole)]}
    shard = encode_shard(spec, 0, 1, 8, lambda x: x.reshape(len(x), -1)[:, :2], np.zeros((0, 2), np.uint8))
    assert len(shard.outputs) == 3 and len(shard.skipped) == 1 and "cut.tar" in shard.skipped[0]["error"]
    assert "cut.tar" in caplog.text


def test_an_empty_source_is_an_error_unless_asked_for(tmp_path):
    from arrag.data.sources import iter_source

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no items.*allow_empty"):
        list(iter_source({"type": "folder", "path": str(tmp_path / "empty")}))
    assert list(iter_source({"type": "folder", "path": str(tmp_path / "empty"), "allow_empty": True})) == []


def test_a_database_of_no_images_is_refused_before_it_is_built(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    source = json.dumps({"type": "folder", "path": str(tmp_path / "empty"), "allow_empty": True})
    codes = tmp_path / "codes"
    tokenise = ["tokenise", "--model", model_dir, "--source", source, "--out", codes, "--device", "cpu"]
    assert main([str(a) for a in tokenise]) == 0
    shard = next(codes.glob("*.npz"))
    err = cli_error(["build-db", "--model", model_dir, "--codes", shard, "--out", tmp_path / "db"], capsys)
    assert "hold no images" in err and not (tmp_path / "db").exists()


@pytest.fixture()
def cut_benchmark(finished_benchmark):
    """A finished two-prompt folder whose last prompt folder is gone (a copy cut short)."""
    import shutil

    _, out, _ = finished_benchmark
    shutil.rmtree(out / "00001")
    return out


def test_geneval_refuses_a_folder_missing_its_last_prompts(cut_benchmark, tmp_path, capsys):
    args = [
        "geneval",
        "--images",
        cut_benchmark,
        "--out-jsonl",
        tmp_path / "r.jsonl",
        "--out-json",
        tmp_path / "s.json",
    ]
    err = cli_error(args, capsys)
    assert "00001" in err and "of the 2 prompts" in err and not (tmp_path / "s.json").exists()


def test_fidelity_refuses_a_folder_missing_its_last_prompts(cut_benchmark):
    from arrag.evaluation.fidelity import image_count

    with pytest.raises(ValueError, match="00001"):
        image_count(cut_benchmark)


# ------------------------------------------------------------------ no shell from data

HOSTILE = "x'y\"PWN; touch PWN $(touch PWN) `touch PWN` a  b"


def _unquoted(command: str) -> str:
    """The text of a shell command outside single quotes (double quotes do not stop `$()`, so they count)."""
    out, single, double, escaped = [], False, False, False
    for ch in command:
        if single:
            single = ch != "'"
        elif escaped:
            escaped = False
            out.append(ch)
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            double = not double
        elif ch == "'" and not double:
            single = True
        else:
            out.append(ch)
    return "".join(out)


def _hostile_config(config: dict, schema: dict) -> dict:
    """Every string value the schema lets through replaced by HOSTILE (values it refuses are put back)."""
    import copy

    import jsonschema

    def replace(node):
        if isinstance(node, dict):
            return {k: replace(v) for k, v in node.items()}
        if isinstance(node, list):
            return [replace(v) for v in node]
        return HOSTILE if isinstance(node, str) else node

    hostile = replace(copy.deepcopy(config))
    validator = jsonschema.Draft202012Validator(schema)
    while errors := list(validator.iter_errors(hostile)):
        for error in errors:  # a pattern or an enum refused it: that field cannot carry shell text at all
            *parents, last = error.absolute_path
            good, bad = config, hostile
            for key in parents:
                good, bad = good[key], bad[key]
            bad[last] = copy.deepcopy(good[last])
    return hostile


def test_config_strings_reach_commands_as_one_quoted_word(tmp_path):
    import shutil

    import yaml
    from snakemake.utils import validate
    from test_workflow import REPO, _snakemake, _workdir

    work = _workdir(tmp_path)
    shutil.copytree(REPO / "arrag" / "prompt_sets", work / "arrag" / "prompt_sets")

    def merge(base: dict, over: dict) -> dict:  # as Snakemake layers --configfile over the Snakefile's
        return base | {
            k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
            for k, v in over.items()
        }

    config = merge(*(yaml.safe_load((work / "config" / f).read_text()) for f in ("config.yaml", "paper.yaml")))
    config["model"]["revision"] = "0123abcd" * 5
    for entry in config["downloads"]["datasets"].values():
        entry["revision"] = "4567cdef" * 5
    # nullable strings given a value, so that they reach their commands too
    config["downloads"]["mirror"] = "m"
    config["racm3"]["clip"]["sha256"] = "s"
    config["evaluation"]["dpg"] |= {"mplug_revision": "r", "csv_sha256": "s"}
    config["evaluation"]["fidelity"]["mjhq_revision"] = "r"
    validate(config, str(work / "workflow" / "schemas" / "config.schema.yaml"))  # fills every default
    schema = yaml.safe_load((work / "workflow" / "schemas" / "config.schema.yaml").read_text())
    hostile = _hostile_config(config, schema)
    # CLIP models and the `openai` tag select which downloaded weights a job reads: names, not free text
    hostile["racm3"]["clip"] |= {"model": config["racm3"]["clip"]["model"], "pretrained": "openai"}
    hostile["evaluation"]["geneval"]["clip_pretrained"] = hostile["evaluation"]["fidelity"]["clip_pretrained"] = (
        "openai"
    )
    (work / "hostile.yaml").write_text(yaml.safe_dump(hostile))
    result = _snakemake(work, "-n", "-p", "--configfile", "hostile.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = [line for line in result.stdout.splitlines() if "arrag" in line and ">" in line]
    reached = [c for c in commands if "PWN" in c]
    for flag in (
        "--hub-id",
        "--mirror",
        "--source",
        "--url",
        "--repo",
        "--include",
        "--revision",
        "--sha256",
        "--lock",
        "--model-id",
        "--out",
    ):
        assert any(flag in c for c in reached), f"no command carries the hostile value of {flag}"
    for command in reached:
        assert "PWN" not in _unquoted(command), command


@pytest.mark.parametrize(
    "where",
    [
        {"retrieval": {"corpora": {"a;b": {"source": {"type": "folder", "path": "x"}}}}},
        {"finetune": {"pairs": {"$(x)": {"source": {"type": "folder", "path": "x"}}}}},
        {"downloads": {"datasets": {"a b": {"repo": "r", "revision": None, "include": ["*"]}}}},
        {"faid": {"trainset_split": "finetune;rm"}},
        {"racm3": {"corpora": ["a'b"]}},
    ],
)
def test_names_that_become_paths_refuse_shell_characters(where):
    """Corpus, pairs, dataset and split names become folder names and wildcards in every command: the schema
    allows letters, digits, '_' and '-' only."""
    from pathlib import Path

    import jsonschema
    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    errors = list(
        jsonschema.Draft202012Validator(schema).iter_errors({"profile": "p", "world": {"splits": {}}} | where)
    )
    assert any("does not match" in e.message for e in errors), [e.message for e in errors]
