"""benchmarks/gpu_suite.py in --smoke mode: every case that can run on the CPU runs, the rest say why not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def _run(out: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUITE), "--smoke", "--out", str(out), *extra], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_smoke_suite_measures_training_and_generation_and_writes_its_tables(tmp_path: Path) -> None:
    done = _run(tmp_path / "suite")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "suite" / "results.json").read_text())
    rows = {row["name"]: row for row in results["results"]}
    assert rows["build"]["status"] == "ok" and rows["build"]["unet_forward_gflop_per_image"] > 0
    for method in ("lora", "full", "textual_inversion"):
        row = rows[f"train/{method}/bf16/cache/eager"]
        assert row["status"] == "ok", row
        assert row["images_per_s"] > 0 and row["median_step_ms"] > 0 and row["peak_memory_gb"] > 0
    assert rows["train/lora/bf16/no-cache/eager"]["status"] == "ok"
    for runner in ("medsd", "diffusers"):
        row = rows[f"generate/{runner}"]
        assert row["status"] == "ok", row
        assert row["s_per_image_batch_1"] > 0 and row["s_per_image_batch_2"] > 0
    # What the CPU cannot measure is listed with its reason, not dropped.
    assert rows["train/full/fp16/cache/eager"]["status"] == "skipped"
    assert "CUDA" in rows["train/full/fp16/cache/eager"]["reason"]
    assert rows["train/lora/bf16/cache/compile"]["status"] == "skipped"
    table = (tmp_path / "suite" / "results.md").read_text()
    assert "| lora | bf16 | on | off |" in table and "| diffusers StableDiffusionPipeline | 2 |" in table
    assert table.strip() in done.stdout


@pytest.mark.slow
def test_a_case_past_its_limit_is_recorded_and_the_suite_goes_on(tmp_path: Path) -> None:
    # Far below one smoke case on any machine: its first step alone takes 0.1-0.2 s, and a whole case can end
    # within 0.4 s on a fast 2-core CPU.
    done = _run(tmp_path / "suite", "--cases", "lora/bf16", "--train-limit-s", "0.01")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads((tmp_path / "suite" / "results.json").read_text())["results"]}
    assert rows["build"]["status"] == "ok"
    timed_out = [name for name, row in rows.items() if row["status"] == "timeout"]
    assert "train/lora/bf16/cache/eager" in timed_out and "train/lora/bf16/no-cache/eager" in timed_out
    assert "timeout: over its" in (tmp_path / "suite" / "results.md").read_text()
