"""FAiD fine-tuning (paper appendix B.3): the training set of retrieved candidates, then training of the FAiD
parameters only, with the backbone frozen.

Training-set format "arrag-faid-trainset/1" (a directory, written atomically):

    trainset.npz   codes uint16 [N, H, W]       the fine-tuning images' VQ tokens
                   candidates int32 [N, H*W, k] per position, the k tokens retrieved with the ground-truth
                                                neighbourhood as the query (-1: fewer than k hits)
                   image_ids int64 [N]           the images' ids in the database's id space, -1 when the
                                                image is not in the database (no same-image exclusion needed)
    trainset.json  format, count, grid, k, captions [N], database (the PatchDatabase's digest),
                   excluded_same_image, codebook_sha256
    MANIFEST.json  arrag.manifest, written last; inputs: base_model, database

FAiD checkpoint (a directory, written atomically): `faid.safetensors` + `faid_config.json` (only the FAiD
parameters and their layout), `faid.json` with the base model's identity, the training set's database
and the training statistics, and MANIFEST.json last (inputs: base_model, database, trainset). `load_faid`
refuses a checkpoint made for another base model, module layout or (given) database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from arrag.decoding.faid import training_candidates
from arrag.io import atomic_path, progress, write_json
from arrag.manifest import read_artefact_metadata, require_input, write_manifest
from arrag.models.faid import FAiD, FAiDConfig, faid_training_loss, freeze_backbone
from arrag.models.janus import load_janus
from arrag.models.janus import model_identity as weights_identity
from arrag.models.training import (
    CAPTION_DROPOUT,
    artefact_id,
    caption_inputs,
    check_training_fields,
    fit,
    fit_record,
    resolve_steps,
)
from arrag.models.vq import VQTokenizer, codebook_fingerprint
from arrag.validation import COUNT, FRACTION, POSITIVE

TRAINSET_FORMAT = "arrag-faid-trainset/1"
DB_FIX = "rebuild the FAiD training set from this database (arrag faid-trainset) and retrain FAiD"


def database_identity(db) -> str:
    """Which PatchDatabase candidates came from: its manifest's digest. `db` is a PatchDatabase or the digest
    itself (arrag.manifest.identity(dir): enough to check a training set without loading the index)."""
    found = db if isinstance(db, str) else db.identity
    if not found:
        raise ValueError("the database has no identity yet: save it (PatchDatabase.save) or load it from disk")
    return found


def model_identity(model) -> dict:
    """What a FAiD checkpoint must match: the backbone's layout and the whole of its weights
    (arrag.models.janus.model_identity: a SHA-256 of every tensor)."""
    text = model.config.text_config
    return {
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
        "codebook_sha256": codebook_fingerprint(VQTokenizer.from_janus(model).codebook),
        "weights": weights_identity(model),
    }


# ---------------------------------------------------------------- training set


def build_trainset(
    model,
    db,
    codes: torch.Tensor,
    captions: list[str],
    k: int,
    out_dir: str | Path,
    image_ids: np.ndarray | None = None,
    batch_size: int = 64,
    vq=None,
) -> dict:
    """Retrieve each position's k candidates for the fine-tuning images' token grids codes [N, H, W] (VQ codes
    of this model, e.g. from `encode_images` or code shards) from its ground-truth neighbourhood.
    `image_ids` [N] (the images' ids in the database) drops hits from the image itself, which would otherwise
    hand the model the answer. `vq`: the model's tokenizer facade (arrag.models.backbone; default Janus')."""
    if len(codes) != len(captions):
        raise ValueError(f"{len(codes)} images but {len(captions)} captions: give one caption per image")
    if not 1 <= k <= len(db):
        raise ValueError(f"k={k} must be between 1 and the database size {len(db)}")
    vq = vq or VQTokenizer.from_janus(model)
    sha = codebook_fingerprint(vq.codebook)
    if sha != db.codebook_sha256:
        raise ValueError("the database was built with another VQ codebook than this model; rebuild it (arrag build-db)")
    codes = codes.cpu()  # [N, H, W]
    candidates = []
    for start in progress(range(0, len(codes), batch_size), desc="FAiD training set", unit="batch"):
        ids = None if image_ids is None else torch.as_tensor(image_ids[start : start + batch_size])
        batch = codes[start : start + batch_size].to(db.device)
        candidates.append(training_candidates(db, batch, vq.codebook, k, image_ids=ids).cpu())
    candidates = torch.cat(candidates).to(torch.int32)  # [N, T, k]
    meta = {
        "format": TRAINSET_FORMAT,
        "count": len(codes),
        "grid": list(codes.shape[1:]),
        "k": k,
        "codebook_sha256": sha,
        "database": database_identity(db),
        "excluded_same_image": image_ids is not None,
        "captions": list(captions),
        "missing_candidate_fraction": float((candidates < 0).float().mean()),
    }
    ids = np.full(len(codes), -1, dtype=np.int64) if image_ids is None else np.asarray(image_ids, dtype=np.int64)
    with atomic_path(Path(out_dir), directory=True) as tmp:
        with open(tmp / "trainset.npz", "wb") as f:  # a file object: np.savez would append ".npz"
            np.savez(f, codes=codes.numpy().astype(np.uint16), candidates=candidates.numpy(), image_ids=ids)
        write_json(tmp / "trainset.json", meta)
        inputs = {"base_model": weights_identity(model), "database": database_identity(db)}
        write_manifest(tmp, "faid-trainset", inputs)
    return {k: v for k, v in meta.items() if k != "captions"}


def load_trainset(directory: str | Path, db=None) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(codes [N, H, W], candidates [N, T, k], captions, metadata), checked against the manifest; with `db` (a
    PatchDatabase or its digest), refuse a training set whose candidates came from another database."""
    directory = Path(directory)
    fix = "build the FAiD training set with `arrag faid-trainset`"
    meta, manifest = read_artefact_metadata(directory, "trainset.json", "faid-trainset", TRAINSET_FORMAT, fix)
    if db is not None:
        what = f"the FAiD training set {directory}"
        require_input(manifest, "database", database_identity(db), what, DB_FIX)
    meta["identity"] = manifest["digest"]
    with np.load(directory / "trainset.npz", allow_pickle=False) as z:
        codes = torch.from_numpy(z["codes"].astype(np.int64))
        candidates = torch.from_numpy(z["candidates"].astype(np.int64))
    return codes, candidates, meta["captions"], meta


