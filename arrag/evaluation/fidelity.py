"""Distribution-level fidelity metrics of generated images against reference images (paper Table 3).

- `fid`: FID as clean-fid computes it (Parmar et al. 2022): every image resized to the feature network's input
  size by clean-fid's "clean" resizer (PIL bicubic on float channels, no uint8 round trip), features from
  `image_features` (clean-fid's own batching for folders), then the Fréchet distance between the two sets'
  Gaussian statistics (`cleanfid.fid.fid_from_feats`). Paper profile: Inception-v3 pool features at 299 px
  (`arrag.evaluation.features.inception_extractor`); mini profile: `MiniFeatureNet` features at 32 px (mini-FID).
- `cmmd`: CMMD (Jayasumana et al. 2024): the biased MMD² between two sets of L2-normalised embeddings under
  a Gaussian RBF kernel exp(-||x - y||² / (2 σ²)) with σ = 10, times 1000. The paper profile feeds CLIP
  ViT-L/14-336 embeddings (`arrag.models.clip.clip_embedder` through `image_features`; images reach 336 px by
  the clean resizer, where CMMD's reference code uses torch bicubic); any embedding works (the caller
  normalises nothing: we do).
- `fwd`: Fréchet Wavelet Distance (Veeramacheneni et al. 2025): images resized to 256 px and scaled to
  [0, 1], a level-4 Haar wavelet packet transform (ptwt) per channel, and for each of the 4^level packets the
  Fréchet distance between the two sets' Gaussian statistics of the packet's coefficients [C·h·w]; FWD is
  the mean over packets. Written on ptwt directly rather than the pytorchfwd package, whose pins downgrade
  scipy/numpy and which changes torch's default dtype at import.
- `frechet_distance`: ||μ1 − μ2||² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), shared with FID-style metrics.

FID and CMMD compare sets of equal size (the paper: 30K generated vs 30K reference images); `fid_images` and
`cmmd_images` refuse a reference set smaller than the generated one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from glob import glob
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

ImageSource = np.ndarray | str | Path  # uint8 images [N, S, S, 3], an images .npy, or a folder of image files


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """x [N, E], y [M, E] embeddings -> scale * biased MMD² with a Gaussian RBF kernel (CMMD)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"CMMD needs two [N, E] embedding sets of one width, got {x.shape} and {y.shape}")
    x, y = _unit_rows(x), _unit_rows(y)
    gamma = 1.0 / (2 * sigma**2)

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        """Mean of the [N, M] kernel matrix, built a block of rows at a time (30K x 30K would take ~20 GB)."""
        return sum(float(k.sum()) for _, k in _rbf_blocks(a, b, gamma)) / (len(a) * len(b))

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rbf_blocks(a: np.ndarray, b: np.ndarray, gamma: float, block: int = 4096):
    """(start, kernel rows [block, M]) of exp(-gamma ||a_i - b_j||²), `block` rows of a at a time."""
    for start in range(0, len(a), block):
        rows = a[start : start + block]
        sq = (rows * rows).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * rows @ b.T  # squared distances
        yield start, np.exp(-gamma * np.maximum(sq, 0))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: nudge both covariances, as FID implementations do
        eps = 1e-6 * np.eye(len(sigma1))
        covmean = linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def wavelet_packets(images: np.ndarray, level: int = 4, wavelet: str = "haar", size: int = 256) -> torch.Tensor:
    """uint8 images [N, S, S, 3] -> packet coefficients [N, 4^level, 3·h·w] (natural order), float64."""
    import ptwt
    import pywt

    # [N, 3, S, S] in [0, 1]; np.array copies, as a memory-mapped batch is read-only
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).double() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    n, c = x.shape[:2]
    packets = ptwt.WaveletPacket2D(x.reshape(n * c, size, size), pywt.Wavelet(wavelet), maxlevel=level)
    nodes = packets.get_natural_order(level)
    coeffs = torch.stack([packets[node] for node in nodes], dim=1)  # [N*C, P, h, w]
    p, h, w = coeffs.shape[1:]
    return coeffs.reshape(n, c, p, h, w).permute(0, 2, 1, 3, 4).reshape(n, p, c * h * w)


