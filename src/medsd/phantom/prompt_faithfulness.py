"""Does a generated image follow its prompt? The phantom judge's verdict on finding, side and severity.

For each kind of prompt (label, report, held-out report; `medsd.phantom.prompt_suite`) and each finding:

- **AUC** of the judge's probability against "the prompt asks for it", over all images of that kind, over the
  single-finding prompts (and normal ones) only, and with the combination prompts as positives; with the
  standard error the image counts give the first (`auc_se`, Hanley & McNeil);
- **false-positive share**: of the images whose prompt does not ask for the finding, the share the judge calls
  positive at 0.5 (an AUC can be high while every image carries a trace of the finding);
- **side accuracy**: of the images whose prompt asks for a lateralised finding on a side, the share the judge
  places on that side (left, right, or bilateral for effusions);
- **severity Spearman** between the asked severity (level 0-2; a lesion's size in cm) and the judged one.

`judge_real` gives the same numbers for real held-out phantom images against their true parameters: the
ceiling any generator is measured against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from medsd.evaluate.faithfulness import auc_standard_error
from medsd.phantom.judge import PhantomClassifier, judge_images
from medsd.phantom.judge_heads import severity_spearman, side_from_probs
from medsd.phantom.reports import FindingSpec, severity_level, specs_from_record

THRESHOLD = 0.5


def judged_frame(model: PhantomClassifier, images: torch.Tensor, asked: pd.DataFrame) -> pd.DataFrame:
    """`asked` (one row per image, as `prompt_suite.cases_frame`) with the judge's reading added:
    `NAME|p` probability, `NAME|side_judged`, `NAME|severity_judged` per finding."""
    if len(images) != len(asked):
        raise ValueError(f"{len(images)} images but {len(asked)} rows of asked findings")
    read = judge_images(model, images)
    out = asked.reset_index(drop=True).copy()
    for j, name in enumerate(model.findings):
        out[f"{name}|p"] = read["probs"][:, j]
        out[f"{name}|severity_judged"] = read["severity"][:, j]
        if name in model.lateral:
            k = model.lateral.index(name)
            out[f"{name}|side_judged"] = side_from_probs(read["side_probs"][:, k, 0], read["side_probs"][:, k, 1],
                                                         name == "Pleural Effusion")
    return out


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def finding_measures(frame: pd.DataFrame, name: str) -> dict[str, Any]:
    """The measures of one finding over one set of judged images (see the module docstring)."""
    asked = frame[name].to_numpy(dtype=int)
    prob = frame[f"{name}|p"].to_numpy(dtype=float)
    single = (frame["n_asked"] <= 1).to_numpy()
    combined = (frame["n_asked"] >= 2).to_numpy() & (asked == 1)
    negatives = asked == 0
    auc = _auc(asked, prob)
    out: dict[str, Any] = {
        "n_asked": int(asked.sum()), "n_not_asked": int(negatives.sum()),
        "auc": auc,
        # how far `auc` moves from the draw of this many images alone
        "auc_se": None if auc is None else auc_standard_error(auc, int(asked.sum()), int(negatives.sum())),
        "auc_single": _auc(asked[single], prob[single]),
        "auc_combined": _auc(asked[combined | negatives], prob[combined | negatives]) if combined.any() else None,
        "false_positive_share": float((prob[negatives] >= THRESHOLD).mean()) if negatives.any() else None,
        "detected_share": float((prob[asked == 1] >= THRESHOLD).mean()) if asked.any() else None,
    }
    side_col = f"{name}|side"
    if side_col in frame and f"{name}|side_judged" in frame:
        sided = (asked == 1) & frame[side_col].notna().to_numpy()
        if sided.any():
            out["side_accuracy"] = float((frame.loc[sided, side_col] == frame.loc[sided, f"{name}|side_judged"]).mean())
            out["n_sided"] = int(sided.sum())
    level_col = f"{name}|size_cm" if name == "Lung Lesion" else f"{name}|level"
    if level_col in frame:
        graded = (asked == 1) & frame[level_col].notna().to_numpy()
        if graded.any():
            out["severity_spearman"] = severity_spearman(frame.loc[graded, level_col].to_numpy(dtype=float),
                                                         frame.loc[graded, f"{name}|severity_judged"].to_numpy())
    return out


def faithfulness_report(frame: pd.DataFrame, findings: list[str]) -> dict[str, dict[str, Any]]:
    """{kind: {finding: measures, "mean_auc": ..., "side_accuracy": ..., "n_images": ...}} over the kinds in
    `frame` (label, report, held_out, real)."""
    report: dict[str, dict[str, Any]] = {}
    for kind, part in frame.groupby("kind", sort=False):
        per = {name: finding_measures(part, name) for name in findings}
        aucs = [m["auc"] for m in per.values() if m["auc"] is not None]
        sides = [(m["side_accuracy"], m["n_sided"]) for m in per.values() if m.get("side_accuracy") is not None]
        report[str(kind)] = {
            **per, "n_images": int(len(part)),
            "mean_auc": float(np.mean(aucs)) if aucs else None,
            "min_auc": float(np.min(aucs)) if aucs else None,
            # over all sided images, so each image counts once whatever its finding
            "side_accuracy": float(sum(a * n for a, n in sides) / sum(n for _, n in sides)) if sides else None,
        }
    return report


def real_cases(folder: Path, findings: list[str]) -> pd.DataFrame:
    """Real phantom images described like prompt cases (kind "real"): their true findings, sides and
    severities, so `faithfulness_report` measures the judge on them."""
    import json

    frame = pd.read_csv(folder / "train.csv")
    records = {}
    for line in (folder / "params.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            records[rec["path"]] = rec
    rows = []
    for path in frame["Path"]:
        specs: list[FindingSpec] = specs_from_record(records[path])
        asked = {s.name: s for s in specs}
        row: dict[str, Any] = {"prompt": "", "kind": "real", "condition": "", "n_asked": len(specs), "file": path}
        for name in findings:
            spec = asked.get(name)
            row[name] = int(spec is not None)
            row[f"{name}|side"] = spec.side if spec else None
            row[f"{name}|level"] = spec.level if spec else None
            row[f"{name}|size_cm"] = spec.size_cm if spec else None
        rows.append(row)
    return pd.DataFrame(rows)


def level_of(severity: float) -> int:
    """Severity in [0, 1] -> level 0-2 (as reports state it)."""
    return severity_level(severity)
