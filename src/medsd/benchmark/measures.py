"""What each adapted model is asked, and how the judge's answers become the benchmark's numbers.

Every run (and the base) generates the same prompts with the same seeds, so differences between methods are the
methods' own:

1. **new finding**: `new_images` label prompts ("A chest X-ray with Pneumothorax"; for textual inversion
   "A chest X-ray with <pneumothorax>") and `new_images` report prompts (a report stating the finding at some
   side and severity; textual inversion, which has no word for it, gets label prompts again);
2. **base conditions**: no finding and each base finding, `base_images` label prompts and `base_images` report
   prompts each. These never name the new finding (the base model's own vocabulary).

From the judge's probabilities:

- `new_finding_auc`: AUC of the judge's new-finding probability, asked (1) against every base-condition image (2),
  with its standard error from the number of images (`new_finding_auc_se`, Hanley & McNeil);
  `new_finding_auc_against`: the same against each base condition alone (which condition the judge confuses
  with the new finding: a base model whose consolidation reads as a lesion caps Lung Lesion's AUC whatever the
  method does to the lesion images);
  `new_finding_accuracy` at the judge's 0.5 threshold over the same images, with its detected and false-positive
  shares;
- `retained_auc`: the mean over base findings of their AUC on the base-condition images (forgetting is the base
  model's value minus this);
- `fid` (phantom-judge features) of all generated images against the held-out real images; `diversity`: mean
  MS-SSIM between the new-finding images (lower is more diverse); `near_copy_rate`: the share of new-finding
  images that `medsd.evaluate.privacy.memorization` flags as near-copies of the run's N training images.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsd.evaluate.faithfulness import auc_standard_error
from medsd.phantom.prompt_faithfulness import THRESHOLD, judged_frame
from medsd.phantom.prompt_suite import PromptCase, cases_frame, label_prompt, report_configurations
from medsd.phantom.render import FINDINGS
from medsd.phantom.reports import FindingSpec, compose_report

NEW = "new finding"


def evaluation_cases(finding: str, base_findings: list[str], plan: Any, trigger: str | None = None,
                     seed: int = 0) -> list[PromptCase]:
    """The prompts of one run, new-finding cases first (indices, hence seeds, line up across methods).

    `trigger`: how label prompts name the new finding (default its name; a placeholder token for textual
    inversion, which then also gets label prompts instead of reports)."""
    trigger = trigger or finding
    words = trigger == finding
    spec = (FindingSpec(finding),)
    cases = [PromptCase(label_prompt((trigger,)), spec, "label", NEW) for _ in range(plan.new_images)]
    rng = random.Random(f"medsd-benchmark:{seed}:{finding}")
    configs = [c for c in report_configurations([finding]) if c]
    for i in range(plan.new_images):
        if words:
            config = configs[i % len(configs)]
            text = compose_report(list(config), rng, findings=[*base_findings, finding]).prompt
            cases.append(PromptCase(text, config, "report", NEW))
        else:
            cases.append(PromptCase(label_prompt((trigger,)), spec, "label", NEW))
    return cases + base_cases(base_findings, plan, seed)


def base_cases(base_findings: list[str], plan: Any, seed: int = 0) -> list[PromptCase]:
    """No finding and each base finding, label and report prompts (the same for every method and finding)."""
    rng = random.Random(f"medsd-benchmark:{seed}:base")
    cases = []
    for name in ["", *base_findings]:
        names = (name,) if name else ()
        condition = name or "no finding"
        specs = tuple(FindingSpec(n) for n in names)
        cases += [PromptCase(label_prompt(names), specs, "label", condition) for _ in range(plan.base_images)]
        configs = [c for c in report_configurations(base_findings) if [s.name for s in c] == list(names)]
        for i in range(plan.base_images):
            config = configs[i % len(configs)]
            text = compose_report(list(config), rng, findings=list(base_findings)).prompt
            cases.append(PromptCase(text, config, "report", condition))
    return cases


def asked_frame(cases: list[PromptCase]) -> pd.DataFrame:
    """One row per case: prompt, form (`kind`), condition and what it asks of every phantom finding."""
    return cases_frame(cases, list(FINDINGS))


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def faithfulness(judged: pd.DataFrame, finding: str, base_findings: list[str]) -> dict[str, Any]:
    """New-finding and retained base-finding measures from a judged frame (`judged_frame` output)."""
    y = judged[finding].to_numpy(dtype=int)
    p = judged[f"{finding}|p"].to_numpy(dtype=float)
    label, report = (judged["kind"] == "label").to_numpy(), (judged["kind"] == "report").to_numpy()
    base = (judged["condition"] != NEW).to_numpy()
    keep_label = label | base  # the label-form new images against every base image
    keep_report = report & ~base | base
    called = p >= THRESHOLD
    per_base = {name: _auc(judged.loc[base, name].to_numpy(dtype=int), judged.loc[base, f"{name}|p"].to_numpy())
                for name in base_findings}
    known = [v for v in per_base.values() if v is not None]
    auc = _auc(y, p)
    new = ~base
    against = {}
    for condition in ["no finding", *base_findings]:
        one = new | (judged["condition"] == condition).to_numpy()
        against[condition] = _auc(y[one], p[one]) if (one & base).any() else None
    return {
        "new_finding_auc": auc,
        "new_finding_auc_se": None if auc is None else auc_standard_error(auc, int(y.sum()), int(len(y) - y.sum())),
        "new_finding_auc_label": _auc(y[keep_label], p[keep_label]),
        "new_finding_auc_report": _auc(y[keep_report], p[keep_report]) if (report & ~base).any() else None,
        "new_finding_auc_against": against,
        "new_finding_accuracy": float((called == (y == 1)).mean()),
        "new_finding_detected": float(called[y == 1].mean()) if (y == 1).any() else None,
        "new_finding_false_positive": float(called[y == 0].mean()) if (y == 0).any() else None,
        "retained_auc": float(np.mean(known)) if known else None,
        "retained_auc_per_finding": per_base,
    }


def measure_images(judge: Any, images: torch.Tensor, asked: pd.DataFrame, finding: str, base_findings: list[str],
                   heldout_features: torch.Tensor,
                   examples: torch.Tensor | None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every measure of one run's generated `images` (rows of `asked`); `examples`: its N training images
    (None for the base, which had none). Returns (measures, judged frame)."""
    from medsd.evaluate.diversity import group_diversity
    from medsd.evaluate.features import extract_features, phantom_extractor
    from medsd.evaluate.fid import fid_from_features
    from medsd.evaluate.privacy import memorization

    judged = judged_frame(judge, images, asked)
    out = faithfulness(judged, finding, base_findings)
    extractor = phantom_extractor(judge)
    out["fid"] = float(fid_from_features(heldout_features, extract_features(extractor, images)))
    new = images[torch.from_numpy((asked["condition"] == NEW).to_numpy(copy=True))]
    out["diversity_ms_ssim"] = group_diversity(new)
    if examples is not None:
        copies = memorization(new, examples, extractor)
        out["near_copy_rate"] = copies["share_flagged"]
        out["nearest_example_ssim"] = float(max(copies["ssim"]))
    else:
        out["near_copy_rate"] = out["nearest_example_ssim"] = None
    return out, judged
