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
    judge_images,
    load_reference_classifier,
    train_reference_classifier,
)
from medsd.phantom.judge_heads import LATERAL_FINDINGS, head_loss, side_severity_targets


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
    assert {"auc", "mean_auc", "n_train", "n_val", "side_accuracy", "severity_spearman"} <= set(metrics)
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


def test_side_and_severity_targets_come_from_the_render_parameters(tmp_path: Path) -> None:
    data = tmp_path / "data"
    P.write_phantom_dataset(data, n=40, size=32, seed=5, workers=1, progress=False, reports=False)
    records = [json.loads(line) for line in (data / "params.jsonl").read_text().splitlines()]
    sides, severity = side_severity_targets(data, [r["path"] for r in records], PHANTOM_FINDINGS)
    assert sides.shape == (40, len(LATERAL_FINDINGS), 2) and severity.shape == (40, len(PHANTOM_FINDINGS))
    for i, rec in enumerate(records):
        named = {f["name"]: f for f in rec["findings"]}
        for j, name in enumerate(PHANTOM_FINDINGS):
            assert (name in named) == (not torch.isnan(severity[i, j]))
            if name in named:
                assert severity[i, j] == pytest.approx(named[name]["severity"])
        for j, name in enumerate(LATERAL_FINDINGS):
            if name in named:
                side = named[name]["side"]
                in_lungs = [float(side in ("left", "bilateral")), float(side in ("right", "bilateral"))]
                assert sides[i, j].tolist() == in_lungs
            else:
                assert torch.isnan(sides[i, j]).all()
    # The losses only see images that carry the finding: NaN targets elsewhere change nothing.
    side_logits, sev = torch.zeros(40, len(LATERAL_FINDINGS), 2), torch.full((40, len(PHANTOM_FINDINGS)), 0.5)
    assert torch.isfinite(head_loss(side_logits, sev, sides, severity))


def test_side_and_severity_heads_read_real_phantom_images(tmp_path: Path) -> None:
    # Small and fast, so the bar is for the findings that are plain at 64 px; the slow test below holds the
    # full-size judge to the demo's bar.
    data = tmp_path / "data"
    P.write_phantom_dataset(data, n=400, size=64, seed=11, workers=2, progress=False, reports=False)
    metrics = train_reference_classifier(data, tmp_path / "clf", epochs=25, batch_size=32, seed=0)
    assert metrics["side_accuracy"]["Pleural Effusion"] >= 0.75, metrics["side_accuracy"]
    assert metrics["side_accuracy"]["Pneumothorax"] >= 0.8, metrics["side_accuracy"]
    assert metrics["severity_spearman"]["Pleural Effusion"] >= 0.6, metrics["severity_spearman"]
    assert metrics["severity_spearman"]["Cardiomegaly"] >= 0.5, metrics["severity_spearman"]
    model = load_reference_classifier(tmp_path / "clf")
    read = judge_images(model, torch.rand(3, 1, 64, 64))
    assert read["probs"].shape == (3, 5) and read["side_probs"].shape == (3, 4, 2) and read["severity"].shape == (3, 5)
    assert ((read["severity"] >= 0) & (read["severity"] <= 1)).all()


@pytest.mark.slow
def test_reference_classifier_reaches_auc_095_per_finding(tmp_path: Path) -> None:
    data = tmp_path / "data"
    P.write_phantom_dataset(data, n=2000, size=128, seed=0, workers=2, progress=False)
    metrics = train_reference_classifier(data, tmp_path / "clf", seed=0)
    assert all(v >= 0.95 for v in metrics["auc"].values()), metrics["auc"]
    assert all(v >= 0.85 for v in metrics["side_accuracy"].values()), metrics["side_accuracy"]
    # Extent of consolidation and size of a lesion are the severities the judge reads least well: over seeds 0-2
    # the Spearman on the held-out images was 0.47-0.67 and 0.50-0.71 on one x86 CPU (seed 0 read consolidation
    # above 0.5 on another: the CPU's float arithmetic moves a run within that range), and its standard error
    # from ~65 positive held-out images is about 0.12. Their bar leaves that margin; the other three read at
    # 0.87-0.96.
    severity = metrics["severity_spearman"]
    assert severity["Consolidation"] >= 0.4 and severity["Lung Lesion"] >= 0.4, severity
    assert all(severity[f] >= 0.8 for f in ("Cardiomegaly", "Pneumothorax", "Pleural Effusion")), severity
