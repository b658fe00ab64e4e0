"""One diffusion training step's arithmetic: latents, noise, timesteps, target, prediction, loss."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from medsd.errors import MedsdError
from medsd.train.checkpoint import list_checkpoints
from medsd.train.config import TrainingConfig
from medsd.train.methods import Method


def sample_latents(method: Method, batch: dict[str, Any], accelerator: Any) -> torch.Tensor:
    """Step 1: sample latents from the cached distribution, or encode the pixels now."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    vae = method.components.vae
    if "latent_params" in batch:
        dist = DiagonalGaussianDistribution(batch["latent_params"].to(accelerator.device, torch.float32))
    else:
        with torch.no_grad():
            dist = vae.encode(batch["pixel_values"].to(accelerator.device, method.weight_dtype)).latent_dist
    latents = dist.sample().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def diffusion_loss(
    method: Method, batch: dict[str, Any], scheduler: Any, tc: TrainingConfig, encode_text: Any, accelerator: Any
) -> torch.Tensor:
    """Steps 1-5 for one micro-batch: the denoising loss."""
    latents = sample_latents(method, batch, accelerator)
    noise = torch.randn_like(latents)
    if tc.noise_offset:
        noise += tc.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device)
    t = sample_timesteps(scheduler.config.num_train_timesteps, latents.shape[0], tc, latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    if encode_text is not None and "encoder_hidden_states" not in batch:
        batch["encoder_hidden_states"] = encode_text(list(batch["prompt"]))
    with torch.no_grad() if method.conditioning_is_frozen else nullcontext():
        cond = method.encode_condition(batch)
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        target = noise
    elif prediction == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        raise MedsdError(f"prediction type {prediction!r} is not supported; use epsilon or v_prediction")
    model_pred = method.module("unet")(noisy, t, cond, return_dict=False)[0]
    weights = min_snr_weights(scheduler, t, tc.min_snr_gamma, prediction) if tc.min_snr_gamma else None
    return method.loss(model_pred, target, batch, weights)


def sample_timesteps(num_train_timesteps: int, n: int, tc: TrainingConfig, device: Any) -> torch.Tensor:
    """Training timesteps: uniform, or SD3's logit-normal density (diffusers' own sampler)."""
    if tc.timestep_sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (n,), device=device).long()
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=tc.timestep_logit_mean,
                                              logit_std=tc.timestep_logit_std)
    return (u * num_train_timesteps).long().clamp(max=num_train_timesteps - 1).to(device)


def gather_losses(losses: torch.Tensor, accelerator: Any) -> list[float]:
    """Step losses (a 1-D tensor on the device) averaged over processes, read back in one transfer."""
    gathered = accelerator.gather(losses.detach().float().reshape(1, -1))
    return gathered.reshape(-1, losses.numel()).mean(0).tolist()


def raise_if_not_finite(steps: list[int], losses: list[float], out: Path) -> None:
    """NaN / inf in any step's loss stops every process (they all read the same gathered values): MedsdError."""
    bad = next(((step, loss) for step, loss in zip(steps, losses, strict=True) if not math.isfinite(loss)), None)
    if bad is not None:
        raise MedsdError(_nan_message(*bad, steps[-1], out))


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, gamma) / SNR, or / (SNR + 1) for v-prediction."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


def _nan_message(step: int, value: float, read_at: int, out: Path) -> str:
    found = list_checkpoints(out)
    last = f"the last good checkpoint is {found[-1][1]} (resume with --resume latest)" if found else \
        "no checkpoint was written yet"
    return (f"training loss became {value} at step {step}; the run stopped at step {read_at} without saving "
            f"anything after it, and {last}. Lower training.learning_rate, use mixed_precision bf16 instead of fp16, "
            "or check the data for NaN / constant images")
