"""FAiD: Feature-Augmentation in Decoding (paper section 3.3, Algorithm 1, Eq. 5-7).

After every `every`-th decoder layer l a FAiD module refines the k retrieved candidates of the token being
predicted in their generated context and adds a blend of them to the hidden state of the predicting position:

    r_k   = aligner(gen_embed(token_k))                          Eq. 5: candidates in the model's input space
    c_k^h = conv_out_h(gelu(conv_in_h(window_h with r_k at the centre)))      one D-vector per hop h
    c_k   = sum_h softmax(a)_h c_k^h                             Eq. 6: learned scale weights
    s_k   = sigmoid(w . c_k + b)                                 Eq. 7: compatibility score
    h_l  += W_out (1/K sum_k s_k c_k)                            Eq. 7: contribution; W_out zero-initialised

Choices this implementation makes where the paper leaves room (see also docs/design.md on the authors' code):

- Windows. Hop h reads the (2h+1)x(2h+1) window of layer-l hidden states centred on the target, zero-padded
  off the grid, causally masked (the centre, the cells right of it and every row below are zeroed) and with
  the candidate at the centre. The grid cell of a generated token holds the layer's output at the sequence
  position where that token was fed, *before* FAiD's own addition there (that addition depends on the cell
  itself, the left neighbour of the next target). Cells are RMS-normalised first (deep hidden states and
  input-space candidates have very different scales); zeros stay zeros.
- Convolutions. Two stacked (h+1)x(h+1) convolutions, as the authors do: the first maps the window to
  (h+1)x(h+1), the second to 1x1, so together they see exactly the (2h+1)^2 window. A GELU sits between them
  (without it the two convolutions collapse into one linear map). Only the candidate differs between the k
  windows of a target, so the first convolution of the context is computed once per target and the
  candidate enters each of its (h+1)^2 outputs through a single tap: 2(h+1)^2 matrix-vector products per
  candidate instead of (h+1)^4 + (h+1)^2.
- Budget. `paper`: full-width D->D convolutions (the authors' size, ~113M parameters per module at D=2048).
  `lowrank`: the cells are projected D->r, convolved in r and the blend projected back r->D; that
  projection is the zero-initialised output projection.
- Progressive refinement. The candidates form a residual stream beside the token's: module m receives the
  candidates module m-1 received plus its update W_out c_k (the first module receives r_k). The token's
  contribution is the score-weighted mean of the same updates. With W_out = 0 every module sees r_k.
- Classifier-free guidance: only the first `rows` rows of a batch get candidates (the conditional half);
  the unconditional rows get nothing added and no FAiD computation. A row or step without candidates
  (all ids -1) gets exactly zero contribution.

Integration: `FAiD.attach(model)` puts forward hooks on the decoder layers (prepended, so transformers'
hidden-state capture sees the augmented output). The hooks do nothing unless a pass is planned: incremental
decoding plans one step at a time (`arrag.decoding.faid.FAiDHook` does it in `before_forward`) and keeps a
per-layer cache of the generated positions' hidden states [rows, H, W, D]; teacher-forced training
(`faid_logits`) plans all image positions of a [prompt | image] sequence at once. The candidates come from
arrag.decoding.faid, the retrieval side.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from arrag.models.training import image_token_logits

BUDGETS = ("paper", "lowrank")
DECODING_TARGETS = 256  # up to this many targets without gradients (a decoding step's rows) take the decoding path


@dataclass
class FAiDConfig:
    every: int = 12  # a FAiD module after decoder layers every-1, 2*every-1, ... (0-based): 2 for Janus-Pro-1B
    hops: str = "12"  # hop scales, one digit each: "12" = 3x3 and 5x5 windows (the paper's best, App. C.2)
    k: int = 10  # retrieved candidates per position
    budget: str = "lowrank"  # "paper": full-width D->D convolutions; "lowrank": convolve in `rank` channels
    rank: int = 256

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an integer >= 1, got {self.every!r}")
        hops = str(self.hops)
        if not hops or not hops.isdigit() or "0" in hops or len(set(hops)) != len(hops):
            raise ValueError(f"hops must be distinct digits 1-9 such as '12', got {self.hops!r}")
        self.hops = "".join(sorted(hops))
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")

    @property
    def hop_scales(self) -> tuple[int, ...]:
        return tuple(int(h) for h in self.hops)


def faid_layers(num_layers: int, every: int) -> list[int]:
    """0-based indices of the decoder layers followed by a FAiD module."""
    layers = list(range(every - 1, num_layers, every))
    if not layers:
        raise ValueError(f"every={every} exceeds the model's {num_layers} decoder layers: no FAiD module")
    return layers


# ---------------------------------------------------------------- one module


def causal_mask(size: int) -> torch.Tensor:
    """[size, size] bool, True for the cells of a window centred on the target that precede it in raster order."""
    centre = size // 2
    r = torch.arange(size)[:, None]
    c = torch.arange(size)[None, :]
    return (r < centre) | ((r == centre) & (c < centre))


def ring_mask(size: int) -> torch.Tensor:
    """[size, size] bool, True everywhere but the centre: the window of a target whose neighbours all count
    (masked decoding, Show-o)."""
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[size // 2, size // 2] = False
    return mask


def causal_windows(grid: torch.Tensor, targets: torch.Tensor, hop: int, causal: bool = True) -> torch.Tensor:
    """grid [N, H, W, C], targets [T] raster indices -> windows [N, T, S, S, C], S = 2*hop + 1.

    Centred on each target, zero off the grid, and zero at the target and every cell after it (`causal=False`:
    zero at the target only).
    """
    _, _, width, _ = grid.shape
    size = 2 * hop + 1
    padded = F.pad(grid, (0, 0, hop, hop, hop, hop))  # [N, H+2h, W+2h, C]
    offsets = torch.arange(size, device=grid.device)
    rows = (targets // width)[:, None] + offsets  # [T, S] rows in padded coordinates
    cols = (targets % width)[:, None] + offsets  # [T, S]
    windows = padded[:, rows[:, :, None], cols[:, None, :]]  # [N, T, S, S, C]
    keep = causal_mask(size) if causal else ring_mask(size)
    return windows * keep.to(grid.device)[:, :, None]


def centre_crop(windows: torch.Tensor, hop: int) -> torch.Tensor:
    """windows [..., S, S, C] -> the (2*hop+1)^2 centre [..., 2h+1, 2h+1, C]."""
    centre = windows.shape[-2] // 2
    return windows[..., centre - hop : centre + hop + 1, centre - hop : centre + hop + 1, :]


def smooth_one_scale(
    context: torch.Tensor, candidates: torch.Tensor, conv_in: nn.Conv2d, conv_out: nn.Conv2d
) -> torch.Tensor:
    """conv_out(gelu(conv_in(window))) for each candidate placed at the centre of its target's window.

    context [M, S, S, C] (centre zeroed), candidates [M, K, C] -> [M, K, C], S = 2h+1, kernels (h+1)x(h+1).
    conv_in is linear in the window, so it splits into the context's part (once per target) and the
    candidate's: the centre reaches output (i, j) through the single tap (h-i, h-j).
    """
    if not torch.is_grad_enabled() and len(context) <= DECODING_TARGETS:  # decoding: the weights' layouts kept
        return _smooth_one_scale_decoding(context, candidates, conv_in, conv_out)
    ctx = F.conv2d(context.permute(0, 3, 1, 2), conv_in.weight, conv_in.bias)  # [M, C, h+1, h+1]
    taps = conv_in.weight.flip(2, 3)  # [C_out, C_in, h+1, h+1]: taps[..., i, j] is the centre's tap at (i, j)
    cand = torch.einsum("mkc,ocij->mkoij", candidates, taps)  # [M, K, C, h+1, h+1]
    inner = F.gelu(ctx[:, None] + cand)  # [M, K, C, h+1, h+1]
    return torch.einsum("mkcij,ocij->mko", inner, conv_out.weight) + conv_out.bias  # [M, K, C]


def _smooth_one_scale_decoding(
    context: torch.Tensor, candidates: torch.Tensor, conv_in: nn.Conv2d, conv_out: nn.Conv2d
) -> torch.Tensor:
    """smooth_one_scale as three matrix products that read each weight in the layout it is stored in (or one kept
    from the previous step): at Janus-Pro-1B's width the paper budget's weights are 150 MB per convolution, and
    rearranging them at every step (the flip, einsum's permuted copies, the convolution's own weight reordering)
    cost more than the products themselves. The same sums in another order (float rounding aside)."""
    size = conv_in.kernel_size[0]  # h+1
    patches = F.unfold(context.permute(0, 3, 1, 2), size)  # [M, C*(h+1)^2, (h+1)^2]: the sliding windows
    ctx = conv_in.weight.flatten(1) @ patches + conv_in.bias[:, None]  # [M, C_out, (h+1)^2]
    cand = candidates @ _centre_taps(conv_in)  # [M, K, C_out*(h+1)^2]
    inner = F.gelu(ctx.flatten(1)[:, None] + cand)  # [M, K, C_out*(h+1)^2] in (channel, i, j) order
    return F.linear(inner, conv_out.weight.flatten(1), conv_out.bias)  # [M, K, C]


def _centre_taps(conv: nn.Conv2d) -> torch.Tensor:
    """[C_in, C_out*(h+1)^2]: row c holds the tap of input channel c at the window's centre for every output
    (channel, i, j), i.e. weight[o, c, h-i, h-j]. Kept on the module while its weight is unchanged (same storage,
    same version counter: an optimiser step or load_state_dict bumps it)."""
    weight = conv.weight
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    kept = conv.__dict__.get("_centre_taps")
    if kept is None or kept[0] != key:
        taps = weight.detach().flip(2, 3).transpose(0, 1).reshape(weight.shape[1], -1).contiguous()
        kept = conv.__dict__["_centre_taps"] = (key, taps)
    return kept[1]


class FAiDModule(nn.Module):
    """The FAiD module after one decoder layer: multi-scale smoothing (Eq. 6) and blending (Eq. 7).

    `width` = None convolves at full width (the paper's budget); an integer r projects the cells D->r first.
    """

    def __init__(self, hidden: int, hops: tuple[int, ...], width: int | None = None, causal: bool = True):
        super().__init__()
        self.hops, self.causal = tuple(hops), causal  # causal=False: the whole ring around the target (Show-o)
        inner = width or hidden
        self.norm = nn.RMSNorm(hidden, eps=1e-6)
        self.down = nn.Linear(hidden, inner, bias=False) if width else nn.Identity()
        self.conv_in = nn.ModuleList(nn.Conv2d(inner, inner, h + 1) for h in self.hops)
        self.conv_out = nn.ModuleList(nn.Conv2d(inner, inner, h + 1) for h in self.hops)
        self.scale_logits = nn.Parameter(torch.zeros(len(self.hops)))  # softmax -> equal weights at start
        self.score = nn.Linear(inner, 1)
        self.out = nn.Linear(inner, hidden, bias=False)
        nn.init.zeros_(self.out.weight)  # an untrained FAiD model is exactly its backbone

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states or candidates [..., D] -> convolution channels [..., C] (a zero vector stays zero)."""
        return self.down(self.norm(x))

    def refine(self, grid: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Eq. 6. grid [N, H, W, D], targets [T], candidates [N, T, K, D] -> refined candidates [N, T, K, C]."""
        n, t, k, _ = candidates.shape
        _, height, width, _ = grid.shape
        hop = max(self.hops)
        if t * (2 * hop + 1) ** 2 < height * width:  # a few targets (decoding): only their windows' cells
            windows = self.cells(causal_windows(grid, targets, hop, self.causal))  # [N, T, S, S, C]
        else:  # every target (teacher forcing): each cell once
            windows = causal_windows(self.cells(grid), targets, hop, self.causal)
        cands = self.cells(candidates).flatten(0, 1)  # [N*T, K, C]
        weights = torch.softmax(self.scale_logits, 0)  # [n_hops]
        refined = 0
        for w, hop, conv_in, conv_out in zip(weights, self.hops, self.conv_in, self.conv_out):
            context = centre_crop(windows, hop).flatten(0, 1)  # [N*T, 2h+1, 2h+1, C]
            refined = refined + w * smooth_one_scale(context, cands, conv_in, conv_out)
        return refined.view(n, t, k, -1)

    def forward(
        self, grid: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """grid [N, H, W, D] hidden states of this layer at the generated tokens (anything at or after a
        target is ignored), targets [T] raster indices, candidates [N, T, K, D], valid [N, T, K] bool
        -> (contribution to the predicting positions [N, T, D], update of each candidate [N, T, K, D])."""
        refined = self.refine(grid, targets, candidates)  # [N, T, K, C]
        scores = torch.sigmoid(self.score(refined)).squeeze(-1) * valid  # [N, T, K], 0 for missing hits
        count = valid.sum(-1, keepdim=True).clamp(min=1)  # [N, T, 1]
        blend = (scores[..., None] * refined).sum(2) / count  # [N, T, C]: the mean over the found candidates
        return self.out(blend), self.out(refined)


# ---------------------------------------------------------------- all modules, hooked into the backbone


@dataclass
class _Pass:
    """What the hooks do during the next forward pass of the language model."""

    targets: torch.Tensor  # [T] raster index predicted by each predicting position
    candidates: torch.Tensor | None  # [R, T, K, D] in the model's input space; None: no retrieval
    valid: torch.Tensor | None  # [R, T, K]
    rows: int  # the first `rows` rows of the batch take part (the conditional half under guidance)
    image_start: int | None  # teacher-forced: sequence index of image token 0; None: incremental step
    step: int = 0  # incremental: the raster position predicted
    stream: torch.Tensor | None = None  # candidates as refined by the modules so far


class FAiD(nn.Module):
    """The FAiD modules of one backbone (the only trainable parameters of a FAiD model)."""

    def __init__(self, cfg: FAiDConfig, hidden_size: int, num_layers: int):
        super().__init__()
        self.cfg, self.hidden_size, self.num_layers = cfg, hidden_size, num_layers
        self.layer_ids = faid_layers(num_layers, cfg.every)
        width = cfg.rank if cfg.budget == "lowrank" else None
        self.blocks = nn.ModuleList(FAiDModule(hidden_size, cfg.hop_scales, width) for _ in self.layer_ids)
        self._handles: list = []
        self._embed: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._side: int | None = None
        self._pass: _Pass | None = None
        self._caches: list[torch.Tensor | None] = []

    @classmethod
    def for_model(cls, model, cfg: FAiDConfig) -> "FAiD":
        text = model.config.text_config
        return cls(cfg, text.hidden_size, text.num_hidden_layers)

    # ---- attaching

    def attach(self, model) -> "FAiD":
        """Hook the modules into `model` (a JanusForConditionalGeneration); inert until a pass is planned."""
        if self._handles:
            raise RuntimeError("this FAiD is already attached; detach() it first")
        layers = model.model.language_model.layers
        if len(layers) != self.num_layers or model.config.text_config.hidden_size != self.hidden_size:
            raise ValueError(
                f"FAiD built for {self.num_layers} layers of width {self.hidden_size}, the model has "
                f"{len(layers)} of width {model.config.text_config.hidden_size}"
            )
        for block_index, layer_id in enumerate(self.layer_ids):
            hook = self._layer_hook(block_index)
            self._handles.append(layers[layer_id].register_forward_hook(hook, prepend=True))
        self._embed = model.prepare_embeddings_for_image_generation  # a bound method: not a submodule
        self._side = int(model.model.vqmodel.config.num_patches)
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._embed, self._pass = [], None, None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def embed_candidates(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [..., K] (-1: none) -> Eq. 5 embeddings [..., K, D] and valid [..., K]."""
        if not self.attached:
            raise RuntimeError("attach(model) first: candidates are embedded by the model's generation path")
        flat = ids.clamp(min=0).reshape(ids.shape[0], -1)  # [R, *]
        return self._embed(flat).view(*ids.shape, -1), ids >= 0

    # ---- planning a pass

    def set_step(self, step: int, candidate_ids: torch.Tensor | None, rows: int) -> None:
        """Incremental decoding: the next forward pass predicts raster position `step` from its last position.

        candidate_ids [rows, K] (-1: none) or None (no retrieval at this step: the caches are still filled).
        Step 0 starts a new batch of images and clears the caches.
        """
        if step == 0:
            self._caches = [None] * len(self.blocks)
        cands = valid = None
        if candidate_ids is not None:
            if candidate_ids.shape[0] != rows:
                raise ValueError(f"candidate ids for {candidate_ids.shape[0]} rows, expected {rows}")
            cands, valid = self.embed_candidates(candidate_ids[:, None])  # [R, 1, K, D], [R, 1, K]
        device = candidate_ids.device if candidate_ids is not None else None
        self._pass = _Pass(torch.tensor([step], device=device), cands, valid, rows, image_start=None, step=step)

    def clear(self) -> None:
        self._pass = None

    @contextmanager
    def teacher_forced(self, image_start: int, candidate_ids: torch.Tensor):
        """Within the block, a forward pass over [prompt | image tokens 0..T-2] (image token 0 at sequence
        index `image_start`) augments every predicting position; candidate_ids [R, T, K] for the first R rows."""
        cands, valid = self.embed_candidates(candidate_ids)  # [R, T, K, D], [R, T, K]
        t = candidate_ids.shape[1]
        if t != self._side**2:
            raise ValueError(f"candidate ids for {t} positions, the model's grid has {self._side**2}")
        targets = torch.arange(t, device=candidate_ids.device)
        self._pass = _Pass(targets, cands, valid, candidate_ids.shape[0], image_start=image_start)
        try:
            yield self
        finally:
            self._pass = None

    # ---- the hook

    def _layer_hook(self, block_index: int):
        def hook(module, args, output):
            return self._augment(block_index, output)

        return hook

    def _augment(self, block_index: int, out: torch.Tensor) -> torch.Tensor:
        """The layer's output [N, L, D] plus the FAiD contribution at the predicting positions."""
        plan = self._pass
        if plan is None:
            return out
        if plan.rows > out.shape[0]:
            raise ValueError(f"FAiD candidates for {plan.rows} rows but the batch has {out.shape[0]}")
        grid, first = self._grid(block_index, out, plan)
        if plan.candidates is None:
            return out
        block = self.blocks[block_index]
        param = block.scale_logits
        stream = plan.candidates if block_index == 0 else plan.stream  # [R, T, K, D]
        contribution, update = block(
            grid.to(param.dtype), plan.targets, stream.to(param.dtype), plan.valid
        )  # [R, T, D], [R, T, K, D]
        plan.stream = stream + update.to(stream.dtype)
        n, length, _ = out.shape
        t = contribution.shape[1]
        padded = F.pad(contribution.to(out.dtype), (0, 0, first, length - first - t, 0, n - plan.rows))
        return out + padded

    def _grid(self, block_index: int, out: torch.Tensor, plan: _Pass) -> tuple[torch.Tensor, int]:
        """The grid of hidden states the modules read [R, H, W, D] and the sequence index of the first predicting
        position."""
        if plan.image_start is None:
            return self._cached_grid(block_index, out, plan), out.shape[1] - 1
        return self._teacher_forced_grid(out, plan), plan.image_start - 1

    def _cached_grid(self, block_index: int, out: torch.Tensor, plan: _Pass) -> torch.Tensor:
        """Incremental: store the hidden state of the token fed at this step (raster step-1), return the cache."""
        cache = self._caches[block_index]
        if cache is None:
            cache = out.new_zeros(plan.rows, self._side, self._side, out.shape[-1])  # [R, H, W, D]
            self._caches[block_index] = cache
        step = plan.step
        if step > 0:
            cache[:, (step - 1) // self._side, (step - 1) % self._side] = out[: plan.rows, -1]
        return cache

    def _teacher_forced_grid(self, out: torch.Tensor, plan: _Pass) -> torch.Tensor:
        """Teacher-forced: the image tokens' hidden states [R, T-1, D] as a grid [R, H, W, D] (last cell 0)."""
        t = self._side**2
        tokens = out[: plan.rows, plan.image_start : plan.image_start + t - 1]  # [R, T-1, D]
        return F.pad(tokens, (0, 0, 0, 1)).view(plan.rows, self._side, self._side, -1)

    # ---- saving

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.cfg), "hidden_size": self.hidden_size, "num_layers": self.num_layers}
        (directory / "faid_config.json").write_text(json.dumps(meta, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "faid.safetensors")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "FAiD":
        from safetensors.torch import load_file

        from arrag.io import read_metadata
        from arrag.manifest import load_weights

        directory = Path(directory)
        meta = read_metadata(directory / "faid_config.json", None, "train FAiD with `arrag train-faid`")
        faid = cls(FAiDConfig(**meta["config"]), meta["hidden_size"], meta["num_layers"])
        load_weights(
            faid, load_file(directory / "faid.safetensors", device=str(device)), directory / "faid.safetensors"
        )
        return faid.to(device)


def faid_parameter_count(hidden: int, layers: int, cfg: FAiDConfig) -> int:
    """Parameters FAiD adds to a backbone of `layers` decoder layers of width `hidden` (counted on meta)."""
    with torch.device("meta"):
        return sum(p.numel() for p in FAiD(cfg, hidden, layers).parameters())


# ---------------------------------------------------------------- training


def faid_logits(
    model,
    faid: FAiD,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    codes: torch.Tensor,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """Teacher-forced image-token logits [B, T, V] of [prompt | image] sequences with FAiD.

    input_ids/attention_mask [B, L] (left-padded, ending in <begin_of_image>), codes [B, T] flat image tokens,
    candidates [R, T, k] token ids retrieved for each position from its ground-truth prefix (-1: none) for
    the first R <= B rows (the others, e.g. the unconditional rows of a guidance batch, get no FAiD).
    """
    during = lambda image_start: faid.teacher_forced(image_start, candidates)  # noqa: E731
    return image_token_logits(model, input_ids, attention_mask, codes, during=during)


def faid_training_loss(
    model,
    faid: FAiD,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    codes: torch.Tensor,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """Next-token cross-entropy on the image tokens with FAiD (the backbone stays frozen: optimise only
    faid.parameters(), see `freeze_backbone`). Rows with all candidates -1 (e.g. dropped captions, which
    get no retrieval at inference either) train nothing."""
    logits = faid_logits(model, faid, input_ids, attention_mask, codes, candidates)
    return F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten())


def freeze_backbone(model) -> None:
    """No gradients for any backbone parameter (FAiD's gradients still flow through its activations)."""
    for p in model.parameters():
        p.requires_grad_(False)
