"""MAGVIT-v2 as Show-o uses it (showlab/magvitv2): a convolutional encoder/decoder with 16x downsampling
(256 px -> a 16x16 grid) and lookup-free quantisation (LFQ) with 13 bits, 8,192 codes.

Written for arrag after reading Show-o's models/modeling_magvitv2.py and models/common_modules.py; the module
attribute names are theirs, so the published state dict (encoder.*, decoder.*, quantize.*) loads as it is.
Show-o's attn_resolutions=[5] matches none of the resolutions 256/2^k, so its per-level attention lists are
empty (no tensors); only the middle of each tower attends. No maintained package implements this model:
diffusers' AutoencoderKLMagvit and the PyPI open-magvit2 / magvit2-pytorch are other architectures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from arrag.io import atomic_path, write_json
from arrag.manifest import verify, write_manifest
from arrag.models.showo import VERIFY_FIX, ModelLoadError, copy_safetensors


@dataclass(frozen=True)
class Magvit2Config:
    """Sizes; the defaults are showlab/magvitv2's (Show-o's VQGANEncoder, VQGANDecoder and LFQuantizer)."""

    channels: int = 128
    encoder_mult: tuple[int, ...] = (1, 2, 2, 4, 4)  # channel multiplier per level, finest first
    encoder_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)  # residual blocks per level
    decoder_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    bits: int = 13  # LFQ: one latent channel per bit, 2**bits codes
    image_channels: int = 3

    def __post_init__(self):
        levels = len(self.encoder_mult)
        if not levels or {len(self.encoder_blocks), len(self.decoder_mult), len(self.decoder_blocks)} != {levels}:
            raise ValueError(
                f"Magvit2Config: encoder_mult, encoder_blocks, decoder_mult and decoder_blocks need one entry per "
                f"level, the same number each; got {self.encoder_mult}, {self.encoder_blocks}, {self.decoder_mult},"
                f" {self.decoder_blocks}"
            )
        widths = [self.channels * m for m in (1, *self.encoder_mult, *self.decoder_mult)]
        if any(w < 32 or w % 32 for w in widths):
            raise ValueError(f"Magvit2Config: channel widths {widths} must be multiples of 32 (GroupNorm of 32 groups)")
        if not 1 <= self.bits <= 24:
            raise ValueError(f"Magvit2Config.bits must be in [1, 24] (2**bits codes), got {self.bits}")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.encoder_mult) - 1)  # one halving between consecutive levels

    @property
    def codebook_size(self) -> int:
        return 2**self.bits


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm, swish, conv, twice, plus the input (through a 1x1 conv where the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, 1x1 convs for q, k, v and the output."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # [B, HW, C]
        h = F.scaled_dot_product_attention(q, k, v)  # scale C**-0.5, as in Show-o's bmm/softmax
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right and bottom only: H -> H/2 exactly


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def middle(c: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)
    return mid


def run_middle(mid: nn.Module, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """[B, 3, H, W] in [-1, 1] -> latents [B, bits, H/16, W/16] (before quantisation)."""

    def __init__(self, cfg: Magvit2Config):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.encoder_mult]
        self.conv_in = nn.Conv2d(cfg.image_channels, cfg.channels, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.channels
        for level, (cout, blocks) in enumerate(zip(widths, cfg.encoder_blocks)):
            stage = nn.Module()
            stage.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(blocks))
            if level < len(widths) - 1:
                stage.downsample = Downsample(cout)
            self.down.append(stage)
            cin = cout
        self.mid = middle(cin)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.bits, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.bits, cfg.bits, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = run_middle(self.mid, h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """Quantised latents [B, bits, h, w] -> [B, 3, 16h, 16w]. `up[level]` is indexed finest first, as in the
    checkpoint, and run coarsest first."""

    def __init__(self, cfg: Magvit2Config):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.decoder_mult]
        cin = widths[-1]
        self.post_quant_conv = nn.Conv2d(cfg.bits, cfg.bits, 1)
        self.conv_in = nn.Conv2d(cfg.bits, cin, 3, padding=1)
        self.mid = middle(cin)
        stages = []
        for level in reversed(range(len(widths))):
            cout = widths[level]
            stage = nn.Module()
            stage.block = nn.ModuleList(
                ResnetBlock(cin if i == 0 else cout, cout) for i in range(cfg.decoder_blocks[level])
            )
            if level > 0:
                stage.upsample = Upsample(cout)
            stages.insert(0, stage)
            cin = cout
        self.up = nn.ModuleList(stages)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.image_channels, 3, padding=1)

    def forward(self, z):
        h = run_middle(self.mid, self.conv_in(self.post_quant_conv(z)))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """Each latent channel becomes one bit (> 0 -> +1, else -1); the code index is the bits read as a binary
    number, most significant (channel 0) first. The buffers are the checkpoint's `quantize.embedding` (every
    code's +-1 vector, [2**bits, bits]) and `quantize.power_vals` (2**(bits-1) ... 1)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        powers = 2 ** torch.arange(bits - 1, -1, -1)  # [bits] long, MSB first
        self.register_buffer("embedding", self.bits_of(torch.arange(2**bits), powers).float() * 2 - 1)
        self.register_buffer("power_vals", powers)

    @staticmethod
    def bits_of(indices: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
        return (indices[..., None] // powers) % 2  # [..., bits] in {0, 1}

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, bits, H, W] -> code indices [B, H, W] long."""
        return ((z > 0).long() * self.power_vals[:, None, None]).sum(1)

    def latents(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices [B, H, W] -> the codes' +-1 vectors [B, bits, H, W]."""
        if indices.dtype.is_floating_point or ((indices < 0) | (indices >= 2**self.bits)).any():
            raise ValueError(f"LFQ code indices must be integers in [0, {2**self.bits})")
        return self.embedding[indices].permute(0, 3, 1, 2)


class Magvit2(nn.Module):
    """The tokenizer: images [B, 3, H, W] in [-1, 1] <-> code grids [B, H/16, W/16] (raster order is Show-o's
    image-token order)."""

    def __init__(self, cfg: Magvit2Config = Magvit2Config()):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder, self.quantize = Encoder(cfg), Decoder(cfg), LookupFreeQuantizer(cfg.bits)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        f = self.cfg.downsampling
        if pixels.ndim != 4 or pixels.shape[1] != self.cfg.image_channels or pixels.shape[2] % f or pixels.shape[3] % f:
            raise ValueError(
                f"MAGVIT-v2 encodes [B, {self.cfg.image_channels}, H, W] with H, W multiples of {f}, "
                f"got {tuple(pixels.shape)}"
            )
        return self.quantize.indices(self.encoder(pixels))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantize.latents(indices))


