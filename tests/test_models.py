"""Tiny offline models: build, reload in plain diffusers, generate; clear errors for unloadable sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsd.errors import MedsdError
from medsd.models import build_tiny_model, load_components, load_pipeline, resolve_device, resolve_dtype


def test_tiny_model_loads_in_plain_diffusers_and_generates(tiny_model_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model_dir / part).is_dir()
    assert (tiny_model_dir / "tokenizer" / "vocab.json").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    kwargs = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}
    one = pipe("a chest x-ray with cardiomegaly", generator=torch.Generator().manual_seed(0), **kwargs).images
    two = pipe("a chest x-ray with cardiomegaly", generator=torch.Generator().manual_seed(0), **kwargs).images
    other = pipe("a chest x-ray with cardiomegaly", generator=torch.Generator().manual_seed(1), **kwargs).images
    assert one.shape == (1, 32, 32, 3) and np.isfinite(one).all()
    np.testing.assert_allclose(one, two, atol=1e-6)
    assert np.abs(one - other).max() > 1e-3


def test_build_is_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    again = build_tiny_model(tmp_path / "again", size="test", seed=0)
    a = load_file(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(again / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_components_for_training(tiny_model_dir: Path) -> None:
    parts = load_components(str(tiny_model_dir), dtype="float32")
    latents = torch.randn(2, 4, 16, 16)
    ids = parts.tokenizer(["a chest x-ray"] * 2, padding="max_length", return_tensors="pt").input_ids
    states = parts.text_encoder(ids)[0]
    pred = parts.unet(latents, torch.tensor([10, 500]), states).sample
    assert pred.shape == latents.shape
    assert parts.noise_scheduler.config.num_train_timesteps == 1000
    assert parts.vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean.shape == (1, 4, 16, 16)


def test_unloadable_sources_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MedsdError) as info:
        load_components("runwayml/stable-diffusion-v1-5")
    message = str(info.value)
    assert "runwayml/stable-diffusion-v1-5" in message and "local" in message and "HF_HUB_OFFLINE" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedsdError, match="not a complete diffusers folder"):
        load_pipeline(str(empty))
    with pytest.raises(MedsdError, match="missing does not exist"):
        load_components(str(tmp_path / "missing"))


def test_device_and_dtype_settings() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(MedsdError, match="dtype"):
        resolve_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(MedsdError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_tiny_scheduler_never_clips_latents(tiny_model_dir: Path) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    parts = load_components(str(tiny_model_dir))
    assert parts.noise_scheduler.config.clip_sample is False
    for cls in (DDIMScheduler, DDPMScheduler):
        assert cls.from_pretrained(tiny_model_dir, subfolder="scheduler").config.clip_sample is False
