"""Unusual but valid inputs keep working: 16-bit and RGBA PNGs, unicode paths, compressed DICOMs, a CSV with a
BOM and Windows line ends, `--set training.mixed_precision=no`, prompts with `*` in ordinary text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# Compressed transfer syntaxes that pydicom decodes with what medsd installs (RLE, JPEG 2000, JPEG baseline).
DECODABLE_DICOMS = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm"]


def _body(bits: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if bits == 8 else 4095
    img = np.zeros((40, 40), dtype=np.uint8 if bits == 8 else np.uint16)
    img[4:-4, 4:-4] = rng.integers(top // 4, top, size=(32, 32))
    return img


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    """A csv data set under a unicode folder: 16-bit PNG, RGBA PNG, grey JPEG and compressed DICOMs."""
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("odd") / "Röntgen 肺 données"
    (root / "bilder").mkdir(parents=True)
    files = []
    Image.fromarray(_body(16, 0)).save(root / "bilder" / "sechzehn-bit.png")
    rgba = np.dstack([np.repeat(_body(8, 1)[..., None], 3, axis=2), np.full((40, 40), 200, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(root / "bilder" / "transparent.png")
    Image.fromarray(_body(8, 2)).convert("RGB").save(root / "bilder" / "grau-als-rgb.jpg")
    files += ["bilder/sechzehn-bit.png", "bilder/transparent.png", "bilder/grau-als-rgb.jpg"]
    for name in DECODABLE_DICOMS:
        shutil.copy(get_testdata_file(name), root / "bilder" / name)
        files.append(f"bilder/{name}")
    rows = [f"{file},{k % 2}" for k, file in enumerate(files)]
    # a spreadsheet export: byte-order mark and Windows line ends
    (root / "étiquettes.csv").write_bytes(("\ufeffPath,Cardiomegaly\r\n" + "\r\n".join(rows) + "\r\n").encode())
    return root


def _recipe(folder: Path, root: Path, model: Path) -> Path:
    recipe = {
        "output_dir": str(folder / "läufe" / "lora"),
        "model": {"pretrained": str(model), "device": "cpu"},
        "data": {"source": "csv", "root": str(root), "csv": "étiquettes.csv", "resolution": 32},
        "training": {"max_steps": 1, "batch_size": 2, "checkpointing_steps": 1},
        "method": {"name": "lora", "rank": 2},
    }
    path = folder / "rezept.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def test_odd_images_are_read_inspected_and_prepared(odd_data, tmp_path, tiny_model_dir, medsd) -> None:
    recipe = str(_recipe(tmp_path, odd_data, tiny_model_dir))
    result = medsd(["data", "inspect", recipe, "--check-all", "--out", str(tmp_path / "prüfung")])
    assert result.code == 0, result.err[-1500:]
    assert "unreadable: 0 of 6 checked" in result.out
    result = medsd(["data", "prepare", recipe, "--out", str(tmp_path / "cache ü"), "--workers", "1"])
    assert result.code == 0, result.err[-1500:]
    assert json.loads(result.out[: result.out.rindex("}") + 1])["skipped"] == 0


def test_train_with_typed_overrides_then_generate_with_unicode(odd_data, tmp_path, tiny_model_dir, medsd) -> None:
    recipe = _recipe(tmp_path, odd_data, tiny_model_dir)
    result = medsd(["train", str(recipe), "--set", "training.mixed_precision=no", "--set", "model.revision=null"])
    assert result.code == 0, result.err[-1500:]
    run = tmp_path / "läufe" / "lora"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["training"]["mixed_precision"] == "no" and resolved["model"]["revision"] is None
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffRöntgen: Erguss 2*3 cm\r\n# a comment\r\nA chest X-ray with cardiomegaly\r\n".encode())
    out = tmp_path / "Bilder ✓"
    result = medsd(["generate", "--model", str(tiny_model_dir), "--lora", str(run), "--prompts", str(prompts),
                    "--steps", "1", "--out", str(out), "--quiet"])
    assert result.code == 0, result.err[-1500:]
    table = (out / "generation_results.csv").read_text(encoding="utf-8")
    assert "Röntgen: Erguss 2*3 cm" in table and len(list(out.glob("*.png"))) == 2


def test_odd_images_are_evaluated(odd_data, tmp_path, medsd) -> None:
    folder = tmp_path / "gemischt é"
    shutil.copytree(odd_data / "bilder", folder)
    for dicom in folder.glob("*.dcm"):  # evaluation reads ordinary image files
        dicom.unlink()
    result = medsd(["evaluate", "diversity", "--generated", str(folder), "--size", "32"])
    assert result.code == 0, result.err[-1500:]
    assert "skipped" not in result.err
    result = medsd(["evaluate", "memorization", "--train", str(folder), "--generated", str(folder), "--size", "32"])
    assert result.code == 0, result.err[-1500:]
    assert "3 of 3 generated images flagged" in result.out  # each image is its own nearest copy