def packet_statistics(images: np.ndarray, batch: int = 256, **packet_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Mean [P, d] and covariance [P, d, d] of every packet over a set of images, accumulated in batches."""
    total = sum_x = sum_xx = None
    for start in range(0, len(images), batch):
        coeffs = wavelet_packets(images[start : start + batch], **packet_kwargs)  # [b, P, d]
        if total is None:
            total, sum_x = 0, torch.zeros(coeffs.shape[1:], dtype=torch.float64)
            sum_xx = torch.zeros(coeffs.shape[1], coeffs.shape[2], coeffs.shape[2], dtype=torch.float64)
        total += len(coeffs)
        sum_x += coeffs.sum(0)
        sum_xx += torch.einsum("bpi,bpj->pij", coeffs, coeffs)
    if total is None or total < 2:
        raise ValueError("FWD needs at least 2 images per set")
    mu = sum_x / total
    cov = (sum_xx - total * torch.einsum("pi,pj->pij", mu, mu)) / (total - 1)  # unbiased, as np.cov
    return mu.numpy(), cov.numpy()


def fwd(images_a: np.ndarray, images_b: np.ndarray, level: int = 4, wavelet: str = "haar", size: int = 256) -> float:
    """Fréchet Wavelet Distance between two uint8 image sets [N, S, S, 3] and [M, S', S', 3]."""
    kwargs = dict(level=level, wavelet=wavelet, size=size)
    return fwd_from_statistics(packet_statistics(images_a, **kwargs), packet_statistics(images_b, **kwargs))


def fwd_from_statistics(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    """FWD from two sets' packet statistics (packet_statistics): the mean of the packets' Fréchet distances."""
    (mu_a, cov_a), (mu_b, cov_b) = stats_a, stats_b
    return float(np.mean([frechet_distance(mu_a[p], cov_a[p], mu_b[p], cov_b[p]) for p in range(len(mu_a))]))


# ----------------------------------------------------------------------------- FID / CMMD through clean-fid


def clean_resizer(size: int):
    """clean-fid's "clean" resizer to size x size: uint8 [S, S, 3] -> float32 [size, size, 3] in [0, 255]."""
    from cleanfid.resize import build_resizer, make_resizer

    # build_resizer("clean") is fixed at Inception's 299 px; other sizes get the same recipe
    return build_resizer("clean") if size == 299 else make_resizer("PIL", False, "bicubic", (size, size))


def _image_files(folder: Path) -> list[str]:
    """A GenEval-layout folder's samples (never grids or other pictures beside them), else every image file
    below `folder`, found as clean-fid's get_folder_features finds them."""
    from cleanfid.utils import EXTENSIONS

    from arrag.data.geneval_layout import read_prompt_folders

    if any(p.is_dir() and p.name.isdigit() for p in folder.iterdir()):
        from arrag.evaluation.geneval import check_benchmark_folder

        check_benchmark_folder(folder)  # every prompt's folder, every sample: never a partial set's statistics
        return [str(p) for _, paths in read_prompt_folders(folder) for p in paths]
    return sorted(f for ext in EXTENSIONS for f in glob(str(folder / f"**/*.{ext}"), recursive=True))


def _checked_array(images: np.ndarray, source: ImageSource) -> np.ndarray:
    """Refuse arrays that are not uint8 RGB images [N, H, W, 3] (e.g. a decoder's float [N, 3, H, W])."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{_name(source)}: images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}"
        )
    return images


def _as_array_or_files(source: ImageSource) -> np.ndarray | list[str]:
    if isinstance(source, np.ndarray):
        return _checked_array(source, source)
    path = Path(source)
    if path.suffix == ".npy" and path.is_file():
        return _checked_array(np.load(path, mmap_mode="r", allow_pickle=False), source)
    if path.is_dir():
        return _image_files(path)
    raise FileNotFoundError(f"{path} is neither an images .npy file nor a folder of images")


def image_count(source: ImageSource) -> int:
    return len(_as_array_or_files(source))


def _device_of(extractor) -> torch.device:
    tensor = next(iter(extractor.parameters()), None) if isinstance(extractor, torch.nn.Module) else None
    return tensor.device if tensor is not None else torch.device("cpu")


def image_features(
    source: ImageSource,
    extractor,
    mode: str = "clean",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    description: str = "",
) -> np.ndarray:
    """Features [N, D] of a set of images, each resized by clean-fid's clean resizer to `extractor.input_size`.

    `extractor` maps float [B, 3, s, s] in [0, 255] to [B, D] (a clean-fid custom feature extractor with an
    `input_size`). Folders go through clean-fid's get_files_features; arrays are resized and batched here.
    `device` defaults to the extractor's (clean-fid's own default is cuda).
    """
    from cleanfid.fid import get_batch_features, get_files_features

    if mode != "clean":
        raise ValueError(f"mode {mode!r}: only clean-fid's 'clean' mode is supported")
    device = torch.device(device) if device is not None else _device_of(extractor)
    resize = clean_resizer(int(extractor.input_size))
    images = _as_array_or_files(source)
    if len(images) == 0:
        raise ValueError(f"{source} holds no images")
    if isinstance(images, list):
        return get_files_features(
            images,
            extractor,
            num_workers=num_workers,
            batch_size=batch_size,
            device=device,
            mode=mode,
            custom_fn_resize=resize,
            description=description,
            verbose=bool(description),
        )
    feats = []
    for start in range(0, len(images), batch_size):
        batch = [resize(np.asarray(image)) for image in images[start : start + batch_size]]  # [s, s, 3] float32
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)  # [b, 3, s, s] in [0, 255]
        feats.append(get_batch_features(x, extractor, device))
    return np.concatenate(feats)


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D]: clean-fid's Fréchet distance of their Gaussian stats."""
    from cleanfid.fid import fid_from_feats

    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError(f"FID needs at least 2 images per set (a covariance), got {len(feats_a)} and {len(feats_b)}")
    if feats_a.shape[1:] != feats_b.shape[1:]:
        raise ValueError(f"FID needs features of one width, got {feats_a.shape} and {feats_b.shape}")
    with warnings.catch_warnings():  # clean-fid passes sqrtm's `disp`, deprecated since SciPy 1.16
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated", category=DeprecationWarning)
        return float(fid_from_feats(np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)))


