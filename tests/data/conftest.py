"""Fixtures for the data layer: real metadata shipped in torchxrayvision + small synthetic image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsd.data.sources import xrv_data_file


@pytest.fixture(scope="session")
def chexpert_csv() -> Path:
    """The real CheXpert train label CSV (223,414 rows) that torchxrayvision ships."""
    path = xrv_data_file("chexpert_train.csv.gz")
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def chexpert_frame(chexpert_csv: Path) -> pd.DataFrame:
    return pd.read_csv(chexpert_csv)


def xray_like(h: int = 96, w: int = 80, border: int = 8, seed: int = 0, bits: int = 8) -> np.ndarray:
    """A synthetic radiograph: bright body on a black border (so crop_to_content has something to crop)."""
    rng = np.random.default_rng(seed)
    top = 255 if bits == 8 else 4095  # 12-bit detector data in a 16-bit file
    img = np.zeros((h, w), dtype=np.uint8 if bits == 8 else np.uint16)
    body = rng.integers(top // 4, top, size=(h - 2 * border, w - 2 * border))
    img[border : h - border, border : w - border] = body
    return img


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture()
def small_chexpert(tmp_path: Path, chexpert_frame: pd.DataFrame) -> tuple[Path, Path]:
    """The first 40 real CheXpert rows as train.csv, with an 8-bit JPEG-sized PNG written for each path."""
    df = chexpert_frame.head(40).copy()
    root = tmp_path / "chexpert_images"
    for i, p in enumerate(df["Path"]):
        rel = p.replace("CheXpert-v1.0-small/", "")
        write_png(root / rel, xray_like(seed=i))
    csv = tmp_path / "train.csv"
    df.to_csv(csv, index=False)
    return root, csv


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    with_pixels: bool = True,
) -> Path:
    """A minimal valid DICOM file written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(name="write_dicom")
def write_dicom_fixture():
    return write_dicom


@pytest.fixture(name="xray_like")
def xray_like_fixture():
    """The synthetic radiograph maker, as a fixture (tests/ is not a package, so no direct import)."""
    return xray_like


@pytest.fixture(name="write_png")
def write_png_fixture():
    return write_png


def train_generate_report(data: dict, model_dir: Path, out: Path, tokens: list[str], channel_names: list[str]) -> dict:
    """The rest of the pipeline for a data config: export the real images, train textual inversion on the tiny
    model for two steps, generate two images per token, evaluate them against the export. Returns what it made."""
    from medsd.config import RunConfig
    from medsd.data.config import DataConfig
    from medsd.data.export import export_samples
    from medsd.evaluate.suite import ReportInputs, build_report
    from medsd.generate.api import generate
    from medsd.train.loop import train

    real = export_samples(DataConfig.model_validate(data), out / "real", split="all")
    run = RunConfig.model_validate({
        "output_dir": str(out / "run"), "seed": 0, "model": {"pretrained": str(model_dir), "device": "cpu"},
        "data": data, "method": {"name": "textual_inversion", "tokens": tokens, "num_vectors": 2},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 5e-3, "lr_warmup_steps": 0,
                     "checkpointing_steps": 100},
        "validation": {"prompts": [], "steps": 1000},
    })
    trained = train(run)
    generated = generate(model_dir, tokens, embeddings=[out / "run" / "learned_embeds.safetensors"],
                         out_dir=out / "generated", num_images=2, steps=2, height=32, width=32, guidance=2.0,
                         scheduler="ddim", progress=False)
    metrics = build_report(ReportInputs(real=out / "real", generated=out / "generated", out=out / "report", size=32,
                                        channel_names=channel_names))
    return {"real": real, "trained": trained, "generated": generated, "metrics": metrics}


@pytest.fixture(name="train_generate_report")
def train_generate_report_fixture():
    return train_generate_report
