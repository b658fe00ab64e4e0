"""The step's speed work changes nothing it computes: batched cache reads, merged LoRA layers, loss read-back."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from medsd.train import report
from medsd.train.cache import LatentCache, build_latent_cache
from medsd.train.loop import EpochSampler, train


class OneByOne(Dataset):
    """The cache seen through `__getitem__` only, as a DataLoader read it before batches were read at once."""

    def __init__(self, cache: LatentCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict:
        return self.cache[index]


def test_cached_batches_equal_the_per_sample_batches(tiny_model_dir, shapes_factory, tmp_path):
    from diffusers import AutoencoderKL

    data = shapes_factory(n=11)
    cache, _ = build_latent_cache(data, AutoencoderKL.from_pretrained(tiny_model_dir, subfolder="vae"), tmp_path)
    sampler = EpochSampler(len(cache), seed=3)
    batched = DataLoader(cache, batch_size=4, sampler=sampler, collate_fn=LatentCache.collate)
    one_by_one = DataLoader(OneByOne(cache), batch_size=4, sampler=sampler)
    seen = 0
    for epoch in (0, 1):
        sampler.use_epoch(epoch)
        for new, old in zip(batched, one_by_one, strict=True):
            assert new.keys() == old.keys() == {"latent_params", "prompt", "index", "labels"}
            assert new["prompt"] == old["prompt"]
            for key in ("latent_params", "index", "labels"):
                assert new[key].dtype == old[key].dtype and torch.equal(new[key], old[key]), key
            seen += len(new["index"])
    assert seen == 2 * len(cache)


def test_merged_lora_layer_computes_what_peft_computes():
    from peft import LoraConfig, inject_adapter_in_model

    from medsd.train.lora_forward import merge_small_lora_layers

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_out = torch.nn.Linear(16, 16), torch.nn.Linear(16, 400)

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q", "to_out"])
    plain, merged = inject_adapter_in_model(config, Block()), inject_adapter_in_model(config, Block())
    for name, p in plain.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # gaussian init leaves B at zero: make the adapter matter
    merged.load_state_dict(plain.state_dict())
    for model in (plain, merged):
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    assert merge_small_lora_layers(merged, max_features=320) == 1  # to_out (400 wide) keeps peft's forward

    x = torch.randn(5, 7, 16)
    outputs = [m.to_out(m.to_q(x)) for m in (plain, merged)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
    for out in outputs:
        out.square().mean().backward()
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in (plain, merged)]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 4
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-4)

    # Disabled adapters fall back to peft (the base layer alone); so does an adapter with dropout.
    merged.to_q.enable_adapters(False)
    torch.testing.assert_close(merged.to_q(x), merged.to_q.base_layer(x))
    dropout = inject_adapter_in_model(LoraConfig(r=4, lora_dropout=0.5, target_modules=["to_q"]), Block())
    assert merge_small_lora_layers(dropout, max_features=320) == 1
    torch.manual_seed(1)
    expected = type(dropout.to_q).forward(dropout.to_q, x)
    torch.manual_seed(1)
    torch.testing.assert_close(dropout.to_q(x), expected)


def test_loss_is_read_back_every_log_every_steps(tiny_model_dir, shapes, shared_cache, tmp_path, recipe,
                                                  monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reads: list[int] = []
    gather = report.gather_losses

    def counting(losses, accelerator):
        reads.append(losses.numel())
        return gather(losses, accelerator)

    monkeypatch.setattr(report, "gather_losses", counting)
    cfg = recipe(tiny_model_dir, tmp_path / "run", max_steps=7, log_every=3, checkpointing_steps=100,
                 cache_dir=str(shared_cache))
    result = train(cfg, shapes)
    assert reads == [3, 3, 1]  # steps 1-3, 4-6, then 7 (the last): one device read each
    assert sorted(result.losses) == list(range(1, 8))
    events = EventAccumulator(str(tmp_path / "run" / "logs"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [3, 6, 7]

    # Callbacks take each step's loss as a number, so they make every step read.
    reads.clear()
    seen: list[tuple[int, float]] = []
    cfg = recipe(tiny_model_dir, tmp_path / "cb", max_steps=2, log_every=3, cache_dir=str(shared_cache))
    result = train(cfg, shapes, callbacks=[lambda step, loss: seen.append((step, loss))])
    assert reads == [1, 1] and seen == sorted(result.losses.items())


@pytest.mark.parametrize("mode", [False, True, "blocks"])
def test_compile_setting_reaches_the_unet(tiny_model_dir, shapes, shared_cache, tmp_path, recipe, monkeypatch, mode):
    """The wiring, without paying for compilation: torch.compile is replaced by a spy that returns its input."""
    compiled: list = []
    monkeypatch.setattr(torch, "compile", lambda target, *args, **kwargs: compiled.append(target) or target)
    cfg = recipe(tiny_model_dir, tmp_path / "run", max_steps=1, compile=mode, cache_dir=str(shared_cache))
    result = train(cfg, shapes)
    assert result.step == 1
    unet = result.method.components.unet
    if mode is True:
        assert compiled == [unet]
    elif mode == "blocks":  # one compiled call per transformer block, nothing else
        blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
        assert blocks and [fn.__self__ for fn in compiled] == blocks
    else:
        assert compiled == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", [True, "blocks"])
def test_compiled_unet_trains_and_saves_plain_weights(tiny_model_dir, shapes, shared_cache, tmp_path, recipe, mode):
    cfg = recipe(tiny_model_dir, tmp_path / "run", max_steps=3, compile=mode, cache_dir=str(shared_cache))
    result = train(cfg, shapes)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert hasattr(result.method.module("unet"), "_orig_mod") == (mode is True)
    saved = load_file(str(tmp_path / "run" / "pytorch_lora_weights.safetensors"))
    assert saved and not any("_orig_mod" in key for key in saved)


def test_cpu_fp32_math_applies_to_float32_runs_on_the_cpu_only():
    from medsd.train import precision

    cpu = torch.device("cpu")
    assert precision.cpu_fp32_math_mode("bf16", cpu, "no") == "bf16"
    assert precision.cpu_fp32_math_mode("bf16", cpu, "bf16") == "ieee"  # autocast already sets the precision
    assert precision.cpu_fp32_math_mode("bf16", torch.device("cuda"), "no") == "ieee"  # TF32 is the GPU's
    assert precision.cpu_fp32_math_mode("ieee", cpu, "no") == "ieee"


def test_cpu_fp32_math_holds_during_the_steps_only_and_stays_close_to_float32(
        tiny_model_dir, shapes, shared_cache, tmp_path, recipe):
    from medsd.train.precision import cpu_has_native_bf16

    before = torch.backends.mkldnn.fp32_precision
    results = {}
    for mode in ("ieee", "bf16"):
        seen: list[str] = []
        cfg = recipe(tiny_model_dir, tmp_path / mode, max_steps=4, cache_dir=str(shared_cache), cpu_fp32_math=mode)
        result = train(cfg, shapes, callbacks=[lambda step, loss, seen=seen: seen.append(
            torch.backends.mkldnn.fp32_precision)])
        assert seen == [mode] * 4 and result.cpu_fp32_math == mode
        assert torch.backends.mkldnn.fp32_precision == before  # evaluation after training computes in float32
        results[mode] = [result.losses[s] for s in sorted(result.losses)]
    gaps = [abs(b - a) / a for a, b in zip(results["ieee"], results["bf16"])]
    assert max(gaps) < 0.05, gaps  # same seed, same timesteps and noise: only precision differs
    if cpu_has_native_bf16():
        assert results["ieee"] != results["bf16"]  # the setting reached the kernels
