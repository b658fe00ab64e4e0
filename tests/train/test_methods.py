"""LoRA and full fine-tuning on the tiny model: what trains, what is logged, and that diffusers loads the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medsd.config import load_run_config

PROMPT = "a chest x-ray with cardiomegaly"


def _render(pipe, seed: int = 0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=1.0, height=32, width=32, generator=generator,
                output_type="np").images[0]


def _scalars(logdir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {t: [e.value for e in acc.Scalars(t)] for t in tags["scalars"]}
    out["_images"] = tags["images"]
    return out


def test_lora_trains_only_adapters_and_loads_in_diffusers(tiny_model_dir, shapes, shared_cache, tmp_path, recipe):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    cfg = recipe(tiny_model_dir, out, "lora", max_steps=3, checkpointing_steps=3, learning_rate=5e-2,
                      cache_dir=str(shared_cache), log_every=1)
    cfg.validation.prompts = [PROMPT]
    cfg.validation.num_inference_steps = 2
    base = load_file(str(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    result = train_run(cfg, shapes)

    # Base weights are untouched; only adapters moved (B starts at zero with gaussian init).
    unet = result.method.components.unet
    trained = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trained and all("lora" in n for n in trained)
    for name, value in unet.state_dict().items():
        if "lora" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, base[key]), name
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    ups = [v for k, v in saved.items() if "lora_B" in k or "lora.up" in k]
    assert ups and all(v.abs().sum() > 0 for v in ups)
    assert all(k.startswith("unet.") for k in saved)

    kohya = load_file(str(out / "lora_kohya.safetensors"))
    assert any(k.startswith("lora_unet_") and k.endswith("lora_down.weight") for k in kohya)
    assert all(float(v) == cfg.method.alpha for k, v in kohya.items() if k.endswith(".alpha"))

    # Plain diffusers loads the adapters, and they change the output.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = _render(pipe)
    pipe.load_lora_weights(out)
    after = _render(pipe)
    assert np.abs(after - before).max() > 1e-4

    # Logs, resolved config, validation grid, checkpoint.
    scalars = _scalars(out / "logs")
    assert len(scalars["train/loss"]) == 3 and len(scalars["train/lr"]) == 3
    assert any(tag.startswith("validation/") for tag in scalars["_images"])
    assert (out / "validation" / "step-000003.png").is_file()
    assert load_run_config(out / "config.yaml").method.name == "lora"
    assert (out / "checkpoints" / "checkpoint-3" / "state.json").is_file()
    assert result.latent_cache is not None


def test_full_fine_tune_changes_unet_and_text_encoder(tiny_model_dir, shapes, shared_cache, tmp_path, recipe):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "full"
    cfg = recipe(tiny_model_dir, out, "full", num_epochs=1, gradient_accumulation_steps=2, ema=True,
                 ema_decay=0.9, min_snr_gamma=5.0, noise_offset=0.05, prediction_type="v_prediction",
                 timestep_sampling="logit_normal", cache_dir=str(shared_cache), dataloader_num_workers=1)
    cfg.method.train_text_encoder = True
    result = train_run(cfg, shapes)
    assert result.step == 2  # 8 samples / (batch 2 x accumulation 2)

    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None)
    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    for part in ("unet", "text_encoder"):
        new, old = getattr(pipe, part).state_dict(), getattr(base, part).state_dict()
        changed = [k for k in old if not torch.equal(new[k], old[k])]
        assert len(changed) > len(old) // 2, part
    vae_new, vae_old = pipe.vae.state_dict(), base.vae.state_dict()
    assert all(torch.equal(vae_new[k], vae_old[k]) for k in vae_old)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    assert np.isfinite(_render(pipe)).all()


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_lora_with_text_encoder_loads_in_plain_diffusers_and_medsd(tiny_model_dir, shapes, shared_cache, tmp_path,
                                                                    recipe, precision):
    from diffusers import StableDiffusionPipeline

    from medsd.generate.loading import load_model

    out = tmp_path / precision
    cfg = recipe(tiny_model_dir, out, "lora", max_steps=2, mixed_precision=precision, cache_dir=str(shared_cache),
                 cache_latents=False, learning_rate=5e-2)
    cfg.method.train_text_encoder = True
    cfg.method.alpha = 2.0 * cfg.method.rank  # alpha != rank: loaders must read it from the file, not assume it
    result = train_run(cfg, shapes)
    for part in ("unet", "text_encoder"):
        dtypes = {n: p.dtype for n, p in getattr(result.method.components, part).named_parameters()}
        assert any("lora" in n for n in dtypes), part
        assert all(d == torch.float32 for n, d in dtypes.items() if "lora" in n), part
        wanted = torch.bfloat16 if precision == "bf16" else torch.float32
        assert any(d == wanted for n, d in dtypes.items() if "lora" not in n), part
    assert all(np.isfinite(v) for v in result.losses.values())
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert {k.split(".")[0] for k in saved} == {"unet", "text_encoder"}
    assert all(v.abs().sum() > 0 for k, v in saved.items() if k.startswith("text_encoder.") and "lora_B" in k)
    kohya = load_file(str(out / "lora_kohya.safetensors"))
    assert any(k.startswith("lora_te1_") for k in kohya) or any(k.startswith("lora_te_") for k in kohya)

    # Plain diffusers loads both parts; the text-encoder adapters change the prompt's embedding.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    ids = pipe.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        base_embedding = pipe.text_encoder(ids)[0]
    before = _render(pipe)
    pipe.load_lora_weights(out)
    with torch.no_grad():
        assert (pipe.text_encoder(ids)[0] - base_embedding).abs().max() > 1e-4
    after = _render(pipe)
    assert np.abs(after - before).max() > 1e-4

    # medsd's own loader (peft directly for the text encoder, fused) computes what diffusers' loaded adapters do,
    # from the diffusers file and from the kohya file alike.
    latents, t = torch.randn(1, pipe.unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(1)), 10
    with torch.no_grad():
        want_text = pipe.text_encoder(ids)[0]
        want_noise = pipe.unet(latents, t, want_text).sample
    for lora in (out, out / "lora_kohya.safetensors"):
        model = load_model(tiny_model_dir, lora=lora, device="cpu")
        with torch.no_grad():
            text = model.pipe.text_encoder(ids)[0]
            noise = model.pipe.unet(latents, t, want_text).sample
        torch.testing.assert_close(text, want_text, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(noise, want_noise, atol=1e-5, rtol=1e-4)


def train_run(cfg, dataset, **kwargs):
    from medsd.train.loop import train

    return train(cfg, dataset, **kwargs)


@pytest.mark.parametrize("bad", ["training.max_step=3", "method.rank=0", "method.name=magic"])
def test_bad_recipe_values_fail_before_training(tmp_path, bad, recipe):
    from medsd.config_base import dump_yaml
    from medsd.errors import MedsdError

    path = dump_yaml(recipe(tmp_path / "m", tmp_path / "o"), tmp_path / "r.yaml")
    with pytest.raises(MedsdError, match=bad.split("=")[0].split(".")[-1]):
        load_run_config(path, [bad])


@pytest.mark.parametrize("fused", [True, False])
def test_fused_adamw_is_used_unless_turned_off(tiny_model_dir, shapes, shared_cache, tmp_path, recipe, fused):
    from medsd.train.loop import _prepare

    cfg = recipe(tiny_model_dir, tmp_path / "run", fused_optimizer=fused, cache_dir=str(shared_cache))
    run, _ = _prepare(cfg, shapes)
    assert bool(run.optimizer.optimizer.defaults["fused"]) is fused
