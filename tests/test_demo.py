"""`medsd demo --smoke`: every stage of the offline pipeline end to end at the smallest size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsd.cli import main


def test_demo_smoke_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "medsd demo finished." in printed and "report.html" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["seconds"]) >= {"phantom", "reference classifier", "tiny model", "train autoencoder",
                                       "train class_conditional", "train lora", "generate", "evaluate"}
    # Each training stage is an ordinary recipe a user can rerun, and left its standard artefacts.
    for name in ("autoencoder", "class_conditional", "lora"):
        assert (out / "configs" / f"{name}.yaml").is_file()
        assert list((out / "runs" / name / "logs").glob("events.out.tfevents.*"))
    assert (out / "runs" / "autoencoder" / "vae" / "config.json").is_file()
    assert (out / "runs" / "class_conditional" / "model" / "medsd_model.json").is_file()
    assert (out / "runs" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    # Generation: 8 conditions x 2 images, the interpolation strip, 4 inpaintings, 4 LoRA images.
    generated = out / "generated"
    assert len(list((generated / "class_conditional").glob("*.png"))) == 16
    assert (generated / "interpolation" / "strip.png").is_file()
    assert len(list((generated / "inpainting").glob("*.png"))) >= 4
    assert len(list((generated / "lora").glob("*.png"))) == 4
    # Evaluation: one report with the headline measures.
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert {"fid", "faithfulness", "diversity", "memorization", "augmentation"} <= set(metrics)
    assert set(summary["headline"]["faithfulness_auc"]) == {"Cardiomegaly", "Pleural Effusion", "Pneumothorax",
                                                             "Consolidation", "Lung Lesion"}
    assert (out / "report" / "report.html").stat().st_size > 10_000
    # A second run reuses finished stages instead of redoing them.
    assert main(["-q", "demo", "--smoke", "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["seconds"]["train class_conditional"] < 1.0 and again["seconds"]["phantom"] < 1.0
