"""Region masks (`data.mask_columns`): read from the CSV, united, preprocessed exactly as their image, and refused
where they cannot work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medsd.config import RunConfig
from medsd.config_base import validate
from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset
from medsd.data.preprocess import preprocess_image, preprocess_mask
from medsd.errors import MedsdError


@pytest.mark.parametrize("mode", ["pad", "center_crop", "resize_short"])
def test_a_mask_is_cropped_resized_and_padded_exactly_as_its_image(mode: str) -> None:
    # A tall image inside black borders, with a bright square: its mask is where the square is.
    image = np.zeros((120, 70), dtype=np.float32)
    image[10:110, 5:65] = 0.3
    image[60:80, 20:40] = 1.0
    mask = image > 0.5
    pixels = preprocess_image(image, 32, mode, channels=1)
    region = preprocess_mask(mask, image, 32, mode)
    assert region.shape == (1, 32, 32) and float(region.min()) >= 0 and float(region.max()) <= 1
    bright = (pixels[0] + 1) / 2 > 0.65  # the square, after the image's own crop and resize
    inside = region[0] > 0.5
    assert bright.sum() > 10 and (bright == inside).float().mean() > 0.97
    if mode == "pad":  # the crop is the image's content box, not the mask's (which would fill the frame)
        assert float(region[0].mean()) < 0.2


def test_a_mask_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match="mask is 30x20 pixels but its image is 70x120"):
        preprocess_mask(np.ones((20, 30), bool), np.zeros((120, 70), np.float32), 32)


def _masked_set(root, write_png, xray_like):
    """Four images; masks in two columns (one cell naming two files, blanks, one mask the wrong size)."""
    for i in range(4):
        write_png(root / f"img{i}.png", xray_like(seed=i))
    left, right, corner = (np.zeros((96, 80), np.uint8) for _ in range(3))
    left[30:60, 15:35] = 255
    right[30:60, 45:65] = 1  # 0 / 1 masks count as much as 0 / 255 ones: any non-zero pixel is inside
    corner[10:20, 10:20] = 255
    for name, array in (("left", left), ("right", right), ("corner", corner), ("small", left[:50])):
        write_png(root / "masks" / f"{name}.png", array)
    pd.DataFrame({
        "file": [f"img{i}.png" for i in range(4)],
        "Lesion": [1, 1, 0, 1],
        "Mask A": ["masks/left.png", "masks/left.png|masks/corner.png", None, "masks/small.png"],
        "Mask B": ["masks/right.png", None, None, None],
    }).to_csv(root / "x.csv", index=False)
    return DataConfig(source="csv", root=str(root), csv="x.csv", path_column="file", label_columns=["Lesion"],
                      resolution=48, crop_to_content=False, mask_columns=["Mask A", "Mask B"])


def test_csv_masks_unite_per_image_and_a_bad_mask_skips_its_image(tmp_path, write_png, xray_like, caplog):
    cfg = _masked_set(tmp_path / "set", write_png, xray_like)
    ds = build_dataset(cfg)
    masks = [ds[i]["loss_mask"] for i in range(3)]
    assert all(m.shape == (1, 48, 48) for m in masks)
    share = [float(m.mean()) for m in masks]
    # image 0: both boxes (2 x 600 of the 96 x 80 pixels), image 1: one box and the corner, image 2: none; the
    # 80 px width becomes 40 of the 48 px square (zero padding on both sides)
    assert share[0] == pytest.approx(1200 / 7680 * 40 / 48, abs=0.005)
    assert share[1] == pytest.approx(700 / 7680 * 40 / 48, abs=0.005)
    assert share[2] == 0
    assert torch.equal(ds[0]["pixel_values"], build_dataset(cfg.model_copy(update={"mask_columns": []}))[0][
        "pixel_values"])  # masks change nothing in the image
    # image 3's mask is not its image's size: the sample is skipped and reported, the next one is used
    item = ds[3]
    assert item["index"] == 0 and ds.skipped[0][0].endswith("small.png") and "pixels" in ds.skipped[0][1]
    assert "skipping unreadable image" in caplog.text


def test_mask_settings_that_cannot_work_are_refused(tmp_path, write_png, xray_like):
    cfg = _masked_set(tmp_path / "set", write_png, xray_like)
    with pytest.raises(MedsdError, match=r"\(data.mask_columns\) lacks column\(s\) \[.Mask C.\]"):
        build_dataset(cfg.model_copy(update={"mask_columns": ["Mask C"]}))
    with pytest.raises(MedsdError, match="mask_columns and augment do not go together"):
        validate(DataConfig, {"source": "csv", "mask_columns": ["Mask A"], "augment": True}, "recipe.yaml")
    with pytest.raises(MedsdError, match="use the csv or phantom source, not 'nih'"):
        validate(DataConfig, {"source": "nih", "mask_columns": ["Mask A"]}, "recipe.yaml")
    with pytest.raises(MedsdError, match="^recipe.yaml: training.masked_loss_weight needs region masks.*data.mask_col"):
        validate(RunConfig, {"training": {"masked_loss_weight": 4}}, "recipe.yaml")


def test_phantom_masks_follow_their_findings(tmp_path):
    from medsd.phantom.render import FINDINGS, mask_column, write_phantom_dataset

    write_phantom_dataset(tmp_path / "ph", n=12, size=64, seed=0, workers=1, progress=False)
    cfg = DataConfig(source="phantom", root=str(tmp_path / "ph"), labels=FINDINGS, resolution=64,
                     mask_columns=[mask_column(f) for f in FINDINGS])
    ds = build_dataset(cfg)
    for i in range(len(ds)):
        item = ds[i]
        # an image has mask area exactly when it has a finding
        assert (float(item["loss_mask"].sum()) > 0) == bool(item["labels"].sum() > 0), i
    with pytest.raises(MedsdError, match=r"\(data.mask_columns\) lacks column\(s\) \['Mask Lesion'\]"):
        build_dataset(cfg.model_copy(update={"mask_columns": ["Mask Lesion"]}))
    # the heart's region: every image has some, findings or not
    heart = build_dataset(cfg.model_copy(update={"mask_columns": ["Mask Heart"]}))
    assert all(0.03 < float(heart[i]["loss_mask"].mean()) < 0.35 for i in range(len(heart)))
    old = tmp_path / "ph" / "train.csv"
    frame = pd.read_csv(old)
    frame.drop(columns=["Mask Heart"]).to_csv(old, index=False)
    with pytest.raises(MedsdError, match="no Mask Heart column .* rendered before version 1.3; render it again"):
        build_dataset(cfg.model_copy(update={"mask_columns": ["Mask Heart", "Mask Consolidation"]}))
    frame.drop(columns=[c for c in frame.columns if c.startswith("Mask ")]).to_csv(old, index=False)
    with pytest.raises(MedsdError, match="names no masks .* rendered before version 1.2; render it again"):
        build_dataset(cfg)
