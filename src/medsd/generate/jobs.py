"""The list of images a run will make: prompts × N, or findings / label combinations × N, with seeds and names.

A job is fully determined by the arguments, so a resumed run (or another process of a sharded run) computes
the same list and can skip files that already exist.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medsd.errors import MedsdError
from medsd.files import read_csv, read_text

CHEXPERT_FINDINGS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]
NO_FINDING = "No Finding"
DEFAULT_TEMPLATE = "A chest X-ray with {labels}"


NO_FINDING_KEYS = {"nofinding", "normal", "healthy"}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@dataclass
class Job:
    """One image to generate."""

    index: int
    file: str
    prompt: str
    seed: int
    labels: dict[str, int] | None = None
    extra: dict[str, object] = field(default_factory=dict)


def prompt_for_labels(
    labels: list[str] | tuple[str, ...], template: str = DEFAULT_TEMPLATE, no_finding: str = "no finding"
) -> str:
    """"A chest X-ray with cardiomegaly, edema and pleural effusion"; `no_finding` wording when empty."""
    words = [name.lower() for name in labels if _key(name) not in NO_FINDING_KEYS]
    if not words:
        text = no_finding
    elif len(words) == 1:
        text = words[0]
    else:
        text = ", ".join(words[:-1]) + " and " + words[-1]
    return template.format(labels=text)


def condition_for_labels(labels: list[str] | tuple[str, ...]) -> str:
    """The condition string a class-conditional model receives: finding names, comma-joined."""
    names = [n for n in labels if _key(n) not in NO_FINDING_KEYS]
    return ", ".join(names) if names else NO_FINDING


def single_findings(findings: list[str] = CHEXPERT_FINDINGS) -> list[tuple[tuple[str, ...], int | None]]:
    """Every single finding, and the empty combination for "no finding"."""
    return [((), None)] + [((name,), None) for name in findings if _key(name) not in NO_FINDING_KEYS]


def read_label_csv(path: str | Path) -> pd.DataFrame:
    """The `--labels-from` table (MedsdError when missing, not UTF-8 or not a CSV)."""
    path = Path(path)
    if not path.is_file():
        raise MedsdError(f"--labels-from {str(path)!r} not found; pass a CSV with finding columns such as Cardiomegaly")
    return read_csv(path, "--labels-from CSV")


def combinations_from_csv(
    path: str | Path | pd.DataFrame, min_count: int = 1, candidates: list[str] = CHEXPERT_FINDINGS
) -> tuple[list[tuple[tuple[str, ...], int]], list[str]]:
    """Label combinations present in a CheXpert-style CSV (1 positive; 0, -1 uncertain, blank not), with counts.

    `candidates` are the finding columns to look for (a class-conditional model's own labels, else the 14
    CheXpert names). Returns (combinations most frequent first, the finding columns found). Uncertain (-1)
    counts as negative (the U-zeros policy), matching how prompts are usually built for training.
    """
    frame = path if isinstance(path, pd.DataFrame) else read_label_csv(path)
    findings = [c for c in candidates if c in frame.columns]
    if not findings:
        raise MedsdError(f"--labels-from CSV has none of the finding columns {', '.join(candidates[:6])}, ...")
    positive = frame[findings].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0
    counts = Counter(
        tuple(f for f, v in zip(findings, row, strict=True) if v and _key(f) not in NO_FINDING_KEYS) for row in positive
    )
    combos = sorted(((c, n) for c, n in counts.items() if n >= min_count), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))
    return combos, findings


def prompt_jobs(
    prompts: list[str], num_images: int, seed: int, labels: list[dict[str, int]] | None = None
) -> list[Job]:
    """N images for each prompt; image k gets seed `seed + k` and file `{k:06d}.png` (labels per prompt if known)."""
    jobs = []
    for p, prompt in enumerate(prompts):
        for i in range(num_images):
            k = p * num_images + i
            jobs.append(Job(k, f"{k:06d}.png", prompt, seed + k, labels[p] if labels else None))
    return jobs


def label_jobs(
    combos: list[tuple[tuple[str, ...], int | None]],
    findings: list[str],
    num_images: int | list[int],
    seed: int,
    label_conditioning: bool = False,
    template: str = DEFAULT_TEMPLATE,
) -> list[Job]:
    """Images for each label combination (`num_images` each, or a list of per-combination numbers), with 1/0
    finding columns and the combination's count in the data."""
    per_combo = num_images if isinstance(num_images, list) else [num_images] * len(combos)
    jobs: list[Job] = []
    for (combo, count), n in zip(combos, per_combo, strict=True):
        labels = {f: int(f in combo) for f in findings}
        for f in findings:
            if _key(f) in NO_FINDING_KEYS:
                labels[f] = int(not combo)
        prompt = condition_for_labels(combo) if label_conditioning else prompt_for_labels(combo, template)
        extra = {"data_count": count} if count is not None else {}
        for _ in range(n):
            k = len(jobs)
            jobs.append(Job(k, f"{k:06d}.png", prompt, seed + k, labels, extra))
    return jobs


def proportional_counts(total: int, counts: list[int]) -> list[int]:
    """Split `total` images over combinations in proportion to their counts in the data (largest remainder),
    so a synthetic set has the data's label distribution."""
    weights = np.asarray(counts, dtype=float)
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out.tolist()


def read_prompts_file(path: str | Path) -> tuple[list[str], list[dict[str, int]] | None, list[str]]:
    """Prompts from a .txt (one per line, blank lines and #comments skipped) or a .csv with a `prompt` column.

    A CSV may also have finding columns (CheXpert names, 1 positive); they become the 1/0 label columns of
    the results. Returns (prompts, labels per prompt or None, finding columns).
    """
    path = Path(path)
    labels, findings = None, []
    if path.suffix.lower() == ".csv":
        frame = read_csv(path, "--prompts file")
        if "prompt" not in frame.columns:
            raise MedsdError(f"{path} has no 'prompt' column (columns: {', '.join(map(str, frame.columns))})")
        frame = frame[frame["prompt"].notna()]
        prompts = [str(p) for p in frame["prompt"]]
        findings = [c for c in CHEXPERT_FINDINGS if c in frame.columns]
        if findings:
            values = frame[findings].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0
            labels = [{f: int(v) for f, v in zip(findings, row, strict=True)} for row in values]
    else:
        text = read_text(path, "--prompts file", "pass a .txt (one prompt per line) or a .csv with a 'prompt' column")
        lines = [line.strip() for line in text.splitlines()]
        prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise MedsdError(f"--prompts file {path} contains no prompts")
    return prompts, labels, findings
