"""Fixtures for the evaluation tests: smooth random images and a small fixed feature network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def make_blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images ``[n, 1, size, size]`` in [0, 1]: four Gaussian blobs each."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for _ in range(4):
        c = torch.rand(n, 2, generator=g)
        w = (0.05 + 0.15 * torch.rand(n, generator=g))[:, None, None]
        out[:, 0] += torch.exp(-((xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2) / w**2)
    return out / out.amax(dim=(1, 2, 3), keepdim=True)


@pytest.fixture
def blobs() -> Callable[..., torch.Tensor]:
    return make_blobs


@pytest.fixture
def convnet() -> torch.nn.Module:
    """A fixed random conv net with ``.features(x)``: the extractor protocol without any weights file."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).eval()
    net.features = net.forward
    return net
