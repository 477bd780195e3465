"""`arrag results-doc`: one Markdown document from a run's tables, figures, scale table and benchmarks."""

import os
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from arrag.cli import main
from arrag.report import git_commit, results_document

GENEVAL = "| Method | Overall |\n|---|---|\n| base model | 0.119 |\n\nGenEval (Table 1): a caption.\n"
SWEEP = "| temperature | weight 0.1 |\n|---|---|\n| 1 | 0.123 |\n\nDAiD sweep.\n"
STAMP = {"cpu": "Test CPU (x86_64)", "cores": "3", "gpu": "none", "torch": "9.9", "python": "3.x", "os": "TestOS"}


@pytest.fixture
def run(tmp_path):
    """A fabricated results folder: two known tables and one unknown, figures, a scale table, a benchmark."""
    root = tmp_path / "results" / "demo"
    (root / "tables").mkdir(parents=True)
    (root / "figures").mkdir()
    (root / "bench").mkdir()
    (root / "tables" / "sweep_daid.md").write_text(SWEEP)
    (root / "tables" / "geneval.md").write_text(GENEVAL)
    (root / "tables" / "zz_extra.md").write_text("| a |\n|---|\n| 1 |\n")
    (root / "tables" / "geneval.csv").write_text("method,overall\nvanilla,0.119\n")  # only .md is read
    for name in ["sweep_daid", "samples_daid", "samples_vanilla", "attribution"]:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "figures" / f"{name}.png")
    (root / "scale.md").write_text(
        "# Scale\n\n```\n# not a heading\n```\n| rule | hours |\n|---|---|\n| generate | 2 |\n"
    )
    (root / "bench" / "generate.md").write_text("| method | images/s |\n|---|---|\n| vanilla | 34.2 |\n")
    (root / "bench" / "generate_showo.md").write_text("| method | images/s |\n|---|---|\n| vanilla | 51.0 |\n")
    return root


def test_document_copies_every_table_in_the_papers_order_with_stamp_and_figures(run, tmp_path):
    out = tmp_path / "docs" / "RESULTS.md"  # elsewhere than the results: links must still reach the figures
    text = results_document(run, out, "abc123", STAMP, "2026-01-02 03:04 UTC")
    assert (
        GENEVAL.strip() in text
        and SWEEP.strip() in text
        and "| generate | 2 |" in text
        and "| vanilla | 34.2 |" in text
    )
    assert "- commit: abc123" in text and "- date: 2026-01-02 03:04 UTC" in text
    assert "- machine: Test CPU (x86_64), 3 cores; GPU: none" in text and "torch 9.9" in text
    heads = re.findall(r"^#+ .*$", text, flags=re.M)
    order = [h for h in heads if h.startswith("### ")]
    assert (
        order.index("### Table 1: GenEval")
        < order.index("### Figure 7 (left): DAiD sweep")
        < order.index("### `zz_extra`")
    )
    assert (
        "### Scale" in heads and "\n# not a heading\n" in text and "## not a heading" not in text
    )  # demoted, code kept
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(links) == 4 and all((out.parent / link).resolve().is_file() for link in links)
    # a figure beside its table; sample grids in the methods' order, vanilla first
    assert text.index("sweep_daid.png") < text.index("### `zz_extra`")
    assert text.index("samples_vanilla.png") < text.index("samples_daid.png")
    # Table 4's timings: Janus's, then Show-o's (rule bench_generate_showo)
    title = "### `arrag bench generate`: generation time per method"
    janus, showo = order.index(title), order.index(f"{title} on Show-o")
    assert janus + 1 == showo and "| vanilla | 51.0 |" in text


def test_cli_writes_the_document_stamped_with_this_checkout_and_machine(run, capsys):
    out = run / "RESULTS.md"
    assert main(["results-doc", "--results", str(run), "--out", str(out)]) == 0
    text = out.read_text()
    commit = text.split("- commit: ", 1)[1].split("\n", 1)[0]
    assert re.match(r"[0-9a-f]{40}", commit) or commit.startswith("unknown")
    assert f", {os.cpu_count()} cores; GPU: " in text and "| base model | 0.119 |" in text
    assert "](figures/sweep_daid.png)" in text


