"""The prompts a phantom text-to-image model is tested with, each with what it asks for.

Three kinds, so that one table shows whether the model follows words and not only its training sentences:

- **label**: "A chest X-ray with Cardiomegaly and Pleural Effusion" (no side, no severity);
- **report**: reports written like the training ones (`medsd.phantom.reports`), each image its own wording,
  for every finding at three severities, on each side (effusions also bilateral), and combinations;
- **held_out**: the same findings written only with phrases the training reports never use (frames, noun
  phrases and denials the phrase bank holds out).

A `PromptCase` carries the prompt and the `FindingSpec`s it asks for; `cases_frame` turns a list of cases into
the table the judge's results are joined with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pandas as pd

from medsd.phantom.reports import FindingSpec, compose_report, severity_level
from medsd.phantom.text_model import LABEL_TEMPLATE

KINDS = ("label", "report", "held_out")
# Two findings at once, as the phantom renders them: lateralised findings in different lungs, except that an
# effusion may share a lung with a consolidation or lesion. The first is the README's example.
REPORT_COMBINATIONS: tuple[tuple[FindingSpec, ...], ...] = (
    (FindingSpec("Cardiomegaly", None, 1), FindingSpec("Pleural Effusion", "right", 0)),
    (FindingSpec("Consolidation", "left", 1, location="lower lobe"), FindingSpec("Pleural Effusion", "right", 1)),
    (FindingSpec("Cardiomegaly", None, 2), FindingSpec("Lung Lesion", "right", 1, 4.5, "midlung")),
    (FindingSpec("Pneumothorax", "left", 2), FindingSpec("Consolidation", "right", 1, location="upper lobe")),
)
LABEL_COMBINATIONS = (("Cardiomegaly", "Pleural Effusion"), ("Consolidation", "Pleural Effusion"))
LESION_SIZES_CM = (3.3, 4.5, 5.7)  # the phantom's lesion diameters span 3-6 cm


@dataclass(frozen=True)
class PromptCase:
    """One prompt, what it asks for, and which kind of test it belongs to."""

    prompt: str
    specs: tuple[FindingSpec, ...]
    kind: str
    condition: str = ""  # the asked configuration in words, for grouping ("Pleural Effusion, left, mild")
    extra: dict = field(default_factory=dict)


def label_prompt(names: tuple[str, ...] | list[str]) -> str:
    """The label prompt the text model was trained with ("no finding" when empty)."""
    words = list(names)
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1] if words else "no finding"
    return LABEL_TEMPLATE.format(labels=text)


def label_cases(findings: list[str], images: int) -> list[PromptCase]:
    """No finding, every finding alone, and the label combinations: `images` each."""
    combos = [()] + [(f,) for f in findings] + [c for c in LABEL_COMBINATIONS if set(c) <= set(findings)]
    return [PromptCase(label_prompt(c), tuple(FindingSpec(n) for n in c), "label", ", ".join(c) or "no finding")
            for c in combos for _ in range(images)]


def report_configurations(findings: list[str]) -> list[tuple[FindingSpec, ...]]:
    """Normal, each finding x severity x side (lesions by size, consolidations in an upper or lower lobe),
    and the combinations."""
    rng = random.Random(0)
    configs: list[tuple[FindingSpec, ...]] = [()]
    for name in findings:
        for level in range(3):
            if name == "Cardiomegaly":
                configs.append((FindingSpec(name, None, level),))
                continue
            sides = ("left", "right", "bilateral") if name == "Pleural Effusion" else ("left", "right")
            for side in sides:
                if name == "Lung Lesion":
                    size = LESION_SIZES_CM[level]
                    zone = rng.choice(("upper lobe", "midlung", "lower lobe"))
                    configs.append((FindingSpec(name, side, severity_level((size - 3) / 3), size, zone),))
                elif name == "Consolidation":
                    configs.append((FindingSpec(name, side, level, location=rng.choice(("upper lobe", "lower lobe"))),))
                else:
                    location = "apical" if name == "Pneumothorax" and level == 0 else None
                    configs.append((FindingSpec(name, side, level, location=location),))
    configs += [c for c in REPORT_COMBINATIONS if {s.name for s in c} <= set(findings)]
    return configs


def report_cases(findings: list[str], images: int, held_out: bool, seed: int = 0) -> list[PromptCase]:
    """`images` per configuration, each written afresh (its own phrasing), with training or held-out phrases."""
    kind = "held_out" if held_out else "report"
    rng = random.Random(f"medsd-prompt-suite:{seed}:{kind}")
    cases = []
    for config in report_configurations(findings):
        condition = " + ".join(s.describe() for s in config) or "no finding"
        for _ in range(images):
            text = compose_report(list(config), rng, held_out=held_out, findings=findings).prompt
            cases.append(PromptCase(text, config, kind, condition))
    return cases


def cases_frame(cases: list[PromptCase], findings: list[str]) -> pd.DataFrame:
    """One row per case (in order): prompt, kind, condition, and per finding whether it is asked, on which side,
    at which severity level and size."""
    rows = []
    for case in cases:
        row = {"prompt": case.prompt, "kind": case.kind, "condition": case.condition,
               "n_asked": len(case.specs)}
        asked = {s.name: s for s in case.specs}
        for name in findings:
            spec = asked.get(name)
            row[name] = int(spec is not None)
            has_detail = case.kind != "label" and spec is not None
            row[f"{name}|side"] = spec.side if has_detail else None
            row[f"{name}|level"] = spec.level if has_detail else None
            row[f"{name}|size_cm"] = spec.size_cm if has_detail else None
        rows.append(row)
    return pd.DataFrame(rows)
