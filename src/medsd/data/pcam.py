"""Patch Camelyon (PCam): 96 x 96 px H&E patches of lymph node sections, labelled for metastatic tissue.

Layout (the PCam release, gunzipped), all in data.root:

    camelyonpatch_level_2_split_{train,valid,test}_x.h5     dataset "x": uint8 (N, 96, 96, 3)
    camelyonpatch_level_2_split_{train,valid,test}_y.h5     dataset "y": uint8 (N, 1, 1, 1), 1 = tumour tissue
                                                            in the patch's centre 32 x 32 px
    camelyonpatch_level_2_split_{train,valid,test}_meta.csv optional; its `wsi` column names the slide

The release's train / valid / test files are the splits (data.split train / val / test). Only the labels are
read when the table is built; a patch's pixels are read from the HDF5 file when the sample is used (the
training file holds 262,144 patches, 7 GB uncompressed). Patches come up to data.resolution with the
`data.pcam.upsample` filter (the budget paper trained Stable Diffusion at 512 px on them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from medsd.config_base import StrictModel
from medsd.data.images import UnreadableImage
from medsd.errors import MedsdError

if TYPE_CHECKING:
    from medsd.data.config import DataConfig

LABEL = "Metastasis"
PATCH_SHAPE = (96, 96, 3)
SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}  # data.split → the release's file name
FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


class PcamConfig(StrictModel):
    """Settings of the `pcam` source (`data.pcam`)."""

    upsample: Literal["bicubic", "bilinear", "lanczos", "nearest"] = Field(
        "bicubic",
        description="Filter that brings the 96 px patches up to data.resolution when it is larger (512 for "
        "Stable Diffusion 2); at 96 px patches are used as stored, smaller sizes are downsampled with antialiasing.",
    )


def split_files(root: Path, name: str) -> tuple[Path, Path, Path]:
    """(x, y, meta) paths of one of the release's splits (`train`, `valid`, `test`)."""
    stem = root / f"camelyonpatch_level_2_split_{name}"
    return Path(f"{stem}_x.h5"), Path(f"{stem}_y.h5"), Path(f"{stem}_meta.csv")


def _labels(y_path: Path) -> np.ndarray:
    import h5py

    with h5py.File(y_path, "r") as fh:
        if "y" not in fh:
            raise MedsdError(f"PCam label file {y_path} has no dataset 'y' (it holds {list(fh)})")
        return np.asarray(fh["y"][:]).reshape(-1)


def _count(x_path: Path) -> int:
    import h5py

    with h5py.File(x_path, "r") as fh:
        if "x" not in fh or tuple(fh["x"].shape[1:]) != PATCH_SHAPE:
            found = tuple(fh["x"].shape) if "x" in fh else list(fh)
            raise MedsdError(f"PCam image file {x_path} needs a dataset 'x' of shape (N, 96, 96, 3); found {found}")
        return int(fh["x"].shape[0])


def patch_table(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per patch of every split present: path `<x file>#<row>`, patient_id (slide), split, label."""
    parts = []
    for split, name in SPLIT_FILES.items():
        x_path, y_path, meta_path = split_files(root, name)
        if not x_path.is_file() and not y_path.is_file():
            if Path(f"{x_path}.gz").is_file():
                raise MedsdError(f"{x_path}.gz is still compressed; unpack it first: gunzip -k {x_path}.gz")
            continue
        for path in (x_path, y_path):
            if not path.is_file():
                raise MedsdError(f"PCam {name} split is incomplete: {path} is missing")
        labels, n = _labels(y_path), _count(x_path)
        if len(labels) != n:
            raise MedsdError(
                f"PCam {name} split: {x_path.name} holds {n} patches but {y_path.name} {len(labels)} labels"
            )
        slides = pd.Series([f"{name}-{i}" for i in range(n)])  # without the meta file: each patch stands alone
        if meta_path.is_file():
            meta = pd.read_csv(meta_path)
            if "wsi" in meta.columns and len(meta) == n:
                slides = meta["wsi"].astype(str)
        parts.append(pd.DataFrame({
            "path": (f"{x_path}#" + pd.Series(np.arange(n)).astype(str)).to_numpy(),
            "patient_id": slides.to_numpy(), "view": "patch", "split": split,
            LABEL: labels.astype(np.float32),
        }))
    if not parts:
        raise MedsdError(
            f"no PCam files in data.root {root}: expected camelyonpatch_level_2_split_train_x.h5 and _y.h5 "
            "(and/or the valid / test pairs)"
        )
    return pd.concat(parts, ignore_index=True), [LABEL]


_OPEN: dict[tuple[int, str], object] = {}


def _dataset(path: str):
    """The `x` dataset of an HDF5 file, opened once per process (forked DataLoader workers must not share it)."""
    import h5py

    key = (os.getpid(), path)
    if key not in _OPEN:
        if not Path(path).is_file():
            raise UnreadableImage(path, "file not found")
        _OPEN[key] = h5py.File(path, "r")["x"]
    return _OPEN[key]


def read_patch(path: str, cfg: DataConfig) -> np.ndarray:
    """Decode one `pcam` sample path (`<x file>#<row>`) into an (H, W, 3) float32 image in [0, 1]."""
    from PIL import Image

    file, _, row = path.rpartition("#")
    try:
        patch = np.asarray(_dataset(file)[int(row)], dtype=np.uint8)
    except UnreadableImage:
        raise
    except Exception as err:  # a truncated file or a bad row spoils this patch only
        raise UnreadableImage(path, f"{type(err).__name__}: {err}") from err
    if cfg.resolution > patch.shape[0]:
        # upsampled here, with the chosen filter, rather than by the generic bilinear resize of preprocess
        size = (cfg.resolution, cfg.resolution)
        patch = np.asarray(Image.fromarray(patch).resize(size, FILTERS[cfg.pcam.upsample]))
    return patch.astype(np.float32) / 255.0