def test_git_commit_outside_a_checkout_says_unknown(tmp_path):
    assert git_commit(tmp_path).startswith("unknown")


def test_git_commit_marks_uncommitted_changes(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    assert re.fullmatch(r"[0-9a-f]{40}", git_commit(tmp_path))
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path).endswith(" with uncommitted changes")


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda root: [p.unlink() for p in (root / "tables").glob("*")], "holds no tables"),
        (lambda root: (root / "tables" / "geneval.md").write_text("  \n"), "geneval.md is empty"),
        (lambda root: (root / "bench" / "generate.md").write_bytes(b"\xff\xfe| x"), "generate.md is not UTF-8"),
    ],
)
def test_bad_results_are_refused_by_name_and_the_old_document_kept(run, capsys, damage, named):
    out = run / "RESULTS.md"
    out.write_text("the previous document")
    damage(run)
    assert main(["results-doc", "--results", str(run), "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert out.read_text() == "the previous document" and sorted(p.name for p in run.glob(".RESULTS*")) == []


def test_a_missing_results_folder_is_refused(tmp_path, capsys):
    assert main(["results-doc", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "R.md")]) == 2
    assert "nope/tables holds no tables" in capsys.readouterr().err and not (tmp_path / "R.md").exists()


def test_the_dag_assembles_the_document_last_from_everything_all_builds(tmp_path):
    """rule results_doc is part of `all` and waits for every other output of `all` (a dry run of the toy DAG)."""
    from test_workflow import _snakemake, _workdir

    result = _snakemake(_workdir(tmp_path), "-n", "--configfile", "config/toy.yaml")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    blocks = {b.split(":", 1)[0]: b for b in result.stdout.split("\nrule ")[1:]}
    inputs = lambda rule: set(re.search(r"input: (.*)", blocks[rule])[1].split(", "))  # noqa: E731
    assert "output: results/toy/RESULTS.md" in blocks["results_doc"] and "results_doc.log" in blocks["results_doc"]
    assert inputs("results_doc") == inputs("all") - {"results/toy/RESULTS.md"}
    assert "results/toy/tables/geneval.csv" in inputs("results_doc")


# ---------------------------------------------------------------- README sections

README = "# Title\n\nbefore\n\n{begin}\nold table\n{end}\n\nafter\n"


def _readme(tmp_path, name="scale"):
    from arrag.report import section_markers

    begin, end = section_markers(name)
    path = tmp_path / "README.md"
    path.write_text(README.format(begin=begin, end=end))
    return path


def test_readme_section_replaces_only_its_markers_content_and_is_idempotent(run, tmp_path, capsys):
    readme = _readme(tmp_path)
    args = ["readme-section", "--readme", str(readme), "--section", "scale", "--source", str(run / "scale.md")]
    assert main(args) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n<!-- generated: scale") and text.endswith("\n\nafter\n")
    assert "old table" not in text and "| generate | 2 |" in text
    assert "### Scale" in text and "# not a heading" in text  # headings demoted, code blocks left alone
    assert f"{os.cpu_count()} cores" in text and "scale.md" in text
    assert main(args) == 0 and readme.read_text() == text  # a second run changes nothing (same day)


@pytest.mark.parametrize("markers", ["none", "twice", "reversed"])
def test_readme_without_one_ordered_pair_of_markers_is_refused_and_kept(run, tmp_path, capsys, markers):
    from arrag.report import section_markers

    begin, end = section_markers("scale")
    body = {"none": "no markers\n", "twice": f"{begin}\n{end}\n{begin}\n{end}\n", "reversed": f"{end}\n{begin}\n"}
    readme = tmp_path / "README.md"
    readme.write_text(body[markers])
    args = ["readme-section", "--readme", str(readme), "--section", "scale", "--source", str(run / "scale.md")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(readme) in err and begin in err and end in err
    assert readme.read_text() == body[markers]
