"""FID, KID and precision/recall/density/coverage (PRDC) computed from features.

We compute these from feature arrays ourselves rather than through torchmetrics' metric objects because one
feature pass per set then serves all four measures in any feature space (Inception, torchxrayvision, the
phantom classifier), and the phantom space must work without Inception weights at all.
"""

from __future__ import annotations

import numpy as np
import torch

from medsd.errors import MedsdError


def _as_numpy(features: torch.Tensor | np.ndarray) -> np.ndarray:
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    return array.astype(np.float64).reshape(len(array), -1)


def _check(real: np.ndarray, fake: np.ndarray, minimum: int = 2) -> None:
    if len(real) < minimum or len(fake) < minimum:
        raise MedsdError(f"need at least {minimum} images per set, got {len(real)} real and {len(fake)} generated")
    if real.shape[1] != fake.shape[1]:
        raise MedsdError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians: |mu1-mu2|² + tr(S1 + S2 - 2 (S1 S2)^½).

    tr((S1 S2)^½) is taken as the sum of square roots of the eigenvalues of the symmetric matrix
    S1^½ S2 S1^½ (same spectrum), which stays real and stable when the covariances are rank-deficient
    (fewer images than feature dimensions), where scipy's sqrtm of S1 S2 returns complex noise.
    """
    root1 = _sqrtm_psd(sigma1)
    middle = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = float(np.sqrt(np.clip(middle, 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def fid_from_features(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]``."""
    real, fake = _as_numpy(real), _as_numpy(fake)
    _check(real, fake)
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    dim = x.shape[1]
    k_xx = (x @ x.T / dim + 1) ** 3
    k_yy = (y @ y.T / dim + 1) ** 3
    k_xy = (x @ y.T / dim + 1) ** 3
    m, n = len(x), len(y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2 * k_xy.mean())


def kid_from_features(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    subset_size: int = 1000,
    n_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (unbiased MMD² with the cubic polynomial kernel) as (mean, std) over random subsets."""
    real, fake = _as_numpy(real), _as_numpy(fake)
    _check(real, fake)
    size = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        real_subset = real[rng.choice(len(real), size, replace=False)]
        values.append(_mmd2_unbiased(real_subset, fake[rng.choice(len(fake), size, replace=False)]))
    return float(np.mean(values)), float(np.std(values))


def prdc(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k-nearest-neighbour balls."""
    real_t = torch.as_tensor(_as_numpy(real))
    fake_t = torch.as_tensor(_as_numpy(fake))
    _check(real_t.numpy(), fake_t.numpy(), minimum=k + 1)
    real_real = torch.cdist(real_t, real_t)
    fake_fake = torch.cdist(fake_t, fake_t)
    real_fake = torch.cdist(real_t, fake_t)  # [N_real, N_fake]
    # k-th neighbour excluding the point itself (index 0 of the sorted distances is the point).
    real_radius = real_real.sort(dim=1).values[:, k]
    fake_radius = fake_fake.sort(dim=1).values[:, k]
    inside_real = real_fake < real_radius[:, None]  # fake j inside real i's ball
    precision = inside_real.any(dim=0).double().mean().item()
    recall = (real_fake < fake_radius[None, :]).any(dim=1).double().mean().item()
    density = inside_real.double().sum(dim=0).mean().item() / k
    coverage = (real_fake.min(dim=1).values < real_radius).double().mean().item()
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def compare_features(
    real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, k: int = 5, kid_subset: int = 1000
) -> dict[str, float]:
    """FID, KID (mean, std) and PRDC between two feature sets, as one flat dict."""
    kid_mean, kid_std = kid_from_features(real, fake, subset_size=kid_subset)
    out = {"fid": fid_from_features(real, fake), "kid_mean": kid_mean, "kid_std": kid_std}
    n_min = min(len(real), len(fake))
    if n_min > k:
        out.update(prdc(real, fake, k=k))
    return out
