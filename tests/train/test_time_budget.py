"""training.max_minutes: a run stops on time with a final checkpoint and artefacts, then resumes."""

from __future__ import annotations

import pytest

from medsd.train.checkpoint import list_checkpoints
from medsd.train.loop import train


def test_time_budget_stops_saves_and_resumes(tiny_model_dir, shapes, shared_cache, tmp_path, recipe) -> None:
    out = tmp_path / "run"
    # A budget of ~0 minutes stops right after the first optimizer step.
    cfg = recipe(tiny_model_dir, out, max_steps=50, max_minutes=1e-6, checkpointing_steps=100,
                 cache_dir=str(shared_cache))
    first = train(cfg, dataset=shapes)
    assert first.step == 1 and list(first.losses) == [1]
    assert [step for step, _ in list_checkpoints(out)] == [1]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    # Resuming with a larger budget continues from the saved step instead of starting over.
    cfg.training.max_minutes = None
    cfg.training.max_steps = 3
    again = train(cfg, dataset=shapes, resume="latest")
    assert again.step == 3 and list(again.losses) == [2, 3]


def test_time_budget_must_be_positive(recipe, tiny_model_dir, tmp_path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_minutes"):
        recipe(tiny_model_dir, tmp_path, max_minutes=0)