def load_trainset_for(trainset_dir: str | Path, db, base_dir, codebook_sha256: str, k: int):
    """The training set of a FAiD with k candidates on the base model at `base_dir`, whose codebook's fingerprint
    is `codebook_sha256`: refused when tokenised with another codebook or holding fewer than k candidates per
    position. -> (codes [N, T], candidates [N, T, k], captions, metadata), as load_trainset (`db` likewise)."""
    codes, candidates, captions, meta = load_trainset(trainset_dir, db)
    if meta["codebook_sha256"] != codebook_sha256:
        raise ValueError(f"{trainset_dir} was tokenised with another codebook than {base_dir}; rebuild it")
    if meta["k"] < k:
        raise ValueError(f"{trainset_dir} holds {meta['k']} candidates per position, fewer than k={k}")
    return codes.flatten(1), candidates[..., :k], captions, meta


# ---------------------------------------------------------------- training


@dataclass
class FAiDTrainingConfig:
    steps: int | None = 500  # optimiser steps; None: derived from `epochs` and the pairs read
    epochs: float | None = None  # passes over the training set (appendix B.3: one); then `steps` must be None
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int = 1  # global batch = batch_size * grad_accum * processes
    lr: float = 2e-4
    warmup_frac: float = 0.1  # linear warm-up over this fraction of the steps, then constant
    caption_dropout: float = 0.1  # dropped rows get the unconditional prompt and no candidates (as at inference)
    checkpoint_every: int = 100
    seed: int = 0
    # the FAiD layout (arrag.models.faid.FAiDConfig)
    every: int = 2
    hops: str = "12"
    k: int = 10
    budget: str = "lowrank"
    rank: int = 32

    def __post_init__(self):
        check_training_fields(
            self,
            {
                "steps": COUNT | {"optional": True},  # None: derived from epochs
                "epochs": POSITIVE | {"optional": True},
                "grad_accum": COUNT,
                "warmup_frac": FRACTION,
                "caption_dropout": CAPTION_DROPOUT,
                "every": COUNT,
                "k": COUNT,
                "rank": COUNT,
            },
        )


def lr_at(step: int, cfg: FAiDTrainingConfig) -> float:
    """Appendix B.3: linear warm-up over the first warmup_frac of the steps, then constant."""
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    return cfg.lr * min(1.0, (step + 1) / warmup)


def fit_faid(faid: FAiD, n: int, micro_loss, cfg, out_dir: Path, desc: str, settings: dict, acc=None, restart=False):
    """`fit` of FAiD's modules, whichever backbone they hook into (Janus, Show-o): AdamW over their parameters
    without weight decay, lr_at's warm-up then constant rate, the loss logged every 25 steps; the resumable
    checkpoint holds the FAiD modules only. Returns fit's (resumed-at step, loss log, start time, checkpoint)."""
    return fit(
        faid,
        list(faid.parameters()),
        n,
        micro_loss,
        cfg,
        lr_at=lambda step: lr_at(step, cfg),
        out_dir=out_dir,
        desc=desc,
        settings=settings,
        weight_decay=0.0,
        acc=acc,
        restart=restart,
        log_every=25,
    )


