"""One Markdown document of a run's results, assembled from the files the pipeline wrote.

`results/<profile>/tables/*.md` (the paper's tables, Figures 6 and 7 as tables), `figures/*.png`, `scale.md`
and `bench/*.md`, where present, go into one document stamped with the commit of the code that assembled it,
the machine and the date. Nothing is measured or retyped here: every number comes from those files, so the
document is as current as the run whose folder it reads (`arrag results-doc`, rule `results_doc`).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from arrag.io import write_text

# The tables in the paper's order, each with the heading it gets; any other table follows, by file name.
TABLE_TITLES = {
    "geneval": "Table 1: GenEval",
    "dpg": "Table 2: DPG-Bench",
    "fidelity": "Table 3: fidelity against real images (FID, CMMD, FWD)",
    "inference_time": "Table 4: inference time",
    "over_copying": "Over-copying",
    "contamination": "Contamination check: benchmark images left out",
    "retrieval_accuracy": "Figure 6: retrieval accuracy",
    "sweep_daid": "Figure 7 (left): DAiD sweep",
    "sweep_faid": "Figure 7 (right): FAiD sweep",
}
BENCH_TITLES = {
    "retrieval": "`arrag bench retrieval`: index backends",
    "generate": "`arrag bench generate`: generation time per method",
    "generate_showo": "`arrag bench generate`: generation time per method on Show-o",
    "scoring": "`arrag bench scoring`: scorers' throughput",
    "encoders": "`arrag bench encoders`: corpus encoders",
}
# Figures shown under a table other than their namesake; every other figure goes to "Figures".
TABLE_FIGURES = {"over_copying": ["attribution"]}
REPO = Path(__file__).resolve().parents[1]


def git_commit(repo: str | Path = REPO) -> str:
    """The checkout's commit, marked when files differ from it; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except OSError:  # no git on this machine
        return "unknown (git not found)"
    if head.returncode != 0:
        return f"unknown ({repo} is not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU's model name as Linux reports it, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_stamp() -> dict[str, str]:
    """What the document says about the machine: CPU, cores, GPUs (if any), torch, Python, OS."""
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu": f"{cpu_model()} ({platform.machine()})",
        "cores": str(os.cpu_count()),
        "gpu": ", ".join(gpus) if gpus else "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def _read(path: Path) -> str:
    """A results file's text, refused by name when it is empty or not text (a damaged or half-copied file)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): rerun the rule that writes it")
    if not text:
        raise ValueError(f"{path} is empty: rerun the rule that writes it")
    return text


def _demote(text: str, levels: int = 2) -> str:
    """Push an included file's own headings below the document's (`# x` -> `### x`); code blocks are left alone."""
    out, fenced = [], False
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith("```")
        out.append("#" * levels + line if line.startswith("#") and not fenced else line)
    return "\n".join(out)


def _ordered(files: list[Path], titles: dict[str, str]) -> list[tuple[str, Path]]:
    """Known files in `titles`' order with their headings, then the others by name (headed by their stem)."""
    by_stem = {f.stem: f for f in files}
    known = [(title, by_stem.pop(stem)) for stem, title in titles.items() if stem in by_stem]
    return known + [(f"`{stem}`", by_stem[stem]) for stem in sorted(by_stem)]


def _figure_order(stem: str) -> tuple[int, str]:
    """Sample grids first, in the methods' order (vanilla, DAiD, FAiD, RA-CM3), then the others by name."""
    methods = ["samples_vanilla", "samples_daid", "samples_faid", "samples_racm3"]
    return (methods.index(stem), "") if stem in methods else (len(methods), stem)


