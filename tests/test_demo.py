"""`medsd demo --smoke`: every stage of the offline pipeline end to end at the smallest size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medsd.cli import main
from medsd.demo import DemoPlan

FINDINGS = {"Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Lesion"}


def test_demo_smoke_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "medsd demo finished." in printed and "report.html" in printed and "side accuracy" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["seconds"]) == {"phantom", "judge", "tiny model", "train autoencoder", "train report_reader",
                                       "train text_to_image", "generate", "evaluate"}
    # Each training stage is an ordinary recipe a user can rerun, and left its standard artefacts.
    for name in ("autoencoder", "report_reader", "text_to_image"):
        assert (out / "configs" / f"{name}.yaml").is_file()
        assert list((out / "runs" / name / "logs").glob("events.out.tfevents.*"))
    assert (out / "runs" / "text_to_image" / "pipeline" / "model_index.json").is_file()
    assert "Report" in pd.read_csv(out / "data" / "phantom_train" / "train.csv").columns
    # Every generated image is judged: one row per image of each prompt kind, plus the real held-out images.
    judged = pd.read_csv(out / "report" / "judged.csv")
    counts = judged["kind"].value_counts().to_dict()
    label_prompts, report_configs = 8, 35
    assert counts == {"label": 2 * label_prompts, "report": report_configs, "held_out": report_configs, "example": 2,
                      "real": 16}
    for kind in ("label", "report", "held_out", "example"):
        assert len(list((out / "generated" / kind).glob("*.png"))) == counts[kind]
    assert len(summary["interpolation_cardiomegaly_p"]) == 6 and len(summary["inpainting"]["effusion_p"]) == 4
    faith = summary["faithfulness"]
    assert set(faith) == {"label", "report", "held_out", "example", "real"}
    for kind in ("report", "held_out", "real"):
        assert set(faith[kind]) >= FINDINGS and "side_accuracy" in faith[kind]["Pleural Effusion"]
        assert "severity_spearman" in faith[kind]["Cardiomegaly"]
    assert faith["report"]["Pneumothorax"]["n_asked"] == 7  # 3 severities x 2 sides, and one combination
    # 7 images asked against 28 others: an AUC moves by 0.03 (near 1) to 0.13 (near 0.5) from the draw alone
    pneumothorax = faith["report"]["Pneumothorax"]
    assert pneumothorax["auc"] is None or 0.0 <= pneumothorax["auc_se"] <= 0.13
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert {"fid", "faithfulness", "diversity", "memorization"} <= set(metrics)
    assert summary["fid_real_vs_real"] is not None and (out / "report" / "prompt_grid.png").is_file()
    # Which findings the judge reads in single-finding prompts: one table per kind, rows summing to its images.
    crossed = json.loads((out / "report" / "cross_reading.json").read_text())
    assert crossed == summary["cross_reading"] and set(crossed) == set(faith)
    report_single = judged[(judged["kind"] == "report") & (judged["n_asked"] <= 1)]
    assert sum(row["n"] for row in crossed["report"].values()) == len(report_single)
    assert "judged positive, by what a single-finding report prompt asks" in printed
    assert (out / "report" / "cross_reading.png").is_file()
    html = (out / "report" / "report.html").read_text()
    assert 'alt="which findings the judge reads in images asked for one finding' in html
    # The judge learned from the training images and from their reconstructions by the demo's autoencoder.
    judge = json.loads((out / "classifier" / "metrics.json").read_text())
    assert judge["autoencoder"] == str(out / "runs" / "autoencoder") and set(judge["auc_reconstructed"]) == FINDINGS
    # The benchmark script re-reads the demo's images with a judge and finds what the demo found.
    script = Path(__file__).parents[1] / "benchmarks" / "judge_text_model.py"
    rejudged = tmp_path / "rejudged"
    subprocess.run([sys.executable, str(script), "--generated", str(out / "generated"), "--judge",
                    str(out / "classifier"), "--out", str(rejudged)], check=True, capture_output=True)
    again_judged = pd.read_csv(rejudged / "judged.csv")
    generated = judged[judged["kind"] != "real"].reset_index(drop=True)
    pd.testing.assert_frame_equal(again_judged, generated, check_dtype=False)
    # A second run reuses finished stages instead of redoing them.
    assert main(["-q", "demo", "--smoke", "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["seconds"]["train text_to_image"] < 1.0 and again["seconds"]["phantom"] < 1.0


def test_text_model_gets_what_the_budget_has_left_when_it_starts() -> None:
    plan = DemoPlan.for_minutes(20)
    assert plan.model.autoencoder_minutes == 3.0 and plan.model.diffusion_minutes == pytest.approx(12.5)
    # A fast machine reaches the stage 3.9 minutes in: it trains until generation and evaluation are due.
    assert plan.text_model_minutes(3.9) == pytest.approx(20 - 3.9 - plan.after_training_minutes)
    # A slow start never leaves it less than half its planned share.
    assert plan.text_model_minutes(18.0) == pytest.approx(0.5 * 12.5)
    # Without a budget (the smoke plan) every stage keeps its planned minutes.
    smoke = DemoPlan.smoke()
    assert smoke.minutes is None and smoke.text_model_minutes(100.0) == smoke.model.diffusion_minutes
