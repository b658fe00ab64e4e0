"""Fixtures for generation tests: the tiny model loaded once, a LoRA and textual-inversion embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path):
    """The tiny test model loaded for sampling (CPU, float32); tests must not modify it."""
    from medsd.generate.loading import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers-format LoRA for the tiny U-Net with non-zero (random) weights, built with peft."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"],
                                init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    )
    return out


@pytest.fixture(scope="session")
def ti_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-vector textual-inversion embedding for `<cardiomegaly>` in diffusers' safetensors format."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("ti") / "learned_embeds.safetensors"
    save_file({"<cardiomegaly>": torch.randn(3, 16)}, str(path))
    return path
