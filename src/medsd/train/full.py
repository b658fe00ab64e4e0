"""Full fine-tuning: every U-Net weight trains, optionally the text encoder too (RoentGen's best setting).

With `init: scratch` and `vae:` it trains a text-to-image model from scratch in another autoencoder's latent
space (the demo's phantom model); `caption_dropout` trains the unconditional branch for classifier-free
guidance. Saves a complete diffusers folder (`OUT/pipeline`, VAE included) that
`StableDiffusionPipeline.from_pretrained` loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medsd.train.methods import Method, save_pipeline_folder

log = logging.getLogger(__name__)


class FullFineTune(Method):
    """Train the U-Net (and text encoder) in float32 under autocast; VAE (and frozen text encoder) stay frozen."""

    name = "full"

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Swap in `method.vae` and a fresh U-Net when asked; freeze the VAE (and the text encoder unless it
        trains) in `weight_dtype`; trained modules stay float32."""
        from medsd.train.class_conditional import load_vae
        from medsd.train.conditioning import fresh_unet

        c = self.components
        self.weight_dtype = weight_dtype
        device = next(c.unet.parameters()).device
        # DreamBooth shares this setup; its settings have neither field.
        if getattr(self.cfg, "vae", None):
            c.vae = load_vae(self.cfg.vae).to(device)
        if getattr(self.cfg, "init", "pretrained") == "scratch":
            c.unet = fresh_unet(c.unet, c.vae.config.latent_channels, getattr(self.cfg, "unet_config", None)).to(device)
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

    def encode_condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """Text embeddings of the batch, a `caption_dropout` share of them those of the empty prompt."""
        p = getattr(self.cfg, "caption_dropout", 0.0)
        if not p:
            return super().encode_condition(batch)
        drop = torch.rand(len(batch["prompt"])) < p
        if "encoder_hidden_states" in batch:  # cached by a frozen encoder: swap in the empty prompt's rows
            cond = batch["encoder_hidden_states"].clone()
            if drop.any():
                cond[drop.to(cond.device)] = self.encode_prompts([""]).to(cond.dtype)
            return cond
        return self.encode_prompts(["" if d else prompt for d, prompt in zip(drop.tolist(), batch["prompt"])])

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """A diffusers folder `out_dir/pipeline` with the trained U-Net (and text encoder), in float32."""
        target = save_pipeline_folder(self.components, Path(out_dir) / "pipeline", self.training.prediction_type)
        return {"pipeline": str(target)}
