"""The whole recipe of a run: `model`, `data`, `training`, `method` and `validation` sections, validated once."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from medsd.config_base import StrictModel, apply_overrides, read_yaml, validate
from medsd.data.config import DataConfig
from medsd.errors import MedsdError
from medsd.models import ModelConfig
from medsd.train.config import LoraMethod, MethodConfig, TrainingConfig, ValidationConfig


class RunConfig(StrictModel):
    """A training recipe (one YAML file in configs/)."""

    output_dir: str = Field("runs/medsd", description="Where checkpoints, logs, artefacts and the resolved config go.")
    seed: int = Field(0, ge=0, description="Seed for weights init, data order and noise.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Which diffusion model to start from.")
    data: DataConfig = Field(default_factory=DataConfig, description="Which images and prompts to train on.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation settings.")
    method: MethodConfig = Field(default_factory=LoraMethod, description="What trains and how it is saved.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Validation prompts.")

    @model_validator(mode="after")
    def _masked_loss_has_masks(self) -> RunConfig:
        if self.training.masked_loss_weight and not self.data.mask_columns:
            raise ValueError("training.masked_loss_weight needs region masks: name their CSV columns in "
                             "data.mask_columns, or set masked_loss_weight to 0")
        return self


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe, apply `--set key.sub=value` overrides and validate it (MedsdError on any problem)."""
    from medsd.train.precision import check_precision_settings

    data = apply_overrides(read_yaml(path), overrides, RunConfig)
    cfg = validate(RunConfig, data, str(path))
    try:
        check_precision_settings(cfg)
    except MedsdError as err:
        raise MedsdError(f"{path}: {err}") from None
    return cfg
