"""Decode medical image files into float32 arrays in [0, 1]: PNG/JPEG (8/16-bit), DICOM, NIfTI, packed channels.

Every failure becomes `UnreadableImage(path, reason)` so callers can skip, count and report the file instead of
crashing partway through a data set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class UnreadableImage(Exception):
    """An image that cannot be decoded; `path` and `reason` go into the skip report."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_image(
    path: str | Path | Sequence[str | Path],
    slice_index: int | None = None,
    slice_axis: int = 2,
    window: tuple[float, float] | None = None,
    min_size: int = 1,
    max_pixels: int = 200_000_000,
) -> np.ndarray:
    """Read one image as float32 (H, W) or (H, W, C) in [0, 1].

    A list of paths packs one grey image per path into channels (T2W, ADC, DWI → RGB); every channel is
    resized to the first one's shape. 8-bit files are divided by 255 (so black borders stay 0 for cropping);
    16-bit, DICOM and NIfTI data are scaled by their own range because their bit depth varies per scanner.
    """
    if not isinstance(path, str | Path):
        return _read_packed(list(path), slice_index, slice_axis, window, min_size, max_pixels)
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "file not found")
    name = path.name.lower()
    try:
        if name.endswith(DICOM_SUFFIXES) or _is_dicom(path):
            arr = _read_dicom(path, window, slice_index)
        elif name.endswith(NIFTI_SUFFIXES):
            arr = _read_nifti(path, slice_index, slice_axis)
        else:
            arr = _read_pil(path, max_pixels)
    except UnreadableImage:
        raise
    except Exception as err:  # any decoder error means this one file is bad, not the run
        raise UnreadableImage(path, f"{type(err).__name__}: {err}") from err
    h, w = arr.shape[:2]
    if h < min_size or w < min_size:
        raise UnreadableImage(path, f"image is {h}x{w}, smaller than min_size {min_size}")
    if h * w > max_pixels:
        raise UnreadableImage(path, f"image is {h}x{w}, more than max_pixels {max_pixels}")
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)


def _is_dicom(path: Path) -> bool:
    """DICOM files often have no suffix; the 'DICM' magic at byte 128 identifies them."""
    if path.suffix:
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        # PIL warns (not raises) on large images; we enforce our own max_pixels limit below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise UnreadableImage(path, f"image is {img.height}x{img.width}, more than max_pixels {max_pixels}")
                img.load()
                return _pil_to_array(img)
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def _pil_to_array(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max())
        # dividing by the maximum (not min-max) keeps zero borders at zero for crop_to_content
        return arr / hi if hi > 0 else np.zeros_like(arr)
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode == "L":
        arr = np.asarray(img, dtype=np.float32) / 255.0
    elif mode in ("LA", "RGBA", "P", "PA", "La", "RGBa"):
        # composite transparency onto black: transparent padding behaves like zero padding
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        arr = rgba[..., :3] * rgba[..., 3:]
    else:  # RGB, CMYK, YCbCr, HSV, LAB ...
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 3 and np.allclose(arr[..., 0], arr[..., 1]) and np.allclose(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]  # grey stored as RGB
    return arr


def _read_dicom(path: Path, window: tuple[float, float] | None, frame: int | None) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnreadableImage(path, "DICOM file has no pixel data")
    arr = ds.pixel_array
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames > 1:
        arr = arr[frame if frame is not None else n_frames // 2]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3:  # colour DICOM (e.g. secondary capture)
        return arr.astype(np.float32) / float(2 ** int(ds.BitsStored) - 1)
    arr = apply_modality_lut(arr, ds).astype(np.float32)  # RescaleSlope / RescaleIntercept → HU or raw units
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds and "VOILUTSequence" not in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    if window is not None:
        # our own linear window into [0, 1]: an image that does not fill the window must not be stretched
        centre, width = window
        lo, hi = centre - width / 2, centre + width / 2
        arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    elif "VOILUTSequence" in ds:
        arr = _minmax(apply_voi_lut(arr, ds, prefer_lut=True))  # a LUT's output range differs per file
    else:
        arr = _minmax(arr)
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores air as bright: invert so air is black like MONOCHROME2
        arr = 1.0 - arr
    return arr


def _first(value) -> float:
    """WindowCenter / WindowWidth may be multi-valued (several presets): the first is the default."""
    try:
        return float(value)
    except TypeError:
        return float(value[0])


def _read_nifti(path: Path, slice_index: int | None, axis: int) -> np.ndarray:
    import nibabel as nib

    vol = np.asanyarray(nib.load(str(path)).dataobj, dtype=np.float32)
    while vol.ndim > 3:  # 4D (time / diffusion): first volume
        vol = vol[..., 0]
    if vol.ndim == 3:
        n = vol.shape[axis]
        index = n // 2 if slice_index is None else slice_index
        if not -n <= index < n:
            raise UnreadableImage(path, f"slice {index} out of range: axis {axis} has {n} slices")
        vol = np.take(vol, index, axis=axis)
    # robust intensity range: MRI has no fixed units, a few hot voxels would otherwise darken the slice
    lo, hi = np.percentile(vol, [0.5, 99.5]) if vol.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros_like(vol)
    # rotate so rows run anterior→posterior in the usual radiological display
    return np.rot90(np.clip((vol - lo) / (hi - lo), 0, 1)).copy()


def _read_packed(paths, slice_index, slice_axis, window, min_size, max_pixels) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    planes = []
    for p in paths:
        arr = read_image(p, slice_index, slice_axis, window, min_size, max_pixels)
        planes.append(arr if arr.ndim == 2 else arr.mean(axis=2))
    h, w = planes[0].shape
    out = []
    for arr in planes:
        if arr.shape != (h, w):  # ADC/DWI are often acquired at a lower resolution than T2W
            t = torch.from_numpy(arr)[None, None]
            arr = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        out.append(arr)
    return np.stack(out, axis=-1).astype(np.float32)
