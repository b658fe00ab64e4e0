"""Stage 1 of Medfusion / latent diffusion: train the VAE (AutoencoderKL) on the images themselves.

A diffusion model can only be as good as its latent space. Real Stable Diffusion weights bring a VAE that
already reconstructs chest X-rays well; a tiny offline model's VAE is random, so the `class_conditional`
demo first trains this one. Loss (LDM's, divided by the pixel count so weights keep their meaning):
L1 or MSE reconstruction + `kl_weight` x KL(posterior || N(0, I)) summed over latent elements (+ optional
1 - SSIM). The U-Net and text encoder are not used; the data is read as pixels (no latent cache, which would
need the VAE being trained).

The saved VAE's `scaling_factor` is 1 / std of its latents (tracked during training, as LDM prescribes), so
a diffusion model trained on it sees unit-variance latents.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medsd.errors import MedsdError
from medsd.train.conditioning import cast, set_trainable
from medsd.train.methods import Method

log = logging.getLogger(__name__)


class VaeStep(torch.nn.Module):
    """encode -> sample -> decode as one forward, so accelerate (DDP, autocast) wraps the whole training pass."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, per-sample KL summed over latent elements, latents)."""
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        return self.vae.decode(latents).sample, posterior.kl(), latents


class Autoencoder(Method):
    """Train the VAE; everything else stays frozen and unused."""

    name = "autoencoder"
    uses_latent_cache = False

    def setup(self, weight_dtype: torch.dtype) -> None:
        """Train the model's VAE (or a fresh one of the same shape) in float32; freeze the rest."""
        from diffusers import AutoencoderKL

        c = self.components
        self.weight_dtype = weight_dtype
        if self.cfg.init == "scratch":
            device = next(c.vae.parameters()).device
            config = {**c.vae.config, "latent_channels": self.cfg.latent_channels or c.vae.config.latent_channels}
            c.vae = AutoencoderKL.from_config(config).to(device)
        elif self.cfg.latent_channels not in (None, c.vae.config.latent_channels):
            raise MedsdError(f"method.latent_channels={self.cfg.latent_channels} needs init: scratch (the model's VAE "
                             f"has {c.vae.config.latent_channels})")
        for module in (c.unet, c.text_encoder):
            set_trainable(module, False, weight_dtype)
        set_trainable(c.vae, True, weight_dtype)
        # Running variance of the latents (EMA over recent steps: the VAE keeps changing) -> scaling factor.
        self.latent_var = torch.tensor(-1.0)
        self.validation_pixels: torch.Tensor | None = None
        self.step_module = VaeStep(c.vae)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The VAE (inside its encode-decode wrapper)."""
        return {"autoencoder": self.step_module}

    @property
    def conditioning_is_frozen(self) -> bool:
        """Nothing is conditioned; say so, so that no text cache is built."""
        return False

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Reconstruction + KL (+ SSIM) of one batch of pixels in [-1, 1]."""
        device = next(self.components.vae.parameters()).device
        pixels = batch["pixel_values"].to(device, torch.float32)
        if self.validation_pixels is None:
            self.validation_pixels = pixels[: self.cfg.num_validation_images].detach().cpu()
        pixels = self._random_crop(pixels)
        reconstruction, kl, latents = self.module("autoencoder")(pixels, self.cfg.sample_posterior)
        self._track_scale(latents.detach())
        if self.cfg.reconstruction == "l1":
            loss = F.l1_loss(reconstruction.float(), pixels)
        else:
            loss = F.mse_loss(reconstruction.float(), pixels)
        pixels_per_sample = pixels[0].numel()
        loss = loss + self.cfg.kl_weight * kl.mean() / pixels_per_sample
        if self.cfg.ssim_weight:
            from torchmetrics.functional.image import structural_similarity_index_measure as ssim

            loss = loss + self.cfg.ssim_weight * (1 - ssim((reconstruction.float() + 1) / 2, (pixels + 1) / 2,
                                                           data_range=1.0))
        return loss

    def _random_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """One random crop for the whole batch (drawn from the global RNG, so a resumed run repeats it)."""
        size = self.cfg.crop_size
        height, width = pixels.shape[-2:]
        if not size or (size >= height and size >= width):
            return pixels
        top = int(torch.randint(0, max(height - size, 0) + 1, ()))
        left = int(torch.randint(0, max(width - size, 0) + 1, ()))
        return pixels[..., top:top + size, left:left + size]

    def _track_scale(self, latents: torch.Tensor) -> None:
        var = latents.float().var().cpu()
        self.latent_var = var if self.latent_var < 0 else 0.98 * self.latent_var + 0.02 * var

    @property
    def scaling_factor(self) -> float:
        """1 / std of recent latents (the configured factor before any step)."""
        if self.latent_var <= 0:
            return float(self.components.vae.config.scaling_factor)
        return float(1.0 / self.latent_var.sqrt())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The VAE's weights plus the running latent variance (so a resumed run keeps its scaling factor)."""
        return {**super().trainable_state_dict(), "stats.latent_var": self.latent_var.reshape(1).clone()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `trainable_state_dict`."""
        state = dict(state)
        self.latent_var = state.pop("stats.latent_var", torch.tensor([-1.0])).reshape(())
        super().load_trainable_state_dict(state)

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """Posterior-mean reconstructions of pixels in [-1, 1]."""
        vae = self.components.vae
        device = next(vae.parameters()).device
        return vae.decode(vae.encode(pixels.to(device, torch.float32)).latent_dist.mode()).sample.clamp(-1, 1).cpu()

    def validate(self, cfg: Any, step: int, out_dir: Path, resolution: int, writer: Any = None, ema: Any = None,
                 weight_dtype: torch.dtype | None = None) -> Path | None:
        """A grid of originals (top row) and their reconstructions (bottom row) from the first training batch."""
        from medsd.train.validation import image_grid

        if self.validation_pixels is None:
            return None
        params = self.trainable_parameters()
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        vae = self.components.vae
        mode = vae.training
        vae.eval()
        try:
            recon = self.reconstruct(self.validation_pixels)
        finally:
            vae.train(mode)
            if ema is not None:
                ema.restore(params)
        rows = [[((img.permute(1, 2, 0).numpy() + 1) / 2) for img in t] for t in (self.validation_pixels, recon)]
        path = Path(out_dir) / "validation" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(rows).save(path)
        if writer is not None:
            pair = torch.stack([self.validation_pixels[0], recon[0]]) / 2 + 0.5
            writer.add_images("validation/reconstruction", pair.clamp(0, 1), step)
        error = float((recon - self.validation_pixels).abs().mean())
        log.info("validation step %d: reconstruction L1 %.4f, latent scaling factor %.3f -> %s", step, error,
                 self.scaling_factor, path)
        return path

    def save_artefacts(self, out_dir: Path) -> dict[str, str]:
        """OUT/vae: a diffusers AutoencoderKL folder with the measured scaling factor."""
        vae = self.components.vae
        vae.register_to_config(scaling_factor=self.scaling_factor)
        target = Path(out_dir) / "vae"
        cast(vae, torch.float32).save_pretrained(target, safe_serialization=True)
        return {"vae": str(target)}
