"""What a training method is: the few things that differ between LoRA, full fine-tuning, textual inversion...

The loop (`medsd.train.loop`) owns everything else: data, caches, noise, timesteps, optimizer, precision,
accumulation, checkpoints, validation and logging. A method only says

1. which modules exist and which of their parameters train (`setup`, `trainable_modules`, `param_groups`);
2. how the data is read (`prepare_data`) and how a batch becomes the U-Net's conditioning
   (`encode_condition`; by default the CLIP embedding of `batch["prompt"]`, which the loop caches when
   `conditioning_is_frozen`);
3. the loss (`loss`: MSE with optional min-SNR and region-mask weights; override to add a prior-preservation term);
4. a fix after each optimizer step (`after_step`: textual inversion restores the frozen embedding rows);
5. what a checkpoint holds (`trainable_state_dict` / `load_trainable_state_dict`) and what the run leaves
   behind (`save_artefacts`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from medsd.models import Components
from medsd.train.cache import latent_grid_mask
from medsd.train.config import TrainingConfig

log = logging.getLogger(__name__)


class Method:
    """Base class of every training method; subclasses override only what differs."""

    name = "base"
    # False for methods that need the pixels every step (training the VAE itself): no latent cache then.
    uses_latent_cache = True

    def __init__(self, cfg: BaseModel, components: Components, training: TrainingConfig):
        self.cfg = cfg
        self.components = components
        self.training = training
        self.weight_dtype = torch.float32
        # The run's output folder (set by the loop before `setup`), for methods that write side files.
        self.output_dir: Path | None = None
        # Prepared (accelerate-wrapped) trainable modules, set by the loop via `bind`.
        self.prepared: dict[str, torch.nn.Module] = {}

    # 1. Which parameters train -----------------------------------------------------------------------
    def setup(self, weight_dtype: torch.dtype) -> None:
        """Freeze what does not train, add adapters, move frozen parts to `weight_dtype`."""
        raise NotImplementedError

    def prepare_data(self, dataset: Any) -> Any:
        """Look at (or wrap) the training data before caching and before the optimizer exists.

        Textual inversion adds one token per class here; class-conditional builds its label table. A wrapper that
        changes prompts should define `fingerprint()` so the latent cache (which stores prompts) is keyed by it.
        """
        return dataset

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """Modules holding trained parameters, by name; the loop wraps them with `accelerator.prepare`."""
        raise NotImplementedError

    def param_groups(self, lr: float, text_lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (default: one group per trainable module, text encoder at `text_lr`)."""
        groups = []
        for name, module in self.trainable_modules().items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": text_lr if name == "text_encoder" else lr, "name": name})
        return groups

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every trained parameter (EMA, gradient clipping)."""
        return [p for g in self.param_groups(1.0, 1.0) for p in g["params"]]

    def bind(self, prepared: dict[str, torch.nn.Module]) -> None:
        """Receive the accelerate-wrapped versions of `trainable_modules()` (used in forward passes)."""
        self.prepared = prepared

    def module(self, name: str) -> torch.nn.Module:
        """The module to run forward: the prepared one when it trains, else the frozen component."""
        prepared = self.prepared.get(name)
        return prepared if prepared is not None else getattr(self.components, name)

    # 2. Conditioning ---------------------------------------------------------------------------------
    @property
    def conditioning_is_frozen(self) -> bool:
        """True when `encode_prompts` never changes during training, so its output can be cached."""
        return "text_encoder" not in self.trainable_modules()

    @property
    def prompt_features_are_frozen(self) -> bool:
        """True when `encode_prompts` never changes, so the loop may cache it even if a trained projection
        follows it in `encode_condition` (text-encoder swap); by default the same as `conditioning_is_frozen`."""
        return self.conditioning_is_frozen

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP last hidden states of prompts (padded to the tokenizer's max length)."""
        tokenizer = self.components.tokenizer
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        text_encoder = self.module("text_encoder")
        device = next(self.components.text_encoder.parameters()).device
        return text_encoder(ids.to(device), return_dict=False)[0]

    def encode_condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """The U-Net's `encoder_hidden_states` for a batch; uses cached embeddings when the loop put them there."""
        if "encoder_hidden_states" in batch:
            return batch["encoder_hidden_states"]
        return self.encode_prompts(list(batch["prompt"]))

    # 3. Loss -----------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Replace the whole denoising step (the autoencoder trains on pixels); None: the loop's diffusion loss."""
        return None

    def loss(
        self, model_pred: torch.Tensor, target: torch.Tensor, batch: dict[str, Any], weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-batch training loss; `weights` are per-sample min-SNR weights (None: plain MSE).

        With `training.masked_loss_weight` W and a batch carrying `loss_mask`, each latent cell's error counts
        1 + W x (the share of the cell inside the image's masks), averaged over all cells: the masked regions
        get W extra without the rest of the image losing any (kohya's `masked_loss` keeps only the masked
        region, which would leave the anatomy around a finding untrained; a weighted mean per image would
        shrink the weight of everything outside an image's masks as they grow, and drew the heart normal
        beside a large effusion).
        """
        region = batch.get("loss_mask")
        extra = self.training.masked_loss_weight
        if weights is None and (region is None or not extra):
            return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        error = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        if region is not None and extra:
            error = error * (1 + extra * latent_grid_mask(region.to(error.device), error.shape[-2:]))
        per_sample = error.mean(dim=(1, 2, 3))
        return (per_sample * weights).mean() if weights is not None else per_sample.mean()

    # 4. After each optimizer step -------------------------------------------------------------------
    def after_step(self) -> None:
        """Hook run after every optimizer step (textual inversion restores frozen embedding rows here)."""

    # 5. Checkpoints and artefacts --------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained weights, keyed `module.param`, for a checkpoint (only what trains: LoRA saves adapters)."""
        state = {}
        for name, module in self.trainable_modules().items():
            for key, value in module.state_dict().items():
                state[f"{name}.{key}"] = value
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `trainable_state_dict`."""
        for name, module in self.trainable_modules().items():
            prefix = f"{name}."
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """Write the run's final, standard-format outputs under `out_dir`; returns {kind: path}."""
        raise NotImplementedError

    def validate(
        self, cfg: Any, step: int, out_dir: Path, resolution: int, writer: Any = None, ema: Any = None,
        weight_dtype: torch.dtype | None = None,
    ) -> Path | None:
        """Validation images at `step` (default: the prompts x seeds grid of `medsd.train.validation`)."""
        from medsd.train.validation import run_validation

        return run_validation(self, cfg, step, out_dir, resolution, self.components.noise_scheduler, writer, ema,
                              weight_dtype)

    def validation_pipeline(self, scheduler: Any) -> Any:
        """An inference pipeline built from the live (in-memory) modules, for validation images."""
        from diffusers import StableDiffusionPipeline

        c = self.components
        pipe = StableDiffusionPipeline(
            vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def describe(self) -> str:
        """One line for the log: what trains and how many parameters."""
        n = sum(p.numel() for p in self.trainable_parameters())
        return f"method {self.name}: {n:,} trainable parameters in {', '.join(self.trainable_modules())}"


# name -> "module:Class": a new method is one file and one line here.
METHODS: dict[str, str] = {
    "lora": "medsd.train.lora:LoraFineTune",
    "full": "medsd.train.full:FullFineTune",
    "textual_inversion": "medsd.train.textual_inversion:TextualInversion",
    "dreambooth": "medsd.train.dreambooth:DreamBooth",
    "text_encoder_swap": "medsd.train.text_encoder_swap:TextEncoderSwap",
    "class_conditional": "medsd.train.class_conditional:ClassConditional",
    "autoencoder": "medsd.train.autoencoder:Autoencoder",
    "report_reader": "medsd.train.report_reader:ReportReader",
}


def save_pipeline_folder(components: Components, target: Path, prediction_type: str | None = None) -> Path:
    """The modules in memory as a float32 `StableDiffusionPipeline` folder; the base model's folder supplies the
    scheduler and feature extractor."""
    from diffusers import StableDiffusionPipeline

    c = components
    pipe = StableDiffusionPipeline.from_pretrained(
        c.source, unet=c.unet, text_encoder=c.text_encoder, vae=c.vae, tokenizer=c.tokenizer,
        safety_checker=None, requires_safety_checker=False,
    )
    if prediction_type is not None:
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    pipe.to(torch.float32)
    pipe.save_pretrained(target, safe_serialization=True)
    return Path(target)


def build_method(cfg: BaseModel, components: Components, training: TrainingConfig) -> Method:
    """The Method for a `method:` section, chosen by its `name` in `METHODS`."""
    import importlib

    from medsd.errors import MedsdError

    name = getattr(cfg, "name", None)
    if name not in METHODS:
        raise MedsdError(f"method.name={name!r} is not one of {', '.join(METHODS)}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(cfg, components, training)
