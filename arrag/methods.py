"""The generation methods as library objects: Vanilla, DAiD, FAiD and RA-CM3.

Each method is a frozen dataclass of its settings, whose defaults and checks live here once (the CLI's flags,
`arrag bench generate` and the DAiD hook take them from here), and which knows how it is built and recorded:

    settings = DAiDSettings(db="results/mini/db", weight=0.2)           # checked now, before any model loads
    method = build_method(settings, "results/mini/models/base", device="cuda")
    images, codes = method.pipe(["a red circle"], n=4, hooks=method.make_hooks())
    method.record()  # what generation.json keeps: model, method, its settings, its inputs' identities

Building loads the database once, attaches FAiD's modules to the model, and returns a factory of fresh hooks
(one set per run or batch); RA-CM3 brings its own pipeline (it retrieves a reference image per prompt).

Only dataclasses and numbers at import time: the CLI reads the defaults while it builds its parser, and the
scorer environments (no transformers) import the CLI. Everything heavy is imported where it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from arrag.validation import COUNT, FRACTION, POSITIVE, check_number

# DAiD's numbers (paper Eq. 2-4): k hits per step, weight lambda of p_ret, temperature tau of its softmax
DAID_BOUNDS = {"k": COUNT, "weight": FRACTION, "temperature": POSITIVE}


def check_daid(k: int, weight: float, temperature: float) -> None:
    """The one check of DAiD's numbers (settings, hook and CLI flags share DAID_BOUNDS): "DAiD <name> is ..."."""
    for name, value in (("k", k), ("weight", weight), ("temperature", temperature)):
        check_number(value, f"DAiD {name}", **DAID_BOUNDS[name])


def _require(value, what: str, need: str) -> None:
    if value is None or value == "":
        raise ValueError(f"{what} is not set: {need}")


@dataclass(frozen=True)
class MethodSettings:
    """What every method shares: the backbone's pipeline, no hooks, a record naming the method."""

    name: ClassVar[str] = ""

    def record(self) -> dict:
        """The method's settings as generation.json and settings.json keep them."""
        return {"method": self.name}

    def inputs(self) -> dict[str, str]:
        """Local artefacts the images depend on beside the model (name -> path), fingerprinted in the record."""
        return {}

    def pipeline(self, model: str | Path, revision: str | None = None, device: str | None = None):
        """The text-to-image pipeline of `model` (a directory or a hub id at `revision`)."""
        from arrag.decoding.pipeline import ImageGenerationPipeline

        return ImageGenerationPipeline.from_pretrained(model, revision=revision, device=device)

    def hook_factory(self, pipe, db_devices: str | None = None, record: bool = False) -> Callable[[], list]:
        """A function making fresh decoding hooks for `pipe` (loading what they share once, now)."""
        return list


@dataclass(frozen=True)
class VanillaSettings(MethodSettings):
    """The backbone alone (Janus-Pro, or the mini model)."""

    name: ClassVar[str] = "vanilla"


@dataclass(frozen=True)
class DAiDSettings(MethodSettings):
    """DAiD (paper section 3.2), training-free: the k nearest patches of each step's neighbourhood in the
    database `db` form p_ret, merged as (1 - weight) * p_model + weight * p_ret. `unique` keeps only the closest
    hit of each token (the authors' code)."""

    name: ClassVar[str] = "daid"
    db: str | Path | None = None  # PatchDatabase directory (arrag build-db); required
    k: int = 10
    weight: float = 0.1
    temperature: float = 1.0
    unique: bool = False

    def __post_init__(self):
        _require(self.db, "DAiDSettings.db", "daid needs --db DIR (a PatchDatabase built with `arrag build-db`)")
        check_daid(self.k, self.weight, self.temperature)

    def record(self) -> dict:
        numbers = {"k": self.k, "weight": self.weight, "temperature": self.temperature, "unique": self.unique}
        return {"method": self.name, "db": str(self.db), **numbers}

    def inputs(self) -> dict[str, str]:
        return {"db": str(self.db)}

    def hook_factory(self, pipe, db_devices: str | None = None, record: bool = False) -> Callable[[], list]:
        from arrag.decoding.daid import DAiD
        from arrag.models.backbone import MASKED

        codebook = pipe.vq.codebook
        db = load_database(self.db, codebook, pipe.device, db_devices)
        numbers = dict(k=self.k, weight=self.weight, temperature=self.temperature, unique=self.unique)
        if pipe.backbone.loop == MASKED:  # Show-o: all 8 neighbours, the last half of the steps (appendix B.2)
            from arrag.decoding.masked_daid import MaskedDAiD

            return lambda: [MaskedDAiD(db, **numbers)]
        return lambda: [DAiD(db, codebook, **numbers, record=record)]


