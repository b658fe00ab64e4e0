"""Reference classifier of the phantom: input conventions, safetensors round trip, training and AUC."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from medsd.errors import MedsdError
from medsd.phantom import cli as phantom_cli
from medsd.phantom import render as P
from medsd.phantom.judge import (
    PHANTOM_FINDINGS,
    PhantomClassifier,
    load_reference_classifier,
    train_reference_classifier,
)


def test_findings_are_chexpert_names_in_label_order() -> None:
    assert PHANTOM_FINDINGS == P.FINDINGS
    assert all(f in P.CHEXPERT_LABELS and f != "No Finding" for f in PHANTOM_FINDINGS)


def test_forward_and_features_accept_gray_or_rgb_any_size() -> None:
    torch.manual_seed(0)
    model = PhantomClassifier(input_size=32).eval()
    gray = torch.rand(2, 1, 48, 40)
    rgb = gray.expand(2, 3, 48, 40)
    with torch.no_grad():
        logits = model(gray)
        assert logits.shape == (2, len(PHANTOM_FINDINGS))
        assert torch.allclose(logits, model(rgb), atol=1e-5)  # RGB is averaged to gray
        feats = model.features(gray)
    assert feats.shape == (2, model.feature_dim)
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(2, 2, 32, 32))


def test_train_save_load_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    P.write_phantom_dataset(data, n=24, size=32, seed=2, workers=1, progress=False)
    metrics = train_reference_classifier(
        data, tmp_path / "clf", epochs=1, batch_size=8, input_size=32, val_fraction=0.3
    )
    assert {"auc", "mean_auc", "n_train", "n_val"} <= set(metrics)
    assert metrics["n_train"] + metrics["n_val"] == 24 and metrics["n_val"] > 0
    assert set(metrics["auc"]) == set(PHANTOM_FINDINGS)
    for name in ("model.safetensors", "config.json", "metrics.json"):
        assert (tmp_path / "clf" / name).is_file()
    assert json.loads((tmp_path / "clf" / "metrics.json").read_text())["n_train"] == metrics["n_train"]
    model = load_reference_classifier(tmp_path / "clf")
    x = torch.rand(3, 1, 32, 32)
    fresh = PhantomClassifier(input_size=32).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert model.findings == PHANTOM_FINDINGS and model.input_size == 32 and not model.training


def test_load_missing_classifier_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MedsdError, match="phantom-classifier"):
        load_reference_classifier(tmp_path)


def test_cli_parses_classifier_options() -> None:
    parser = argparse.ArgumentParser()
    phantom_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["phantom-classifier", "--data", "d", "--out", "o", "--epochs", "2"])
    assert args.func is phantom_cli.run_phantom_classifier and args.epochs == 2 and args.input_size == 64


@pytest.mark.slow
def test_reference_classifier_reaches_auc_095_per_finding(tmp_path: Path) -> None:
    data = tmp_path / "data"
    P.write_phantom_dataset(data, n=2000, size=128, seed=0, workers=2, progress=False)
    metrics = train_reference_classifier(data, tmp_path / "clf", seed=0)
    assert all(v >= 0.95 for v in metrics["auc"].values()), metrics["auc"]
