"""Label faithfulness: does a classifier find in each generated image the findings its prompt asked for?

A classifier (the phantom reference classifier offline; torchxrayvision on real chest X-rays) scores every
image; per finding we report AUC and accuracy against the prompt's labels, and a confusion table.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medsd.errors import MedsdError
from medsd.evaluate.features import Scorer


def auc_standard_error(auc: float, n_positive: int, n_negative: int) -> float:
    """Standard error of an AUC from its value and the two group sizes (Hanley & McNeil 1982): how far the AUC of
    that many images moves from the draw of the images alone. (scikit-learn and scipy have no AUC error.)"""
    if n_positive < 1 or n_negative < 1:
        raise ValueError("an AUC needs at least one positive and one negative")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (n_positive - 1) * (q1 - auc**2) + (n_negative - 1) * (q2 - auc**2)) / (
        n_positive * n_negative)
    return float(np.sqrt(max(variance, 0.0)))


@torch.no_grad()
def score_images(scorer: Scorer, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Probabilities ``[N, F]`` for ``scorer.findings``."""
    chunks = [scorer.probs(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy().astype(np.float64)


def finding_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """AUC, accuracy and confusion counts for one finding; NaN labels are left out."""
    known = ~np.isnan(labels)
    y, p = labels[known].astype(int), probs[known]
    predicted = (p >= threshold).astype(int)
    out = {
        "n": int(known.sum()),
        "positives": int(y.sum()),
        "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "accuracy": float((predicted == y).mean()) if len(y) else None,
        "tp": int(((predicted == 1) & (y == 1)).sum()),
        "fp": int(((predicted == 1) & (y == 0)).sum()),
        "tn": int(((predicted == 0) & (y == 0)).sum()),
        "fn": int(((predicted == 0) & (y == 1)).sum()),
    }
    return out


def label_faithfulness(
    probs: np.ndarray, labels: np.ndarray, findings: list[str], threshold: float = 0.5
) -> dict:
    """Per-finding metrics plus macro means over findings that have both classes.

    ``probs`` and ``labels`` are ``[N, F]`` aligned with ``findings``; labels are 1/0/NaN.
    """
    if probs.shape != labels.shape or probs.shape[1] != len(findings):
        raise MedsdError(f"scores {probs.shape} and labels {labels.shape} do not match {len(findings)} findings")
    per_finding = {f: finding_metrics(probs[:, j], labels[:, j], threshold) for j, f in enumerate(findings)}
    aucs = [m["auc"] for m in per_finding.values() if m["auc"] is not None]
    accs = [m["accuracy"] for m in per_finding.values() if m["accuracy"] is not None and m["n"]]
    return {
        "per_finding": per_finding,
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "mean_accuracy": float(np.mean(accs)) if accs else None,
        "threshold": threshold,
    }


def evaluate_faithfulness(scorer: Scorer, images: torch.Tensor, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Score ``images`` with ``scorer`` and compare with ``labels`` ``[N, len(scorer.findings)]``."""
    if np.isnan(labels).all():
        raise MedsdError(
            "no labels found for faithfulness: the image set needs label columns named like the classifier's "
            f"findings ({', '.join(scorer.findings[:4])}, ...) or a prompt column mentioning them"
        )
    result = label_faithfulness(score_images(scorer, images), labels, scorer.findings, threshold)
    result["classifier"] = scorer.name
    return result
