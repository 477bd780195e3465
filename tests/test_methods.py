"""arrag.methods: each method's settings (defaults and checks in one place), how it is built, what it records; and
the CLI commands that generate with DAiD taking the same DAiD flags from there."""

import argparse
import inspect

import pytest
import torch

from arrag import methods as m
from arrag.cli import build_parser
from arrag.decoding.daid import DAiD
from arrag.manifest import identity
from arrag.models.janus import save_janus
from arrag.models.vq import VQTokenizer
from arrag.retrieval.database import PatchDatabase

NAN, INF = float("nan"), float("inf")


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


# every command that generates with DAiD, with the flags it requires
DAID_COMMANDS = {
    ("generate",): ["--model", "m", "--prompt", "p", "--out", "o"],
    ("generate-benchmark",): ["--model", "m", "--prompts", "p", "--out", "o"],
    ("bench", "generate"): ["--model", "m", "--out-json", "j", "--out-md", "d"],
}


@pytest.mark.parametrize("command", DAID_COMMANDS)
def test_every_command_generating_with_daid_takes_its_flags_and_defaults_from_the_settings(command):
    parser = _subparser(build_parser(), *command)
    flags = {a.dest: a for a in parser._actions if a.dest.startswith("daid_") or a.dest == "db_devices"}
    assert sorted(flags) == ["daid_k", "daid_temperature", "daid_unique", "daid_weight", "db_devices"]
    for field in ("k", "weight", "temperature", "unique"):
        assert flags[f"daid_{field}"].default == getattr(m.DAiDSettings, field)
    hook = inspect.signature(DAiD).parameters  # the hook's defaults are the settings' too
    assert all(hook[f].default == getattr(m.DAiDSettings, f) for f in ("k", "weight", "temperature", "unique"))
    daid = ["--daid-k", "3", "--daid-weight", "0.5", "--daid-temperature", "2", "--daid-unique"]
    args = parser.parse_args(DAID_COMMANDS[command] + daid)
    assert (args.daid_k, args.daid_weight, args.daid_temperature, args.daid_unique) == (3, 0.5, 2.0, True)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: m.DAiDSettings(db="db", weight=NAN), "DAiD weight"),
        (lambda: m.DAiDSettings(db="db", weight=1.5), "DAiD weight"),
        (lambda: m.DAiDSettings(db="db", temperature=0.0), "DAiD temperature"),
        (lambda: m.DAiDSettings(db="db", temperature=INF), "DAiD temperature"),
        (lambda: m.DAiDSettings(db="db", k=0), "DAiD k"),
        (lambda: m.DAiDSettings(db="db", k=2.5), "DAiD k"),
        (lambda: m.DAiDSettings(), "--db DIR"),
        (lambda: m.FAiDSettings(faid="faid"), "--db DIR"),
        (lambda: m.FAiDSettings(db="db"), "--faid DIR"),
        (lambda: m.RACM3Settings(), "--image-index DIR"),
    ],
)
def test_settings_refuse_bad_numbers_and_missing_inputs_before_anything_loads(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_each_method_records_its_own_settings():
    assert m.VanillaSettings().record() == {"method": "vanilla"}
    daid = m.DAiDSettings(db="db", k=4, weight=0.5, temperature=2.0, unique=True)
    assert daid.record() == {"method": "daid", "db": "db", "k": 4, "weight": 0.5, "temperature": 2.0, "unique": True}
    assert m.FAiDSettings(db="db", faid="f").record() == {"method": "faid", "db": "db", "faid": "f"}
    assert m.RACM3Settings(image_index="i").record() == {"method": "racm3", "image_index": "i"}
    assert set(m.METHODS) == {"vanilla", "daid", "faid", "racm3"}
    assert _subparser(build_parser(), "generate")._option_string_actions["--method"].choices == list(m.METHODS)


def test_built_methods_make_fresh_hooks_and_record_their_inputs(tiny_janus, tmp_path):
    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    codebook = VQTokenizer.from_janus(model).codebook
    codes = torch.randint(0, spec.codebook_size, (6, spec.grid, spec.grid), generator=torch.Generator().manual_seed(0))
    PatchDatabase.build(codes, codebook, index="flat").save(tmp_path / "db")

    vanilla = m.build_method(m.VanillaSettings(), tmp_path / "model", device="cpu")
    assert vanilla.make_hooks() == []
    model_id = identity(tmp_path / "model")
    assert vanilla.record() == {"model": str(tmp_path / "model"), "method": "vanilla", "inputs": {"model": model_id}}

    settings = m.DAiDSettings(db=tmp_path / "db", k=4, weight=0.5, temperature=2.0, unique=True)
    daid = m.build_method(settings, tmp_path / "model", device="cpu", record=True)
    first, second = daid.make_hooks(), daid.make_hooks()
    assert len(first) == 1 and first[0] is not second[0] and first[0].db is second[0].db  # one database
    hook = first[0]
    assert (hook.k, hook.weight, hook.temperature, hook.unique, hook.record) == (4, 0.5, 2.0, True, True)
    record = daid.record()
    assert record["inputs"] == {"model": model_id, "db": identity(tmp_path / "db")}
    assert {k: v for k, v in record.items() if k != "inputs"} == {"model": str(tmp_path / "model"), **settings.record()}
    images, _ = daid.pipe(["a photo of a circle"], n=1, hooks=daid.make_hooks())
    assert images.shape == (1, spec.image_size, spec.image_size, 3)

    with pytest.raises(ValueError, match="shards a torch_compact database"):
        m.build_method(settings, tmp_path / "model", device="cpu", db_devices="cpu:0,cpu:1")


def test_the_generation_bench_loads_its_rows_from_the_settings(tiny_janus, tmp_path):
    from arrag.bench.generate import load_methods

    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    codebook = VQTokenizer.from_janus(model).codebook
    codes = torch.randint(0, spec.codebook_size, (6, spec.grid, spec.grid), generator=torch.Generator().manual_seed(0))
    PatchDatabase.build(codes, codebook, index="flat").save(tmp_path / "db")
    with pytest.raises(ValueError, match="--racm3-model"):  # refused before any model loads
        load_methods([m.VanillaSettings(), m.RACM3Settings(image_index="i")], tmp_path / "nowhere")
    settings = [m.VanillaSettings(), m.DAiDSettings(db=tmp_path / "db", k=3, unique=True)]
    methods = load_methods(settings, tmp_path / "model", device="cpu")
    assert list(methods) == ["vanilla", "daid"] and methods["vanilla"][0] is methods["daid"][0]  # one model
    assert methods["vanilla"][1]() == []
    (hook,) = methods["daid"][1]()
    assert isinstance(hook, DAiD) and (hook.k, hook.unique, hook.record) == (3, True, False)


def test_the_workflow_schema_agrees_with_the_daid_settings():
    """The config's daid block (workflow/schemas/config.schema.yaml) is checked by the schema before any job runs:
    its methods, defaults (where it gives any) and bounds must be the library's, or a config the schema accepts
    would be refused by `arrag generate-benchmark` hours later (or generate with other settings than recorded)."""
    from pathlib import Path

    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["methods"]["items"]["enum"] == list(m.METHODS)
    daid = schema["properties"]["daid"]["properties"]
    assert set(daid) == {"k", "weight", "temperature", "unique"}
    for field, spec in daid.items():  # the defaults live in DAiDSettings only (the workflow's DAID fills them)
        assert "default" not in spec, field
    for field, bounds in m.DAID_BOUNDS.items():
        expected = {"type": "integer" if bounds.get("integer") else "number"}
        if "low" in bounds:
            expected["exclusiveMinimum" if bounds.get("low_open") else "minimum"] = bounds["low"]
        if "high" in bounds:
            expected["maximum"] = bounds["high"]
        keys = ("type", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
        assert {k: v for k, v in daid[field].items() if k in keys} == expected, field
