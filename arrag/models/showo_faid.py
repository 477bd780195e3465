"""FAiD for Show-o (paper appendix B.2): FAiD's modules (arrag.models.faid) after every decoder layer of Show-o's
LM, over all image positions at once, fed each position's k candidates retrieved with its 8 neighbours
(`causal=False` keys), applied in the last half of the masked decoding steps, trained with Show-o's masked-token
objective on retrieved candidates.

What differs from the autoregressive FAiD: a position predicts its own token (not the next one), so the module's
contribution goes to the image position itself; its window is the whole ring around it (every neighbour, known or
still masked: the hidden state at a masked cell is the mask token's, which is what the model knows there); the
candidates enter the model's input space through the LM's own image-token embeddings (Eq. 5 for Show-o, which has
no separate generation embedding). With the zero-initialised output projection the model is exactly its backbone.

Checkpoint: the FAiD layout (faid_config.json + faid.safetensors), faid.json (the backbone's identity, the
database, the training statistics) and MANIFEST.json last (inputs: base_model, database, trainset), as
arrag.models.faid_training writes Janus' FAiD.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from arrag.decoding.masked import MaskedDecodingHook, MaskedStepState
from arrag.decoding.masked_daid import grid_queries, retrieves_at
from arrag.models.faid import FAiD, FAiDConfig, _Pass, freeze_backbone
from arrag.models.vq import codebook_fingerprint


class ShowoFAiD(FAiD):
    """FAiD modules over a Show-o backbone: `plan(candidate_ids, rows)` before a forward pass augments every image
    position of the first `rows` rows (the conditional half under guidance)."""

    def __init__(self, cfg: FAiDConfig, hidden_size: int, num_layers: int):
        super().__init__(cfg, hidden_size, num_layers)
        for block in self.blocks:
            block.causal = False  # a masked position sees all its neighbours

    @classmethod
    def for_model(cls, model, cfg: FAiDConfig) -> "ShowoFAiD":
        return cls(cfg, model.config.hidden_size, model.config.num_hidden_layers)

    def attach(self, backbone) -> "ShowoFAiD":
        """Hook the modules into a ShowoBackbone's LM (arrag.models.backbone); inert until a pass is planned."""
        if self._handles:
            raise RuntimeError("this FAiD is already attached; detach() it first")
        model = backbone.model
        layers = model.model.layers
        if len(layers) != self.num_layers or model.config.hidden_size != self.hidden_size:
            raise ValueError(
                f"FAiD built for {self.num_layers} layers of width {self.hidden_size}, the Show-o LM has "
                f"{len(layers)} of width {model.config.hidden_size}"
            )
        for block_index, layer_id in enumerate(self.layer_ids):
            self._handles.append(layers[layer_id].register_forward_hook(self._layer_hook(block_index), prepend=True))
        embed, offset = model.get_input_embeddings(), backbone.vocab.image_offset
        self._embed = lambda ids: embed(ids + offset)  # codebook index -> the LM's image-token embedding
        self._side = backbone.vq.grid
        return self

    def plan(self, candidate_ids: torch.Tensor, rows: int) -> None:
        """The next forward pass (sequences ending <|soi|> image <|eoi|>) augments all N image positions of the
        first `rows` rows: candidate_ids [rows, N, K] (-1: none)."""
        n = self._side**2
        if candidate_ids.shape[:2] != (rows, n):
            raise ValueError(f"candidate ids {tuple(candidate_ids.shape)}: expected [{rows}, {n}, K]")
        cands, valid = self.embed_candidates(candidate_ids)  # [R, N, K, D], [R, N, K]
        targets = torch.arange(n, device=candidate_ids.device)
        self._pass = _Pass(targets, cands, valid, rows, image_start=-(n + 1))  # counted from the end

    def _grid(self, block_index: int, out: torch.Tensor, plan: _Pass) -> tuple[torch.Tensor, int]:
        """The image positions' hidden states [R, H, W, D]; the contribution goes to the positions themselves."""
        start = out.shape[1] + plan.image_start
        grid = out[: plan.rows, start : start + self._side**2]
        return grid.reshape(plan.rows, self._side, self._side, -1), start


class ShowoFAiDHook(MaskedDecodingHook):
    """In the last half of the steps, every image position of every image retrieves its k candidates with its 8
    neighbours (zero where masked or off the grid), and the attached ShowoFAiD augments that step's forward."""

    def __init__(self, db, faid: ShowoFAiD, k: int | None = None):
        if db.causal:
            raise ValueError(
                "FAiD on Show-o queries all 8 neighbours, but the database holds causal keys; build it with "
                "full-ring keys (arrag build-db --full)"
            )
        self.db, self.faid, self.codebook = db, faid, db.codebook
        self.k = k or faid.cfg.k

    def added_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.faid.parameters())

    def before_forward(self, state: MaskedStepState) -> None:
        self.faid.clear()
        if not retrieves_at(state.step, state.steps):
            return
        if self.codebook.device != state.grid.device:
            self.codebook = self.codebook.to(state.grid.device)
        b, h, w = state.grid.shape
        queries = grid_queries(state.grid, self.codebook, self.db.hops).reshape(b * h * w, -1)  # [B*N, n*D]
        _, values, _ = self.db.search(queries, self.k)  # [B*N, k]
        self.faid.plan(values.view(b, h * w, self.k), rows=b)

    def after_step(self, state: MaskedStepState, grid: torch.Tensor) -> None:
        self.faid.clear()


