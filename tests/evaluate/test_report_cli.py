"""The HTML report and metrics.json end to end, the CLI wiring, and the image-folder loader."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsd.errors import MedsdError
from medsd.evaluate.io import load_image_folder
from medsd.evaluate.suite import ReportInputs, build_report


class BrightClassifier(torch.nn.Module):
    """Finds "Bright" images: the extractor/scorer protocol of the phantom reference classifier."""

    findings = ["Bright"]
    input_size = 32

    def features(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)

    def forward(self, x):
        return (x.mean(dim=(1, 2, 3)) - 0.1)[:, None] * 50


def _save(path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(path)


@pytest.fixture
def image_sets(tmp_path, blobs):
    """A CheXpert-style real folder and a generated folder with generation_results.csv (two prompts)."""
    real_dir, gen_dir = tmp_path / "real", tmp_path / "gen"
    real = blobs(16, 32, seed=1)
    bright = np.arange(16) % 2
    rows = []
    for i, img in enumerate(real):
        rel = f"train/patient{i:05d}/study1/view1_frontal.png"
        _save(real_dir / rel, img * (0.4 + 0.6 * bright[i]))
        rows.append({"Path": f"CheXpert-v1.0-small/{rel}", "Bright": bright[i], "Edema": ""})
    pd.DataFrame(rows).to_csv(real_dir / "train.csv", index=False)
    gen = blobs(8, 32, seed=2)
    gen[0] = real[0] * 0.4  # an exact copy of a (dimmed) training image
    rows = []
    for i, img in enumerate(gen):
        prompt = "chest x-ray, Bright" if i >= 4 else "chest x-ray"
        _save(gen_dir / f"images/{i:03d}.png", img * (1.0 if i >= 4 else 0.4) if i else img)
        rows.append({"file": f"images/{i:03d}.png", "prompt": prompt, "seed": i})
    pd.DataFrame(rows).to_csv(gen_dir / "generation_results.csv", index=False)
    return real_dir, gen_dir


def test_load_image_folder_layouts(image_sets, tmp_path):
    real_dir, gen_dir = image_sets
    images, frame = load_image_folder(real_dir, 16)
    assert images.shape == (16, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert frame["file"][0] == "train/patient00000/study1/view1_frontal.png"
    images, frame = load_image_folder(gen_dir, None, limit=3)
    assert images.shape == (3, 1, 32, 32) and list(frame["prompt"][:1]) == ["chest x-ray"]
    sixteen = tmp_path / "s16"
    sixteen.mkdir()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(sixteen / "a.png")
    assert load_image_folder(sixteen, None)[0].min() == pytest.approx(1.0)
    with pytest.raises(MedsdError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 32)


def test_report_writes_metrics_and_html(image_sets, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    real_dir, gen_dir = image_sets
    logs = tmp_path / "logs"
    with SummaryWriter(str(logs)) as writer:
        for step in range(30):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    augmentation = {"findings": ["Bright"], "conditions": [
        {"name": n, "ratio": r, "n_real": 10, "n_synthetic": 5, "auc_mean": {"Bright": m}, "auc_std": {"Bright": 0.01},
         "mean_auc": m, "mean_auc_std": 0.01} for n, r, m in (("real only", 0.0, 0.8), ("real + 50%", 0.5, 0.85))]}
    (tmp_path / "aug.json").write_text(json.dumps(augmentation))
    reader = {"n_answered": 8, "accuracy": 0.625, "confusion": {"real_called_real": 3, "real_called_synthetic": 1}}
    (tmp_path / "reader.json").write_text(json.dumps(reader))
    inputs = ReportInputs(real=real_dir, generated=gen_dir, out=tmp_path / "report", train=real_dir,
                          phantom_classifier=BrightClassifier(), size=32, logs=logs,
                          augmentation_json=tmp_path / "aug.json", reader_study_json=tmp_path / "reader.json")
    metrics = build_report(inputs)
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["fid"]["phantom"]["fid"] == pytest.approx(metrics["fid"]["phantom"]["fid"])
    assert saved["fid"]["phantom"]["fid"] > 0
    assert saved["faithfulness"]["generated"]["per_finding"]["Bright"]["auc"] == 1.0
    assert saved["faithfulness"]["real"]["mean_auc"] > 0.8
    assert saved["memorization"]["flagged"][0] is True
    assert set(saved["diversity"]["per_prompt"]) == {"chest x-ray", "chest x-ray, Bright"}
    assert any("inception" in note for note in saved["notes"])
    html = (tmp_path / "report" / "report.html").read_text()
    for heading in ("Fidelity", "Real vs synthetic", "Label faithfulness", "Diversity", "Memorization",
                    "Augmentation", "Training", "Reader study", "real_called_synthetic"):
        assert heading in html
    assert html.count("data:image/png;base64,") >= 6 and "http" not in html.replace("http-equiv", "")


def run_cli(argv: list[str]) -> int:
    """`medsd evaluate ARGV` through our own register() (independent of the other stages' CLIs)."""
    import argparse

    from medsd.evaluate.cli import register

    parser = argparse.ArgumentParser(prog="medsd evaluate")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_commands(image_sets, tmp_path):
    real_dir, gen_dir = image_sets
    with pytest.raises(MedsdError, match="--inception-weights"):
        run_cli(["fid", "--real", str(real_dir), "--generated", str(gen_dir), "--space", "inception"])
    out = tmp_path / "div.json"
    assert run_cli(["diversity", "--generated", str(gen_dir), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["scales"] == 2  # 32 px: two MS-SSIM scales fit
    assert run_cli(["memorization", "--train", str(real_dir), "--generated", str(gen_dir), "--size", "32",
                 "--json", str(tmp_path / "mem.json")]) == 0
    assert json.loads((tmp_path / "mem.json").read_text())["flagged"][0] is True
    assert run_cli(["report", "--real", str(real_dir), "--generated", str(gen_dir), "--size", "32",
                 "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "metrics.json").is_file()
