"""Loading Stable Diffusion models (hub id or local folder) and building tiny offline ones.

`load_components` returns the five parts a training method needs; `load_pipeline` returns a diffusers
pipeline for inference. Both turn the usual offline / wrong-id failures into one MedsdError that says what was
tried and how to point at a local folder. `build_tiny_model` writes a Stable-Diffusion-architecture model in the
standard diffusers layout, with random weights and the shipped radiology tokenizer, so that everything runs
without downloads.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors import SafetensorError

from medsd.config_base import StrictModel
from medsd.errors import MedsdError
from medsd.weights import SAFE_COPY, WHY_REFUSED, check_model_weights, error_detail, pickled_model_parts

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelConfig(StrictModel):
    """The `model:` section: which diffusion model to start from and how to hold it in memory."""

    pretrained: str = Field(
        "runwayml/stable-diffusion-v1-5",
        description="Hugging Face model id (e.g. stabilityai/stable-diffusion-2-base) or a local diffusers folder "
        "(e.g. one written by `medsd model tiny`).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when loading by id.")
    variant: str | None = Field(None, description="Weight variant such as 'fp16' when the repository has one.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Precision of the frozen parts (VAE, frozen text encoder) and of inference."
    )
    device: str = Field("auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'.")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn 'auto' into cuda/mps/cpu; an unavailable device is a MedsdError, not a late CUDA crash."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsdError(f"model.device={name!r} but no CUDA GPU is visible; use device: cpu or auto")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map 'float16' / 'bfloat16' / 'float32' to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise MedsdError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class Components:
    """The parts of a Stable Diffusion model that training methods use."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: Any
    source: str


def _load_error(source: str, err: Exception) -> MedsdError:
    is_local = Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if isinstance(err, pickle.UnpicklingError):
        parts = pickled_model_parts(Path(source).expanduser()) if is_local else []
        files = ", ".join(str(p) for p in parts) or "a weight file"
        return MedsdError(f"could not load model {source!r}: {files} is a pickle that holds more than plain "
                          f"tensors; {WHY_REFUSED}; {SAFE_COPY}")
    if is_local and not Path(source).expanduser().exists():
        hint = (
            f"{source} does not exist; pass a diffusers folder (e.g. from `medsd model tiny --out DIR`) or a "
            "Hugging Face id"
        )
    elif is_local:
        hint = (
            f"{source} exists but is not a complete diffusers folder (needs model_index.json, unet/, vae/, "
            "text_encoder/, tokenizer/, scheduler/, each with intact weights); build one with `medsd model tiny "
            "--out DIR` or save a pipeline with `pipe.save_pretrained(DIR)`"
        )
    else:
        why = "HF_HUB_OFFLINE=1 is set" if offline else "the Hugging Face Hub could not be reached or has no such id"
        hint = (
            f"it is not a local folder, and {why}. Download it on a connected machine "
            f"(`huggingface-cli download {source} --local-dir DIR`) and set model.pretrained to DIR "
            "(or `--set model.pretrained=DIR`); for offline work build a tiny model with `medsd model tiny --out DIR`"
        )
    return MedsdError(f"could not load model {source!r}: {hint}. ({error_detail(err)})")


# What loading a damaged or foreign model folder raises (SafetensorError is the safetensors library's own).
LOAD_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError,
                                            SafetensorError)


def _check_local(source: str) -> None:
    path = Path(source).expanduser()
    if (source.startswith((".", "/", "~")) or path.exists()) and not (path / "model_index.json").is_file():
        raise _load_error(source, FileNotFoundError(f"{path / 'model_index.json'} not found"))
    if path.is_dir():
        check_model_weights(path)


