"""Distribution-level fidelity metrics of generated images against reference images (paper Table 3).

- `cmmd`: CMMD (Jayasumana et al. 2024): the biased MMD² between two sets of L2-normalised embeddings under
  a Gaussian RBF kernel exp(-||x - y||² / (2 σ²)) with σ = 10, times 1000. The paper profile feeds CLIP
  ViT-L/14-336 embeddings; any embedding works (the caller normalises nothing: we do).
- `fwd`: Fréchet Wavelet Distance (Veeramacheneni et al. 2025): images resized to 256 px and scaled to
  [0, 1], a level-4 Haar wavelet packet transform (ptwt) per channel, and for each of the 4^level packets the
  Fréchet distance between the two sets' Gaussian statistics of the packet's coefficients [C·h·w]; FWD is
  the mean over packets. Written on ptwt directly rather than the pytorchfwd package, whose pins downgrade
  scipy/numpy and which changes torch's default dtype at import.
- `frechet_distance`: ||μ1 − μ2||² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), shared with FID-style metrics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """x [N, E], y [M, E] embeddings -> scale * biased MMD² with a Gaussian RBF kernel (CMMD)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"CMMD needs two [N, E] embedding sets of one width, got {x.shape} and {y.shape}")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    gamma = 1.0 / (2 * sigma**2)

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T  # [N, M] squared distances
        return float(np.exp(-gamma * np.maximum(sq, 0)).mean())

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y))


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

    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).double() / 255.0  # [N, 3, S, S] in [0, 1]
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
    mu_a, cov_a = packet_statistics(images_a, **kwargs)
    mu_b, cov_b = packet_statistics(images_b, **kwargs)
    return float(np.mean([frechet_distance(mu_a[p], cov_a[p], mu_b[p], cov_b[p]) for p in range(len(mu_a))]))