def _name(source: ImageSource) -> str:
    return "an in-memory array" if isinstance(source, np.ndarray) else str(source)


def check_sets(generated: ImageSource, reference: ImageSource) -> tuple[int, int]:
    """(n generated, n reference), after refusing sets FID / CMMD should not compare."""
    n_gen, n_ref = image_count(generated), image_count(reference)
    if n_gen < 2 or n_ref < 2:
        raise ValueError(
            f"FID and CMMD need at least 2 images per set: {_name(generated)} has {n_gen}, "
            f"{_name(reference)} has {n_ref}"
        )
    if n_ref < n_gen:
        raise ValueError(
            f"the reference set {_name(reference)} has {n_ref} images, fewer than the {n_gen} generated ones in "
            f"{_name(generated)}: FID and CMMD compare sets of (about) equal size, so give a reference set with "
            f"at least {n_gen} images (the paper: 30K vs 30K) or generate fewer"
        )
    return n_gen, n_ref


def fid_images(generated: ImageSource, reference: ImageSource, extractor, **kwargs) -> float:
    """FID between a generated and a reference image set with `extractor`'s features (kwargs: image_features)."""
    check_sets(generated, reference)
    return fid(image_features(generated, extractor, **kwargs), image_features(reference, extractor, **kwargs))


