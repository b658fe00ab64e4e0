"""DreamBooth (Ruiz et al. 2023): full U-Net fine-tuning plus a prior-preservation loss on class images.

The class images are what the *base* model draws for a generic `class_prompt` ("a chest X-ray"); training on
them alongside the instance images keeps the model from forgetting the class while it learns the findings.
They are generated once into a folder keyed by model, prompt and resolution and reused (also by later runs);
their latents are encoded once and kept in memory. The loss is diffusers' `train_dreambooth.py` loss: instance
MSE + `prior_loss_weight` x class MSE, the class half drawn at random (seeded, so it resumes) every step.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsd.train.full import FullFineTune

log = logging.getLogger(__name__)


def class_images_key(source: str, prompt: str, resolution: int, steps: int, guidance: float) -> str:
    """What makes two sets of class images interchangeable: model, prompt, size and sampler settings."""
    text = f"{source}|{prompt}|{resolution}|{steps}|{guidance:g}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class DreamBooth(FullFineTune):
    """Full fine-tuning (U-Net, optionally text encoder) with a prior-preservation term in the loss."""

    name = "dreambooth"

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Make (or find) the class images with the untouched base model, encode them, then freeze / unfreeze."""
        if self.cfg.with_prior_preservation:
            from accelerate import PartialState

            # With several processes the main one generates; the others then find the images there.
            with PartialState().main_process_first():
                folder = self.ensure_class_images()
            self.class_latent_params = self._encode_class_images(folder)
        super().setup(weight_dtype)
        self._class_embeds: torch.Tensor | None = None

    @property
    def resolution(self) -> int:
        """Side of the class images (config, else the model's default size)."""
        if self.cfg.class_resolution:
            return self.cfg.class_resolution
        c = self.components
        sample = c.unet.config.sample_size
        side = sample if isinstance(sample, int) else sample[0]
        return side * 2 ** (len(c.vae.config.block_out_channels) - 1)

    def class_images_dir(self) -> Path:
        """Configured folder, else OUTPUT/class_images/KEY (or ./class_images/KEY before the loop names OUTPUT)."""
        if self.cfg.class_images_dir:
            return Path(self.cfg.class_images_dir)
        key = class_images_key(self.components.source, self.cfg.class_prompt, self.resolution,
                               self.cfg.class_inference_steps, self.cfg.class_guidance_scale)
        root = getattr(self, "output_dir", None) or Path(".")
        return Path(root) / "class_images" / key

    @torch.no_grad()
    def ensure_class_images(self) -> Path:
        """Generate class images with the base model until the folder holds `num_class_images` PNGs."""
        from PIL import Image
        from tqdm.auto import tqdm

        folder = self.class_images_dir()
        folder.mkdir(parents=True, exist_ok=True)
        have = sorted(folder.glob("*.png"))
        missing = self.cfg.num_class_images - len(have)
        if missing <= 0:
            log.info("prior preservation: using %d class images from %s", self.cfg.num_class_images, folder)
            return folder
        log.info("prior preservation: generating %d class images of %r into %s", missing, self.cfg.class_prompt,
                 folder)
        pipe = self.validation_pipeline(self._sampler())
        device = next(self.components.unet.parameters()).device
        start = len(have)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for first in tqdm(range(start, start + missing, self.cfg.class_batch_size), desc="class images"):
                count = min(self.cfg.class_batch_size, start + missing - first)
                # Seed per image index: the folder's content does not depend on how it was batched or resumed.
                generators = [torch.Generator(device).manual_seed(first + i) for i in range(count)]
                images = pipe([self.cfg.class_prompt] * count, num_inference_steps=self.cfg.class_inference_steps,
                              guidance_scale=self.cfg.class_guidance_scale, height=self.resolution,
                              width=self.resolution, generator=generators, output_type="np").images
                for i, image in enumerate(images):
                    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(
                        folder / f"class-{first + i:06d}.png")
        return folder

    def _sampler(self) -> Any:
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(self.components.noise_scheduler.config)

    @torch.no_grad()
    def _encode_class_images(self, folder: Path) -> torch.Tensor:
        """Latent distribution parameters [N, 2C, h, w] of the first `num_class_images` PNGs in `folder`."""
        from PIL import Image

        vae = self.components.vae
        device = next(vae.parameters()).device
        paths = sorted(folder.glob("*.png"))[: self.cfg.num_class_images]
        params = []
        for i in range(0, len(paths), 8):
            pixels = []
            for path in paths[i:i + 8]:
                image = Image.open(path).convert("RGB").resize((self.resolution, self.resolution))
                pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
            batch = torch.stack(pixels).to(device, next(vae.parameters()).dtype)
            params.append(vae.encode(batch).latent_dist.parameters.float())
        return torch.cat(params)

    def loss(
        self, model_pred: torch.Tensor, target: torch.Tensor, batch: dict[str, Any], weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Instance loss + prior_loss_weight x class loss (class samples drawn from the cached class latents)."""
        instance = super().loss(model_pred, target, batch, weights)
        if not self.cfg.with_prior_preservation or self.cfg.prior_loss_weight == 0:
            return instance
        return instance + self.cfg.prior_loss_weight * self.prior_loss(model_pred.shape[0])

    def prior_loss(self, n: int) -> torch.Tensor:
        """The denoising loss of the current U-Net on `n` random class images with the class prompt."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        scheduler, vae = self.components.noise_scheduler, self.components.vae
        device = next(self.components.unet.parameters()).device
        pick = torch.randint(0, len(self.class_latent_params), (n,))
        dist = DiagonalGaussianDistribution(self.class_latent_params[pick].to(device))
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (dist.sample() - shift) * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), device=device).long()
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        pred = self.module("unet")(noisy, t, self._class_condition(n), return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float())

    def _class_condition(self, n: int) -> torch.Tensor:
        if self.cfg.train_text_encoder:
            return self.encode_prompts([self.cfg.class_prompt] * n)
        if self._class_embeds is None:
            # The frozen encoder's class embedding never changes: encode it once.
            with torch.no_grad():
                self._class_embeds = self.encode_prompts([self.cfg.class_prompt])
        return self._class_embeds.expand(n, -1, -1)
