"""The denoising loop, written out: encode → one batched U-Net call for all guidance terms → scheduler step.

It follows `StableDiffusionPipeline.__call__` step for step (same noise, same arithmetic), so a plain prompt
gives the same image as diffusers; it adds composable prompts (several weighted conditional predictions per
image), conditions given as precomputed encoder hidden states (class-conditional models, interpolation) and
RePaint-style latent blending for inpainting with an ordinary model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from medsd.errors import MedsdError
from medsd.generate.compose import parse_prompt
from medsd.generate.loading import LoadedModel
from medsd.generate.schedulers import make_scheduler

# A condition term is (weight, text) or (weight, encoder hidden states of shape [seq, dim]).
TermValue = str | torch.Tensor


@dataclass
class Condition:
    """What one image is conditioned on: weighted terms plus the negative (unconditional) prompt."""

    terms: list[tuple[float, TermValue]]
    negative: TermValue = ""

    @classmethod
    def from_prompt(cls, prompt: str, negative: str = "") -> Condition:
        """Parse a plain or composable prompt ("0.3*<a> AND 0.7*<b>")."""
        return cls([(t.weight, t.text) for t in parse_prompt(prompt)], negative)

    @property
    def plain(self) -> bool:
        return len(self.terms) == 1 and self.terms[0][0] == 1.0


@dataclass
class Inpainting:
    """Known image content for RePaint-style blending: latents of the image and a latent-size mask (1 = redo)."""

    latents: torch.Tensor
    mask: torch.Tensor
    resample: int = 1  # RePaint jumps per step (needs a stateless scheduler: ddim or ddpm)


def sample(
    model: LoadedModel,
    conditions: list[Condition],
    seeds: list[int],
    steps: int = 50,
    guidance: float = 7.5,
    scheduler: str = "pndm",
    height: int | None = None,
    width: int | None = None,
    inpainting: Inpainting | None = None,
) -> np.ndarray:
    """Generate one image per condition (image i from `seeds[i]`); returns float images [n, H, W, 3] in [0, 1]."""
    with torch.inference_mode():
        latents = denoise(model, conditions, seeds, steps, guidance, scheduler, height, width, inpainting)
        return decode(model, latents)


def denoise(
    model: LoadedModel,
    conditions: list[Condition],
    seeds: list[int],
    steps: int,
    guidance: float,
    scheduler: str,
    height: int | None,
    width: int | None,
    inpainting: Inpainting | None = None,
) -> torch.Tensor:
    """Steps 1-5 of sampling; returns the final latents."""
    device, dtype, n = model.device, model.dtype, len(conditions)
    height, width = height or model.default_size, width or model.default_size
    # Classifier-free guidance as diffusers decides it; composable prompts always need the unconditional term.
    use_uncond = guidance > 1.0 or not all(c.plain for c in conditions)

    # 1. Encode every distinct text once; the U-Net batch is [uncond of each image] + [each term of each image].
    rows, row_image, row_weight = [], [], []
    if use_uncond:
        rows += [c.negative for c in conditions]
    for i, cond in enumerate(conditions):
        for weight, value in cond.terms:
            rows.append(value)
            row_image.append(i)
            row_weight.append(weight)
    embeds = encode_rows(model, rows).to(device=device, dtype=dtype)
    term_image = torch.tensor(row_image, device=device)
    term_weight = torch.tensor(row_weight, device=device, dtype=dtype).view(-1, 1, 1, 1)
    unet_image = torch.cat([torch.arange(n, device=device), term_image]) if use_uncond else term_image

    # 2. Timesteps from a fresh scheduler built on the model's own noise-schedule config.
    sched = make_scheduler(scheduler, model.scheduler_config)
    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps

    # 3. Initial noise: one generator per image, so an image depends only on its seed, not on the batch.
    from diffusers.utils.torch_utils import randn_tensor

    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    shape = (n, model.unet.config.in_channels, height // model.vae_scale_factor, width // model.vae_scale_factor)
    noise = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    latents = noise * sched.init_noise_sigma
    extra = _extra_step_kwargs(sched, generators)

    # 4. Denoising loop.
    for i, t in enumerate(timesteps):
        repeats = inpainting.resample if inpainting is not None and i < len(timesteps) - 1 else 1
        for r in range(repeats):
            latent_in = sched.scale_model_input(latents[unet_image], t)
            pred = model.unet(latent_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
            noise_pred = combine_predictions(pred, n, use_uncond, guidance, term_image, term_weight)
            stepped = sched.step(noise_pred, t, latents, **extra, return_dict=False)[0]

            # 5. Inpainting: put the known region back, noised to the level of the next step (RePaint-style).
            if inpainting is not None:
                known = inpainting.latents
                if i < len(timesteps) - 1:
                    known = sched.add_noise(known, noise, timesteps[i + 1 : i + 2])
                stepped = (1 - inpainting.mask) * known + inpainting.mask * stepped
            # RePaint resampling: diffuse back to level t and denoise again, so the new region harmonises.
            latents = renoise(sched, stepped, t, timesteps[i + 1], generators) if r < repeats - 1 else stepped
    return latents


RESAMPLE_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")


def renoise(
    sched: object, latents: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, generators: list[torch.Generator]
) -> torch.Tensor:
    """q(x_t | x_prev): one forward-diffusion jump from level t_prev back up to level t (RePaint)."""
    from diffusers.utils.torch_utils import randn_tensor

    if type(sched).__name__ not in RESAMPLE_SCHEDULERS:
        raise MedsdError(f"inpainting resampling needs a stateless scheduler (ddim or ddpm), not "
                         f"{type(sched).__name__}")
    alphas = sched.alphas_cumprod.to(latents.device)
    ratio = alphas[int(t)] / alphas[int(t_prev)]
    z = randn_tensor(latents.shape, generator=generators, device=latents.device, dtype=latents.dtype)
    return ratio.sqrt().to(latents.dtype) * latents + (1 - ratio).sqrt().to(latents.dtype) * z


def combine_predictions(
    pred: torch.Tensor, n: int, use_uncond: bool, guidance: float, term_image: torch.Tensor, term_weight: torch.Tensor
) -> torch.Tensor:
    """eps = eps_uncond + g * sum_i w_i (eps_i - eps_uncond)  (Liu et al.; one term of weight 1 is plain CFG)."""
    if not use_uncond:
        # guidance <= 1 with plain prompts: diffusers uses the conditional prediction alone.
        return pred
    uncond, cond = pred[:n], pred[n:]
    delta = torch.zeros_like(uncond).index_add_(0, term_image, term_weight * (cond - uncond[term_image]))
    return uncond + guidance * delta


def encode_rows(model: LoadedModel, rows: list[TermValue]) -> torch.Tensor:
    """Encoder hidden states for each row: texts are encoded in one call (once each), tensors used as given."""
    texts = list(dict.fromkeys(r for r in rows if isinstance(r, str)))
    encoded = dict(zip(texts, model.encode(texts), strict=True)) if texts else {}
    out = [encoded[r] if isinstance(r, str) else r for r in rows]
    return torch.stack([o.to(model.device) for o in out])


def decode(model: LoadedModel, latents: torch.Tensor) -> np.ndarray:
    """6. VAE decode to [n, H, W, 3] floats in [0, 1] (the same arithmetic as diffusers' image processor)."""
    vae = model.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


def encode_image(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """VAE latents (distribution mean, scaled) of images in [-1, 1], shape [n, 3, H, W]."""
    vae = model.vae
    dist = vae.encode(images.to(model.device, vae.dtype)).latent_dist
    return dist.mean * vae.config.scaling_factor


def _extra_step_kwargs(sched: object, generators: list[torch.Generator]) -> dict:
    # Ancestral / stochastic schedulers draw fresh noise each step; give them the per-image generators.
    params = set(inspect.signature(sched.step).parameters)
    kwargs: dict = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generators if len(generators) > 1 else generators[0]
    return kwargs
