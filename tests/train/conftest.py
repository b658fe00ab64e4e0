"""Fixtures for the training tests: a small synthetic labelled image set and a tiny-model recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from medsd.config import RunConfig


class ShapesDataset(Dataset):
    """Disc = "cardiomegaly", bar = "effusion" on a dark background: the data-layer sample contract, in memory.

    Setting `poison = True` makes every later sample NaN (to test the non-finite-loss stop).
    """

    pathologies = ["Cardiomegaly", "Effusion"]

    def __init__(self, n: int = 8, size: int = 32, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.size, self.poison, self.items = size, False, []
        yy, xx = np.mgrid[:size, :size] / size
        for i in range(n):
            disc, bar = bool(i % 2), bool((i // 2) % 2)
            img = 0.1 + 0.05 * rng.standard_normal((size, size))
            if disc:
                img[(yy - 0.55) ** 2 + (xx - 0.5) ** 2 < 0.05] = 0.8
            if bar:
                img[int(0.7 * size):int(0.85 * size), :] = 0.6
            names = [n for n, on in zip(["cardiomegaly", "effusion"], [disc, bar], strict=True) if on]
            prompt = "a chest x-ray with " + (" and ".join(names) or "no finding")
            self.items.append((img.astype(np.float32), prompt, [float(disc), float(bar)]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        img, prompt, labels = self.items[index]
        pixels = torch.from_numpy(img).mul(2).sub(1).expand(3, -1, -1).clone()
        if self.poison:
            pixels.fill_(float("nan"))
        return {"pixel_values": pixels, "prompt": prompt, "labels": torch.tensor(labels),
                "patient_id": f"p{index}", "path": f"shapes/{self.size}/{index}.png", "index": index}


@pytest.fixture
def shapes() -> ShapesDataset:
    """Eight 32 px synthetic samples."""
    return ShapesDataset()


def make_config(model_dir: Path, out: Path, method: str = "lora", **training) -> RunConfig:
    """A tiny recipe: 32 px, batch 2, a few steps, no validation unless asked."""
    settings = {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "lr_warmup_steps": 0,
                "checkpointing_steps": 2, "checkpoints_total_limit": 5, **training}
    return RunConfig.model_validate({
        "output_dir": str(out), "seed": 0,
        "model": {"pretrained": str(model_dir), "device": "cpu"},
        "data": {"source": "phantom", "resolution": 32},
        "training": settings,
        "method": {"name": method},
        "validation": {"prompts": [], "steps": 1000},
    })


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One latent cache folder for the tests that do not test the cache itself (encode once)."""
    return tmp_path_factory.mktemp("latent-cache")


@pytest.fixture
def recipe():
    """`make_config` as a fixture (test modules cannot import conftest without a package)."""
    return make_config


@pytest.fixture
def shapes_factory():
    """Build a ShapesDataset with other sizes."""
    return ShapesDataset
