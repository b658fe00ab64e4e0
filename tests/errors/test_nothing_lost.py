"""Nothing already computed is lost: a damaged newest checkpoint falls back to the one before it, and a run's
artefacts are written before its final validation, so a failing validation cannot take them along."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "trainable.safetensors": _truncate,
    "optimizer.pt": lambda path: path.write_bytes(os.urandom(2048)),
    "state.json": _truncate,
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, make_inputs) -> Path:
    """A LoRA run trained to step 4 with checkpoints at steps 2 and 4; tests resume copies of it."""
    from medsd.cli import main

    folder = tmp_path_factory.mktemp("trained")
    k = make_inputs(folder)
    recipe = k.recipe(k.good_recipe(training={"max_steps": 4, "checkpointing_steps": 2,
                                              "checkpoints_total_limit": 5, "learning_rate": 1e-3}))
    assert main(["-q", "train", recipe]) == 0
    assert sorted(p.name for p in (folder / "run" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    return folder


def _copy_run(trained_run: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the trained run whose recipe points at the copy."""
    shutil.copytree(trained_run / "run", tmp_path / "run")
    recipe = (trained_run / "recipe.yaml").read_text().replace(str(trained_run / "run"), str(tmp_path / "run"))
    (tmp_path / "recipe.yaml").write_text(recipe)
    return tmp_path / "run", str(tmp_path / "recipe.yaml")


@pytest.mark.parametrize("damaged", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(damaged, trained_run, tmp_path, medsd) -> None:
    run, recipe = _copy_run(trained_run, tmp_path)
    newest, previous = run / "checkpoints" / "checkpoint-4", run / "checkpoints" / "checkpoint-2"
    DAMAGE[damaged](newest / damaged)

    result = medsd(["train", recipe, "--set", "training.max_steps=6", "--resume", "latest"])

    assert result.code == 0, result.err[-2000:]
    assert "Traceback" not in result.err
    assert f"checkpoint {newest} is damaged: {damaged}" in result.err
    assert f"resuming from {previous}, the newest intact checkpoint" in result.err
    assert "trained to step 6" in result.out
    state = json.loads((run / "checkpoints" / "checkpoint-6" / "state.json").read_text())
    assert state["step"] == 6
    # the damaged step-4 checkpoint was trained over again and replaced by an intact one
    assert json.loads((newest / "state.json").read_text())["step"] == 4
    assert (run / "pytorch_lora_weights.safetensors").is_file()


def test_resume_from_a_damaged_checkpoint_path_names_the_file(trained_run, tmp_path, medsd) -> None:
    run, recipe = _copy_run(trained_run, tmp_path)
    newest = run / "checkpoints" / "checkpoint-4"
    DAMAGE["optimizer.pt"](newest / "optimizer.pt")
    result = medsd(["train", recipe, "--set", "training.max_steps=6", "--resume", str(newest)])
    assert result.code == 2 and "Traceback" not in result.err
    assert f"checkpoint {newest} is damaged: optimizer.pt is truncated or damaged" in result.errors[0]


def test_every_checkpoint_damaged_is_a_clear_error(trained_run, tmp_path, medsd) -> None:
    run, recipe = _copy_run(trained_run, tmp_path)
    for checkpoint in (run / "checkpoints").iterdir():
        _truncate(checkpoint / "trainable.safetensors")
    result = medsd(["train", recipe, "--set", "training.max_steps=6", "--resume", "latest"])
    assert result.code == 2 and "Traceback" not in result.err
    assert "every checkpoint in" in result.errors[0] and "is damaged" in result.errors[0]


def test_artefacts_are_written_before_a_failing_final_validation(inputs, medsd, monkeypatch) -> None:
    import medsd.train.validation as validation

    def broken(*args, **kwargs):
        raise RuntimeError("the validation renderer broke")

    monkeypatch.setattr(validation, "run_validation", broken)
    recipe = inputs.recipe(inputs.good_recipe(validation={"prompts": ["a chest x-ray"], "steps": 100}))
    result = medsd(["train", recipe])
    assert result.code == 2 and "Traceback" not in result.err
    assert "artefacts are saved" in result.errors[0] and "the validation renderer broke" in result.errors[0]
    run = inputs.dir / "run"
    assert (run / "pytorch_lora_weights.safetensors").stat().st_size > 0
    assert json.loads((run / "artefacts.json").read_text())["method"] == "lora"
