"""Per-channel statistics of colour and packed images: each channel judged on its own.

An RGB image packed from T2W, ADC and DWI is three scans; an H&E patch's colour planes carry the stains. The
image as a whole can look right while one channel is wrong (its intensities shifted, its contrast flat). For
every channel this compares the real and the generated set: the pixel intensity distribution (mean, std, 1st
and 99th percentiles, Wasserstein-1 distance between the two distributions) and, per feature space, the FID
of that channel alone (seen as a greyscale image).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from medsd.errors import MedsdError
from medsd.evaluate.features import Extractor, extract_features
from medsd.evaluate.fid import fid_from_features

MAX_PIXELS = 500_000  # per set and channel: the distribution statistics are stable long before that


def default_names(channels: int) -> list[str]:
    """R, G, B (or the single grey channel)."""
    return ["grey"] if channels == 1 else ["R", "G", "B"][:channels]


def _pixels(images: torch.Tensor, channel: int, rng: np.random.Generator) -> np.ndarray:
    values = images[:, channel].reshape(-1).double().numpy()
    return values if len(values) <= MAX_PIXELS else rng.choice(values, MAX_PIXELS, replace=False)


def channel_statistics(
    real: torch.Tensor,
    generated: torch.Tensor,
    names: list[str] | None = None,
    extractors: dict[str, Extractor] | None = None,
    seed: int = 0,
) -> dict:
    """Per channel of ``[N, C, H, W]`` sets: intensity statistics of both sets, their Wasserstein-1 distance
    and the per-channel FID in each feature space of ``extractors``."""
    channels = real.shape[1]
    if generated.shape[1] != channels:
        raise MedsdError(f"the real set has {channels} channels and the generated set {generated.shape[1]}")
    names = list(names) if names else default_names(channels)
    if len(names) != channels:
        raise MedsdError(f"{len(names)} channel names ({', '.join(names)}) for images with {channels} channels")
    rng = np.random.default_rng(seed)
    per_channel = {}
    for c, name in enumerate(names):
        a, b = _pixels(real, c, rng), _pixels(generated, c, rng)
        entry = {
            "real_mean": float(a.mean()), "real_std": float(a.std()),
            "generated_mean": float(b.mean()), "generated_std": float(b.std()),
            "real_p01_p99": [float(v) for v in np.percentile(a, [1, 99])],
            "generated_p01_p99": [float(v) for v in np.percentile(b, [1, 99])],
            "wasserstein": float(wasserstein_distance(a, b)),
            "fid": {},
        }
        for space, extractor in (extractors or {}).items():
            entry["fid"][space] = fid_from_features(extract_features(extractor, real[:, c:c + 1]),
                                                    extract_features(extractor, generated[:, c:c + 1]))
        per_channel[name] = entry
    return {"names": names, "per_channel": per_channel}


def split_channels(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` → ``[C * N, 1, H, W]``: each channel as its own greyscale image, channel by channel."""
    return images.transpose(0, 1).reshape(-1, 1, *images.shape[-2:])
