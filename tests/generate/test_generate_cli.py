"""`medsd generate`, `medsd generate interpolate` and `medsd generate inpaint` through the argument parser."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsd.errors import MedsdError
from medsd.generate.cli import configure
from medsd.generate.metadata import RESULTS_CSV

FAST = ["--steps", "2", "--guidance", "3", "--scheduler", "ddim", "--quiet", "--device", "cpu"]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medsd generate")
    configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_all_modes(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir)
    out = tmp_path / "gen"
    assert _run(["--model", model, "--prompt", "a chest x-ray", "--prompt", "0.5*edema AND 0.5*cardiomegaly",
                 "--num-images", "2", "--batch-size", "4", "--out", str(out), *FAST]) == 0
    assert len(pd.read_csv(out / RESULTS_CSV)) == 4 and len(list(out.glob("*.png"))) == 4
    assert "4 images" in capsys.readouterr().out

    interp = tmp_path / "interp"
    assert _run(["interpolate", "--model", model, "--start", "normal", "--end", "cardiomegaly", "--frames", "3",
                 "--out", str(interp), *FAST]) == 0
    assert (interp / "strip.png").is_file() and len(list(interp.glob("frame_*.png"))) == 3

    inp = tmp_path / "inp"
    assert _run(["inpaint", "--model", model, "--image", str(out / "000000.png"), "--box", "0,0,16,16",
                 "--prompt", "edema", "--out", str(inp), *FAST]) == 0
    result = np.asarray(Image.open(inp / "000000.png"), dtype=int)
    assert np.abs(result - np.asarray(Image.open(out / "000000.png"), dtype=int))[16:, :].max() == 0


def test_cli_with_lora_and_embeddings(tiny_model_dir, lora_dir, ti_file, tmp_path):
    from medsd.generate.metadata import read_png_metadata

    assert _run(["--model", str(tiny_model_dir), "--lora", str(lora_dir), "--lora-scale", "0.5",
                 "--embeddings", str(ti_file), "--prompt", "a chest x-ray with <cardiomegaly>",
                 "--out", str(tmp_path), *FAST]) == 0
    adapters = read_png_metadata(tmp_path / "000000.png")["adapters"]
    assert "@0.5#" in adapters and "[<cardiomegaly>]" in adapters


def test_cli_requires_a_model(tmp_path):
    with pytest.raises(MedsdError, match="--model is required"):
        _run(["--prompt", "x", "--out", str(tmp_path)])
