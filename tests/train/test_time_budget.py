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


def test_schedule_is_fitted_to_the_budget(tiny_model_dir, shapes, shared_cache, tmp_path, recipe) -> None:
    """At 5%, 25%, 50%, 75% of max_minutes the measured rate sets max_steps; the LR schedule ends there."""
    from medsd.train.loop import _fit_to_time, _prepare, _ScheduleFit

    cfg = recipe(tiny_model_dir, tmp_path / "run", max_steps=1000, max_minutes=1.0, lr_scheduler="cosine",
                 cache_dir=str(shared_cache))
    run, _ = _prepare(cfg, shapes)
    fit = _ScheduleFit(planned=run.max_steps, first_step=0, started=0.0)
    # Steps finish every 0.5 s after a 2 s first step; 5% of the 60 s budget has passed at step 3 (3.0 s).
    for step in range(1, 4):
        _fit_to_time(run, fit, step, 1.5 + 0.5 * step)
    # Rate 2 steps/s over steps 2-3; 57 s remain: 3 + int(0.98 * 2 * 57) = 114 steps.
    assert run.max_steps == run.fitted_steps == 114
    lr = run.lr_scheduler.scheduler.lr_lambdas[0]
    assert lr(0) == 1.0 and abs(lr(57) - 0.5) < 0.02 and lr(114) == 0.0
    # Not again before 25% of the budget (15 s) ...
    _fit_to_time(run, fit, 20, 12.0)
    assert run.max_steps == 114
    # ... where the slower rate since that fit (27 steps in 17 s) shortens it: 30 + int(0.98 * 27 / 17 * 40) = 92.
    _fit_to_time(run, fit, 30, 20.0)
    assert run.max_steps == 92 and run.lr_scheduler.scheduler.lr_lambdas[0](92) == 0.0
    # The rate since the previous fit, not since the start: at 50% (30 s) the last 10 steps took 10 s, so
    # 40 + int(0.98 * 1 * 30) = 69 (since the start it would be 39 steps in 28 s: 80).
    _fit_to_time(run, fit, 40, 30.0)
    assert run.max_steps == 69
    # A run that speeds up part-way (660 steps in 15 s) is fitted to its new pace, though never past the recipe's
    # max_steps.
    _fit_to_time(run, fit, 700, 45.0 + 1e-9)
    assert run.max_steps == 1000


def test_fitted_length_is_saved_and_resumed(tiny_model_dir, shapes, shared_cache, tmp_path, recipe) -> None:
    import json

    out = tmp_path / "run"
    cfg = recipe(tiny_model_dir, out, max_steps=100_000, max_minutes=0.1, lr_scheduler="cosine",
                 checkpointing_steps=100_000, cache_dir=str(shared_cache))
    first = train(cfg, dataset=shapes)
    (_, last), = list_checkpoints(out)
    fitted = json.loads((last / "state.json").read_text())["fitted_max_steps"]
    assert 3 <= first.step <= fitted < 100_000
    # Resuming keeps the fitted length (and so the same schedule) rather than going back to max_steps.
    again = train(cfg, dataset=shapes, resume="latest")
    assert first.step <= again.step <= fitted
