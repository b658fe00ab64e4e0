"""Augmentation experiment: does adding synthetic images help a classifier? (the seeds' classifier tables)

A classifier (torchvision ResNet-18; DenseNet-121 optional) is trained on real data, on synthetic data only,
and on real + synthetic at given synthetic shares, R runs each with different seeds; per-label test AUC is
reported as mean ± std, as in the papers. Defaults follow the budget paper (Adam, lr 1e-4, batch 32).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field
from sklearn.metrics import roc_auc_score
from torchvision.transforms import v2
from tqdm.auto import tqdm

from medsd.config_base import StrictModel
from medsd.errors import MedsdError
from medsd.evaluate.features import load_state_dict_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class AugmentConfig(StrictModel):
    """Settings of the augmentation experiment."""

    arch: Literal["resnet18", "densenet121"] = Field("resnet18", description="torchvision classifier to train")
    weights: Path | None = Field(
        None, description="local ImageNet weights for the arch (.safetensors or state dict); none = from scratch"
    )
    image_size: int = Field(224, ge=16, description="images are resized to this side in pixels")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(32, ge=1, description="training batch size")
    epochs: int = Field(10, ge=1, description="passes over the training set of each condition")
    max_steps: int | None = Field(None, ge=1, description="stop each run after this many steps (tiny budgets)")
    ratios: list[float] = Field(
        [0.0, 0.1, 0.25, 0.5], description="synthetic share of the mixed training set (0.5 = as many as real)"
    )
    synthetic_only: bool = Field(True, description="also train on synthetic images alone")
    runs: int = Field(3, ge=1, description="runs per condition, each with its own seed")
    seed: int = Field(0, description="seed of the first run; run r uses seed + r")
    rotate_degrees: float = Field(10.0, ge=0, description="random rotation range (degrees)")
    translate: float = Field(0.05, ge=0, le=0.5, description="random shift as a share of the image side")
    hflip: bool = Field(False, description="random horizontal flips (off: chest X-rays have a side)")
    device: str = Field("cpu", description="torch device for training")


def build_classifier(arch: str, num_outputs: int, weights: Path | None = None) -> torch.nn.Module:
    """A torchvision classifier with ``num_outputs`` logits, from a local ImageNet state dict or from scratch."""
    model = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        model.load_state_dict(load_state_dict_file(weights, "augment weights"))
    else:
        log.info("training %s from scratch (no ImageNet weights given)", arch)
    if arch == "resnet18":
        model.fc = torch.nn.Linear(model.fc.in_features, num_outputs)
    else:
        model.classifier = torch.nn.Linear(model.classifier.in_features, num_outputs)
    return model


def _prepare(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (images.repeat(1, 3, 1, 1) - IMAGENET_MEAN) / IMAGENET_STD


def _augmenter(config: AugmentConfig) -> v2.Compose:
    steps: list = [v2.RandomAffine(degrees=config.rotate_degrees, translate=(config.translate, config.translate))]
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def train_classifier(
    images: torch.Tensor, labels: np.ndarray, config: AugmentConfig, seed: int
) -> torch.nn.Module:
    """Train one classifier on ``images`` [N,1,H,W] with labels [N,F] (NaN labels are masked out of the loss)."""
    torch.manual_seed(seed)
    model = build_classifier(config.arch, labels.shape[1], config.weights).to(config.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    augment = _augmenter(config)
    targets = torch.as_tensor(labels, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = steps_per_epoch * config.epochs if config.max_steps is None else config.max_steps
    step = 0
    while step < total:
        for batch in torch.randperm(len(images), generator=generator).split(config.batch_size):
            x = torch.stack([augment(img) for img in images[batch]])
            x = _prepare(x, config.image_size).to(config.device)
            y = targets[batch].to(config.device)
            known = ~torch.isnan(y)
            loss = F.binary_cross_entropy_with_logits(model(x)[known], y[known])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= total:
                break
    return model.eval()


@torch.no_grad()
def evaluate_auc(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, config: AugmentConfig) -> list:
    """Per-label test AUC (None where the test labels have one class only)."""
    probs = torch.cat([
        torch.sigmoid(model(_prepare(images[i : i + 64], config.image_size).to(config.device))).cpu()
        for i in range(0, len(images), 64)
    ]).numpy()
    aucs = []
    for j in range(labels.shape[1]):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j]
        aucs.append(float(roc_auc_score(y, probs[known, j])) if 0 < y.sum() < len(y) else None)
    return aucs


def _mixture(n_real: int, n_synthetic: int, ratio: float, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """How many synthetic images a share ``ratio`` needs beside ``n_real`` real ones, and which."""
    wanted = round(n_real * ratio / (1 - ratio)) if ratio < 1 else n_synthetic
    if wanted > n_synthetic:
        log.warning("ratio %.2f needs %d synthetic images, only %d available; using all", ratio, wanted, n_synthetic)
        wanted = n_synthetic
    return wanted, rng.choice(n_synthetic, wanted, replace=False)


def run_augmentation(
    real: tuple[torch.Tensor, np.ndarray],
    synthetic: tuple[torch.Tensor, np.ndarray],
    test: tuple[torch.Tensor, np.ndarray],
    findings: list[str],
    config: AugmentConfig,
) -> dict:
    """Train every condition ``config.runs`` times and return per-label AUC mean ± std per condition."""
    (real_x, real_y), (syn_x, syn_y), (test_x, test_y) = real, synthetic, test
    if not 0 <= min(config.ratios) <= max(config.ratios) < 1:
        raise MedsdError(f"augment ratios {config.ratios} must lie in [0, 1): they are the synthetic share")
    conditions = [(f"real + {r:.0%} synthetic" if r else "real only", r) for r in config.ratios]
    if config.synthetic_only:
        conditions.append(("synthetic only", 1.0))
    rows = []
    for name, ratio in tqdm(conditions, desc="augmentation conditions"):
        runs = []
        for r in range(config.runs):
            seed = config.seed + r
            rng = np.random.default_rng(seed)
            n_syn, pick = _mixture(len(real_x), len(syn_x), ratio, rng)
            if ratio >= 1:
                x, y = syn_x[pick], syn_y[pick]
            else:
                x = torch.cat([real_x, syn_x[pick]])
                y = np.concatenate([real_y, syn_y[pick]])
            model = train_classifier(x, y, config, seed)
            runs.append(evaluate_auc(model, test_x, test_y, config))
            log.info("%s run %d: AUC %s", name, r, runs[-1])
        rows.append(_summarise(name, ratio, runs, findings, n_real=0 if ratio >= 1 else len(real_x), n_syn=n_syn))
    return {"findings": findings, "conditions": rows, "config": config.model_dump(mode="json")}


def _summarise(name: str, ratio: float, runs: list, findings: list[str], n_real: int, n_syn: int) -> dict:
    values = np.array([[np.nan if v is None else v for v in run] for run in runs], dtype=float)
    with warnings.catch_warnings():  # all-NaN columns (one-class test labels) are expected, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        per_run_mean = np.nanmean(values, axis=1)
    clean = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
    return {
        "name": name, "ratio": ratio, "n_real": n_real, "n_synthetic": n_syn,
        "auc_runs": {f: [clean(v) for v in values[:, j]] for j, f in enumerate(findings)},
        "auc_mean": {f: clean(mean[j]) for j, f in enumerate(findings)},
        "auc_std": {f: clean(std[j]) for j, f in enumerate(findings)},
        "mean_auc": clean(np.nanmean(per_run_mean)) if not np.isnan(per_run_mean).all() else None,
        "mean_auc_std": clean(np.nanstd(per_run_mean)) if not np.isnan(per_run_mean).all() else None,
    }


def augmentation_table(result: dict) -> str:
    """Markdown table: one row per condition, per-label AUC as mean ± std, then the mean over labels."""
    findings = result["findings"]
    fmt = lambda m, s: "–" if m is None else f"{m:.3f} ± {s:.3f}"  # noqa: E731
    lines = ["| condition | " + " | ".join(findings) + " | mean |", "|---" * (len(findings) + 2) + "|"]
    for row in result["conditions"]:
        cells = [fmt(row["auc_mean"][f], row["auc_std"][f]) for f in findings]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {fmt(row['mean_auc'], row['mean_auc_std'])} |")
    return "\n".join(lines)
