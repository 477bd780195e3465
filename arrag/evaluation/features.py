"""Feature networks for the distribution metrics (paper Table 3), all with one interface that clean-fid accepts
as a `custom_feat_extractor`: a torch module mapping float images [B, 3, H, W] in [0, 255], already resized to
its `input_size`, to features [B, D]. Each also carries `identity`, a small JSON-able dict naming its weights.

- `inception_extractor`: FID's network, the StyleGAN2-ADA TorchScript port of TF Inception-v3
  (`inception-2015-12-05.pt`), through clean-fid's `InceptionV3W`, from a local file whose SHA-256 is checked
  first (never clean-fid's silent download to /tmp). 2048-d pool features of 299 px images.
- `arrag.models.clip.clip_embedder`: CMMD's network, an open_clip image tower (paper: OpenAI CLIP ViT-L/14@336),
  with the model's own normalisation; returns L2-normalised image embeddings. It lives with the models because
  RA-CM3's retriever loads the same towers.
- `MiniFeatureNet`: the mini profile's stand-in for both (mini-FID / mini-CMMD). Inception means something
  for photos because it was trained to recognise their content; this small CNN is trained to recognise the
  mini world's content (which colour x shape pairs are present, how many objects, which background), and
  its penultimate activations are the features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from arrag.data.downloads import fetch, sha256_of
from arrag.data.mini_world import BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES
from arrag.io import atomic_path, progress, write_json
from arrag.manifest import load_weights, read_artefact_metadata, write_manifest
from arrag.validation import COUNT, INDEX, POSITIVE, check_fields

# ----------------------------------------------------------------------------- Inception (FID)

INCEPTION_FILE = "inception-2015-12-05.pt"
# SHA-256 of the file at cleanfid.downloads_helper.inception_url, as pinned for that URL
# by k-diffusion (crowsonkb/k-diffusion, k_diffusion/evaluation.py) and other FID code.
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"


def inception_url() -> str:
    from cleanfid.downloads_helper import inception_url as url

    return url


def _inception_file(weights_path: str | Path) -> Path:
    """The weights file: `weights_path` itself, or INCEPTION_FILE inside it when it is a directory."""
    path = Path(weights_path)
    path = path / INCEPTION_FILE if path.is_dir() else path
    if path.name != INCEPTION_FILE:  # InceptionV3W joins a directory with this fixed name
        raise ValueError(f"{path}: the Inception weights file must be named {INCEPTION_FILE}")
    return path


def inception_extractor(weights_path: str | Path, device: str | torch.device = "cpu", sha256: str = INCEPTION_SHA256):
    """clean-fid's InceptionV3W from a local, hash-checked `inception-2015-12-05.pt` (file or its directory).

    Returns the module with `input_size` = 299 (it refuses other sizes) and `identity`.
    """
    from cleanfid.inception_torchscript import InceptionV3W

    path = _inception_file(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the FID Inception weights come from {inception_url()} "
            "(the pipeline's download rule fetches them; or call arrag.evaluation.features.download_inception)"
        )
    found = sha256_of(path)
    if found != sha256:
        raise ValueError(f"{path} has SHA-256 {found}, expected {sha256}: delete it and download it again")
    model = InceptionV3W(str(path.parent), download=False).to(device).eval()
    model.input_size = 299
    model.identity = {"name": INCEPTION_FILE, "sha256": found, "input_size": 299, "dim": 2048}
    return model


def download_inception(dest: str | Path, sha256: str = INCEPTION_SHA256, mirror: str | Path | None = None) -> Path:
    """Fetch clean-fid's Inception weights to `dest` (file or directory): resumable, hash-checked before the final
    rename (arrag.data.downloads.fetch); a file already there with the right hash is kept."""
    path = _inception_file(dest)
    if path.is_file() and sha256_of(path) == sha256:
        return path
    return fetch(inception_url(), path, sha256=sha256, mirror=mirror)


# ----------------------------------------------------------------------------- mini feature network

FORMAT = "arrag-mini-features/1"
PAIRS = [(c, s) for c in COLOURS for s in SHAPES]  # the pair-presence head's labels, colour-major
# head -> outputs: which colour x shape pairs, colours and shapes are present (multi-label), objects - 1, background
HEADS = {
    "pairs": len(PAIRS),
    "colours": len(COLOURS),
    "shapes": len(SHAPES),
    "count": MAX_OBJECTS,
    "background": len(BACKGROUNDS),
}
MULTI_LABEL = ("pairs", "colours", "shapes")


@dataclass
class MiniFeatureConfig:
    steps: int = 800  # ~40 s on 2 CPU cores
    batch_size: int = 128
    lr: float = 4e-3  # peak of a one-cycle schedule
    width: int = 16  # channels of the first conv; doubled after each of the first two poolings
    feature_dim: int = 64
    seed: int = 0
    heldout_fraction: float = 0.1  # images kept out of training to report the heads' accuracy

    def __post_init__(self):
        check_fields(
            self,
            {
                "steps": COUNT,
                "batch_size": COUNT,
                "lr": POSITIVE,
                "width": COUNT,
                "feature_dim": COUNT,
                "seed": INDEX,
                "heldout_fraction": dict(low=0, high=1, low_open=True, high_open=True),
            },
        )


def scene_targets(records: list[dict]) -> dict[str, np.ndarray]:
    """Mini-world records -> {head: targets [N, k] in {0, 1} for the multi-label heads, [N] indices otherwise}."""
    pair_index = {p: i for i, p in enumerate(PAIRS)}
    pairs = np.zeros((len(records), len(PAIRS)), dtype=np.float32)
    for i, r in enumerate(records):
        for obj in r["objects"]:
            pairs[i, pair_index[(obj["colour"], obj["shape"])]] = 1.0
    grid = pairs.reshape(len(records), len(COLOURS), len(SHAPES))
    return {
        "pairs": pairs,
        "colours": grid.max(2),  # [N, |COLOURS|]
        "shapes": grid.max(1),  # [N, |SHAPES|]
        "count": np.array([len(r["objects"]) - 1 for r in records], dtype=np.int64),
        "background": np.array([BACKGROUNDS.index(r["background"]) for r in records], dtype=np.int64),
    }


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class MiniFeatureNet(nn.Module):
    """32 px images [B, 3, 32, 32] in [0, 255] -> features [B, feature_dim] (ReLU activations, as Inception's)."""

    input_size = 32

    def __init__(self, width: int = 16, feature_dim: int = 64):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv(3, w),
            nn.MaxPool2d(2),  # [B, w, 16, 16]
            _conv(w, 2 * w),
            nn.MaxPool2d(2),  # [B, 2w, 8, 8]: objects are 2-3.5 cells wide here
            _conv(2 * w, 4 * w),
            _conv(4 * w, 4 * w),  # two convs at 8 px see whole shapes: what tells a circle from a diamond
            nn.MaxPool2d(2),  # [B, 4w, 4, 4]
            nn.Flatten(),  # flatten, not pool: where objects are is part of the scene
            nn.Linear(16 * 4 * w, feature_dim),
            nn.ReLU(),
        )
        self.heads = nn.Linear(feature_dim, sum(HEADS.values()))
        self.identity = {"name": "mini", "input_size": self.input_size, "dim": feature_dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"MiniFeatureNet takes {self.input_size} px images, got {tuple(x.shape)}")
        return self.body(x / 127.5 - 1.0)

    def logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> {head: logits [B, HEADS[head]]}."""
        return dict(zip(HEADS, self.heads(self.forward(x)).split(list(HEADS.values()), dim=1)))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # [B, 3, H, W] in [0, 255]


def _loss(model: MiniFeatureNet, x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model.logits(x)
    loss = 0.0
    for head in MULTI_LABEL:  # summed over labels, not averaged: averaged, the rare pair labels barely train
        loss = loss + F.binary_cross_entropy_with_logits(logits[head], t[head], reduction="sum") / len(x)
    return loss + F.cross_entropy(logits["count"], t["count"]) + F.cross_entropy(logits["background"], t["background"])


@torch.no_grad()
def head_accuracy(model: MiniFeatureNet, images: np.ndarray, records: list[dict], batch: int = 512) -> dict:
    """Accuracy of each head on (held-out) images; multi-label heads count an image right only if every label is."""
    model.eval()
    t = scene_targets(records)
    outs = [model.logits(_to_tensor(images[i : i + batch])) for i in range(0, len(images), batch)]
    logits = {head: torch.cat([o[head] for o in outs]).numpy() for head in HEADS}
    acc = {head: float(((logits[head] > 0) == (t[head] > 0)).all(1).mean()) for head in MULTI_LABEL}
    acc.update({head: float((logits[head].argmax(1) == t[head]).mean()) for head in ("count", "background")})
    return {**acc, "images": len(images)}


def train_feature_network(
    images: np.ndarray, records: list[dict], cfg: MiniFeatureConfig, out_dir: str | Path
) -> tuple[MiniFeatureNet, dict]:
    """Train MiniFeatureNet on mini-world images [N, 32, 32, 3] + records; write out_dir/{model.safetensors,
    config.json} atomically. Returns the model (eval mode) and the summary stored in config.json (held-out
    accuracy of each head, training seconds)."""
    from safetensors.torch import save_file

    if len(images) != len(records):
        raise ValueError(f"{len(images)} images but {len(records)} records: give one record per image")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(images))
    n_heldout = max(1, int(round(cfg.heldout_fraction * len(images))))
    heldout, train = order[:n_heldout], order[n_heldout:]
    targets = {k: torch.from_numpy(v) for k, v in scene_targets(records).items()}

    model = MiniFeatureNet(cfg.width, cfg.feature_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    start = time.perf_counter()
    model.train()
    bar = progress(range(cfg.steps), desc="feature net", unit="step")
    for _ in bar:
        idx = rng.choice(train, size=min(cfg.batch_size, len(train)), replace=False)
        loss = _loss(model, _to_tensor(images[idx]), {k: v[idx] for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    seconds = time.perf_counter() - start
    accuracy = head_accuracy(model, images[heldout], [records[i] for i in heldout])

    summary = {
        "format": FORMAT,
        "config": asdict(cfg),
        "pairs": [list(p) for p in PAIRS],
        "backgrounds": list(BACKGROUNDS),
        "max_objects": MAX_OBJECTS,
        "train_images": len(train),
        "heldout_accuracy": accuracy,
        "train_seconds": round(seconds, 2),
    }
    with atomic_path(out_dir, directory=True) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        write_json(tmp / "config.json", summary)
        write_manifest(tmp, "feature-network")
    model.identity = {
        **model.identity,
        "path": str(out_dir),
        "sha256": sha256_of(Path(out_dir) / "model.safetensors"),
    }
    return model.eval(), summary


def load_feature_network(directory: str | Path, device: str | torch.device = "cpu") -> MiniFeatureNet:
    """The MiniFeatureNet saved by train_feature_network, in eval mode, with `identity` naming its weights."""
    from safetensors.torch import load_file

    directory = Path(directory)
    fix = "train the mini feature network (arrag train-features, the pipeline's feature-network rule)"
    summary, _ = read_artefact_metadata(directory, "config.json", "feature-network", FORMAT, fix)
    if [tuple(p) for p in summary.get("pairs", [])] != PAIRS:
        raise ValueError(
            f"{directory / 'config.json'}: field 'pairs' is not this mini world's colour x shape pairs; {fix}"
        )
    cfg = MiniFeatureConfig(**summary["config"])
    model = MiniFeatureNet(cfg.width, cfg.feature_dim)
    load_weights(model, load_file(directory / "model.safetensors"), directory / "model.safetensors")
    model.identity = {**model.identity, "path": str(directory), "sha256": sha256_of(directory / "model.safetensors")}
    return model.to(device).eval()


def feature_network(spec: str | None, device: str | torch.device = "cpu"):
    """A feature network named as the fidelity command's --fid-network / --cmmd-network take it: mini:DIR (arrag
    train-features), inception:FILE, clip:WEIGHTS (a local file or an open_clip tag of CMMD's CLIP model), or
    none (None: that metric is not computed)."""
    if not spec or spec == "none":
        return None
    kind, _, where = spec.partition(":")
    if kind == "mini" and where:
        return load_feature_network(where, device=device)
    if kind == "inception" and where:
        return inception_extractor(where, device=device)
    if kind == "clip" and where:
        from arrag.models.clip import clip_embedder

        return clip_embedder(pretrained=where, device=device)
    raise ValueError(f"feature network {spec!r}: expected mini:DIR, inception:FILE, clip:WEIGHTS or none")
