"""The CLI as a package over the library: importing it stays light (the scorer environments import it without
transformers), and the logic it used to hold is callable from the library (codebook loading, the feature-network
choice, finishing a sharded prompt set)."""

import json
import subprocess
import sys

import pytest

from arrag.cli import main
from arrag.models.janus import save_janus
from arrag.models.vq import VQTokenizer, load_codebook


def test_importing_the_cli_loads_neither_torch_nor_transformers():
    code = "import sys, arrag.cli; print(sorted({'torch', 'transformers', 'numpy'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "[]\n"


def test_parsing_a_command_line_loads_neither_torch_nor_transformers():
    """Every job parses its arguments before it runs: a parser that imported torch cost each of a DAG's ~100 jobs
    seconds, whatever the rule (measured: 5 s for `arrag --help`). Finishing a sharded prompt set reads files only."""
    code = (
        "import sys, arrag.cli; arrag.cli.build_parser().parse_args(['world', '--out', 'x']);"
        "from arrag.data.geneval_layout import finish_prompt_set;"
        "from arrag.data.downloads import go_offline; go_offline();"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout == "[]\n", run.stderr


def test_load_codebook_is_the_models_normalised_codebook(tiny_janus, tmp_path):
    model, processor, _ = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    codebook = load_codebook(tmp_path / "model")
    assert codebook.equal(VQTokenizer.from_janus(model).codebook)
    assert codebook.norm(dim=1).sub(1).abs().max() < 1e-5


def test_feature_network_specs():
    from arrag.evaluation.features import feature_network

    assert feature_network(None) is None and feature_network("none") is None
    for bad in ("mini", "mini:", "inception", "resnet:x.pt"):
        with pytest.raises(ValueError, match="expected mini:DIR, inception:FILE, clip:WEIGHTS or none"):
            feature_network(bad)
    with pytest.raises(FileNotFoundError, match="train the mini feature network"):
        feature_network("mini:/nowhere")


def test_finishing_a_sharded_prompt_set_from_the_library(tiny_janus, tmp_path):
    from arrag.data.geneval_layout import finish_prompt_set, shard_marker

    model, processor, _ = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    records = [{"prompt": "a photo of a circle"}, {"prompt": "a photo of a square"}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "images"
    common = ["--model", str(tmp_path / "model"), "--prompts", str(prompts), "--n", "1", "--device", "cpu"]
    for shard in ("0", "1"):
        assert main(["generate-benchmark", *common, "--out", str(out), "--shard", shard, "--num-shards", "2"]) == 0
    assert shard_marker(out, 1, 2) == out / "shards" / "00001-of-00002.json" and shard_marker(out, 1, 2).is_file()
    with pytest.raises(ValueError, match=r"prompts\.jsonl has 1 prompts"):
        finish_prompt_set(out, records[:1], n=1, num_shards=2, prompts=str(prompts))
    with pytest.raises(ValueError, match="shards not finished"):
        finish_prompt_set(out, records, n=1, num_shards=3, prompts=str(prompts))
    assert not (out / "generation.json").exists()
    summary = finish_prompt_set(out, records, n=1, num_shards=2, prompts=str(prompts))
    assert (summary["generated"], summary["num_shards"], summary["method"]) == (2, 2, "vanilla")
    assert json.loads((out / "generation.json").read_text()) == summary


def test_bench_generate_times_the_methods_whose_inputs_are_given(tiny_janus, tmp_path):
    import torch

    from arrag.retrieval.database import PatchDatabase

    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "model")
    codes = torch.randint(0, spec.codebook_size, (6, spec.grid, spec.grid), generator=torch.Generator().manual_seed(0))
    PatchDatabase.build(codes, VQTokenizer.from_janus(model).codebook, index="flat").save(tmp_path / "db")
    common = ["bench", "generate", "--model", str(tmp_path / "model"), "--device", "cpu", "--guidance-scale", "3"]
    common += ["--batch-size", "2", "--repeats", "1", "--out-json", str(tmp_path / "b.json")]
    assert main([*common, "--out-md", str(tmp_path / "b.md"), "--db", str(tmp_path / "db"), "--daid-unique"]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["vanilla", "daid"] and all(len(r["runs"]) == 1 for r in rows)
    assert main([*common, "--out-md", str(tmp_path / "c.md"), "--racm3-model", str(tmp_path / "model")]) == 2
    assert not (tmp_path / "c.md").exists()  # RA-CM3's row without its index: refused before anything runs