def cmmd_images(generated: ImageSource, reference: ImageSource, embedder, **kwargs) -> float:
    """CMMD between a generated and a reference image set with `embedder`'s embeddings (kwargs: image_features)."""
    check_sets(generated, reference)
    return cmmd(image_features(generated, embedder, **kwargs), image_features(reference, embedder, **kwargs))


# ----------------------------------------------------------------------------- FWD on image sources, and all three


class ImageFiles:
    """A folder's images as a lazily loaded uint8 sequence: slicing loads only that batch (30K real images at 1024
    px would not fit in memory at once). Every image of one slice must share a size."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> np.ndarray:

        from arrag.evaluation.geneval import load_image

        return np.stack([load_image(path) for path in self.paths[index]])  # damaged files refused by name


def load_images(source: ImageSource) -> np.ndarray | ImageFiles:
    """An array (a .npy memory-mapped) or a folder's images, loaded batch by batch when sliced."""
    images = _as_array_or_files(source)
    if len(images) == 0:
        raise ValueError(f"{_name(source)} holds no images: give a GenEval-layout folder, a folder of images or a .npy")
    return ImageFiles(images) if isinstance(images, list) else images


def fwd_images(generated: ImageSource, reference: ImageSource, **kwargs) -> float:
    """FWD between two image sources (kwargs: fwd's level, wavelet, size), streamed in batches."""
    return fwd(load_images(generated), load_images(reference), **kwargs)


def fidelity_scores(
    generated: ImageSource,
    reference: ImageSource,
    fid_network=None,
    cmmd_network=None,
    fwd_level: int = 4,
    fwd_size: int = 256,
    batch_size: int = 64,
    boot=None,
) -> dict:
    """Table 3's metrics of a generated set against a reference set: FWD always; FID and CMMD when given a
    feature network (Inception / CLIP, or the mini network). -> the `fidelity.json` record; with `boot` (an
    arrag.evaluation.intervals.Bootstrap) each metric's interval and replicates as well (fidelity_bootstrap)."""
    n_gen, n_ref = check_sets(generated, reference)
    result = {"generated": _name(generated), "reference": _name(reference), "images": n_gen, "reference_images": n_ref}
    features = {}  # one pass per network: the mini profile's FID and CMMD share theirs

    def both_sets(network) -> tuple[np.ndarray, np.ndarray]:
        if id(network) not in features:
            features[id(network)] = tuple(
                image_features(s, network, batch_size=batch_size) for s in (generated, reference)
            )
        return features[id(network)]

    if fid_network is not None:
        result |= {"fid": fid(*both_sets(fid_network)), "fid_network": fid_network.identity, "fid_mode": "clean"}
    if cmmd_network is not None:
        result |= {"cmmd": cmmd(*both_sets(cmmd_network)), "cmmd_network": cmmd_network.identity}
        result |= {"cmmd_sigma": 10.0, "cmmd_scale": 1000.0}
    packets = dict(level=fwd_level, size=fwd_size)
    reference_packets = packet_statistics(load_images(reference), **packets)
    result |= {"fwd": fwd_from_statistics(packet_statistics(load_images(generated), **packets), reference_packets)}
    result |= {"fwd_level": fwd_level, "fwd_wavelet": "haar", "fwd_size": fwd_size}
    if boot is not None:
        fid_feats = both_sets(fid_network) if fid_network is not None else None
        cmmd_feats = both_sets(cmmd_network) if cmmd_network is not None else None
        device = _device_of(fid_network) if fid_network is not None else None  # the features' GPU, if any
        points = {m: result[m] for m in ("fid", "cmmd", "fwd") if m in result}
        result |= fidelity_bootstrap(
            generated, boot, points, fid_feats, cmmd_feats, reference_packets, packets, batch_size, device
        )
    return result


# ----------------------------------------------------------------------------- intervals: resampled generated sets
# The generated images are resampled by prompt (arrag.evaluation.intervals: the same seeded draws for every method,
# so replicates pair across methods) and each metric is recomputed against the reference set's fixed statistics
# from features computed once: FID and FWD from the resampled set's weighted mean and covariance, Tr((Σ Σr)^½)
# as the summed square roots of the eigenvalues of Σr^½ Σ Σr^½; CMMD from the kernel matrix weighted by the counts.

