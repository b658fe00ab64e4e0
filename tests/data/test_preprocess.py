"""Preprocessing: crop to content, longest-edge resize, zero pad, centre crop, channels, range checks, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsd.data.preprocess import (
    augment,
    center_crop,
    crop_to_content,
    pad_to_square,
    preprocess_image,
    resize_longest_edge,
    resize_short_side,
)


def test_crop_resize_pad_steps():
    img = torch.zeros(1, 100, 60)
    img[:, 10:90, 5:45] = 0.5  # 80 × 40 content inside black borders
    crop = crop_to_content(img)
    assert crop.shape == (1, 80, 40) and float(crop.min()) == 0.5
    assert crop_to_content(torch.zeros(1, 7, 9)).shape == (1, 7, 9)  # all black: unchanged
    small = resize_longest_edge(crop, 32)
    assert small.shape == (1, 32, 16)
    square = pad_to_square(small)
    assert square.shape == (1, 32, 32) and float(square[:, :, :8].max()) == 0 and float(square[:, :, 24:].max()) == 0
    assert resize_short_side(crop, 20).shape == (1, 40, 20)
    assert center_crop(resize_short_side(crop, 20), 20).shape == (1, 20, 20)


def test_preprocess_image_default_recipe_and_alternatives():
    arr = np.zeros((100, 60), dtype=np.float32)
    arr[10:90, 5:45] = 1.0
    out = preprocess_image(arr, 32, "pad", channels=3)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) == -1 and float(out.max()) == 1
    # content spans the full height after cropping; zero padding left and right is black (-1)
    assert (
        torch.allclose(out[:, :, 16], torch.ones(3, 32), atol=1e-4)
        and torch.all(out[:, :, 0] == -1)
        and torch.equal(out[0], out[2])
    )
    cc = preprocess_image(arr, 32, "center_crop", channels=1)
    assert cc.shape == (1, 32, 32)
    rgb = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    grey = preprocess_image(rgb, 16, "resize_short", channels=1)
    assert grey.shape == (1, 16, 16) and -1 <= float(grey.min()) and float(grey.max()) <= 1
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        preprocess_image(arr * 255, 32)
    with pytest.raises(ValueError, match="unknown preprocess mode 'stretch'"):
        preprocess_image(arr, 32, "stretch")


def test_augment_is_light_and_seeded():
    x = preprocess_image(np.random.default_rng(1).random((64, 64)).astype(np.float32), 64)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    assert float((a - x).abs().mean()) < 0.6
