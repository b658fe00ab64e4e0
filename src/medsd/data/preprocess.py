"""Turn a decoded [0, 1] image into the model's square [-1, 1] tensor.

Default recipe (the medical textual-inversion paper): crop to the non-zero content, resize the longest edge to
the target resolution keeping the aspect ratio, zero-pad to a square. Alternatives: centre crop, resize short side.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

MODES = ("pad", "center_crop", "resize_short")


Image = np.ndarray | torch.Tensor


def _np(image: Image) -> np.ndarray:
    return image.numpy() if isinstance(image, torch.Tensor) else image


def _like(result: np.ndarray, original: Image) -> Image:
    return torch.from_numpy(np.ascontiguousarray(result)) if isinstance(original, torch.Tensor) else result


def _to_chw(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def crop_to_content(image: Image, threshold: float = 0.0, channels: int | None = None) -> Image:
    """Crop a [C, H, W] image (tensor or array) to the bounding box of pixels brighter than `threshold`.

    `channels`: look at the first N planes only (the image's, when a mask rides along as the last plane).
    An all-dark image is returned unchanged: cropping it to nothing would only create an error later.
    """
    mask = (_np(image)[:channels] > threshold).any(axis=0)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return image
    return image[:, int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]


def _resize(image: Image, size: tuple[int, int]) -> Image:
    if tuple(image.shape[1:]) == size:
        return image
    # PIL's bilinear resize widens its kernel when shrinking (antialiasing: fine lines in a 3k px radiograph
    # must not alias at 64 px) and runs single-threaded: torch's threaded resize of one small image is slower,
    # and far slower while the cores are busy training
    h, w = size
    planes = [np.asarray(PILImage.fromarray(ch, mode="F").resize((w, h), PILImage.BILINEAR)) for ch in _np(image)]
    return _like(np.stack(planes), image)


def resize_longest_edge(image: Image, size: int) -> Image:
    """Resize [C, H, W] so the longest edge equals `size`, keeping the aspect ratio."""
    h, w = image.shape[1:]
    scale = size / max(h, w)
    return _resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def resize_short_side(image: Image, size: int) -> Image:
    """Resize [C, H, W] so the shortest edge equals `size`, keeping the aspect ratio."""
    h, w = image.shape[1:]
    scale = size / min(h, w)
    return _resize(image, (max(size, math.ceil(h * scale - 1e-6)), max(size, math.ceil(w * scale - 1e-6))))


def pad_to_square(image: Image, value: float = 0.0) -> Image:
    """Pad [C, H, W] symmetrically with `value` (zero = black) to a square."""
    h, w = image.shape[1:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    padded = np.pad(_np(image), ((0, 0), (top, side - h - top), (left, side - w - left)), constant_values=value)
    return _like(padded, image)


def center_crop(image: Image, size: int) -> Image:
    """Take the central `size` × `size` window of [C, H, W]."""
    h, w = image.shape[1:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[:, top : top + size, left : left + size]


def match_channels(image: Image, channels: int) -> Image:
    """Grey → repeated to 3 channels; colour → mean to 1 channel."""
    arr = _np(image)
    if arr.shape[0] == channels:
        return image
    if channels == 1:
        return _like(arr.mean(axis=0, keepdims=True), image)
    return _like(np.repeat(arr[:1], 3, axis=0) if arr.shape[0] == 1 else arr[:3], image)


def preprocess_image(
    array: Image,
    resolution: int,
    mode: str = "pad",
    channels: int = 3,
    crop: bool = True,
) -> torch.Tensor:
    """[0, 1] image (H, W) or (H, W, C) → FloatTensor[channels, resolution, resolution] in [-1, 1].

    Raises ValueError when the input is outside [0, 1]: a silently mis-scaled image trains a wrong model.
    """
    image = _checked(array, mode)
    image = match_channels(_geometry(image, image.shape[0], resolution, mode, crop), channels)
    return torch.from_numpy(np.ascontiguousarray(np.clip(image, 0, 1) * 2 - 1, dtype=np.float32))


def preprocess_mask(
    mask: np.ndarray, image: Image, resolution: int, mode: str = "pad", crop: bool = True
) -> torch.Tensor:
    """A [0, 1] mask (H, W) drawn on `image` → FloatTensor[1, resolution, resolution] in [0, 1], with exactly the
    crop, resize and padding `preprocess_image` gives the image (the content crop is the image's, not the mask's).

    Raises ValueError when the mask's size is not the image's.
    """
    pixels = _checked(image, mode)
    region = _to_chw(np.asarray(mask, dtype=np.float32))[:1]
    if region.shape[1:] != pixels.shape[1:]:
        raise ValueError(f"mask is {region.shape[2]}x{region.shape[1]} pixels but its image is "
                         f"{pixels.shape[2]}x{pixels.shape[1]}")
    stacked = _geometry(np.concatenate([pixels, region]), pixels.shape[0], resolution, mode, crop)
    return torch.from_numpy(np.ascontiguousarray(np.clip(stacked[-1:], 0, 1), dtype=np.float32))


def _checked(array: Image, mode: str) -> np.ndarray:
    if mode not in MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; choose one of {', '.join(MODES)}")
    image = _to_chw(_np(array))
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"image values must lie in [0, 1] (read_image output), got [{lo:.3g}, {hi:.3g}]")
    return image


def _geometry(stack: np.ndarray, content_channels: int, resolution: int, mode: str, crop: bool) -> np.ndarray:
    """Crop, resize and pad [C, H, W]; the content crop looks at the first `content_channels` planes only."""
    if mode == "pad":
        if crop:
            stack = crop_to_content(stack, channels=content_channels)
        return pad_to_square(resize_longest_edge(stack, resolution))
    return center_crop(resize_short_side(stack, resolution), resolution)


def augment(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light augmentation of a [-1, 1] tensor: ±5° rotation, ±4% shift and scale, ±10% contrast.

    No horizontal flip: laterality is anatomy in a chest X-ray (the heart is on the left).
    """
    g = generator
    r = torch.rand(5, generator=g) * 2 - 1
    angle, tx, ty, scale, contrast = r[0] * math.radians(5), r[1] * 0.04, r[2] * 0.04, 1 + r[3] * 0.04, 1 + r[4] * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=image.dtype)[None]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    # shift to [0, 1] so that out-of-image area is filled with black (-1), like the zero padding
    out = F.grid_sample((image[None] + 1) / 2, grid, align_corners=False, padding_mode="zeros")[0]
    mean = out.mean()
    return (((out - mean) * contrast + mean).clamp(0, 1) * 2 - 1).contiguous()