def load_components(
    source: str, dtype: str | torch.dtype = "float32", revision: str | None = None, variant: str | None = None
) -> Components:
    """Load tokenizer, text encoder, VAE, U-Net and a DDPM training scheduler from an id or folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    _check_local(source)
    kwargs: dict[str, Any] = {"revision": revision}
    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision)
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", variant=variant, dtype=torch_dtype, **kwargs
        )
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", variant=variant, torch_dtype=torch_dtype, **kwargs)
        unet = UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", variant=variant, torch_dtype=torch_dtype, **kwargs
        )
        noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
    except LOAD_ERRORS as err:
        raise _load_error(source, err) from err
    return Components(tokenizer, text_encoder, vae, unet, noise_scheduler, source)


def load_pipeline(
    source: str,
    dtype: str | torch.dtype = "float32",
    device: str = "auto",
    revision: str | None = None,
    variant: str | None = None,
) -> Any:
    """A diffusers StableDiffusionPipeline from an id or folder, on the requested device and precision."""
    from diffusers import StableDiffusionPipeline

    _check_local(source)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=resolve_dtype(dtype), revision=revision, variant=variant,
            safety_checker=None, requires_safety_checker=False,
        )
    except LOAD_ERRORS as err:
        raise _load_error(source, err) from err
    return pipe.to(resolve_device(device))


# Sizes: "test" follows diffusers' own unit-test models (builds in about a second, a step well under one);
# "demo" is the largest that still trains usefully at 64-128 px on 2 CPU cores within minutes.
TINY_SIZES: dict[str, dict[str, Any]] = {
    "test": {
        "unet": {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
                 "attention_head_dim": 2, "cross_attention_dim": 16},
        "vae": {"block_out_channels": (8, 16), "norm_num_groups": 4, "latent_channels": 4, "layers_per_block": 1},
        "text": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32},
        "sample_size": 32,
    },
    "demo": {
        "unet": {"block_out_channels": (32, 64, 64), "layers_per_block": 2, "norm_num_groups": 16,
                 "attention_head_dim": 8, "cross_attention_dim": 64},
        "vae": {"block_out_channels": (32, 64, 64), "norm_num_groups": 16, "latent_channels": 4,
                "layers_per_block": 1},
        "text": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256},
        "sample_size": 64,
    },
}


def tiny_unet(size: str, sample_size: int | None = None, cross_attention_dim: int | None = None) -> torch.nn.Module:
    """A randomly initialised UNet2DConditionModel of a tiny preset (down blocks: plain, then cross-attention)."""
    from diffusers import UNet2DConditionModel

    spec = TINY_SIZES[size]
    unet_kw = dict(spec["unet"])
    if cross_attention_dim is not None:
        unet_kw["cross_attention_dim"] = cross_attention_dim
    levels = len(unet_kw["block_out_channels"])
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    vae_factor = 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
    return UNet2DConditionModel(
        sample_size=(sample_size or spec["sample_size"]) // vae_factor,
        in_channels=4, out_channels=4, down_block_types=down, up_block_types=up, **unet_kw,
    )


def build_tiny_model(out_dir: str | Path, size: Literal["test", "demo"] = "test", seed: int = 0) -> Path:
    """Build a tiny SD-architecture model offline and save it as a diffusers StableDiffusionPipeline folder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from medsd.tokenizer import BOS, EOS, MAX_LENGTH, load_clip_tokenizer

    if size not in TINY_SIZES:
        raise MedsdError(f"tiny model size {size!r} is not one of {', '.join(TINY_SIZES)}")
    spec = TINY_SIZES[size]
    torch.manual_seed(seed)
    tokenizer = load_clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS), eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.pad_token_id, projection_dim=spec["text"]["hidden_size"], **spec["text"],
    )
    text_encoder = CLIPTextModel(text_config)
    unet = tiny_unet(size, cross_attention_dim=spec["text"]["hidden_size"])
    levels = len(spec["vae"]["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, sample_size=spec["sample_size"],
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        **spec["vae"],
    )
    # Same noise schedule as SD 1.x, so recipes and schedulers behave as on real weights.
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )
    # As in SD's own scheduler config: samplers built from it (DDIM, DDPM) must not clip the predicted x0 to
    # [-1, 1], which is right for pixels but posterizes latents (their std is ~1 after scaling).
    scheduler.register_to_config(clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    from medsd.tokenizer import save_tokenizer

    save_tokenizer(tokenizer, out_dir / "tokenizer")
    log.info("wrote tiny %s model to %s", size, out_dir)
    return out_dir


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
