"""Config validation: good recipes load, bad ones fail before work with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsd.config import RunConfig, load_run_config
from medsd.config_base import dump_yaml, load_yaml_section, parse_override
from medsd.errors import MedsdError
from medsd.models import ModelConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_good_recipe_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  pretrained: /some/model\ntraining:\n  max_steps: 5\n  learning_rate: 0.001\n")
    cfg = load_run_config(path, ["training.max_steps=10", "method.name=full", "model.dtype=bfloat16",
                                 "training.mixed_precision=bf16"])
    assert cfg.training.max_steps == 10
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    assert cfg.method.name == "full"
    assert cfg.model.dtype == "bfloat16"
    assert cfg.model.pretrained == "/some/model"


def test_defaults_without_file_sections(tmp_path: Path) -> None:
    cfg = load_run_config(write(tmp_path, "{}\n"))
    assert cfg == RunConfig()
    assert cfg.method.name == "lora"


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("training:\n  bogus: 1\n", [], ["training.bogus: unknown key", "allowed keys here:", "max_steps"]),
        ("training:\n  max_steps: zero\n", [], ["training.max_steps", "'zero'"]),
        ("training:\n  learning_rate: -1\n", [], ["training.learning_rate", "greater than 0", "-1"]),
        ("model:\n  dtype: float8\n", [], ["model.dtype", "float32", "'float8'"]),
        ("{}\n", ["training.batch_size=0"], ["training.batch_size", "greater than or equal to 1"]),
        ("{}\n", ["nosuchsection.x=1"], ["nosuchsection: unknown key", "training"]),
        ("method:\n  name: dreamy\n", [], ["method", "'lora'", "'full'"]),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, overrides: list[str], expected: list[str]) -> None:
    with pytest.raises(MedsdError) as info:
        load_run_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert str(tmp_path / "recipe.yaml") in message
    for part in expected:
        assert part in message


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MedsdError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    with pytest.raises(MedsdError, match="not valid YAML"):
        load_run_config(write(tmp_path, "training: [unclosed\n"))
    with pytest.raises(MedsdError, match="must hold a mapping"):
        load_run_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(MedsdError, match="key.sub=value"):
        load_run_config(write(tmp_path, "{}\n"), ["training.max_steps"])
    with pytest.raises(MedsdError, match="is a value, not a section"):
        load_run_config(write(tmp_path, "seed: 3\n"), ["seed.x=1"])


def test_override_values_are_yaml_typed() -> None:
    assert parse_override("a.b=10") == (["a", "b"], 10)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a.b=some/path") == (["a", "b"], "some/path")


def test_section_loading_and_resolved_dump(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  pretrained: x\n  device: cpu\n")
    model = load_yaml_section(path, "model", ModelConfig, ["model.dtype=float16", "training.max_steps=3"])
    assert (model.pretrained, model.device, model.dtype) == ("x", "cpu", "float16")
    with pytest.raises(MedsdError, match="model.colour: unknown key"):
        load_yaml_section(write(tmp_path, "model:\n  colour: red\n"), "model", ModelConfig)
    cfg = load_run_config(write(tmp_path, "seed: 7\n"))
    dumped = dump_yaml(cfg, tmp_path / "run" / "config.yaml")
    assert load_run_config(dumped) == cfg
