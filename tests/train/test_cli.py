"""`medsd train CONFIG --set ... --resume latest` wiring (the data set is stubbed; the loop is the real one)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from medsd.config import load_run_config
from medsd.config_base import dump_yaml
from medsd.train import cli

ROOT = Path(__file__).parents[2]


RECIPES = ["chexpert_lora_sd15.yaml", "roentgen_full.yaml", "tiny_lora.yaml", "tiny_full.yaml"]


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_validate(name):
    cfg = load_run_config(ROOT / "configs" / name)
    assert cfg.method.name in {"lora", "full"}


def test_recipe_values_match_the_seed_settings():
    lora = load_run_config(ROOT / "configs/chexpert_lora_sd15.yaml")
    t = lora.training
    assert (lora.method.rank, lora.method.alpha, t.mixed_precision) == (4, 4, "fp16")
    assert (t.batch_size, t.gradient_accumulation_steps, t.learning_rate, t.checkpointing_steps) == (1, 4, 1e-4, 500)
    full = load_run_config(ROOT / "configs/roentgen_full.yaml")
    assert full.method.train_text_encoder and full.training.mixed_precision == "bf16"
    assert full.training.learning_rate == 5e-5 and full.training.max_steps == 60_000
    assert full.training.batch_size * full.training.gradient_accumulation_steps * 8 == 256


def test_cli_trains_with_overrides_and_resumes(tiny_model_dir, shapes, shared_cache, tmp_path, recipe, monkeypatch,
                                               capsys):
    import medsd.data.dataset

    monkeypatch.setattr(medsd.data.dataset, "build_dataset", lambda cfg, split=None: shapes, raising=False)
    config = dump_yaml(recipe(tiny_model_dir, tmp_path / "run", "lora", max_steps=50), tmp_path / "recipe.yaml")
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    sets = ["--set", "training.max_steps=2", "--set", f"training.cache_dir={shared_cache}"]
    args = parser.parse_args([str(config), *sets])
    assert args.func(args) == 0
    assert "lora:" in capsys.readouterr().out
    resolved = load_run_config(tmp_path / "run" / "config.yaml")
    assert resolved.training.max_steps == 2

    args = parser.parse_args([str(config), *sets, "--set", "training.max_steps=3", "--resume", "latest"])
    assert args.func(args) == 0
    assert "trained to step 3" in capsys.readouterr().out
