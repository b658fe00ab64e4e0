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
    import warnings

    # The installed diffusers' own dtype keyword: no deprecation warning on every load.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        parts = load_components(str(tiny_model_dir), dtype="bfloat16")
        assert parts.unet.dtype == parts.vae.dtype == parts.text_encoder.dtype == torch.bfloat16
        assert load_pipeline(str(tiny_model_dir), dtype="bfloat16", device="cpu").unet.dtype == torch.bfloat16
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
    with pytest.raises(MedsdError, match="not one of auto, cpu, cuda"):
        resolve_device("cdua")


def test_tiny_scheduler_never_clips_latents(tiny_model_dir: Path) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    parts = load_components(str(tiny_model_dir))
    assert parts.noise_scheduler.config.clip_sample is False
    for cls in (DDIMScheduler, DDPMScheduler):
        assert cls.from_pretrained(tiny_model_dir, subfolder="scheduler").config.clip_sample is False


# Parameter counts of the public diffusers folders (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-*).
# The text encoders' counts are for CLIP's 49,408-token vocabulary; ours has the tokenizer's.
REFERENCE = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480, "width": 768},
    "sd2-base": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840, "width": 1024},
    "sd2-v": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840, "width": 1024},
}


@pytest.mark.parametrize("arch", list(REFERENCE))
def test_random_architectures_have_the_published_sizes(arch: str) -> None:
    from medsd.architectures import random_components
    from medsd.models import count_parameters

    parts = random_components(arch, device="meta")  # shapes only: no memory, no time
    ref = REFERENCE[arch]
    assert count_parameters(parts["unet"]) == ref["unet"]
    assert count_parameters(parts["vae"]) == ref["vae"]
    vocab = len(parts["tokenizer"])
    assert count_parameters(parts["text_encoder"]) == ref["text_encoder"] + (vocab - 49_408) * ref["width"]
    assert parts["unet"].config.cross_attention_dim == parts["text_encoder"].config.hidden_size == ref["width"]
    scheduler = parts["scheduler"].config
    assert scheduler.prediction_type == ("v_prediction" if arch == "sd2-v" else "epsilon")
    assert scheduler.clip_sample is False and scheduler.beta_schedule == "scaled_linear"
    assert parts["unet"].config.sample_size == (96 if arch == "sd2-v" else 64)


def test_random_model_refuses_a_folder_without_a_clip_tokenizer(tmp_path: Path) -> None:
    from medsd.architectures import build_random_model

    with pytest.raises(MedsdError, match="no vocab.json"):
        build_random_model(tmp_path / "model", tokenizer=tmp_path)
    with pytest.raises(MedsdError, match="sd3"):
        build_random_model(tmp_path / "model", arch="sd3")


@pytest.mark.slow
def test_random_sd2_v_model_from_the_cli_loads_and_samples_in_plain_diffusers(tmp_path: Path, tiny_model_dir) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from medsd.cli import main

    out = tmp_path / "sd2-v"
    assert main(["model", "random", "--arch", "sd2-v", "--out", str(out), "--tokenizer", str(tiny_model_dir)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.upcast_attention and pipe.unet.config.use_linear_projection
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a chest x-ray", num_inference_steps=1, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_float16_inference_on_the_cpu_is_refused_before_loading(tiny_model_dir: Path) -> None:
    with pytest.raises(MedsdError, match="float16 on the CPU"):
        load_pipeline(str(tiny_model_dir), dtype="float16", device="cpu")
    assert load_pipeline(str(tiny_model_dir), dtype="bfloat16", device="cpu").unet.dtype == torch.bfloat16
