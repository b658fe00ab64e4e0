"""Training timesteps: uniform by default, SD3's logit-normal density on request."""

from __future__ import annotations

import math

import pytest
import torch

from medsd.train.config import TrainingConfig
from medsd.train.step import sample_timesteps


def _draw(**settings: object) -> torch.Tensor:
    torch.manual_seed(0)
    return sample_timesteps(1000, 20_000, TrainingConfig(**settings), "cpu")


def test_uniform_covers_every_timestep_evenly() -> None:
    t = _draw()
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 999
    assert float((t < 100).float().mean()) == pytest.approx(0.1, abs=0.01)


def test_logit_normal_favours_the_middle_and_follows_its_mean() -> None:
    t = _draw(timestep_sampling="logit_normal")
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) <= 999
    # logistic(N(0, 1)): ~1.4 % below t = 100 (uniform: 10 %), ~31 % between 400 and 600 (uniform: 20 %).
    assert float((t < 100).float().mean()) < 0.03
    assert float(((t >= 400) & (t < 600)).float().mean()) == pytest.approx(0.31, abs=0.02)
    assert float(t.float().median()) == pytest.approx(500, abs=15)
    shifted = _draw(timestep_sampling="logit_normal", timestep_logit_mean=1.0)
    assert float(shifted.float().median()) == pytest.approx(1000 / (1 + math.exp(-1.0)), abs=20)


def test_unknown_sampling_is_refused_at_config_load() -> None:
    with pytest.raises(ValueError, match="timestep_sampling"):
        TrainingConfig(timestep_sampling="cosine")
