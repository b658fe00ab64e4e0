"""Validation passes announce their size and pace, and stop (loudly) at validation.max_minutes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

PROMPTS = ["a chest x-ray with cardiomegaly", "a chest x-ray with no finding"]


def _validated_run(recipe, tiny_model_dir, shapes, shared_cache, out, max_minutes):
    from medsd.train.loop import train

    cfg = recipe(tiny_model_dir, out, "lora", max_steps=1, cache_dir=str(shared_cache))
    cfg.validation.prompts = PROMPTS
    cfg.validation.seeds = [0, 1]
    cfg.validation.num_inference_steps = 1
    cfg.validation.max_minutes = max_minutes
    train(cfg, shapes)
    return np.asarray(Image.open(out / "validation" / "step-000001.png"))


def test_validation_over_budget_renders_the_first_image_and_names_what_it_skipped(
    recipe, tiny_model_dir, shapes, shared_cache, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="medsd.train.validation")
    grid = _validated_run(recipe, tiny_model_dir, shapes, shared_cache, tmp_path / "run", max_minutes=1e-6)
    assert grid.shape == (64, 64, 3)  # 2 prompts x 2 seeds of 32 px
    cells = [grid[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(2) for c in range(2)]
    assert cells[0].max() > 0 and all(cell.max() == 0 for cell in cells[1:])
    text = caplog.text
    assert "4 image(s) x 1 sampler steps at 32 px" in text and "first image took" in text
    assert "rendered 1 of 4 images" in text and "validation.max_minutes" in text


def test_validation_within_budget_renders_every_image(recipe, tiny_model_dir, shapes, shared_cache, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="medsd.train.validation")
    grid = _validated_run(recipe, tiny_model_dir, shapes, shared_cache, tmp_path / "run", max_minutes=None)
    cells = [grid[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(2) for c in range(2)]
    assert all(cell.max() > 0 for cell in cells)
    assert "skipped" not in caplog.text


@pytest.mark.parametrize("value", [0, -1])
def test_validation_budget_must_be_positive(value):
    from pydantic import ValidationError

    from medsd.train.config import ValidationConfig

    with pytest.raises(ValidationError, match="max_minutes"):
        ValidationConfig(max_minutes=value)