# ---------------------------------------------------------------- training


def showo_identity(backbone) -> dict:
    """What a Show-o FAiD checkpoint must match: the LM's layout, the tokenizer's codebook, every weight."""
    from arrag.models.janus import model_identity

    config = backbone.model.config
    return {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "codebook_sha256": codebook_fingerprint(backbone.vq.codebook),
        "weights": model_identity(backbone.model),
    }


def train_showo_faid(backbone_dir, trainset_dir, cfg, out_dir, db=None, restart: bool = False) -> dict:
    """Fine-tune FAiD's modules on a Show-o backbone (frozen) with the masked-token objective: each image's
    masked tokens predicted from its text, its unmasked tokens and every position's retrieved candidates (those
    of the FAiD training set, arrag faid-trainset with a full-ring database). One process (CPU or one GPU)."""
    from arrag.models.backbone import load_backbone
    from arrag.models.faid_training import fit_faid, load_trainset_for, save_faid
    from arrag.models.showo_training import mask_draw, masked_token_loss
    from arrag.models.training import artefact_id, fit_record, resolve_steps

    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(backbone_dir)
    sha = codebook_fingerprint(backbone.vq.codebook)
    # codes [N, T], candidates [N, T, k]
    codes, candidates, captions, meta = load_trainset_for(trainset_dir, db, backbone_dir, sha, cfg.k)
    freeze_backbone(backbone.model)
    faid_cfg = FAiDConfig(every=1, hops=cfg.hops, k=cfg.k, budget=cfg.budget, rank=cfg.rank)  # every layer
    faid = ShowoFAiD.for_model(backbone.model, faid_cfg).train().attach(backbone)
    texts = backbone.prompts(captions).texts
    base_identity = showo_identity(backbone)

    def micro_loss(idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        batch = [[] if d else texts[i] for i, d in zip(idx.tolist(), drop.tolist())]
        cands = torch.where(drop[:, None, None], -1, candidates[idx])  # dropped captions retrieve nothing
        faid.plan(cands, rows=len(idx))
        try:
            return masked_token_loss(
                backbone.model, backbone.vocab, batch, codes[idx], mask_draw(idx, cfg.seed, codes.shape[1])
            )
        finally:
            faid.clear()

    settings = {"trainer": "showo-faid", "config": asdict(cfg), "base": artefact_id(backbone_dir)}
    settings |= {"trainset": artefact_id(trainset_dir)}
    cfg, schedule = resolve_steps(cfg, len(codes), cfg.batch_size * cfg.grad_accum)
    start, log, t0, ckpt = fit_faid(
        faid, len(codes), micro_loss, cfg, out_dir, "FAiD (Show-o)", settings, restart=restart
    )
    faid.detach()
    stats = {
        "method": "faid",
        "backbone": "showo",
        "base_model": str(backbone_dir),
        "base_identity": base_identity,
        "trainset": str(trainset_dir),
        "trainset_identity": meta["identity"],
        "database": meta["database"],
        **fit_record(cfg, schedule, start, t0),
        "log": log,
        "trainable_parameters": sum(p.numel() for p in faid.parameters()),
        "config": asdict(cfg),
    }
    save_faid(faid, stats, meta, out_dir)
    ckpt.discard()
    return stats


def load_showo_faid(directory, backbone, db=None) -> ShowoFAiD:
    """A Show-o FAiD checkpoint, checked against its manifest, the backbone it was trained for (all its weights)
    and (given `db`) the database its candidates came from."""
    from arrag.manifest import read_artefact_metadata
    from arrag.models.faid_training import require_faid_database

    directory = Path(directory)
    info, manifest = read_artefact_metadata(directory, "faid.json", "faid", None, "train FAiD with `arrag train-faid`")
    if info.get("backbone") != "showo":
        raise ValueError(f"{directory} is a FAiD checkpoint of a Janus model, not of a Show-o backbone")
    require_faid_database(manifest, directory, db)
    found = showo_identity(backbone)
    if info["base_identity"] != found:
        diff = sorted(k for k in found if info["base_identity"].get(k) != found[k])
        raise ValueError(
            f"{directory} was trained for another Show-o backbone than the one loaded (differs in {diff}; trained "
            f"on {info['base_model']}); load that backbone or retrain FAiD on this one"
        )
    return ShowoFAiD.load(directory, device=backbone.device)
