"""The exact Stable Diffusion architectures (SD 1.5, SD 2 base, SD 2 768-v) with random weights, built offline.

Speed, memory and dtype behaviour depend on the architecture, not on the weights: a random-weight model with
the real layout measures a GPU, exercises every training method at full size and catches precision bugs the
tiny models hide, without downloading anything. The configurations below are those of the public diffusers
folders (`runwayml/stable-diffusion-v1-5`, `stabilityai/stable-diffusion-2-base`, `stabilityai/stable-diffusion-2-1`);
only the text encoder's vocabulary follows the tokenizer used (the shipped radiology BPE has 2,048 entries where
CLIP's has 49,408), so its token-embedding table is smaller than the original's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsd.errors import MedsdError

log = logging.getLogger(__name__)

_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
# Shared by every SD 1.x / 2.x U-Net (860-865 M parameters).
_UNET = {
    "in_channels": 4, "out_channels": 4, "down_block_types": _DOWN, "up_block_types": _UP,
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "norm_num_groups": 32, "norm_eps": 1e-5,
    "act_fn": "silu", "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1, "center_input_sample": False,
}
# The SD VAE (83.7 M parameters, 8x spatial compression, 4 latent channels).
_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}
# The SD noise schedule (scaled-linear betas, 1,000 steps); clip_sample off, as in SD's own scheduler configs.
_SCHEDULE = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False,
}
# CLIP ViT-L/14's text tower (SD 1.x) and OpenCLIP ViT-H/14's (SD 2.x, without its last layer: SD 2 reads the
# penultimate layer's output, so diffusers stores 23 of the 24 layers).
_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "projection_dim": 768, "hidden_act": "quick_gelu"}
_OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
               "projection_dim": 512, "hidden_act": "gelu"}


@dataclass(frozen=True)
class Architecture:
    """One Stable Diffusion layout: U-Net, VAE and text-encoder settings, sampler and native resolution."""

    name: str
    description: str
    resolution: int  # native image side in pixels
    unet: dict[str, Any]
    text: dict[str, Any]
    scheduler: str  # diffusers scheduler class of the original folder
    prediction_type: str = "epsilon"
    vae: dict[str, Any] = field(default_factory=lambda: dict(_VAE))


ARCHITECTURES: dict[str, Architecture] = {
    "sd15": Architecture(
        "sd15", "Stable Diffusion 1.5: U-Net 860 M, CLIP ViT-L/14 text encoder (768), epsilon, 512 px", 512,
        {**_UNET, "attention_head_dim": 8, "cross_attention_dim": 768}, _CLIP_L, "PNDMScheduler",
    ),
    "sd2-base": Architecture(
        "sd2-base", "Stable Diffusion 2 base: U-Net 865 M, OpenCLIP ViT-H/14 text encoder (1024), epsilon, 512 px",
        512, {**_UNET, "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
              "use_linear_projection": True}, _OPENCLIP_H, "PNDMScheduler",
    ),
    "sd2-v": Architecture(
        "sd2-v", "Stable Diffusion 2.1 768-v: as sd2-base, v-prediction, 768 px, attention upcast to float32", 768,
        {**_UNET, "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
         "use_linear_projection": True, "upcast_attention": True}, _OPENCLIP_H, "DDIMScheduler",
        prediction_type="v_prediction",
    ),
}


def get_architecture(name: str) -> Architecture:
    """The Architecture called `name` (MedsdError listing the known ones otherwise)."""
    if name not in ARCHITECTURES:
        raise MedsdError(f"architecture {name!r} is not one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def load_any_clip_tokenizer(folder: str | Path | None) -> Any:
    """A CLIP tokenizer from a folder (vocab.json + merges.txt, or a model folder's tokenizer/); None: the shipped
    radiology BPE. Padded / truncated to CLIP's 77 positions, as Stable Diffusion uses it."""
    from medsd.tokenizer import BOS, EOS, load_clip_tokenizer

    if folder is None:
        return load_clip_tokenizer()
    path = Path(folder).expanduser()
    if (path / "tokenizer" / "vocab.json").is_file():
        path = path / "tokenizer"
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        raise MedsdError(f"tokenizer folder {str(folder)!r} has no vocab.json + merges.txt (a CLIP BPE); pass a "
                         "CLIP tokenizer folder or a diffusers model folder, or leave it out for the radiology one")
    tokenizer = load_clip_tokenizer(path)
    missing = [t for t in (BOS, EOS) if t not in tokenizer.get_vocab()]
    if missing:
        raise MedsdError(f"tokenizer {str(folder)!r} lacks CLIP's special tokens {missing}; it is not a CLIP tokenizer")
    return tokenizer


def random_components(arch: str = "sd15", tokenizer: str | Path | None = None, seed: int = 0,
                      device: str = "cpu") -> dict[str, Any]:
    """U-Net, VAE, text encoder, tokenizer and scheduler of architecture `arch`, randomly initialised on `device`
    (`meta` builds the shapes only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from medsd.models import clip_text_encoder, sd_scheduler

    spec = get_architecture(arch)
    tok = load_any_clip_tokenizer(tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        text_encoder = clip_text_encoder(tok, spec.text)
        unet = UNet2DConditionModel(sample_size=spec.resolution // 8, **spec.unet)
        vae = AutoencoderKL(sample_size=spec.resolution, **spec.vae)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tok,
            "scheduler": sd_scheduler(spec.scheduler, spec.prediction_type)}


def build_random_model(out_dir: str | Path, arch: str = "sd15", tokenizer: str | Path | None = None,
                       seed: int = 0, device: str = "cpu") -> Path:
    """Write a Stable Diffusion folder of architecture `arch` with random weights (float32, safetensors).

    `device` is where the weights are initialised: on a GPU random init takes seconds instead of a minute (the
    weights then differ from a CPU build with the same seed; both are random).
    """
    from medsd.models import save_model_folder

    parts = random_components(arch, tokenizer, seed, device)
    out = save_model_folder(out_dir, **parts)
    log.info("wrote random-weight %s model to %s", arch, out)
    return out
