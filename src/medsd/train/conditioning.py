"""Helpers shared by the methods whose conditioning is not plain CLIP text: a pipeline with a custom encoder.

`EncodedPipeline` is diffusers' `StableDiffusionPipeline` with `encode_prompt` replaced by a function from
condition strings to encoder hidden states, so label-conditioned and domain-encoder models reuse diffusers'
whole sampling loop (schedulers, classifier-free guidance, decoding) for validation images.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medsd.errors import MedsdError, first_line

log = logging.getLogger(__name__)

Encoder = Callable[[list[str]], torch.Tensor]


def encoded_pipeline(unet: Any, vae: Any, scheduler: Any, encode: Encoder, negative: str = "") -> Any:
    """A StableDiffusionPipeline whose prompts go through `encode` (strings -> [B, T, D]) instead of CLIP.

    The unconditional branch of classifier-free guidance encodes `negative` (default "": the null condition).
    """
    from diffusers import StableDiffusionPipeline

    class EncodedPipeline(StableDiffusionPipeline):
        def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance,
                          negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, **_: Any):
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if prompt_embeds is None:
                prompt_embeds = encode(prompts)
            prompt_embeds = prompt_embeds.to(device=device, dtype=self.unet.dtype)
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                neg = negative_prompt if negative_prompt is not None else negative
                negs = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
                negative_prompt_embeds = encode(negs).to(device=device, dtype=self.unet.dtype)
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            return prompt_embeds, negative_prompt_embeds

    pipe = EncodedPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_model_json(folder: Path, spec: dict[str, Any]) -> Path:
    """Write `medsd_model.json`, the marker that tells `medsd generate` which loader reads this folder."""
    path = Path(folder) / "medsd_model.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def save_scheduler(noise_scheduler: Any, folder: Path, prediction_type: str | None = None) -> None:
    """Save the training noise schedule (as DDPM config) so samplers rebuild the same betas."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(noise_scheduler.config)
    if prediction_type is not None:
        scheduler.register_to_config(prediction_type=prediction_type)
    scheduler.save_pretrained(Path(folder) / "scheduler")


def register_loader(kind: str, loader: Callable[..., Any]) -> None:
    """Register a `medsd_model.json` kind with the generator (a no-op if the generate package is missing)."""
    try:
        from medsd.generate.loading import register_model_kind
    except ImportError:  # the generator is optional for training-only installs
        log.debug("medsd.generate.loading not importable; %s folders load only through medsd.train", kind)
        return
    register_model_kind(kind, loader)


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(dtype)` only when needed (diffusers warns on every dtype cast, even a no-op one)."""
    first = next(module.parameters(), None)
    if first is not None and first.dtype != dtype:
        module.to(dtype=dtype)
    return module


def set_trainable(module: torch.nn.Module, trains: bool, weight_dtype: torch.dtype) -> None:
    """Trained modules stay float32 (optimizer updates underflow in fp16/bf16); frozen ones drop to weight_dtype."""
    module.requires_grad_(trains)
    cast(module, torch.float32 if trains else weight_dtype)


def fresh_unet(unet: Any, latent_channels: int, changes: dict[str, Any] | None = None) -> Any:
    """A randomly initialised U-Net of `unet`'s architecture that reads and writes `latent_channels` channels,
    with `changes` (`method.unet_config`) applied to its config."""
    import inspect

    from diffusers import UNet2DConditionModel

    changes = dict(changes or {})
    # from_config drops unknown keys with a warning only; a misspelt setting would train the default silently.
    known = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise MedsdError(f"method.unet_config: {', '.join(unknown)} is not a UNet2DConditionModel setting; use "
                         "keys of its config.json (e.g. resnet_time_scale_shift, addition_embed_type)")
    config = {**unet.config, **changes, "in_channels": latent_channels, "out_channels": latent_channels}
    try:
        return UNet2DConditionModel.from_config(config)
    except (ValueError, TypeError, KeyError) as err:
        raise MedsdError(f"method.unet_config {changes} does not build a U-Net: {first_line(err)}; fix "
                         "or remove those settings") from None
