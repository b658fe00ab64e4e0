"""inspect and prepare: report numbers, contact sheet, bad files counted not crashing, cache reuse and resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset
from medsd.data.inspect import inspect_dataset
from medsd.data.prepare import prepare_cache


@pytest.fixture()
def messy(tmp_path, write_png, write_dicom, xray_like) -> DataConfig:
    """A CSV data set with every kind of bad or odd input the issue lists (10 rows, 5 unreadable)."""
    root = tmp_path / "messy"
    write_png(root / "ok8.png", xray_like(seed=1))
    write_png(root / "ok16.png", xray_like(bits=16, seed=2))
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = 120, 255
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.new("CMYK", (40, 40), (0, 0, 0, 100)).save(root / "cmyk.jpg")
    write_dicom(root / "mono1.dcm", xray_like(bits=16, seed=3), photometric="MONOCHROME1")
    write_png(root / "tiny.png", np.zeros((1, 1), dtype=np.uint8))
    write_png(root / "giant.png", np.full((200, 300), 90, dtype=np.uint8))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    write_dicom(root / "nopixels.dcm", xray_like(bits=16), with_pixels=False)
    files = [
        "ok8.png",
        "ok16.png",
        "rgba.png",
        "cmyk.jpg",
        "mono1.dcm",
        "tiny.png",
        "giant.png",
        "corrupt.jpg",
        "nopixels.dcm",
        "missing.png",
    ]
    pd.DataFrame({"Path": files, "Nodule": [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]}).to_csv(root / "labels.csv", index=False)
    return DataConfig(source="csv", root=str(root), csv="labels.csv", resolution=32, max_pixels=50_000, workers=1)


def test_inspect_real_chexpert_rows(small_chexpert, chexpert_frame, tmp_path):
    root, csv = small_chexpert
    Path(root / "train/patient00003/study1/view1_frontal.jpg").write_bytes(b"broken")
    cfg = DataConfig(source="chexpert", root=str(root), csv=str(csv), resolution=32, uncertainty="ones")
    report = inspect_dataset(cfg, tmp_path / "inspect", n_samples=8, check_all=True)
    head = chexpert_frame.head(40)
    assert report["size"] == 40 and report["patients"] == head["Path"].str.extract(r"(patient\d+)")[0].nunique()
    c = report["label_counts"]["Pleural Effusion"]
    raw = head["Pleural Effusion"]
    assert (c["positive"], c["uncertain"], c["negative"], c["blank"]) == (
        (raw == 1).sum(),
        (raw == -1).sum(),
        (raw == 0).sum(),
        raw.isna().sum(),
    )
    assert c["positive_after_policy"] == c["positive"] + c["uncertain"]
    assert sum(e["count"] for e in report["label_combinations"]) == 40
    assert report["image_shape"] == [3, 32, 32] and report["dtype"] == "float32"
    assert -1 <= report["value_range"][0] < report["value_range"][1] <= 1
    assert report["checked_images"] == 40 and len(report["unreadable"]) == 1
    assert report["unreadable"][0]["path"].endswith("patient00003/study1/view1_frontal.jpg")
    sheet = Image.open(report["contact_sheet"])
    assert sheet.size == (4 * 160, 2 * (160 + 48))
    assert json.loads((tmp_path / "inspect" / "inspect.json").read_text())["size"] == 40


def test_prepare_counts_bad_files_and_cache_is_used(messy, tmp_path, caplog):
    cache = tmp_path / "cache"
    report = prepare_cache(messy, cache)
    reasons = dict(report["skipped_files"])
    assert report["samples"] == 10 and report["skipped"] == 5 and report["decoded_this_run"] == 10
    root = Path(messy.root)
    assert reasons[str(root / "missing.png")] == "file not found"
    assert "smaller than min_size" in reasons[str(root / "tiny.png")]
    assert "more than max_pixels" in reasons[str(root / "giant.png")]
    assert "no pixel data" in reasons[str(root / "nopixels.dcm")]
    assert str(root / "corrupt.jpg") in reasons
    assert pd.read_csv(cache / "skipped.csv").shape == (5, 2)
    images = np.load(cache / "images.npy")
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.uint8

    ds = build_dataset(messy.model_copy(update={"cache_dir": str(cache)}))
    assert ds.cached == 5
    fresh = build_dataset(messy)
    for i in range(5):  # cached pixels equal decoded ones up to uint8 rounding
        assert torch.allclose(ds[i]["pixel_values"], fresh[i]["pixel_values"], atol=2 / 255 + 1e-6)
    # lazily unreadable rows return the next readable sample; each bad file is warned about once
    with caplog.at_level(logging.WARNING):
        item = fresh[5]
        fresh[5]
    assert item["index"] == 0 and item["path"].endswith("ok8.png")  # 5..9 are all bad: wraps to row 0
    assert len(fresh.skipped) == 5 and caplog.text.count("tiny.png") == 1


def test_prepare_resumes_after_interruption(messy, tmp_path):
    cache = tmp_path / "cache"
    prepare_cache(messy, cache)
    before = np.load(cache / "images.npy").copy()
    # simulate a run killed after the first rows: their flags are cleared and their pixels lost
    done = np.load(cache / "done.npy", mmap_mode="r+")
    done[2:] = False
    done.flush()
    images = np.load(cache / "images.npy", mmap_mode="r+")
    images[2:] = 0
    images.flush()
    del done, images
    report = prepare_cache(messy, cache)
    assert report["decoded_this_run"] == 8 and report["skipped"] == 5
    assert np.array_equal(np.load(cache / "images.npy"), before)
    assert prepare_cache(messy, cache)["decoded_this_run"] == 0  # complete cache: nothing to do


def test_prepare_parallel_matches_serial(small_chexpert, tmp_path):
    root, csv = small_chexpert
    cfg = DataConfig(source="chexpert", root=str(root), csv=str(csv), resolution=16, channels=1, max_samples=12)
    one = prepare_cache(cfg, tmp_path / "one", workers=1)
    two = prepare_cache(cfg, tmp_path / "two", workers=2)
    assert one["samples"] == two["samples"] == 12 and one["images_per_s"] > 0
    assert np.array_equal(np.load(tmp_path / "one/images.npy"), np.load(tmp_path / "two/images.npy"))


def test_cli_inspect_and_prepare(small_chexpert, tmp_path, capsys):
    from medsd.cli import main

    root, csv = small_chexpert
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  source: chexpert\n  root: {root}\n  csv: {csv}\n  resolution: 16\n")
    assert main(["data", "inspect", str(recipe), "--out", str(tmp_path / "ins"), "--all-labels"]) == 0
    out = capsys.readouterr().out
    assert "chexpert: 40 samples" in out and "label combinations" in out
    assert main(["data", "prepare", str(recipe), "--out", str(tmp_path / "c"), "--workers", "1"]) == 0
    assert (tmp_path / "c" / "images.npy").is_file()
    assert main(["data", "inspect", str(recipe), "--set", "data.labels=[Cardiomegally]"]) == 2
    assert "Cardiomegally" in capsys.readouterr().err


def test_packed_mri_slices_from_csv(tmp_path):
    """Prostate-MRI recipe: T2W / ADC / DWI NIfTI volumes, one CSV row per slice, packed into RGB."""
    import nibabel as nib

    root = tmp_path / "mri"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, scale in (("t2", 1.0), ("adc", 0.5), ("dwi", 0.25)):
        vol = np.zeros((32, 32, 6), dtype=np.float32)
        for k in range(6):
            vol[4:28, 4:28, k] = scale * (k + 1) + rng.random((24, 24)) * 0.01
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / f"{name}.nii.gz")
    rows = [
        {"t2w": "t2.nii.gz", "adc": "adc.nii.gz", "dwi": "dwi.nii.gz", "slice": k, "csPCa": int(k > 2)} for k in (1, 4)
    ]
    pd.DataFrame(rows).to_csv(root / "slices.csv", index=False)
    cfg = DataConfig(
        source="csv", root=str(root), csv="slices.csv", channel_columns=["t2w", "adc", "dwi"], slice_column="slice",
        preprocess="center_crop", crop_to_content=False, resolution=16, workers=1,
        prompt={"template": "An axial prostate MRI with {labels}", "no_finding": "no significant cancer"},
    )  # fmt: skip
    ds = build_dataset(cfg)
    assert ds.pathologies == ["csPCa"] and ds.frame["path"].iloc[1].endswith("dwi.nii.gz#4")
    assert ds.frame["prompt"].tolist() == ["An axial prostate MRI with no significant cancer",
                                           "An axial prostate MRI with csPCa"]  # fmt: skip
    x = ds[0]["pixel_values"]
    assert x.shape == (3, 16, 16) and not torch.equal(x[0], x[1])
    report = prepare_cache(cfg, tmp_path / "cache")
    assert report["samples"] == 2 and report["skipped"] == 0


def test_example_recipes_validate():
    from medsd.config_base import load_yaml_section

    recipes = sorted(Path(__file__).resolve().parents[2].glob("configs/data_examples/*.yaml"))
    sources = {load_yaml_section(p, "data", DataConfig).source for p in recipes}
    assert {"chexpert", "mimic", "nih", "openi", "csv", "folder", "phantom"} <= sources and len(recipes) >= 8


def test_dataloader_with_spawned_workers_reads_cache(messy, tmp_path):
    import pickle

    prepare_cache(messy, tmp_path / "cache")
    ds = build_dataset(messy.model_copy(update={"cache_dir": str(tmp_path / "cache"), "augment": True}))
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn/forkserver DataLoader worker receives
    assert len(pickle.dumps(ds)) < 200_000 and clone.cached == 5
    batch = next(iter(torch.utils.data.DataLoader(clone, batch_size=4)))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].shape == (4, 1)
    assert len(batch["prompt"]) == 4
