"""What the phantom judge reads besides presence: the side of each lateralised finding and its severity.

The phantom knows both for every image (`params.jsonl`): a pleural effusion is left, right or bilateral; a
pneumothorax, consolidation or lesion left or right; every finding has a severity in [0, 1] (effusion height,
heart factor, pneumothorax collapse, consolidation and lesion radius). The judge has two extra heads on its
features: for each lateralised finding, whether it lies in the left lung and whether in the right (two
sigmoids, so "bilateral" is both), and a severity per finding. Both are trained only on images that carry the
finding, so on an image without it their output means nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medsd.phantom.render import FINDINGS

LATERAL_FINDINGS = [f for f in FINDINGS if f != "Cardiomegaly"]
SIDES = ("left", "right", "bilateral")


def side_severity_targets(data_dir: str | Path, paths: list[str], findings: list[str]) -> tuple[Tensor, Tensor]:
    """Targets read from `params.jsonl`, aligned with `paths`: sides [N, L, 2] (in left lung, in right lung)
    for the lateralised findings and severities [N, F]; NaN where the image lacks the finding."""
    records = {}
    params = Path(data_dir) / "params.jsonl"
    if params.is_file():
        for line in params.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                records[rec["path"]] = rec
    lateral = [f for f in findings if f in LATERAL_FINDINGS]
    sides = torch.full((len(paths), len(lateral), 2), float("nan"))
    severity = torch.full((len(paths), len(findings)), float("nan"))
    for i, path in enumerate(paths):
        for f in (records.get(path) or {}).get("findings", []):
            if f["name"] in findings:
                severity[i, findings.index(f["name"])] = float(f["severity"])
            if f["name"] in lateral:
                side = f.get("side")
                sides[i, lateral.index(f["name"])] = torch.tensor(
                    [float(side in ("left", "bilateral")), float(side in ("right", "bilateral"))])
    return sides, severity


def head_loss(side_logits: Tensor, severity: Tensor, side_target: Tensor, severity_target: Tensor) -> Tensor:
    """BCE on the side logits and squared error on the severity, both only where the finding is present."""
    known_side = ~torch.isnan(side_target)
    known_severity = ~torch.isnan(severity_target)
    loss = side_logits.new_zeros(())
    if known_side.any():
        loss = loss + F.binary_cross_entropy_with_logits(side_logits[known_side], side_target[known_side])
    if known_severity.any():
        # x4: squared errors of values in [0, 1] are small next to a BCE, and severity should count as much.
        loss = loss + 4 * F.mse_loss(severity[known_severity], severity_target[known_severity])
    return loss


def side_name(left: bool, right: bool) -> str:
    """"left", "right" or "bilateral" from the two in-lung flags."""
    return "bilateral" if left and right else ("left" if left else "right")


def side_from_probs(left: np.ndarray, right: np.ndarray, bilateral_allowed: bool) -> np.ndarray:
    """Predicted side per image: "bilateral" when both lungs score above 0.5 (and the finding can be bilateral),
    otherwise the lung that scores higher."""
    side = np.where(left >= right, "left", "right").astype(object)
    if bilateral_allowed:
        side[(left >= 0.5) & (right >= 0.5)] = "bilateral"
    return side


def side_accuracy(predicted: np.ndarray, asked: np.ndarray) -> float | None:
    """Share of images whose predicted side equals the asked one (None without any)."""
    return float(np.mean(predicted == asked)) if len(asked) else None


def severity_spearman(asked: np.ndarray, judged: np.ndarray) -> float | None:
    """Spearman rank correlation of asked and judged severity (None when either is constant or too few)."""
    from scipy.stats import spearmanr

    asked, judged = np.asarray(asked, dtype=float), np.asarray(judged, dtype=float)
    if len(asked) < 3 or np.ptp(asked) == 0 or np.ptp(judged) == 0:
        return None
    return float(spearmanr(asked, judged).statistic)


def held_out_head_metrics(side_probs: np.ndarray, severity: np.ndarray, side_target: np.ndarray,
                          severity_target: np.ndarray, findings: list[str]) -> dict[str, dict]:
    """Side accuracy per lateralised finding and severity Spearman per finding, on images with the finding."""
    lateral = [f for f in findings if f in LATERAL_FINDINGS]
    out: dict[str, dict] = {"side_accuracy": {}, "severity_spearman": {}}
    for j, name in enumerate(lateral):
        known = ~np.isnan(side_target[:, j, 0])
        truth = np.array([side_name(bool(l_), bool(r_)) for l_, r_ in side_target[known, j]], dtype=object)
        guess = side_from_probs(side_probs[known, j, 0], side_probs[known, j, 1], name == "Pleural Effusion")
        out["side_accuracy"][name] = side_accuracy(guess, truth)
    for j, name in enumerate(findings):
        known = ~np.isnan(severity_target[:, j])
        out["severity_spearman"][name] = severity_spearman(severity_target[known, j], severity[known, j])
    return out
