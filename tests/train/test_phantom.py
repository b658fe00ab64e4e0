"""End to end on the data layer: a phantom folder -> build_dataset -> LoRA training -> cached latents keyed by it."""

from __future__ import annotations

from medsd.train.loop import train


def test_lora_on_phantom_data(tiny_model_dir, tmp_path, recipe):
    from medsd.phantom import render as phantom
    phantom.write_phantom_dataset(tmp_path / "phantom", n=10, size=32, seed=0, workers=1, progress=False)
    cfg = recipe(tiny_model_dir, tmp_path / "out", "lora", max_steps=2, checkpointing_steps=2)
    cfg.data = cfg.data.model_copy(update={"root": str(tmp_path / "phantom"), "resolution": 32})
    result = train(cfg)  # the data set comes from build_dataset(cfg.data, split="train")
    assert result.step == 2 and result.latent_cache.startswith("built:")
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    again = train(cfg.model_copy(update={"output_dir": str(tmp_path / "out2"),
                                         "training": cfg.training.model_copy(
                                             update={"cache_dir": str(tmp_path / "out" / "cache")})}))
    assert again.latent_cache.startswith("hit:")
