"""Augmentation experiment: does adding synthetic images help a classifier? (the papers' classifier tables)

A classifier (torchvision ResNet-18; DenseNet-121 optional) is trained per condition, R runs each with their
own seed, and its per-label test AUC is reported as mean ± std over the runs. Conditions:

- real only, and real + synthetic at given synthetic *shares* of the training set (10 / 25 / 50 %);
- real + an *absolute* number of synthetic images (the budget paper's 200 real + 2,000 synthetic), with
  `real_count` drawing that many real images per run;
- synthetic only.

The budget paper's protocol (its Table 4) is a recipe away (`configs/picai_augment.yaml`): an ImageNet-initialised
ResNet-18 from a local weights file (`weights`; nothing is downloaded), flips, noise, intensity changes, channel
dropout, translation, scaling and rotation, and the checkpoint with the best validation AUC (`selection:
best_val`, on a real validation set or a held-out share of the real training images). Defaults otherwise follow
the paper too: Adam, lr 1e-4, batch 32.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field, PositiveFloat
from sklearn.metrics import roc_auc_score
from torchvision.transforms import v2
from tqdm.auto import tqdm

from medsd.config_base import StrictModel
from medsd.errors import MedsdError, first_line
from medsd.evaluate.features import load_state_dict_file, to_channels

log = logging.getLogger(__name__)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
Set = tuple[torch.Tensor, np.ndarray]  # images [N, C, H, W] in [0, 1], labels [N, F] (1 / 0 / NaN)


class AugmentConfig(StrictModel):
    """Settings of the augmentation experiment."""

    arch: Literal["resnet18", "densenet121"] = Field("resnet18", description="torchvision classifier to train")
    weights: Path | None = Field(
        None,
        description="local ImageNet weights for the arch: a torchvision state dict as .safetensors or a plain "
        "torch file (read with weights_only=True); none = from scratch",
    )
    image_size: int = Field(224, ge=16, description="images are resized to this side in pixels")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(32, ge=1, description="training batch size")
    epochs: int = Field(10, ge=1, description="passes over the training set of each condition")
    max_steps: int | None = Field(None, ge=1, description="stop each run after this many steps (tiny budgets)")
    ratios: list[float] = Field(
        [0.0, 0.1, 0.25, 0.5], description="synthetic share of the mixed training set (0.5 = as many as real)"
    )
    real_count: int | None = Field(
        None, ge=1, description="real training images per run, drawn with the run's seed (the paper: 200); None = all"
    )
    synthetic_counts: list[int] = Field(
        [], description="absolute numbers of synthetic images added to the real ones, a condition each (the paper: "
        "[2000]); the largest is also the synthetic-only set's size"
    )
    synthetic_only: bool = Field(True, description="also train on synthetic images alone")
    runs: int = Field(3, ge=1, description="runs per condition, each with its own seed")
    seed: int = Field(0, description="seed of the first run; run r uses seed + r")
    selection: Literal["last", "best_val"] = Field(
        "last", description="which checkpoint is tested: the last one, or the one with the best validation AUC"
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1,
        description="best_val without a validation set: this share of the real training images is held out",
    )
    eval_every: int | None = Field(
        None, ge=1, description="steps between validation passes for best_val; None = once per epoch"
    )
    hflip: bool = Field(False, description="random horizontal flips (off: chest X-rays have a side)")
    vflip: bool = Field(False, description="random vertical flips")
    rotate_degrees: float = Field(10.0, ge=0, description="random rotation range (degrees)")
    translate: float = Field(0.05, ge=0, le=0.5, description="random shift as a share of the image side")
    scale: tuple[PositiveFloat, PositiveFloat] = Field((1.0, 1.0), description="random zoom range, e.g. [0.9, 1.1]")
    intensity: float = Field(0.0, ge=0, lt=1, description="random brightness and contrast change, ± this share")
    noise_std: float = Field(0.0, ge=0, description="std of added Gaussian noise (images in [0, 1])")
    channel_dropout: float = Field(
        0.0, ge=0, le=1, description="probability of blanking one random channel (packed MRI: one scan missing)"
    )
    device: str = Field("cpu", description="torch device for training")


def build_classifier(arch: str, num_outputs: int, weights: Path | None = None) -> torch.nn.Module:
    """A torchvision classifier with ``num_outputs`` logits, from a local ImageNet state dict or from scratch."""
    model = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        try:
            model.load_state_dict(load_state_dict_file(weights, "augment weights"))
        except RuntimeError as err:
            raise MedsdError(
                f"augment weights {weights} are not a torchvision {arch} state dict ({first_line(err)}); "
                f"save one with: torchvision.models.{arch}(weights='IMAGENET1K_V1').state_dict()"
            ) from err
        log.info("%s initialised from %s", arch, weights)
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
    return (to_channels(images, 3) - IMAGENET_MEAN.to(images.device)) / IMAGENET_STD.to(images.device)


class ChannelDropout(torch.nn.Module):
    """With probability ``p``, blank one random channel of a ``[C, H, W]`` image (no-op for one channel)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] < 2 or torch.rand(()) >= self.p:
            return image
        out = image.clone()
        out[int(torch.randint(image.shape[0], ()))] = 0
        return out


