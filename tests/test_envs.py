"""The conda environments, checked statically (conda channels cannot be reached from the test machines): every
third-party import on an environment's code path has a package in it, torch/torchvision/FAISS agree, and pip
never resolves torch again."""

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# import name -> the names its package goes by on conda-forge / PyPI
PACKAGES = {
    "PIL": {"pillow"},
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "torch"},
    "faiss": {"faiss-gpu", "faiss-cpu", "faiss-gpu-cu12"},
    "cleanfid": {"clean-fid"},
    "open_clip": {"open-clip-torch"},
    "pywt": {"pywavelets"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
}
SCORERS = {"mmdet": "workflow/envs/geneval.yaml", "modelscope": "workflow/envs/dpg.yaml"}
# imported by library code the pipeline never runs: `hf_dataset` sources stream from the hub at job time, which
# the workflow refuses (workflow/rules/common/config.smk); `pip install datasets` adds them for library use
OPTIONAL = {"datasets"}
# torchvision release of each torch release (pytorch.org's compatibility table)
TORCHVISION_OF = {"2.0": "0.15", "2.1": "0.16", "2.6": "0.21", "2.7": "0.22", "2.8": "0.23", "2.9": "0.24"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _spec_name(spec: str) -> str:
    return _norm(re.split(r"[\[<>=!~ ]", spec.strip(), maxsplit=1)[0])


def _spec_version(spec: str, name: str) -> str:
    """'pytorch=2.0.1' -> '2.0.1'; "pytorch[version='>=2.6',...]" -> '2.6'; 'faiss-gpu>=1.9' -> '1.9'."""
    m = re.search(r"version='>=([\d.]+)'", spec) or re.match(rf"{re.escape(name)}\s*(?:==?|>=)\s*([\d.]+)", spec)
    assert m, f"{spec}: no version"
    return m[1]


def _env(path: str) -> dict:
    env = yaml.safe_load((REPO / path).read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [r for d in env["dependencies"] if isinstance(d, dict) for r in d.get("pip", []) if not r.startswith("-")]
    return {"channels": env["channels"], "conda": conda, "pip": pip, "names": {_spec_name(s) for s in conda + pip}}


def _imports(tree: ast.AST, level_ok=True) -> list[tuple[str, list[str]]]:
    """(module, [imported names]) of every absolute import under `tree`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _module_file(module: str) -> Path | None:
    path = REPO / module.replace(".", "/")
    return (
        path.with_suffix(".py")
        if path.with_suffix(".py").is_file()
        else (path / "__init__.py")
        if path.is_dir()
        else None
    )


# modules a scorer's path enters for one function only (cli.main, go_offline) or for their definitions (the CLI's
# modules register every command; arrag.methods gives the flags' defaults): their module-level imports count
CLI_MODULES = {f"arrag.cli.{p.stem}" for p in (REPO / "arrag/cli").glob("*.py") if p.stem != "__init__"}
SHALLOW = {"arrag.cli", *CLI_MODULES, "arrag.methods", "arrag.data.downloads"}


def _third_party(entries: list[tuple[str, list[str]]], shallow=frozenset()) -> set[str]:
    """Top-level third-party imports reached from `entries` through arrag's own modules (all their imports,
    function-level ones too: a code path may call any of them; module-level ones only for `shallow` modules)."""
    seen, queue, outside = set(), list(entries), set()
    while queue:
        module, names = queue.pop()
        top = module.split(".")[0]
        if top != "arrag":
            if top not in sys.stdlib_module_names:
                outside.add(top)
            continue
        targets = [f"{module}.{n}" for n in names if _module_file(f"{module}.{n}")] or [module]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # a module's packages' __init__ run first
                name = ".".join(parts[:i])
                if name not in seen and (path := _module_file(name)):
                    seen.add(name)
                    tree = ast.parse(path.read_text())
                    if name in shallow:
                        tree = ast.Module([n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], [])
                    queue += _imports(tree)
    return outside


def _cli_path(command: str) -> set[str]:
    """Third-party imports of `python -m arrag <command>` under `python -m arrag.gpu_slots`: the CLI modules'
    module-level imports and its command function's, then everything those reach."""
    trees = [ast.parse(p.read_text()) for p in sorted((REPO / "arrag/cli").glob("*.py"))]
    module_level = [n for tree in trees for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    functions = [n for tree in trees for n in tree.body if isinstance(n, ast.FunctionDef)]
    function = next(n for n in functions if n.name == f"cmd_{command}")
    entries = [e for n in module_level for e in _imports(n)] + _imports(function)
    entries += [("arrag.__main__", []), ("arrag.gpu_slots", []), ("arrag.data.downloads", [])]  # cli.main's
    return _third_party(entries, shallow=SHALLOW)


def _provided(imports: set[str], names: set[str]) -> set[str]:
    """The imports no package of `names` provides."""
    return {i for i in imports if not (PACKAGES.get(i, {_norm(i)}) & names)}


def _main_env_pip() -> list[str]:
    """The packages of the one pip command environment.yml's header documents."""
    lines = (REPO / "environment.yml").read_text().splitlines()
    line = next(text for text in lines if text.startswith("#   pip install"))
    assert "--no-deps" in line.split(), line
    return [w for w in line.split()[3:] if not w.startswith("-") and w != "."]


def test_the_main_environment_holds_every_import_of_the_package():
    env = _env("environment.yml")
    assert env["channels"] == ["conda-forge", "bioconda"]  # Snakemake and its SLURM plugin are bioconda's
    assert not env["pip"] and not any(
        isinstance(d, dict) for d in yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    )
    names = env["names"] | {_spec_name(p) for p in _main_env_pip()}
    imports = _third_party(
        [(f"arrag.{p.stem}" if p.stem != "__init__" else "arrag", []) for p in (REPO / "arrag").glob("*.py")]
    )
    imports |= _third_party(
        [(".".join(p.relative_to(REPO).with_suffix("").parts), []) for p in (REPO / "arrag").rglob("*.py")]
    )
    assert {"torch", "transformers", "faiss", "open_clip", "cleanfid", "ptwt"} <= imports  # the walk sees them
    missing = _provided(imports - set(SCORERS) - OPTIONAL, names)
    assert not missing, f"environment.yml lacks packages for {sorted(missing)}"
    assert {"snakemake", "snakemake-executor-plugin-slurm", "pandas", "faiss-gpu"} <= names and "faiss-cpu" not in names


def test_pip_never_resolves_torch_again():
    """environment.yml: pip installs with --no-deps only packages conda-forge lacks (and this checkout); none of them
    is torch, torchvision or FAISS. Scorer envs: their pip lists name no torch either (conda's stays)."""
    assert not {_spec_name(p) for p in _main_env_pip()} & {"torch", "torchvision", "faiss-gpu", "faiss-cpu"}
    for path in SCORERS.values():
        pip = {_spec_name(p) for p in _env(path)["pip"]}
        assert not pip & {"torch", "pytorch", "torchvision", "faiss-gpu", "faiss-cpu"}, (path, pip)


def test_torch_torchvision_and_faiss_agree():
    env = _env("environment.yml")
    spec = {_spec_name(s): s for s in env["conda"]}
    torch, vision = _spec_version(spec["pytorch"], "pytorch"), _spec_version(spec["torchvision"], "torchvision")
    assert (
        TORCHVISION_OF[torch] == vision
        and "build='cuda*'" in spec["pytorch"]
        and "build='cuda*'" in spec["torchvision"]
    )
    assert "cuda-version" in spec  # one CUDA for PyTorch and faiss-gpu
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"torch>={torch}"' in pyproject and f'"torchvision>={vision}"' in pyproject  # one floor everywhere
    assert tuple(map(int, torch.split("."))) >= (2, 6)  # transformers 5 disables PyTorch below 2.6
    for path in SCORERS.values():
        scorer = {_spec_name(s): s for s in _env(path)["conda"]}
        torch = _spec_version(scorer["pytorch"], "pytorch")
        assert TORCHVISION_OF[".".join(torch.split(".")[:2])] == ".".join(
            _spec_version(scorer["torchvision"], "torchvision").split(".")[:2]
        ), path
        assert "pytorch-cuda" in scorer, path  # the pytorch channel's CUDA build, not its CPU one


@pytest.mark.parametrize("command, env", [("geneval", "workflow/envs/geneval.yaml"), ("dpg", "workflow/envs/dpg.yaml")])
def test_each_scorer_env_holds_its_code_path_imports(command, env):
    imports = _cli_path(command)
    assert SCORERS.keys() & imports == {k for k, v in SCORERS.items() if v == env}  # the walk sees its backend
    missing = _provided(imports - (set(SCORERS) - {k for k, v in SCORERS.items() if v == env}), _env(env)["names"])
    assert not missing, f"{env} lacks packages for {sorted(missing)} (imported by `python -m arrag {command}`)"
    assert not {"transformers", "faiss"} & imports  # arrag's own heavy stack stays out of the scorer paths


def test_the_geneval_env_has_an_open_clip_with_openai_vit_l_14_quickgelu():
    """open_clip_torch 2.29.0 is the first release listing OpenAI weights under ViT-L-14-quickgelu (read from the
    wheel's open_clip/pretrained.py); 2.26.1 listed none."""
    pins = {_spec_name(p): p for p in _env("workflow/envs/geneval.yaml")["pip"]}
    version = tuple(map(int, pins["open-clip-torch"].split("==")[1].split(".")))
    assert version >= (2, 29, 0)