# FWD resamples recompute every packet's covariance: above this many flops (resamples x packets x (N d² + d³)) the
# FWD interval is left out and the record says why (the paper's level 4 at 256 px on 30K images would take ~1e18)
FWD_BOOTSTRAP_MAX_FLOPS = 2e12


def image_units(source: ImageSource) -> tuple[np.ndarray, str, str | None]:
    """The resampling unit of each image [N] (a GenEval-layout folder: its prompt; else: the image itself), the
    unit's name, and a SHA-256 of the prompts' metadata in order (records pair only on the same prompts)."""
    if not isinstance(source, np.ndarray) and Path(source).is_dir():
        from arrag.data.geneval_layout import read_prompt_folders

        folders = read_prompt_folders(source)
        if folders:
            units = np.repeat(np.arange(len(folders)), [len(paths) for _, paths in folders])
            text = "\n".join(json.dumps(meta, sort_keys=True) for meta, _ in folders)
            return units, "prompt", hashlib.sha256(text.encode()).hexdigest()
    return np.arange(image_count(source)), "image", None


def frechet_replicates(x: np.ndarray, ref_mu: np.ndarray, ref_cov: np.ndarray, weights, device=None) -> np.ndarray:
    """x [N, P, d] per-image vectors of P groups (FID: one), the reference's mean [P, d] and covariance [P, d, d],
    weights: blocks [b, N] of how often each image is drawn -> Fréchet distances [B, P] of each weighted set.

    Tr((Σ Σr)^½) is the summed square roots of the eigenvalues of Σr^½ Σ Σr^½, the weighted covariance of the
    rows turned once into Σr^½'s frame (x Σr^½); of m drawn images, its d x d form or, when m < d, the m x m
    Gram matrix of the weighted centred rows (the same non-zero eigenvalues). On `device`: a GPU for
    Inception's 2048-wide features of 30K images."""
    x = torch.as_tensor(np.asarray(x, np.float64), device=device)
    m0 = x.mean(0)
    xc = (x - m0).permute(1, 0, 2)  # [P, N, d], centred for accuracy
    ref_mu, ref_cov = (torch.as_tensor(a, dtype=torch.float64, device=device) for a in (ref_mu, ref_cov))
    ev, vec = torch.linalg.eigh(ref_cov)
    root = vec @ torch.diag_embed(ev.clamp(min=0).sqrt()) @ vec.transpose(-1, -2)  # Σr^½ [P, d, d], symmetric
    xr, sq = xc @ root, (xc * xc).sum(-1)  # [P, N, d] in Σr^½'s frame, [P, N] squared norms
    ref_trace = ref_cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    out = []
    for block in weights:
        for w in torch.as_tensor(block, dtype=torch.float64, device=device):
            n, drawn = w.sum(), w > 0
            mu_c, mu_r = (w @ xc) / n, (w @ xr) / n  # [P, d] each
            tr_cov = (sq @ w - n * (mu_c * mu_c).sum(-1)) / (n - 1)
            if int(drawn.sum()) < xr.shape[-1]:
                y = (xr[:, drawn] - mu_r[:, None, :]) * w[drawn].sqrt()[None, :, None]  # [P, m, d]
                gram = y @ y.transpose(-1, -2)
            else:
                gram = (xr.transpose(-1, -2) * w) @ xr - n * mu_r[:, :, None] * mu_r[:, None, :]
            tr_sqrt = torch.linalg.eigvalsh(gram / (n - 1)).clamp(min=0).sqrt().sum(-1)
            out.append(((mu_c + m0 - ref_mu) ** 2).sum(-1) + tr_cov + ref_trace - 2 * tr_sqrt)
    return torch.stack(out).cpu().numpy()


