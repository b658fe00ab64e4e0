"""Augmentation experiment end to end with a tiny budget; reader study kit and scorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsd.errors import MedsdError
from medsd.evaluate.augment import AugmentConfig, augmentation_table, build_classifier, run_augmentation
from medsd.evaluate.reader_study import make_reader_study, score_reader_study


def labelled(blobs, n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Blob images; label "Bright" = full intensity, else dimmed to 40 %."""
    labels = (np.arange(n) % 2).astype(float)[:, None]
    images = blobs(n, 32, seed=seed) * torch.tensor(0.4 + 0.6 * labels[:, 0], dtype=torch.float32).view(-1, 1, 1, 1)
    return images, labels


def test_augmentation_runs_end_to_end(blobs):
    config = AugmentConfig(image_size=16, batch_size=4, max_steps=1, runs=2, ratios=[0.0, 0.5], rotate_degrees=0)
    real, synthetic, test = labelled(blobs, 16, 1), labelled(blobs, 24, 2), labelled(blobs, 12, 3)
    result = run_augmentation(real, synthetic, test, ["Bright"], config)
    names = [c["name"] for c in result["conditions"]]
    assert names == ["real only", "real + 50% synthetic", "synthetic only"]
    mixed = result["conditions"][1]
    assert mixed["n_real"] == 16 and mixed["n_synthetic"] == 16
    for row in result["conditions"]:
        assert len(row["auc_runs"]["Bright"]) == 2
        assert 0.0 <= row["auc_mean"]["Bright"] <= 1.0 and row["auc_std"]["Bright"] >= 0.0
    table = augmentation_table(result)
    assert "| real only |" in table and "±" in table
    assert result["config"]["lr"] == 1e-4


def test_augment_config_and_weights(tmp_path):
    assert AugmentConfig().batch_size == 32 and AugmentConfig().lr == 1e-4
    with pytest.raises(ValueError):
        AugmentConfig(runs=0)
    with pytest.raises(MedsdError, match="does not exist"):
        build_classifier("resnet18", 2, tmp_path / "missing.safetensors")
    model = build_classifier("resnet18", 3)
    assert model.fc.out_features == 3


def _folder(path, n, value):
    path.mkdir()
    for i in range(n):
        info = None
        if value > 0.5:
            from PIL import PngImagePlugin

            info = PngImagePlugin.PngInfo()
            info.add_text("synthetic", "true")
        Image.fromarray(np.full((40, 40), int(255 * value), np.uint8)).save(path / f"img{i}.png", pnginfo=info)
    return path


def test_reader_study_kit_and_score(tmp_path):
    real = _folder(tmp_path / "real", 6, 0.2)
    synthetic = _folder(tmp_path / "syn", 6, 0.8)
    paths = make_reader_study(real, synthetic, tmp_path / "kit", n_each=4, size=32, seed=1)
    cases = sorted(paths["cases"].glob("case_*.png"))
    assert len(cases) == 8
    with Image.open(cases[0]) as img:
        assert img.size == (32, 32) and not img.text  # metadata stripped
    key = pd.read_csv(paths["key"])
    assert sorted(key["truth"].value_counts().tolist()) == [4, 4]
    sheet = pd.read_csv(paths["sheet"])
    assert sheet["case"].tolist() == key["case"].tolist()
    # a reader who gets every case right but one
    answers = sheet.copy()
    answers["answer (real/synthetic)"] = key["truth"]
    answers.loc[0, "answer (real/synthetic)"] = "real" if key.loc[0, "truth"] == "synthetic" else "synthetic"
    answers.to_csv(tmp_path / "answers.csv", index=False)
    score = score_reader_study(paths["key"], tmp_path / "answers.csv")
    assert score["n_answered"] == 8 and score["accuracy"] == pytest.approx(7 / 8)
    assert sum(score["confusion"].values()) == 8
    assert 0 < score["p_value_vs_chance"] < 0.1