def augmenter(config: AugmentConfig) -> v2.Compose:
    """Per-image augmentation of ``[C, H, W]`` images in [0, 1], in the order: affine (rotation, translation,
    scaling), flips, intensity, noise, channel dropout. Off settings add no step and draw no random numbers."""
    scale = None if tuple(config.scale) == (1.0, 1.0) else config.scale
    steps: list = [v2.RandomAffine(degrees=config.rotate_degrees, translate=(config.translate, config.translate),
                                   scale=scale)]
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if config.vflip:
        steps.append(v2.RandomVerticalFlip())
    if config.intensity:
        steps.append(v2.ColorJitter(brightness=config.intensity, contrast=config.intensity))
    if config.noise_std:
        steps.append(v2.GaussianNoise(sigma=config.noise_std, clip=True))
    if config.channel_dropout:
        steps.append(ChannelDropout(config.channel_dropout))
    return v2.Compose(steps)


def _mean_auc(aucs: list) -> float:
    known = [a for a in aucs if a is not None]
    return float(np.mean(known)) if known else float("nan")


def train_classifier(
    images: torch.Tensor, labels: np.ndarray, config: AugmentConfig, seed: int, val: Set | None = None
) -> tuple[torch.nn.Module, dict]:
    """Train one classifier on ``images`` [N,C,H,W] with labels [N,F] (NaN labels are masked out of the loss).

    With ``config.selection == "best_val"`` and a validation set, the weights with the best mean validation
    AUC are kept (checked every ``eval_every`` steps, or after every epoch). Returns the model and
    ``{"selected_step", "val_auc", "steps", "val_history"}`` (history: [step, mean validation AUC] pairs).
    """
    torch.manual_seed(seed)
    model = build_classifier(config.arch, labels.shape[1], config.weights).to(config.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    augment = augmenter(config)
    targets = torch.as_tensor(labels, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = steps_per_epoch * config.epochs if config.max_steps is None else config.max_steps
    check_every = config.eval_every or steps_per_epoch
    selecting = config.selection == "best_val" and val is not None
    best = {"selected_step": None, "val_auc": None, "state": None}
    history: list[list] = []
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
            if selecting and (step % check_every == 0 or step == total):
                auc = _mean_auc(evaluate_auc(model.eval(), val[0], val[1], config))
                model.train()
                history.append([step, auc])
                if best["val_auc"] is None or auc > best["val_auc"]:  # NaN never wins
                    best = {"selected_step": step, "val_auc": auc, "state": copy.deepcopy(model.state_dict())}
            if step >= total:
                break
    if selecting and best["state"] is not None:
        model.load_state_dict(best["state"])
    else:
        best["selected_step"] = step
    return model.eval(), {"selected_step": best["selected_step"], "val_auc": best["val_auc"], "steps": step,
                          "val_history": history}


@torch.no_grad()
def evaluate_auc(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, config: AugmentConfig) -> list:
    """Per-label AUC (None where the labels have one class only)."""
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


def _share(n_real: int, n_synthetic: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Which synthetic images make a share ``ratio`` of the mixed set beside ``n_real`` real ones."""
    wanted = round(n_real * ratio / (1 - ratio))
    return _draw(n_synthetic, wanted, rng, f"ratio {ratio:.2f}")


def _draw(available: int, wanted: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """``wanted`` distinct indices below ``available`` (all of them, with a warning, when there are fewer)."""
    if wanted > available:
        log.warning("%s needs %d images, only %d available; using all", what, wanted, available)
        wanted = available
    return rng.choice(available, wanted, replace=False)


def _conditions(config: AugmentConfig) -> list[tuple[str, str, float]]:
    """(name, kind, value): kind "share" (value = synthetic share), "count" (value = images) or "only"."""
    if not 0 <= min(config.ratios, default=0) <= max(config.ratios, default=0) < 1:
        raise MedsdError(f"augment ratios {config.ratios} must lie in [0, 1): they are the synthetic share")
    if any(n < 1 for n in config.synthetic_counts):
        raise MedsdError(f"augment synthetic_counts {config.synthetic_counts} must be positive image counts")
    out = [(f"real + {r:.0%} synthetic" if r else "real only", "share", r) for r in config.ratios]
    out += [(f"real + {n} synthetic", "count", n) for n in config.synthetic_counts]
    if config.synthetic_only:
        out.append(("synthetic only", "only", max(config.synthetic_counts, default=0)))
    return out


def _split_validation(real: Set, val: Set | None, config: AugmentConfig, rng: np.random.Generator) -> tuple:
    """(training real set, validation set or None); holds out `val_fraction` of the real set when needed."""
    if config.selection != "best_val" or val is not None:
        return real, val
    order = rng.permutation(len(real[0]))
    n_val = max(1, round(len(order) * config.val_fraction))
    held, kept = order[:n_val], np.sort(order[n_val:])
    return (real[0][kept], real[1][kept]), (real[0][held], real[1][held])


def run_augmentation(
    real: Set, synthetic: Set, test: Set, findings: list[str], config: AugmentConfig, val: Set | None = None
) -> dict:
    """Train every condition ``config.runs`` times and return per-label AUC mean ± std per condition.

    All sets are brought to the real set's channels (grey or colour). ``val`` is a real validation set for
    ``selection: best_val``; without one, a share of ``real`` is held out in each run.
    """
    channels = real[0].shape[1]
    synthetic, test = [(to_channels(s[0], channels), s[1]) for s in (synthetic, test)]
    val = (to_channels(val[0], channels), val[1]) if val is not None else None
    conditions = _conditions(config)
    rows = []
    for name, kind, value in tqdm(conditions, desc="augmentation conditions"):
        runs, infos = [], []
        for r in range(config.runs):
            seed = config.seed + r
            rng = np.random.default_rng(seed)
            pool, run_val = _split_validation(real, val, config, rng)
            if config.real_count is not None and kind != "only":
                keep = np.sort(_draw(len(pool[0]), config.real_count, rng, "real_count"))
                pool = (pool[0][keep], pool[1][keep])
            if kind == "share":
                pick = _share(len(pool[0]), len(synthetic[0]), value, rng) if value else np.array([], int)
            else:
                pick = _draw(len(synthetic[0]), int(value) or len(synthetic[0]), rng, name)
            x_syn, y_syn = synthetic[0][pick], synthetic[1][pick]
            if kind == "only":
                x, y, n_real = x_syn, y_syn, 0
            else:
                x, y, n_real = torch.cat([pool[0], x_syn]), np.concatenate([pool[1], y_syn]), len(pool[0])
            model, info = train_classifier(x, y, config, seed, run_val)
            runs.append(evaluate_auc(model, test[0], test[1], config))
            infos.append(info)
            log.info("%s run %d: AUC %s (checkpoint of step %s)", name, r, runs[-1], info["selected_step"])
        share = len(pick) / (n_real + len(pick)) if n_real + len(pick) else 0.0
        rows.append(_summarise(name, share, runs, findings, n_real=n_real, n_syn=len(pick), infos=infos))
    return {"findings": findings, "conditions": rows, "config": config.model_dump(mode="json")}


def _summarise(name: str, ratio: float, runs: list, findings: list[str], n_real: int, n_syn: int,
               infos: list[dict]) -> dict:
    values = np.array([[np.nan if v is None else v for v in run] for run in runs], dtype=float)
    with warnings.catch_warnings():  # all-NaN columns (one-class test labels) are expected, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        per_run_mean = np.nanmean(values, axis=1)
    clean = lambda v: None if v is None or np.isnan(v) else float(v)  # noqa: E731
    return {
        "name": name, "ratio": ratio, "n_real": n_real, "n_synthetic": n_syn,
        "auc_runs": {f: [clean(v) for v in values[:, j]] for j, f in enumerate(findings)},
        "auc_mean": {f: clean(mean[j]) for j, f in enumerate(findings)},
        "auc_std": {f: clean(std[j]) for j, f in enumerate(findings)},
        "mean_auc": clean(np.nanmean(per_run_mean)) if not np.isnan(per_run_mean).all() else None,
        "mean_auc_std": clean(np.nanstd(per_run_mean)) if not np.isnan(per_run_mean).all() else None,
        "selected_steps": [i["selected_step"] for i in infos],
        "val_auc": [clean(i["val_auc"]) for i in infos],
    }


def augmentation_table(result: dict) -> str:
    """Markdown table: one row per condition with its image counts, per-label AUC as mean ± std, then the mean."""
    findings = result["findings"]
    fmt = lambda m, s: "–" if m is None else f"{m:.3f} ± {s:.3f}"  # noqa: E731
    lines = ["| condition | real | synthetic | " + " | ".join(findings) + " | mean |",
             "|---" * (len(findings) + 4) + "|"]
    for row in result["conditions"]:
        cells = [fmt(row["auc_mean"][f], row["auc_std"][f]) for f in findings]
        lines.append(f"| {row['name']} | {row['n_real']} | {row['n_synthetic']} | " + " | ".join(cells)
                     + f" | {fmt(row['mean_auc'], row['mean_auc_std'])} |")
    return "\n".join(lines)
