"""Checks of a run made before the data is read or a step is taken: folders it writes, sizes the model takes.

A recipe can be valid on its own and still not fit the model: an image side the VAE cannot shrink evenly, or
validation images of a size diffusers' pipeline refuses. Found only at the first validation, such a problem
would cost the whole run; found here, it costs seconds.
"""

from __future__ import annotations

from typing import Any

from medsd.errors import MedsdError
from medsd.files import output_dir
from medsd.train.methods import Method

PIPELINE_MULTIPLE = 8  # StableDiffusionPipeline.check_inputs wants height and width divisible by 8


def check_output_folders(cfg: Any) -> None:
    """The run's folder, and a shared latent-cache folder when one is set, exist and are writable."""
    output_dir(cfg.output_dir, "output_dir")
    if cfg.training.cache_latents and cfg.training.cache_dir:
        output_dir(cfg.training.cache_dir, "training.cache_dir")


def _nearest_multiple(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def check_sizes_fit_model(cfg: Any, method: Method) -> None:
    """data.resolution must be a multiple of the VAE's factor; validation images a multiple of 8."""
    vae = method.components.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = cfg.data.resolution
    if side % factor:
        raise MedsdError(
            f"data.resolution {side} is not a multiple of {factor}, the factor by which the VAE of "
            f"{cfg.model.pretrained} shrinks images; use {_nearest_multiple(side, factor)}"
        )
    uses_pipeline = type(method).validate is Method.validate  # the default validation renders with diffusers
    shown = cfg.validation.resolution or side
    if cfg.validation.prompts and uses_pipeline and shown % PIPELINE_MULTIPLE:
        key = "validation.resolution" if cfg.validation.resolution else "data.resolution (also used for validation)"
        raise MedsdError(
            f"{key} {shown} is not a multiple of {PIPELINE_MULTIPLE}, which diffusers needs to render validation "
            f"images; set validation.resolution to {_nearest_multiple(shown, PIPELINE_MULTIPLE)} "
            "(or leave validation.prompts empty)"
        )