def cmmd_replicates(x: np.ndarray, y: np.ndarray, weights, sigma: float = 10.0, scale: float = 1000.0) -> np.ndarray:
    """CMMD of weighted resamples of x [N, E] against the fixed y [M, E]: weights blocks [b, N] -> [B]."""
    x, y = _unit_rows(np.asarray(x, np.float64)), _unit_rows(np.asarray(y, np.float64))
    gamma = 1.0 / (2 * sigma**2)
    k_yy = sum(float(k.sum()) for _, k in _rbf_blocks(y, y, gamma)) / len(y) ** 2
    k_xy = np.concatenate([k.mean(1) for _, k in _rbf_blocks(x, y, gamma)])  # [N] each image's mean kernel to y
    out = []
    for w in weights:  # [b, N]
        n = w.sum(1)
        k_xx = np.zeros(len(w))
        for start, k in _rbf_blocks(x, x, gamma):  # w K w, a block of K's rows at a time
            k_xx += ((k @ w.T) * w[:, start : start + len(k)].T).sum(0)
        out.append(scale * (k_xx / n**2 + k_yy - 2 * (w @ k_xy) / n))
    return np.concatenate(out)


def fidelity_bootstrap(
    generated: ImageSource,
    boot,
    points: dict[str, float],
    fid_feats: tuple[np.ndarray, np.ndarray] | None = None,
    cmmd_feats: tuple[np.ndarray, np.ndarray] | None = None,
    fwd_reference: tuple[np.ndarray, np.ndarray] | None = None,
    packets: dict | None = None,
    batch_size: int = 64,
    device=None,
) -> dict:
    """Intervals of FID (features (generated, reference)), CMMD (embeddings) and FWD (the reference's packet
    statistics; `packets`: level, size) over resamples of the generated images -> <metric>_ci_low, _ci_high,
    _replicates, and the draws' record under "bootstrap". The intervals are centred on `points` (metric -> its
    value on the whole set), as a resample biases these metrics upwards (intervals.percentile_interval)."""
    from arrag.evaluation.intervals import count_blocks, percentile_interval

    units, unit, digest = image_units(generated)
    n_units = int(units[-1]) + 1

    def weights():  # the same draws for every metric: [b, N] image weights from the units' counts
        for counts in count_blocks(np.random.default_rng(boot.seed), n_units, boot.resamples):
            yield counts[:, units]

    reps, out = {}, {}
    if fid_feats is not None:
        gen, ref = fid_feats
        ref_mu, ref_cov = np.mean(ref, axis=0), np.cov(ref, rowvar=False)  # clean-fid's statistics
        reps["fid"] = frechet_replicates(gen[:, None, :], ref_mu[None], ref_cov[None], weights(), device)[:, 0]
    if cmmd_feats is not None:
        reps["cmmd"] = cmmd_replicates(*cmmd_feats, weights())
    if fwd_reference is not None:
        mu, cov = fwd_reference
        flops = boot.resamples * len(mu) * (len(units) * mu.shape[1] ** 2 + mu.shape[1] ** 3)
        if flops <= FWD_BOOTSTRAP_MAX_FLOPS:
            images = load_images(generated)
            coeffs = [wavelet_packets(images[i : i + batch_size], **packets) for i in range(0, len(images), batch_size)]
            reps["fwd"] = frechet_replicates(torch.cat(coeffs).numpy(), mu, cov, weights(), device).mean(1)
        else:
            out["fwd_bootstrap"] = (
                f"not computed: {boot.resamples} resamples x {len(mu)} packet covariances of {len(units)} images "
                f"would take ~{flops:.1e} flops (limit {FWD_BOOTSTRAP_MAX_FLOPS:.0e}); FWD has no interval"
            )
    for metric, r in reps.items():
        low, high = percentile_interval(r, boot.level, centre=points[metric])
        out |= {f"{metric}_ci_low": float(low), f"{metric}_ci_high": float(high), f"{metric}_replicates": r.tolist()}
    draws = {"ci_unit": unit, "ci_units": n_units, "ci_prompts_sha256": digest, "ci_centred": True}
    return out | {"bootstrap": boot.record() | draws}