@dataclass(frozen=True)
class FAiDSettings(MethodSettings):
    """FAiD (paper section 3.3): the modules of the checkpoint `faid` (arrag train-faid) attached to the model,
    fed each step's candidates from `db`, the database they were trained with. k and the modules' shape come
    from the checkpoint."""

    name: ClassVar[str] = "faid"
    db: str | Path | None = None  # PatchDatabase directory; required
    faid: str | Path | None = None  # FAiD checkpoint directory of the model; required

    def __post_init__(self):
        _require(self.db, "FAiDSettings.db", "faid needs --db DIR (a PatchDatabase built with `arrag build-db`)")
        _require(self.faid, "FAiDSettings.faid", "faid needs --faid DIR (a checkpoint written by `arrag train-faid`)")

    def record(self) -> dict:
        return {"method": self.name, "db": str(self.db), "faid": str(self.faid)}

    def inputs(self) -> dict[str, str]:
        return {"db": str(self.db), "faid": str(self.faid)}

    def hook_factory(self, pipe, db_devices: str | None = None, record: bool = False) -> Callable[[], list]:
        """Attaches the checkpoint's modules to pipe.model (give FAiD a pipeline of its own when other methods
        decode with the same model)."""
        from arrag.decoding.faid import FAiDHook
        from arrag.models.backbone import MASKED
        from arrag.models.faid_training import load_faid

        codebook = pipe.vq.codebook
        db = load_database(self.db, codebook, pipe.device, db_devices)
        if pipe.backbone.loop == MASKED:  # Show-o: modules in every layer, the last half of the steps
            from arrag.models.showo_faid import ShowoFAiDHook, load_showo_faid

            faid = load_showo_faid(self.faid, pipe.backbone, db=db).eval().attach(pipe.backbone)
            return lambda: [ShowoFAiDHook(db, faid)]
        faid = load_faid(self.faid, pipe.model, device=pipe.device, db=db).eval()
        faid.attach(pipe.model)
        return lambda: [FAiDHook(db, codebook, faid, record=record)]


@dataclass(frozen=True)
class RACM3Settings(MethodSettings):
    """The RA-CM3 baseline: the model (arrag train-racm3) decodes after a reference image that the image-level
    retriever `image_index` (arrag build-image-index) finds for each prompt. It retrieves inside its pipeline,
    not through a hook."""

    name: ClassVar[str] = "racm3"
    image_index: str | Path | None = None  # required

    def __post_init__(self):
        need = "racm3 needs --image-index DIR (built with `arrag build-image-index`)"
        _require(self.image_index, "RACM3Settings.image_index", need)

    def record(self) -> dict:
        return {"method": self.name, "image_index": str(self.image_index)}

    def inputs(self) -> dict[str, str]:
        return {"image_index": str(self.image_index)}

    def pipeline(self, model: str | Path, revision: str | None = None, device: str | None = None):
        from arrag.baselines.racm3 import RACM3Pipeline

        return RACM3Pipeline.from_pretrained(model, self.image_index, revision=revision, device=device)


METHODS = {m.name: m for m in (VanillaSettings, DAiDSettings, FAiDSettings, RACM3Settings)}  # --method's choices


def run_label(method: str, backbone: str = "janus") -> str:
    """The label of a method's images and table rows on a backbone: the method itself on Janus; `showo` (vanilla)
    or `showo_<method>` on Show-o (the workflow's Show-o runs, and the rows compared with plain Show-o's)."""
    if backbone == "janus":
        return method
    if backbone != "showo":
        raise ValueError(f"unknown backbone {backbone!r}: janus or showo")
    return "showo" if method == "vanilla" else f"showo_{method}"


def load_database(path: str | Path, codebook, device, db_devices: str | None = None):
    """The PatchDatabase at `path` on `device`; with `db_devices` (e.g. "cuda:0,cuda:1") a torch_compact
    database's entries sharded over those devices."""
    from arrag.retrieval.database import PatchDatabase

    db = PatchDatabase.load(path, codebook=codebook, device=str(device))
    if db_devices:
        if db.index_name != "torch_compact":
            raise ValueError(f"--db-devices shards a torch_compact database; {path} is {db.index_name!r}")
        db.set_search_params(devices=db_devices)
    return db


def input_fingerprints(paths: dict[str, str | Path]) -> dict[str, str]:
    """Identities (manifest digests) of the local artefacts among `paths` (name -> path): rebuilt ones with other
    contents invalidate the images made before, even under the same paths. Hub ids (not on disk) are left out."""
    from arrag.manifest import identity

    return {name: identity(p) for name, p in paths.items() if p and Path(p).exists()}


@dataclass
class Method:
    """A built method: its settings, the model it decodes with, its pipeline and a factory of fresh hooks."""

    settings: MethodSettings
    model: str | Path
    pipe: object  # ImageGenerationPipeline (RACM3Pipeline for RA-CM3)
    make_hooks: Callable[[], list]

    def record(self) -> dict:
        """The settings record of images made by this method (generation.json's and settings.json's)."""
        inputs = input_fingerprints({"model": self.model, **self.settings.inputs()})
        return {"model": str(self.model), **self.settings.record(), "inputs": inputs}


def build_method(
    settings: MethodSettings,
    model: str | Path,
    *,
    revision: str | None = None,
    device: str | None = None,
    db_devices: str | None = None,
    record: bool = False,
) -> Method:
    """Load `model`'s pipeline for the method and what its hooks share (database, FAiD modules). `record=True`:
    the hooks keep every step's hits, for the over-copying measurement (copying.json per prompt)."""
    pipe = settings.pipeline(model, revision=revision, device=device)
    return Method(settings, model, pipe, settings.hook_factory(pipe, db_devices=db_devices, record=record))
