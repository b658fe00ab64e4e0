"""Selection: views, uncertainty policy, single-label filter, N per class, balancing, patient-level splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from medsd.errors import MedsdError

FRONTAL = {"PA", "AP", "FRONTAL", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD"}
LATERAL = {"LATERAL", "LL", "RL", "L"}
NO_FINDING = "no finding"


def select_labels(pathologies: list[str], wanted: list[str] | None, source: str) -> list[str]:
    """The label columns to use, in `wanted` order; an unknown name is an error listing the valid ones."""
    if wanted is None:
        return list(pathologies)
    by_lower = {p.lower(): p for p in pathologies}
    unknown = [w for w in wanted if w.lower() not in by_lower]
    if unknown:
        raise MedsdError(
            f"data.labels: unknown label(s) {unknown} for source {source!r}; valid: {', '.join(pathologies)}"
        )
    return [by_lower[w.lower()] for w in wanted]


def filter_views(frame: pd.DataFrame, views: list[str] | None) -> pd.DataFrame:
    """Keep rows whose view is listed; `Frontal` means any of PA/AP, `Lateral` any lateral view."""
    if not views:
        return frame
    present = sorted(set(frame["view"].astype(str)) - {"Frontal", "Lateral"})
    wanted = {v.upper() for v in views}
    valid = {"FRONTAL", "LATERAL"} | {p.upper() for p in present}
    unknown = [v for v in views if v.upper() not in valid | FRONTAL | LATERAL]
    if unknown:
        raise MedsdError(f"data.views: unknown view(s) {unknown}; valid: Frontal, Lateral, {', '.join(present)}")
    view = frame["view"].astype(str).str.upper()
    keep = view.isin(wanted)
    if "FRONTAL" in wanted:
        keep |= view.isin(FRONTAL)
    if "LATERAL" in wanted:
        keep |= view.isin(LATERAL)
    return frame[keep.to_numpy()]


def apply_uncertainty(raw: pd.DataFrame, labels: list[str], policy: str | dict[str, str]) -> pd.DataFrame:
    """Raw 1 / 0 / -1 / blank → 1 / 0 / NaN: blank → 0; -1 → 1 (ones), 0 (zeros) or NaN (ignore)."""
    if isinstance(policy, dict):
        unknown = sorted(set(policy) - set(labels))
        if unknown:
            raise MedsdError(f"data.uncertainty: unknown label(s) {unknown}; valid: {', '.join(labels)}")
    out = raw[labels].copy()
    for label in labels:
        rule = policy.get(label, "zeros") if isinstance(policy, dict) else policy
        col = out[label].fillna(0.0)
        out[label] = col.where(col != -1, {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[rule]).astype(np.float32)
    return out


def positive_count(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Number of positive findings per row (NaN counts as not positive)."""
    return (frame[labels].fillna(0).to_numpy() > 0).sum(axis=1)


def class_of(frame: pd.DataFrame, labels: list[str]) -> pd.Series:
    """A row's class for per-class sampling: its first positive label in canonical order, else "no finding"."""
    values = frame[labels].fillna(0).to_numpy() > 0
    names = np.array([*labels, NO_FINDING], dtype=object)
    first = np.where(values.any(axis=1), values.argmax(axis=1), len(labels))
    return pd.Series(names[first], index=frame.index)


def single_label_filter(frame: pd.DataFrame, labels: list[str], include_no_finding: bool = True) -> pd.DataFrame:
    """Keep images with exactly one positive finding (plus those with none if `include_no_finding`)."""
    n = positive_count(frame, labels)
    return frame[(n == 1) | ((n == 0) & include_no_finding)]


def per_class(frame: pd.DataFrame, labels: list[str], n: int | None, balance: str, seed: int) -> pd.DataFrame:
    """At most `n` per class, then optional balancing (cap at the smallest class, or oversample to the largest)."""
    if n is None and balance == "none":
        return frame
    classes = class_of(frame, labels)
    groups = {c: frame[classes.to_numpy() == c] for c in sorted(set(classes))}
    rng = np.random.default_rng(seed)
    sizes = [len(g) for g in groups.values()]
    target = {"cap": min(sizes), "oversample": max(sizes)}.get(balance)
    if n is not None:
        target = min(target, n) if target is not None else n
    parts = []
    for g in groups.values():
        order = rng.permutation(len(g))
        if balance == "oversample" and len(g) < target:
            # repeat whole permutations first so every image appears about equally often
            reps = np.concatenate([rng.permutation(len(g)) for _ in range(-(-target // len(g)))])
            order = reps[:target]
        parts.append(g.iloc[order[:target]])
    return pd.concat(parts) if parts else frame.iloc[:0]


def split_of(patient_ids: pd.Series, seed: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Deterministic patient-level split: hash(seed, patient) → train / val / test.

    Hashing (not shuffling) makes a patient's split independent of which other rows were selected, so
    filters never move a patient between splits and no patient is in two splits.
    """
    total = sum(fractions)
    cut_train, cut_val = fractions[0] / total, (fractions[0] + fractions[1]) / total
    unique = pd.unique(patient_ids.astype(str))
    u = np.array([int.from_bytes(hashlib.sha1(f"{seed}:{p}".encode()).digest()[:8], "big") / 2**64 for p in unique])
    names = np.where(u < cut_train, "train", np.where(u < cut_val, "val", "test"))
    lookup = dict(zip(unique, names, strict=True))
    return patient_ids.astype(str).map(lookup).to_numpy()
