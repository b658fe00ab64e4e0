"""LoRA on the U-Net and the text encoder: adapters train in both, nothing else moves, diffusers loads both."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from medsd.train.loop import train

PROMPT = "a chest x-ray with cardiomegaly"


def test_text_encoder_adapters_train_save_and_load(tiny_model_dir, shapes, shared_cache, tmp_path, recipe):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora_te"
    cfg = recipe(tiny_model_dir, out, "lora", max_steps=2, checkpointing_steps=2, learning_rate=5e-2,
                 cache_dir=str(shared_cache))
    cfg.method.train_text_encoder = True
    result = train(cfg, shapes)

    encoder = result.method.components.text_encoder
    trained = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trained and all("lora" in n for n in trained)
    base = load_file(str(tiny_model_dir / "text_encoder" / "model.safetensors"))
    for name, value in encoder.state_dict().items():
        if "lora" not in name:
            assert torch.equal(value, base[name.replace(".base_layer", "")]), name

    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in saved) and any(k.startswith("unet.") for k in saved)
    assert all(v.abs().sum() > 0 for k, v in saved.items() if k.startswith("text_encoder.") and "lora_B" in k)

    # Plain diffusers reads the text-encoder adapters: the prompt's embedding is the trained encoder's.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    before = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    pipe.load_lora_weights(out)
    after = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder.eval()(ids)[0]
    assert (after - before).abs().max() > 1e-4
    assert torch.allclose(after, expected, atol=1e-4)
