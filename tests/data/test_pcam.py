"""PCam source: the release's HDF5 layout and dtypes, lazy reads, labels from `_y`, official splits, upsampling."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset
from medsd.data.pcam import patch_table, read_patch
from medsd.errors import MedsdError

SIZES = {"train": 12, "valid": 6, "test": 4}


def make_patch(index: int, tumour: bool) -> np.ndarray:
    """An H&E-like patch: pink stroma, a row index written into the blue channel, purple nuclei if tumour."""
    rng = np.random.default_rng(index)
    patch = np.empty((96, 96, 3), np.uint8)
    patch[..., 0] = 230 - rng.integers(0, 20, (96, 96))
    patch[..., 1] = 150 + rng.integers(0, 30, (96, 96))
    patch[..., 2] = index % 256
    if tumour:  # dense purple nuclei in the centre 32 x 32 px, where PCam's label looks
        patch[32:64, 32:64] = (110, 40, 150)
    return patch


def write_split(root: Path, name: str, n: int, offset: int = 0, meta: bool = True) -> np.ndarray:
    labels = (np.arange(n) % 3 == 0).astype(np.uint8)
    patches = np.stack([make_patch(offset + i, bool(y)) for i, y in enumerate(labels)])
    with h5py.File(root / f"camelyonpatch_level_2_split_{name}_x.h5", "w") as fh:
        fh.create_dataset("x", data=patches, chunks=(1, 96, 96, 3), compression="gzip")
    with h5py.File(root / f"camelyonpatch_level_2_split_{name}_y.h5", "w") as fh:
        fh.create_dataset("y", data=labels.reshape(n, 1, 1, 1))
    if meta:
        pd.DataFrame({"coord_y": 0, "coord_x": 0, "tumor_patch": labels.astype(bool),
                      "center_tumor_patch": labels.astype(bool),
                      "wsi": [f"camelyon16_{name}_{i // 3:03d}" for i in range(n)]}).to_csv(
            root / f"camelyonpatch_level_2_split_{name}_meta.csv")
    return labels


@pytest.fixture
def pcam_root(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    labels = {name: write_split(tmp_path, name, n, offset=100 * k) for k, (name, n) in enumerate(SIZES.items())}
    return tmp_path, labels


def test_files_have_pcams_shapes_and_dtypes(pcam_root):
    root, _ = pcam_root
    with h5py.File(root / "camelyonpatch_level_2_split_train_x.h5") as fx, \
            h5py.File(root / "camelyonpatch_level_2_split_train_y.h5") as fy:
        assert fx["x"].shape == (12, 96, 96, 3) and fx["x"].dtype == np.uint8
        assert fy["y"].shape == (12, 1, 1, 1) and fy["y"].dtype == np.uint8


def test_table_labels_splits_and_slides(pcam_root):
    root, labels = pcam_root
    frame, pathologies = patch_table(root)
    assert pathologies == ["Metastasis"] and len(frame) == sum(SIZES.values())
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        rows = frame[frame["split"] == split]
        assert rows["Metastasis"].tolist() == labels[name].astype(float).tolist()
        assert rows["path"].iloc[1].endswith(f"camelyonpatch_level_2_split_{name}_x.h5#1")
    assert frame["patient_id"].iloc[0] == "camelyon16_train_000" and frame["patient_id"].nunique() == 4 + 2 + 2


def test_reads_rows_lazily_and_upsamples(pcam_root):
    root, _ = pcam_root
    cfg = DataConfig(source="pcam", root=str(root), resolution=96)
    path = str(root / "camelyonpatch_level_2_split_valid_x.h5")
    patch = read_patch(f"{path}#3", cfg)
    assert patch.shape == (96, 96, 3) and patch.dtype == np.float32
    assert np.array_equal(np.round(patch * 255).astype(np.uint8), make_patch(103, tumour=True))
    big = read_patch(f"{path}#3", cfg.model_copy(update={"resolution": 256}))
    expected = np.asarray(Image.fromarray(make_patch(103, True)).resize((256, 256), Image.BICUBIC)) / 255.0
    assert big.shape == (256, 256, 3) and np.allclose(big, expected, atol=1e-6)
    nearest = read_patch(f"{path}#3", DataConfig(source="pcam", resolution=192, pcam={"upsample": "nearest"}))
    assert np.array_equal(nearest[::2, ::2], patch)


def test_table_of_a_large_file_reads_no_pixels(tmp_path):
    """A 50,000-patch file (1.4 GB of pixels, stored sparse): the table reads only the labels."""
    n = 50_000
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_x.h5", "w") as fh:
        fh.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8, chunks=(1, 96, 96, 3))
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_y.h5", "w") as fh:
        fh.create_dataset("y", data=np.ones((n, 1, 1, 1), np.uint8))
    tracemalloc.start()
    frame, _ = patch_table(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(frame) == n and peak < 100e6
    cfg = DataConfig(source="pcam", root=str(tmp_path), resolution=96)
    assert read_patch(frame["path"].iloc[-1], cfg).shape == (96, 96, 3)


def test_dataset_uses_the_official_splits(pcam_root):
    root, labels = pcam_root
    cfg = DataConfig(source="pcam", root=str(root), resolution=32, prompt={"template": "An H&E patch with {labels}"})
    val = build_dataset(cfg, "val")
    assert len(val) == 6 and val.frame["path"].str.contains("_valid_x.h5").all()
    item = val[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["prompt"] == "An H&E patch with Metastasis"
    red, blue = item["pixel_values"][0], item["pixel_values"][2]
    assert (red - blue).abs().mean() > 0.2  # colour survives: histopathology is not grey
    assert len(build_dataset(cfg, "all")) == 22


def test_incomplete_or_packed_files_are_clear_errors(tmp_path):
    with pytest.raises(MedsdError, match="no PCam files"):
        patch_table(tmp_path)
    write_split(tmp_path, "train", 3, meta=False)
    (tmp_path / "camelyonpatch_level_2_split_train_y.h5").unlink()
    with pytest.raises(MedsdError, match="incomplete"):
        patch_table(tmp_path)
    (tmp_path / "camelyonpatch_level_2_split_train_x.h5").rename(tmp_path / "camelyonpatch_level_2_split_train_x.h5.gz")
    with pytest.raises(MedsdError, match="gunzip"):
        patch_table(tmp_path)
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "w") as fh:
        fh.create_dataset("x", data=np.zeros((2, 64, 64, 3), np.uint8))
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_y.h5", "w") as fh:
        fh.create_dataset("y", data=np.zeros((2, 1, 1, 1), np.uint8))
    (tmp_path / "camelyonpatch_level_2_split_train_x.h5.gz").unlink()
    with pytest.raises(MedsdError, match=r"shape \(N, 96, 96, 3\)"):
        patch_table(tmp_path)


def test_end_to_end_inspect_prepare_train_generate_evaluate(pcam_root, tmp_path, tiny_model_dir,
                                                             train_generate_report):
    from medsd.data.inspect import inspect_dataset
    from medsd.data.prepare import prepare_cache

    root, labels = pcam_root
    data = {"source": "pcam", "root": str(root), "resolution": 32, "split": "train", "n_per_class": 3,
            "cache_dir": str(tmp_path / "cache"), "workers": 1,
            "prompt": {"template": "{labels}", "placeholder_tokens": True, "no_finding": "<normal>"}}
    cfg = DataConfig.model_validate(data)
    report = inspect_dataset(cfg, tmp_path / "inspect")
    assert report["size"] == 6 and report["label_counts"]["Metastasis"]["positive"] == 3  # 3 per class
    assert report["image_shape"] == [3, 32, 32] and set(report["sample_prompts"]) == {"<metastasis>", "<normal>"}
    prepared = prepare_cache(cfg, workers=1)
    assert prepared["samples"] == 6 and prepared["skipped"] == 0  # 3 per class, drawn from every split
    made = train_generate_report(data, tiny_model_dir, tmp_path, ["<metastasis>", "<normal>"], None)
    assert made["real"]["written"] == 6 and made["trained"].step == 2
    assert made["trained"].latent_cache is not None
    metrics = made["metrics"]
    assert metrics["sets"]["channels"] == 3 and list(metrics["channels"]["per_channel"]) == ["R", "G", "B"]
    exported = pd.read_csv(tmp_path / "real" / "labels.csv")
    assert exported["Metastasis"].sum() == 3
    assert (exported["prompt"] == exported["Metastasis"].map({1.0: "<metastasis>", 0.0: "<normal>"})).all()
    with Image.open(tmp_path / "real" / exported["Path"][0]) as img:
        assert img.mode == "RGB" and img.size == (32, 32)


def test_shipped_recipes_are_the_papers():
    from medsd.config import load_run_config
    from medsd.config_base import load_yaml_section
    from medsd.data.prompts import build_prompt
    from medsd.evaluate.augment import AugmentConfig

    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_run_config(configs / "pcam_textual_inversion.yaml")
    assert (cfg.data.source, cfg.method.name, cfg.method.num_vectors, cfg.data.n_per_class) == (
        "pcam", "textual_inversion", 64, 100)
    prompts = [build_prompt({"Metastasis": v}, cfg.data.prompt) for v in (1.0, 0.0)]
    assert prompts == cfg.method.tokens == ["<metastasis>", "<normal>"]
    augment = load_yaml_section(configs / "pcam_augment.yaml", "augment", AugmentConfig)
    assert (augment.real_count, augment.synthetic_counts, augment.selection) == (200, [2000], "best_val")
    assert augment.hflip and augment.vflip