# ---- folders: showlab/magvitv2's layout (config.json, pytorch_model.safetensors), names without a prefix


def read_config(path: Path) -> Magvit2Config:
    """The published config.json names the class only (MAGVITv2 takes no arguments: the defaults); one arrag
    wrote also holds `magvit2_config`, the sizes of a smaller tokenizer."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_file} cannot be read ({err}); point at a showlab/magvitv2 snapshot") from None
    if config.get("_class_name") != "MAGVITv2":
        raise ModelLoadError(f"{config_file} describes a {config.get('_class_name')!r}, not a MAGVITv2 tokenizer")
    try:
        sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get("magvit2_config", {}).items()}
        return Magvit2Config(**sizes)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{config_file}: magvit2_config is not valid ({err})") from None


def save_magvit2(model: Magvit2, directory: str | Path, *, inputs: dict | None = None) -> None:
    """Write a tokenizer folder atomically in the published layout, its manifest last."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory, directory=True) as tmp:
        save_file(state, str(tmp / "pytorch_model.safetensors"))
        write_json(tmp / "config.json", {"_class_name": "MAGVITv2", "magvit2_config": asdict(model.cfg)})
        write_manifest(tmp, "magvit2-model", inputs)


def load_magvit2(path: str | Path, *, device: str | torch.device = "cpu") -> Magvit2:
    """Load a MAGVIT-v2 tokenizer from a local folder (a showlab/magvitv2 snapshot or one save_magvit2 wrote):
    the manifest checked, safetensors only, every tensor of the model filled (copy_safetensors), and the LFQ
    buffers the bits they must be (other values would make another quantiser)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"MAGVIT-v2 folder {path} does not exist")
    verify(path, fix=VERIFY_FIX)
    model = Magvit2(read_config(path))
    copy_safetensors(model, path)
    expected = LookupFreeQuantizer(model.cfg.bits)
    for name in ("embedding", "power_vals"):
        if not torch.equal(getattr(model.quantize, name), getattr(expected, name)):
            raise ModelLoadError(
                f"{path}: quantize.{name} is not the {model.cfg.bits}-bit LFQ table (index = bits, most significant "
                "first); the checkpoint is damaged or for another quantiser"
            )
    return model.to(device).eval()
