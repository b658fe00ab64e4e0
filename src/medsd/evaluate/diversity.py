"""Diversity as RoentGen reports it: mean MS-SSIM between images generated from the same prompt.

Lower is more diverse (1.0 = identical images). MS-SSIM with its default 5 scales and 11 px window needs
images larger than 160 px; for smaller images we keep only as many scales as fit (and shrink the window
below 32 px) and renormalise the first betas, so numbers at different sizes are not directly comparable.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

from medsd.errors import MedsdError

log = logging.getLogger(__name__)

DEFAULT_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_settings(size: int) -> tuple[int, tuple[float, ...]]:
    """Window size and betas that fit an image side of ``size`` pixels (all 5 scales when > 160 px)."""
    kernel = 11 if size >= 32 else 7 if size >= 16 else 3
    scales = 5
    while scales > 1 and (kernel - 1) * 2 ** (scales - 1) >= size:
        scales -= 1
    if scales == len(DEFAULT_BETAS):
        return kernel, DEFAULT_BETAS
    betas = np.asarray(DEFAULT_BETAS[:scales])
    return kernel, tuple(float(b) for b in betas / betas.sum())


def pairwise_ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of matching pairs ``a[i]``, ``b[i]`` (``[N, C, H, W]`` in [0, 1], channels averaged) → ``[N]``."""
    size = min(a.shape[-2:])
    kernel, betas = ms_ssim_settings(size)
    if len(betas) < 5:
        log.debug("MS-SSIM on %d px images: %d scales, window %d", size, len(betas), kernel)
    values = ms_ssim(
        a.float(), b.float(), data_range=1.0, kernel_size=kernel, betas=betas, reduction="none", normalize="relu"
    )
    return values.reshape(-1)


def group_diversity(images: torch.Tensor, max_pairs: int = 100, seed: int = 0) -> float | None:
    """Mean MS-SSIM over pairs of images in one group (None when it has fewer than 2 images)."""
    pairs = list(itertools.combinations(range(len(images)), 2))
    if not pairs:
        return None
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = [pairs[i] for i in rng.choice(len(pairs), max_pairs, replace=False)]
    left = torch.tensor([p[0] for p in pairs])
    right = torch.tensor([p[1] for p in pairs])
    return float(pairwise_ms_ssim(images[left], images[right]).mean())


def ms_ssim_diversity(
    images: torch.Tensor, groups: dict[str, list[int]], max_pairs: int = 100, seed: int = 0
) -> dict:
    """Per-prompt mean pairwise MS-SSIM and their average (``mean``); lower is more diverse."""
    per_prompt = {}
    for prompt, indices in groups.items():
        value = group_diversity(images[indices], max_pairs=max_pairs, seed=seed)
        if value is not None:
            per_prompt[prompt] = value
    if not per_prompt:
        raise MedsdError("diversity needs at least two images generated from the same prompt")
    kernel, betas = ms_ssim_settings(min(images.shape[-2:]))
    return {
        "ms_ssim_mean": float(np.mean(list(per_prompt.values()))),
        "per_prompt": per_prompt,
        "scales": len(betas),
        "kernel_size": kernel,
    }
