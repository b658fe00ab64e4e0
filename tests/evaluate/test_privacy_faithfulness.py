"""Memorization flags copies and not distinct images; faithfulness numbers; label columns and prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medsd.evaluate import features as feats
from medsd.evaluate.faithfulness import auc_standard_error, evaluate_faithfulness, label_faithfulness
from medsd.evaluate.io import labels_for
from medsd.evaluate.privacy import memorization


def near_copies(train: torch.Tensor, blobs) -> torch.Tensor:
    """[exact copy of 3, noisy+dimmed copy of 7, shifted-by-1px copy of 11] then 5 distinct images."""
    g = torch.Generator().manual_seed(5)
    exact = train[3]
    altered = (train[7] * 0.95 + 0.02 * torch.randn(train[7].shape, generator=g)).clamp(0, 1)
    shifted = torch.roll(train[11], shifts=1, dims=-1)
    distinct = blobs(5, train.shape[-1], seed=99)
    return torch.cat([torch.stack([exact, altered, shifted]), distinct])


@pytest.mark.parametrize("use_features", [False, True])
def test_memorization_flags_copies_only(use_features, blobs):
    train = blobs(40, 48, seed=1)
    generated = near_copies(train, blobs)
    # an informative feature space (8x8 thumbnails); a 16-d random conv net cannot tell blobs apart
    extractor = (lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)) if use_features else None
    result = memorization(generated, train, extractor, top=4)
    assert result["flagged"] == [True, True, True] + [False] * 5
    assert result["ssim_index"][:3] == [3, 7, 11]
    assert result["ssim"][0] == pytest.approx(1.0, abs=1e-5)
    assert result["share_flagged"] == pytest.approx(3 / 8)
    assert [p[0] for p in result["closest_pairs"][:1]] == [0]
    assert max(result["ssim"][3:]) < 0.9


def test_label_faithfulness_numbers():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, np.nan]], dtype=float)
    perfect = np.nan_to_num(labels * 0.8 + 0.1, nan=0.3)
    result = label_faithfulness(perfect, labels, ["A", "B"])
    assert result["per_finding"]["A"]["auc"] == 1.0 and result["per_finding"]["A"]["accuracy"] == 1.0
    assert result["per_finding"]["B"]["n"] == 3
    inverted = label_faithfulness(1 - perfect, labels, ["A", "B"])
    assert inverted["per_finding"]["A"]["auc"] == 0.0
    assert inverted["per_finding"]["A"]["fn"] == 2 and inverted["per_finding"]["A"]["fp"] == 2


def test_faithfulness_with_scorer_and_prompt_labels():
    images = torch.cat([torch.full((5, 1, 16, 16), 0.9), torch.full((5, 1, 16, 16), 0.1)])
    frame = pd.DataFrame({"prompt": ["chest x-ray with Bright lungs"] * 5 + ["chest x-ray"] * 5})
    scorer = feats.Scorer(["Bright"], lambda x: x.mean(dim=(1, 2, 3))[:, None])
    result = evaluate_faithfulness(scorer, images, labels_for(frame, ["Bright"]))
    assert result["mean_auc"] == 1.0 and result["mean_accuracy"] == 1.0


def test_labels_for_columns_override_prompts():
    frame = pd.DataFrame({"prompt": ["edema", "cardiomegaly"], "cardiomegaly": [0, -1], "Edema ": [1, 1]})
    labels = labels_for(frame, ["Cardiomegaly", "Edema", "Pneumothorax"])
    assert labels[0, 0] == 0 and np.isnan(labels[1, 0])  # column wins; -1 (uncertain) is unknown
    assert labels[:, 1].tolist() == [1, 0]  # "Edema " is not an exact name: derived from prompts
    assert labels[:, 2].tolist() == [0, 0]


@pytest.mark.parametrize("shift, n_pos, n_neg", [(0.75, 24, 24), (2.3, 24, 24), (1.0, 12, 60)])
def test_auc_standard_error_matches_the_spread_of_simulated_aucs(shift, n_pos, n_neg):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    aucs = [roc_auc_score(y, np.r_[rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)]) for _ in range(3000)]
    predicted = auc_standard_error(float(np.mean(aucs)), n_pos, n_neg)
    # Hanley & McNeil's approximation is exact for exponential scores; for normal ones it errs on the safe side
    # near AUC 1 (about 14 % too wide at 0.95).
    assert 0.9 * np.std(aucs) < predicted < 1.2 * np.std(aucs)
    with pytest.raises(ValueError):
        auc_standard_error(0.7, 0, 10)