def results_document(results: str | Path, out: str | Path, commit: str, machine: dict[str, str], date: str) -> str:
    """The Markdown document of the run in `results`; figure links are relative to `out`'s folder."""
    results = Path(results)
    tables_dir = results / "tables"
    tables = sorted(tables_dir.glob("*.md")) if tables_dir.is_dir() else []
    if not tables:
        raise ValueError(
            f"{tables_dir} holds no tables (*.md): run the pipeline for this profile first "
            "(`snakemake --cores all [--configfile config/<profile>.yaml]`)"
        )
    figures = {f.stem: f for f in sorted((results / "figures").glob("*.png"))}
    link = lambda f: Path(os.path.relpath(f.resolve(), Path(out).resolve().parent)).as_posix()  # noqa: E731

    lines = [
        f"# Results: `{results.name}`",
        "",
        f"Assembled by `arrag results-doc` from `{results.as_posix()}/`. Every number below is copied from the "
        "files the pipeline wrote there; the stamp says where and when this document was assembled, which is "
        "where the run's last jobs ran unless the folder was copied from elsewhere.",
        "",
        f"- commit: {commit}",
        f"- date: {date}",
        f"- machine: {machine['cpu']}, {machine['cores']} cores; GPU: {machine['gpu']}",
        f"- software: torch {machine['torch']}, Python {machine['python']}, {machine['os']}",
        "",
        "## Tables",
    ]
    for title, path in _ordered(tables, TABLE_TITLES):
        lines += ["", f"### {title}", "", _demote(_read(path), 2), "", f"Source: `tables/{path.name}`."]
        for stem in [path.stem, *TABLE_FIGURES.get(path.stem, [])]:
            if stem in figures:
                lines += ["", f"![{stem}]({link(figures.pop(stem))})"]
    if figures:
        lines += ["", "## Figures"]
        for stem in sorted(figures, key=_figure_order):
            lines += ["", f"### `{stem}`", "", f"![{stem}]({link(figures[stem])})"]
    scale = results / "scale.md"
    if scale.is_file():
        lines += ["", "## Scale: this run's costs extrapolated to the paper's counts", "", _demote(_read(scale), 2)]
    bench = sorted((results / "bench").glob("*.md"))
    if bench:
        lines += ["", "## Benchmarks"]
        for title, path in _ordered(bench, BENCH_TITLES):
            lines += ["", f"### {title}", "", _demote(_read(path), 2), "", f"Source: `bench/{path.name}`."]
    return "\n".join(lines) + "\n"


def write_results_document(results: str | Path, out: str | Path) -> Path:
    """Assemble and write the document atomically, stamped with this checkout's commit, this machine and now."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = results_document(results, out, git_commit(), machine_stamp(), date)
    write_text(out, text)
    return Path(out)


# ---------------------------------------------------------------- README sections


def section_markers(name: str) -> tuple[str, str]:
    """The two comment lines that delimit the generated section `name` in a Markdown file."""
    return f"<!-- generated: {name} (arrag readme-section; do not edit by hand) -->", f"<!-- end generated: {name} -->"


def replace_section(text: str, name: str, body: str, where: str = "the document") -> str:
    """`text` with everything between the markers of section `name` replaced by `body` (markers kept)."""
    begin, end = section_markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(
            f"{where} needs exactly one pair of markers for section {name!r}, in this order:\n{begin}\n{end}\n"
            "add them where the section belongs"
        )
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def readme_section_body(source: str | Path, commit: str, machine: dict[str, str], date: str) -> str:
    """A results file's Markdown (headings demoted below the README's) followed by where and when it came from."""
    source = Path(source)
    return (
        f"{_demote(_read(source), 2)}\n\n"
        f"*Generated from `{source.as_posix()}` by `arrag readme-section` on {date}: commit {commit}; "
        f"{machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu']}; torch {machine['torch']}.*"
    )


def write_readme_section(readme: str | Path, name: str, source: str | Path) -> Path:
    """Replace section `name` of `readme` with the results file `source`, stamped; written atomically."""
    readme = Path(readme)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    body = readme_section_body(source, git_commit(), machine_stamp(), date)
    write_text(readme, replace_section(readme.read_text(encoding="utf-8"), name, body, where=str(readme)))
    return readme
