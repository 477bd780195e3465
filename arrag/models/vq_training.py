"""Training of the mini base model's VQ-VAE: a JanusVQVAE on the mini world, with Janus' normalised quantisation.

A patch-consistency loss (off by default; the mini profile turns it on: docs/mini-profile.md, "One code per
patch") gives pixel-identical patches one latent, so one code, and dead codes restart farthest-first. Written
atomically, resumable, like every trainer (arrag.models.training).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.janus.modeling_janus import JanusVQVAE

from arrag.io import atomic_path, progress, write_json
from arrag.manifest import write_manifest
from arrag.models.janus import MiniJanusSpec, build_word_tokenizer, mini_janus_config
from arrag.models.training import ResumableCheckpoint, check_training_fields, seeded_batches, warmup_cosine_lr
from arrag.models.vq import normalised_nearest_codes, to_pixel_values
from arrag.validation import INDEX


@dataclass
class VQTrainingConfig:
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    commitment: float = 0.25
    restart_every: int = 100  # re-seed unused codes from current latents (dead-code restart)
    restart_margin: float = 0.0  # ... only onto latents farther than this (cosine distance) from every code
    consistency: float = 0.0  # weight of patch_consistency_loss: identical patches, identical latents
    locality: float = 0.0  # weight of patch_colour_loss: each code alone gives its patch's mean colour
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self):
        check_training_fields(
            self,
            {
                "commitment": dict(low=0),
                "restart_every": INDEX,
                "restart_margin": dict(low=0, high=2),
                "consistency": dict(low=0),
                "locality": dict(low=0),
            },
        )


def quantise_normalised(z: torch.Tensor, codebook: torch.Tensor, commitment: float):
    """Normalised VQ with a straight-through estimator, as Janus' tokenizer quantises.

    z [B, D, H, W] latents, codebook [K, D] -> (z_q [B, D, H, W], ids [B, H, W], vq loss).
    """
    b, d, h, w = z.shape
    z_flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d), dim=-1)  # [BHW, D]
    e = F.normalize(codebook, dim=-1)
    ids = normalised_nearest_codes(z_flat, codebook)
    z_q = e[ids]
    loss = F.mse_loss(z_q, z_flat.detach()) + commitment * F.mse_loss(z_flat, z_q.detach())
    z_q = z_flat + (z_q - z_flat).detach()
    return z_q.view(b, h, w, d).permute(0, 3, 1, 2), ids.view(b, h, w), loss


def patch_consistency_loss(z: torch.Tensor, x: torch.Tensor, patch: int) -> torch.Tensor:
    """Spread of the batch's normalised latents among pixel-identical patches, as a fraction of their whole spread.

    z [B, D, H, W] latents of images x [B, C, H * patch, W * patch]. An encoder sees far beyond its patch, so
    without this the same pixels encode to latents that drift with their surroundings, and a codebook splits
    that drift into synonym codes a generator must then learn to tell apart. The ratio (not the spread alone)
    so that collapsing every latent onto one point is no way out."""
    b, d, h, w = z.shape
    c = x.shape[1]
    tiles = x.view(b, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5).reshape(b * h * w, -1)  # [BHW, C*p*p]
    _, group = torch.unique(tiles, dim=0, return_inverse=True)  # [BHW]
    lat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d), dim=-1)  # [BHW, D]
    sums = lat.new_zeros(int(group.max()) + 1, d).index_add_(0, group, lat)
    means = sums / torch.bincount(group).to(lat.dtype)[:, None]  # [G, D]
    within = (lat - means[group]).pow(2).sum(-1).mean()
    total = (lat - lat.mean(0)).pow(2).sum(-1).mean()
    return within / (total + 1e-6)


def patch_colour_loss(z_q: torch.Tensor, x: torch.Tensor, patch: int, probe: torch.nn.Linear) -> torch.Tensor:
    """Squared error of a linear probe's reading of each patch's mean colour from that patch's quantised latent.

    z_q [B, D, H, W] (straight-through quantised) latents of images x [B, C, H * patch, W * patch]; probe: D -> C.
    JanusVQVAE's decoder sees the whole latent grid, so without this a code may leave its patch's colour to its
    neighbours, and a raster-order generator cannot settle an object's colour with the object's first token."""
    target = F.avg_pool2d(x, patch)  # [B, C, H, W]
    return F.mse_loss(probe(z_q.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), target)


def train_vq(
    images: np.ndarray, spec: MiniJanusSpec, cfg: VQTrainingConfig, out_dir: str | Path, restart: bool = False
) -> dict:
    """Train a JanusVQVAE on uint8 images [N, S, S, 3]; save it (save_pretrained) to out_dir. A checkpoint of
    other settings is refused (`restart=True`: start over); a resumed run equals an uninterrupted one."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = build_word_tokenizer([])  # only to fill the config's special ids; the VQ ignores them
    vq = JanusVQVAE(mini_janus_config(spec, tokenizer).vq_config).train()
    # the colour probe trains beside the VQ-VAE and is not saved with it (only its checkpoint holds it)
    probe = torch.nn.Linear(spec.codebook_dim, 3) if cfg.locality else None
    trained = torch.nn.ModuleDict({"vq": vq, "probe": probe}) if probe else vq
    opt = torch.optim.Adam(trained.parameters(), lr=cfg.lr)
    settings = {"trainer": "vq", "config": asdict(cfg), "spec": asdict(spec), "images": len(images)}
    ckpt = ResumableCheckpoint(out_dir, cfg.checkpoint_every, settings, restart)
    usage = torch.zeros(spec.codebook_size)  # code usage since the last dead-code restart: part of the state
    start = ckpt.load(trained, opt, {"usage": usage})
    pixels = to_pixel_values(images)
    log, t0 = [], time.time()
    bar = progress(
        seeded_batches(len(images), cfg.batch_size, cfg.steps, start, cfg.seed), total=cfg.steps - start, desc="VQ-VAE"
    )
    for step, idx in bar:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.lr)
        x = pixels[idx]
        z = vq.quant_conv(vq.encoder(x))
        z_q, ids, vq_loss = quantise_normalised(z, vq.quantize.embedding.weight, cfg.commitment)
        recon = vq.decoder(vq.post_quant_conv(z_q))
        rec_loss = F.mse_loss(recon, x)
        loss = rec_loss + vq_loss
        if cfg.consistency:
            loss = loss + cfg.consistency * patch_consistency_loss(z, x, spec.patch_size)
        if cfg.locality:
            loss = loss + cfg.locality * patch_colour_loss(z_q, x, spec.patch_size, probe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage += torch.bincount(ids.flatten(), minlength=spec.codebook_size)
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0 and step + 1 < 0.9 * cfg.steps:
            restart_dead_codes(vq.quantize.embedding.weight.data, usage, z.detach(), cfg.restart_margin)
            usage.zero_()
        if step % 50 == 0 or step == cfg.steps - 1:
            log.append({"step": step, "recon_mse": rec_loss.item(), "vq_loss": vq_loss.item()})
            bar.set_postfix(recon=f"{rec_loss.item():.4f}")
        ckpt.maybe_save(step + 1, trained, opt, {"usage": usage})
    vq.eval()
    stats = {
        "steps": cfg.steps,
        "resumed_at": start,
        "seconds": time.time() - t0,
        "log": log,
        "parameters": sum(p.numel() for p in vq.parameters()),
        "config": asdict(cfg),
    }
    with atomic_path(out_dir, directory=True) as tmp:
        vq.save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "training.json", stats)
        write_manifest(tmp, "janus-vq")
    ckpt.discard()
    return stats


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, usage: torch.Tensor, z: torch.Tensor, margin: float = 0.0) -> int:
    """Move unused codes onto the latents the codebook covers worst, farthest first; returns how many moved.

    codebook [K, D] (edited in place), usage [K] (uses since the last restart), z [B, D, H, W] the step's latents.
    Each dead code in turn takes the latent farthest (cosine distance) from every live or already moved code,
    until none is farther than `margin`: a restart at a random latent would mostly land in the densest cluster
    (the background) and split it into synonyms; farthest-first covers the rare patches the codebook misses."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0 or len(dead) == len(usage):
        return 0
    lat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float(), dim=-1)  # [N, D]
    live = F.normalize(codebook[usage > 0].float(), dim=-1)  # [L, D]
    dist = 1 - (lat @ live.T).max(dim=1).values  # [N] distance to the nearest live code
    moved = 0
    for code in dead.tolist():
        i = int(dist.argmax())
        if dist[i] <= margin:
            break
        codebook[code] = lat[i].to(codebook.dtype)
        dist = torch.minimum(dist, 1 - lat @ lat[i])
        moved += 1
    return moved
