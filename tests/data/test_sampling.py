"""Sampling on the real CheXpert table: N per class, balancing, deterministic patient-level splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsd.data import sampling
from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset
from medsd.errors import MedsdError

LABELS = ["Cardiomegaly", "Pleural Effusion", "Edema"]


def cfg(csv, **kw) -> DataConfig:
    return DataConfig(
        source="chexpert",
        root="/x",
        csv=str(csv),
        views=["PA"],
        labels=LABELS,
        single_label_only=True,
        include_no_finding=False,
        **kw,
    )


def test_single_label_n_per_class_and_balance(chexpert_csv):
    base = build_dataset(cfg(chexpert_csv)).frame
    assert base["prompt"].value_counts().to_dict() == {
        "A chest X-ray with Pleural Effusion": 6505,
        "A chest X-ray with Cardiomegaly": 1603,
        "A chest X-ray with Edema": 607,
    }
    capped = build_dataset(cfg(chexpert_csv, n_per_class=100)).frame
    assert capped["prompt"].value_counts().tolist() == [100, 100, 100]
    bal = build_dataset(cfg(chexpert_csv, balance="cap")).frame
    assert bal["prompt"].value_counts().tolist() == [607, 607, 607]
    over = build_dataset(cfg(chexpert_csv, balance="oversample"))
    assert over.frame["prompt"].value_counts().tolist() == [6505, 6505, 6505]
    assert over.frame["path"].nunique() == 8715 and len(over.raw_labels) == 3 * 6505
    # per-class sampling is deterministic by seed
    again = build_dataset(cfg(chexpert_csv, n_per_class=100)).frame
    assert again["path"].tolist() == capped["path"].tolist()


def test_patient_level_splits_are_disjoint_and_stable(chexpert_csv):
    sizes, patients = {}, {}
    for split in ("train", "val", "test"):
        ds = build_dataset(DataConfig(source="chexpert", root="/x", csv=str(chexpert_csv), split=split))
        sizes[split], patients[split] = len(ds), set(ds.frame["patient_id"])
    assert sizes == {"train": 178_941, "val": 22_527, "test": 21_946} and sum(sizes.values()) == 223_414
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    ids = pd.Series([f"patient{i:05d}" for i in range(2000)])
    a, b = sampling.split_of(ids, 0, (0.8, 0.1, 0.1)), sampling.split_of(ids[::-1], 0, (0.8, 0.1, 0.1))
    assert (a == b[::-1]).all()  # a patient's split does not depend on the other rows
    assert (a != sampling.split_of(ids, 1, (0.8, 0.1, 0.1))).any()
    assert 0.75 < np.mean(a == "train") < 0.85


def test_uncertainty_policy_errors():
    raw = pd.DataFrame({"A": [1.0, -1.0, np.nan, 0.0]})
    assert sampling.apply_uncertainty(raw, ["A"], "ones")["A"].tolist() == [1, 1, 0, 0]
    assert sampling.apply_uncertainty(raw, ["A"], "zeros")["A"].tolist() == [1, 0, 0, 0]
    assert np.isnan(sampling.apply_uncertainty(raw, ["A"], "ignore")["A"].iloc[1])
    with pytest.raises(MedsdError, match=r"unknown label\(s\) \['B'\]; valid: A"):
        sampling.apply_uncertainty(raw, ["A"], {"B": "ones"})
