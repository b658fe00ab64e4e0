"""Memorization: is a generated image a near-copy of a training image? (Packhäuser et al.'s privacy concern.)

For each generated image we find the nearest training image by feature cosine similarity and by SSIM, and
flag it when either similarity passes its threshold. SSIM is the main copy criterion (on phantom radiographs,
which all share one anatomy, distinct images reach SSIM 0.84 and lightly altered copies 0.97); feature
cosine also catches copies that are shifted or re-exposed. Features are centred on the training mean first,
because raw post-ReLU features of any two chest X-rays already have cosine near 1. As a yardstick, the
result holds the 99th percentile of each training image's cosine to its nearest *other* training image.
SSIM against every training image is costly, so it is computed only against the ``candidates`` nearest
images by feature cosine and by pixel cosine — an exact or lightly altered copy is always among those.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from medsd.evaluate.features import Extractor, extract_features


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a.flatten(1).double(), dim=1) @ F.normalize(b.flatten(1).double(), dim=1).T


def _pixels(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    small = F.interpolate(images.float(), size=(size, size), mode="area") if images.shape[-1] > size else images
    flat = small.flatten(1)
    return flat - flat.mean(dim=1, keepdim=True)


def _ssim_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    kernel = 11 if min(a.shape[-2:]) >= 32 else 7
    return ssim(a.float(), b.float(), data_range=1.0, kernel_size=kernel, reduction="none").reshape(-1)


@torch.no_grad()
def nearest_training_images(
    generated: torch.Tensor,
    training: torch.Tensor,
    extractor: Extractor | None = None,
    candidates: int = 5,
) -> dict[str, np.ndarray]:
    """Per generated image: nearest training index and similarity by feature cosine and by SSIM."""
    pixel_sim = _cosine(_pixels(generated), _pixels(training))
    if extractor is not None:
        train_feats = extract_features(extractor, training)
        gen_feats = extract_features(extractor, generated)
        centre = train_feats.mean(dim=0, keepdim=True)
        feature_sim = _cosine(gen_feats - centre, train_feats - centre)
        train_sim = _cosine(train_feats - centre, train_feats - centre)
    else:
        feature_sim = pixel_sim
        train_sim = _cosine(_pixels(training), _pixels(training))
    train_sim.fill_diagonal_(-1.0)
    k = min(candidates, len(training))
    cos_best, cos_index = feature_sim.max(dim=1)
    # candidate pools [G, 2k] (duplicates are harmless), scored in a few large batched SSIM calls
    pools = torch.cat([feature_sim.topk(k, dim=1).indices, pixel_sim.topk(k, dim=1).indices], dim=1)
    gen_index = torch.arange(len(generated))[:, None].expand_as(pools).reshape(-1)
    flat_pool = pools.reshape(-1)
    values = torch.cat([
        _ssim_pairs(generated[gen_index[i : i + 512]], training[flat_pool[i : i + 512]])
        for i in range(0, len(flat_pool), 512)
    ]).view(pools.shape)
    ssim_values, best = values.max(dim=1)
    ssim_best = ssim_values.double().numpy()
    ssim_index = pools.gather(1, best[:, None])[:, 0].numpy()
    return {
        "cosine": cos_best.numpy(),
        "cosine_index": cos_index.numpy(),
        "ssim": ssim_best,
        "ssim_index": ssim_index,
        "train_nn_cosine": train_sim.max(dim=1).values.numpy(),
    }


def memorization(
    generated: torch.Tensor,
    training: torch.Tensor,
    extractor: Extractor | None = None,
    cosine_threshold: float = 0.98,
    ssim_threshold: float = 0.9,
    candidates: int = 5,
    top: int = 8,
) -> dict:
    """Near-copy report: per-image similarities, flags, the share flagged and the ``top`` closest pairs.

    A generated image is flagged when its nearest training image has feature cosine >= ``cosine_threshold``
    or SSIM >= ``ssim_threshold``. Closest pairs are ranked by SSIM (what a reader sees as a copy).
    """
    near = nearest_training_images(generated, training, extractor, candidates=candidates)
    flagged = (near["cosine"] >= cosine_threshold) | (near["ssim"] >= ssim_threshold)
    order = np.argsort(-near["ssim"])[:top]
    return {
        "n_generated": len(generated),
        "n_training": len(training),
        "feature_space": "features" if extractor is not None else "pixels",
        "cosine_threshold": cosine_threshold,
        "train_nn_cosine_p99": float(np.quantile(near["train_nn_cosine"], 0.99)),
        "ssim_threshold": ssim_threshold,
        "share_flagged": float(flagged.mean()),
        "n_flagged": int(flagged.sum()),
        "share_cosine_above": float((near["cosine"] >= cosine_threshold).mean()),
        "share_ssim_above": float((near["ssim"] >= ssim_threshold).mean()),
        "flagged": flagged.tolist(),
        "cosine": near["cosine"].tolist(),
        "cosine_index": near["cosine_index"].tolist(),
        "ssim": near["ssim"].tolist(),
        "ssim_index": near["ssim_index"].tolist(),
        "closest_pairs": [(int(i), int(near["ssim_index"][i]), float(near["ssim"][i])) for i in order],
    }
