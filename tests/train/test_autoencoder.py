"""Autoencoder (Medfusion stage 1) on the shared loop, then class-conditional diffusion in its latent space."""

from __future__ import annotations

import math

import torch

from medsd.train.loop import train
from medsd.train.method_configs import AutoencoderMethod, ClassConditionalMethod


def test_vae_trains_on_pixels_then_class_conditional_uses_it(tiny_model_dir, shapes, tmp_path, recipe):
    from diffusers import AutoencoderKL

    out = tmp_path / "ae"
    cfg = recipe(tiny_model_dir, out, "autoencoder", max_steps=4, checkpointing_steps=2, learning_rate=2e-3)
    cfg.method = AutoencoderMethod(kl_weight=1e-6, ssim_weight=0.1, num_validation_images=2, crop_size=16)
    cfg.validation.steps = 4
    result = train(cfg, shapes)
    assert result.latent_cache is None  # pixels every step: a cache would freeze the VAE being trained
    assert result.losses[4] < result.losses[1]

    vae = AutoencoderKL.from_pretrained(out / "vae")
    base = AutoencoderKL.from_pretrained(tiny_model_dir / "vae")
    changed = [k for k, v in base.state_dict().items() if not torch.equal(vae.state_dict()[k], v)]
    assert len(changed) > len(base.state_dict()) // 2
    method = result.method
    assert math.isfinite(vae.config.scaling_factor) and vae.config.scaling_factor != base.config.scaling_factor
    assert abs(vae.config.scaling_factor - method.scaling_factor) < 1e-6
    assert (out / "validation" / "step-000004.png").is_file()  # originals over reconstructions

    # Resume keeps the scaling-factor statistics.
    cfg.training.max_steps = 5
    resumed = train(cfg, shapes, resume="latest")
    assert sorted(resumed.losses) == [5] and resumed.method.latent_var > 0

    # Stage 2 in that latent space (method.vae = the autoencoder run's folder).
    cc = recipe(tiny_model_dir, tmp_path / "cc", "class_conditional", max_steps=1)
    cc.method = ClassConditionalMethod(vae=str(out), mode="sum")
    trained = train(cc, shapes)
    used = trained.method.components.vae.state_dict()
    final = AutoencoderKL.from_pretrained(out / "vae").state_dict()
    assert all(torch.equal(used[k], final[k]) for k in final)


def test_eight_channel_vae_from_scratch_and_a_unet_that_fits_it(tiny_model_dir, shapes, shared_cache, tmp_path,
                                                                 recipe):
    """Medfusion's 8-channel latents: a fresh VAE, then a class-conditional U-Net built for its channels."""
    import pytest
    from diffusers import AutoencoderKL

    from medsd.errors import MedsdError
    from medsd.generate.api import generate

    out = tmp_path / "ae8"
    cfg = recipe(tiny_model_dir, out, "autoencoder", max_steps=1, learning_rate=2e-3)
    cfg.method = AutoencoderMethod(init="scratch", latent_channels=8)
    train(cfg, shapes)
    assert AutoencoderKL.from_pretrained(out / "vae").config.latent_channels == 8

    cc = recipe(tiny_model_dir, tmp_path / "cc8", "class_conditional", max_steps=1, cache_dir=str(shared_cache))
    cc.method = ClassConditionalMethod(vae=str(out))
    trained = train(cc, shapes)
    unet = trained.method.components.unet
    assert unet.config.in_channels == unet.config.out_channels == 8
    frame = generate(tmp_path / "cc8" / "model", prompts=["Cardiomegaly"], num_images=1, steps=2, height=32, width=32,
                     out_dir=tmp_path / "gen8")
    assert len(frame) == 1

    # A pretrained 4-channel U-Net cannot work in 8-channel latents: said before training.
    cc.method = ClassConditionalMethod(vae=str(out), init="pretrained")
    with pytest.raises(MedsdError, match="latent channels"):
        train(cc, shapes)
    cfg.method = AutoencoderMethod(latent_channels=8)
    with pytest.raises(MedsdError, match="init: scratch"):
        train(cfg, shapes)
