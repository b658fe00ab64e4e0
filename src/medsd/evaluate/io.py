"""Load image sets for evaluation: a plain folder, a generation folder, or a CheXpert-style CSV folder.

All measures work on one representation: a float tensor ``[N, C, H, W]`` in ``[0, 1]`` plus a pandas frame
with one row per image (column ``file`` = path relative to the folder, and any label/prompt columns). C is 1
for greyscale sets (chest X-rays: read exactly as before) and 3 for colour ones (histopathology, MRI scans
packed into RGB), so that colour reaches every measure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from medsd.errors import MedsdError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GENERATION_CSV = "generation_results.csv"


def _resolve_csv_path(root: Path, raw: str) -> str | None:
    """CheXpert CSVs hold paths like ``CheXpert-v1.0-small/train/...``; drop leading parts until one exists."""
    parts = Path(str(raw)).parts
    for start in range(len(parts)):
        candidate = Path(*parts[start:])
        if (root / candidate).is_file():
            return candidate.as_posix()
    return None


def _find_label_csv(root: Path) -> Path | None:
    """A CSV in ``root`` with a ``Path`` column (CheXpert layout); prefers train.csv."""
    csvs = sorted(root.glob("*.csv"), key=lambda p: (p.name != "train.csv", p.name))
    for csv in csvs:
        header = pd.read_csv(csv, nrows=0).columns
        if "Path" in header:
            return csv
    return None


def list_images(path: str | Path) -> pd.DataFrame:
    """Describe the images under ``path`` as a frame with a ``file`` column (relative paths) plus labels.

    Order of preference: ``generation_results.csv`` (generated sets), a CSV with a ``Path`` column
    (CheXpert layout), else every image file found recursively, sorted.
    """
    root = Path(path)
    if not root.is_dir():
        raise MedsdError(f"image folder {root} does not exist; pass a folder of images or a CheXpert-style folder")
    if (root / GENERATION_CSV).is_file():
        frame = pd.read_csv(root / GENERATION_CSV)
        if "file" not in frame.columns:
            raise MedsdError(f"{root / GENERATION_CSV} has no 'file' column; it must list each image's relative path")
        return frame.reset_index(drop=True)
    label_csv = _find_label_csv(root)
    if label_csv is not None:
        frame = pd.read_csv(label_csv)
        frame["file"] = [_resolve_csv_path(root, p) for p in frame["Path"]]
        missing = int(frame["file"].isna().sum())
        if missing:
            log.warning("%d of %d images listed in %s are missing; skipping them", missing, len(frame), label_csv)
        return frame.dropna(subset=["file"]).reset_index(drop=True)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return pd.DataFrame({"file": files})


def is_colour(img: Image.Image) -> bool:
    """Whether an opened image holds colour; greyscale saved as RGB (equal channels) is not colour."""
    if img.mode in ("1", "L", "LA", "La", "F") or img.mode.startswith("I"):
        return False
    rgb = np.asarray(img.convert("RGB"))
    return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def read_image(path: str | Path, size: int | None, channels: int | None = 1) -> torch.Tensor:
    """One image as float ``[C, H, W]`` in ``[0, 1]``, resized to ``size`` square if given.

    ``channels`` 1: greyscale (colour becomes luminance); 3: RGB (grey is repeated); None: as stored
    (1 for greyscale images, 3 for colour ones).
    """
    with Image.open(path) as img:
        if channels is None:
            channels = 3 if is_colour(img) else 1
        # 16-bit PNGs (mode I;16 / I) keep their full range; convert("L") would clip them at 255
        scale = 65535.0 if img.mode.startswith("I") else 255.0
        grey = img.mode.startswith("I") or channels == 1
        img = img.convert("F") if img.mode.startswith("I") else img.convert("L" if grey else "RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        array = np.asarray(img, dtype=np.float32) / scale
    tensor = torch.from_numpy(array).clamp(0, 1)
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor.expand(channels, -1, -1).contiguous() if tensor.shape[0] != channels else tensor


def load_image_folder(
    path: str | Path, size: int | None, limit: int | None = None, channels: int | None = 1
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Load up to ``limit`` images of a folder as ``Tensor[N, C, size, size]`` in ``[0, 1]`` and their frame.

    ``channels`` 1 (greyscale) or 3 (RGB) force C; None decides from the set: 3 when any image is colour,
    else 1. Compare two sets in the channels of the first (the real one defines the modality).
    """
    root = Path(path)
    frame = list_images(root)
    if limit is not None:
        frame = frame.iloc[:limit].reset_index(drop=True)
    if frame.empty:
        raise MedsdError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTS)})")
    images = [read_image(root / f, size, channels) for f in frame["file"]]
    if channels is None and any(t.shape[0] == 3 for t in images):  # grey images of a colour set: repeated
        images = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in images]
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise MedsdError(f"images in {root} have different sizes {sorted(shapes)[:3]}; pass a size to resize them")
    return torch.stack(images), frame


def labels_for(frame: pd.DataFrame, findings: list[str]) -> np.ndarray:
    """Labels ``[N, F]`` (1, 0, or NaN = unknown) for ``findings``.

    Label columns are matched by name, case-insensitively; CheXpert's -1 (uncertain) and blanks become NaN.
    A finding without a column is derived from the ``prompt`` column: 1 when its name appears in the prompt
    text (case-insensitive), else 0. Negated mentions ("no edema") are not understood, so prefer label columns.
    """
    by_lower = {str(c).lower(): c for c in frame.columns}
    prompts = frame["prompt"].astype(str).str.lower() if "prompt" in frame.columns else None
    out = np.full((len(frame), len(findings)), np.nan, dtype=np.float64)
    for j, finding in enumerate(findings):
        column = by_lower.get(finding.lower())
        if column is not None:
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
            out[:, j] = np.where(np.isin(values, (0.0, 1.0)), values, np.nan)
        elif prompts is not None:
            out[:, j] = prompts.str.contains(finding.lower(), regex=False).to_numpy(dtype=np.float64)
    return out


def prompt_groups(frame: pd.DataFrame) -> dict[str, list[int]]:
    """Row indices grouped by prompt (one group ``"all"`` when the frame has no prompt column)."""
    if "prompt" not in frame.columns:
        return {"all": list(range(len(frame)))}
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(frame["prompt"].astype(str)):
        groups.setdefault(prompt, []).append(i)
    return groups
