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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from safetensors import SafetensorError

from medsd.config_base import StrictModel
from medsd.errors import MedsdError
from medsd.weights import SAFE_COPY, WHY_REFUSED, check_model_weights, error_detail, pickled_model_parts

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


class ModelConfig(StrictModel):
    """The `model:` section: which diffusion model to start from and how to hold it in memory."""

    pretrained: str = Field(
        "runwayml/stable-diffusion-v1-5",
        description="Hugging Face model id (e.g. stabilityai/stable-diffusion-2-base) or a local diffusers folder "
        "(e.g. one written by `medsd model tiny` or `medsd model random`).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when loading by id.")
    variant: str | None = Field(None, description="Weight variant such as 'fp16' when the repository has one.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Precision the frozen parts (VAE, frozen U-Net / text encoder) are held in during training: "
        "auto follows training.mixed_precision (float16 / bfloat16 / float32); float32 keeps them in full "
        "precision under mixed precision (more memory, no fp16 overflow in the VAE). float16 / bfloat16 must "
        "match training.mixed_precision. Trained weights are always float32.",
    )
    device: str = Field(
        "auto",
        description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'mps'; a device that is not there "
        "stops the run before any work. Training leaves the choice of GPU to accelerate: select one with "
        "CUDA_VISIBLE_DEVICES ('cuda:N' is for inference).",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.match(DEVICE_PATTERN, value):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        return value


def resolve_device(name: str = "auto") -> torch.device:
    """Turn 'auto' into cuda/cpu; an unavailable or misspelt device is a MedsdError, not a late crash."""
    if not re.match(DEVICE_PATTERN, name):
        raise MedsdError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MedsdError(f"device {name!r} was asked for but no CUDA GPU is visible (torch.cuda.is_available() "
                             "is False); use device cpu or auto, or check the driver and CUDA_VISIBLE_DEVICES")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MedsdError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MedsdError(f"device {name!r} was asked for but MPS (Apple GPU) is not available; use cpu or auto")
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


def dtype_keyword(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers' `from_pretrained` keyword for a dtype: `dtype` since diffusers followed transformers (2026; it
    warns on `torch_dtype` from then on), `torch_dtype` in the releases before."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


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
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", variant=variant, **dtype_keyword(torch_dtype),
                                            **kwargs)
        unet = UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", variant=variant, **dtype_keyword(torch_dtype), **kwargs
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
    target, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    check_inference_precision(target, torch_dtype)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, **dtype_keyword(torch_dtype), revision=revision, variant=variant,
            safety_checker=None, requires_safety_checker=False,
        )
    except LOAD_ERRORS as err:
        raise _load_error(source, err) from err
    return pipe.to(target)


def check_inference_precision(device: torch.device, dtype: torch.dtype) -> None:
    """float16 on a CPU is refused: CPUs have no fast fp16 kernels (a 3x3 convolution of 128 channels at 64 px
    took 14 s in float16 against 0.05 s in bfloat16 here), so a pipeline would seem to hang."""
    if device.type == "cpu" and dtype == torch.float16:
        raise MedsdError("float16 on the CPU runs hundreds of times slower than bfloat16 (no fp16 kernels); use "
                         "dtype float32 or bfloat16 on a CPU, float16 on a CUDA GPU")


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
    from diffusers import AutoencoderKL

    from medsd.tokenizer import load_clip_tokenizer

    if size not in TINY_SIZES:
        raise MedsdError(f"tiny model size {size!r} is not one of {', '.join(TINY_SIZES)}")
    spec = TINY_SIZES[size]
    torch.manual_seed(seed)
    tokenizer = load_clip_tokenizer()
    text = {**spec["text"], "projection_dim": spec["text"]["hidden_size"], "hidden_act": "quick_gelu"}
    text_encoder = clip_text_encoder(tokenizer, text)
    unet = tiny_unet(size, cross_attention_dim=spec["text"]["hidden_size"])
    levels = len(spec["vae"]["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, sample_size=spec["sample_size"],
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        **spec["vae"],
    )
    out = save_model_folder(out_dir, unet, vae, text_encoder, tokenizer, sd_scheduler("PNDMScheduler"))
    log.info("wrote tiny %s model to %s", size, out)
    return out


def clip_text_encoder(tokenizer: Any, text: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised CLIPTextModel whose vocabulary and special-token ids are the tokenizer's."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from medsd.tokenizer import BOS, EOS, MAX_LENGTH

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS), eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.pad_token_id, **text,
    )
    return CLIPTextModel(config)


def sd_scheduler(kind: str = "PNDMScheduler", prediction_type: str = "epsilon") -> Any:
    """The sampler a Stable Diffusion folder ships (PNDM for SD 1.x / 2 base, DDIM for 2.x 768-v), SD's schedule."""
    import inspect

    import diffusers

    settings = {
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "steps_offset": 1, "set_alpha_to_one": False, "skip_prk_steps": True, "prediction_type": prediction_type,
    }
    cls = getattr(diffusers, kind)
    accepted = inspect.signature(cls.__init__).parameters
    scheduler = cls(**{key: value for key, value in settings.items() if key in accepted})
    # As in SD's own scheduler configs: samplers built from it (DDIM, DDPM) must not clip the predicted x0 to
    # [-1, 1], which is right for pixels but posterizes latents (their std is ~1 after scaling).
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def save_model_folder(out_dir: str | Path, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any,
                      scheduler: Any) -> Path:
    """Save the parts as a diffusers StableDiffusionPipeline folder (no safety checker) that plain diffusers loads."""
    from diffusers import StableDiffusionPipeline

    from medsd.tokenizer import save_tokenizer

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir / "tokenizer")
    return out_dir


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