def train_faid(
    base_dir: str | Path,
    trainset_dir: str | Path,
    cfg: FAiDTrainingConfig,
    out_dir: str | Path,
    db=None,
    cpu: bool = False,
    restart: bool = False,
) -> dict:
    """Fine-tune FAiD's parameters on the training set; the backbone stays frozen. Runs under
    `accelerate launch` on several GPUs (each process takes its share of every global batch; gradients are
    averaged across processes) or as a plain process on one GPU or the CPU."""
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    acc = Accelerator(cpu=cpu)
    torch.manual_seed(cfg.seed)
    model, processor = load_janus(base_dir, device=acc.device)
    sha = codebook_fingerprint(VQTokenizer.from_janus(model).codebook)
    codes, candidates, captions, meta = load_trainset_for(trainset_dir, db, base_dir, sha, cfg.k)  # [N, T], [N, T, k]
    freeze_backbone(model)
    model.eval()  # frozen backbone: no dropout
    faid_cfg = FAiDConfig(every=cfg.every, hops=cfg.hops, k=cfg.k, budget=cfg.budget, rank=cfg.rank)
    faid = FAiD.for_model(model, faid_cfg).to(acc.device).train()
    faid.attach(model)
    ids, mask, uncond = caption_inputs(processor, captions, acc.device)
    settings = {
        "trainer": "faid",
        "config": asdict(cfg),  # as given: steps None when derived from epochs
        "base": artefact_id(base_dir),
        "trainset": artefact_id(trainset_dir),
        "processes": acc.num_processes,
    }
    global_batch = cfg.batch_size * cfg.grad_accum * acc.num_processes
    cfg, schedule = resolve_steps(cfg, len(codes), global_batch)

    def micro_loss(rows: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        # rows index the CPU-held codes and candidates; `on` the device-held prompts
        on, dropped = rows.to(acc.device), dropped.to(acc.device)
        batch_ids = torch.where(dropped[:, None], uncond[on], ids[on])
        cands = torch.where(dropped[:, None, None], -1, candidates[rows].to(acc.device))
        return faid_training_loss(model, faid, batch_ids, mask[on], codes[rows].to(acc.device), cands)

    start, log, t0, ckpt = fit_faid(faid, len(codes), micro_loss, cfg, out_dir, "FAiD", settings, acc, restart)
    faid.detach()
    stats = {
        "method": "faid",
        "base_model": str(base_dir),
        "base_identity": model_identity(model),
        "trainset": str(trainset_dir),
        "trainset_identity": meta["identity"],
        "database": meta["database"],
        **fit_record(cfg, schedule, start, t0),
        "global_batch": global_batch,
        "processes": acc.num_processes,
        "log": log,
        "trainable_parameters": sum(p.numel() for p in faid.parameters()),
        "config": asdict(cfg),
    }
    if acc.is_main_process:
        save_faid(faid, stats, meta, out_dir)
        ckpt.discard()
    acc.wait_for_everyone()
    return stats


def save_faid(faid: FAiD, stats: dict, meta: dict, out_dir: Path) -> None:
    """Write a FAiD checkpoint folder atomically (layout in the module docstring): the modules, `stats` as
    faid.json, and the manifest last, whose inputs are the base model's weights (stats["base_identity"]), the
    training set (`meta`: load_trainset's metadata) and the database its candidates came from."""
    with atomic_path(out_dir, directory=True) as tmp:
        faid.save(tmp)
        write_json(tmp / "faid.json", stats)
        inputs = {"base_model": stats["base_identity"]["weights"], "database": meta["database"]}
        write_manifest(tmp, "faid", inputs | {"trainset": meta["identity"]})


def require_faid_database(manifest: dict, directory: Path, db) -> None:
    """Refuse the FAiD checkpoint at `directory` (its manifest) when its candidates came from another database
    than `db` (a PatchDatabase or its digest; None: no check): FAiD learnt to use that database's neighbours."""
    if db is not None:
        fix = "generate with the database it was trained with (--db), or retrain FAiD on this one: " + DB_FIX
        require_input(manifest, "database", database_identity(db), f"the FAiD checkpoint {directory}", fix)


def load_faid(directory: str | Path, model, device: str | torch.device = "cpu", db=None) -> FAiD:
    """The FAiD modules of a checkpoint, after checking them against the manifest and that they were trained
    for this base model (all of its weights) and layout, and (given `db`, a PatchDatabase or its digest) with
    candidates from this database: FAiD learnt to use that database's neighbours."""
    directory = Path(directory)
    info, manifest = read_artefact_metadata(directory, "faid.json", "faid", None, "train FAiD with `arrag train-faid`")
    require_faid_database(manifest, directory, db)
    expected, found = info["base_identity"], model_identity(model)
    if expected != found:
        diff = sorted(k for k in expected if expected[k] != found.get(k))
        raise ValueError(
            f"{directory} was trained for another base model than the one loaded (differs in {diff}; trained "
            f"on {info['base_model']}); load that model or retrain FAiD on this one"
        )
    faid = FAiD.load(directory, device=device)
    text = model.config.text_config
    if (faid.hidden_size, faid.num_layers) != (text.hidden_size, text.num_hidden_layers):
        raise ValueError(
            f"{directory}: its modules are laid out for {faid.num_layers} layers of width {faid.hidden_size}, "
            f"the model has {text.num_hidden_layers} of width {text.hidden_size}"
        )
    return faid
