"""Full fine-tuning: every U-Net weight trains, optionally the text encoder too (RoentGen's best setting).

Saves a complete diffusers folder (`OUT/pipeline`) that `StableDiffusionPipeline.from_pretrained` loads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from medsd.train.methods import Method

log = logging.getLogger(__name__)


class FullFineTune(Method):
    """Train the U-Net (and text encoder) in float32 under autocast; VAE (and frozen text encoder) stay frozen."""

    name = "full"

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Freeze the VAE (and text encoder unless trained) in `weight_dtype`; trained modules stay float32."""
        c = self.components
        self.weight_dtype = weight_dtype
        c.vae.requires_grad_(False)
        c.vae.to(dtype=weight_dtype)
        c.unet.requires_grad_(True)
        c.unet.to(dtype=torch.float32)
        c.text_encoder.requires_grad_(self.cfg.train_text_encoder)
        c.text_encoder.to(dtype=torch.float32 if self.cfg.train_text_encoder else weight_dtype)
        if self.cfg.train_text_encoder:
            c.text_encoder.train()

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The U-Net, and the text encoder when `train_text_encoder` is on."""
        modules = {"unet": self.components.unet}
        if self.cfg.train_text_encoder:
            modules["text_encoder"] = self.components.text_encoder
        return modules

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """A diffusers folder `out_dir/pipeline` with the trained U-Net (and text encoder), in float32."""
        from diffusers import StableDiffusionPipeline

        c = self.components
        target = Path(out_dir) / "pipeline"
        # Reuse the base model's scheduler and feature extractor; pass every module we hold in memory.
        pipe = StableDiffusionPipeline.from_pretrained(
            c.source, unet=c.unet, text_encoder=c.text_encoder, vae=c.vae, tokenizer=c.tokenizer,
            safety_checker=None, requires_safety_checker=False,
        )
        if self.training.prediction_type is not None:
            pipe.scheduler.register_to_config(prediction_type=self.training.prediction_type)
        pipe.to(torch.float32)
        pipe.save_pretrained(target, safe_serialization=True)
        return {"pipeline": str(target)}
