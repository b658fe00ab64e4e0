"""Fixtures for the training tests: a small synthetic labelled image set and a tiny-model recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from medsd.config import RunConfig


class ShapesDataset(Dataset):
    """Disc = "cardiomegaly", bar = "effusion" on a dark background: the data-layer sample contract, in memory.

    Setting `poison = True` makes every later sample NaN (to test the non-finite-loss stop).
    """

    pathologies = ["Cardiomegaly", "Effusion"]

    def __init__(self, n: int = 8, size: int = 32, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.size, self.poison, self.items = size, False, []
        yy, xx = np.mgrid[:size, :size] / size
        for i in range(n):
            disc, bar = bool(i % 2), bool((i // 2) % 2)
            img = 0.1 + 0.05 * rng.standard_normal((size, size))
            if disc:
                img[(yy - 0.55) ** 2 + (xx - 0.5) ** 2 < 0.05] = 0.8
            if bar:
                img[int(0.7 * size):int(0.85 * size), :] = 0.6
            names = [n for n, on in zip(["cardiomegaly", "effusion"], [disc, bar], strict=True) if on]
            prompt = "a chest x-ray with " + (" and ".join(names) or "no finding")
            self.items.append((img.astype(np.float32), prompt, [float(disc), float(bar)]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        img, prompt, labels = self.items[index]
        pixels = torch.from_numpy(img).mul(2).sub(1).expand(3, -1, -1).clone()
        if self.poison:
            pixels.fill_(float("nan"))
        return {"pixel_values": pixels, "prompt": prompt, "labels": torch.tensor(labels),
                "patient_id": f"p{index}", "path": f"shapes/{self.size}/{index}.png", "index": index}


@pytest.fixture
def shapes() -> ShapesDataset:
    """Eight 32 px synthetic samples."""
    return ShapesDataset()


def make_config(model_dir: Path, out: Path, method: str = "lora", **training) -> RunConfig:
    """A tiny recipe: 32 px, batch 2, a few steps, no validation unless asked."""
    settings = {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "lr_warmup_steps": 0,
                "checkpointing_steps": 2, "checkpoints_total_limit": 5, **training}
    return RunConfig.model_validate({
        "output_dir": str(out), "seed": 0,
        "model": {"pretrained": str(model_dir), "device": "cpu"},
        "data": {"source": "phantom", "resolution": 32},
        "training": settings,
        "method": {"name": method},
        "validation": {"prompts": [], "steps": 1000},
    })


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One latent cache folder for the tests that do not test the cache itself (encode once)."""
    return tmp_path_factory.mktemp("latent-cache")


@pytest.fixture
def recipe():
    """`make_config` as a fixture (test modules cannot import conftest without a package)."""
    return make_config


@pytest.fixture
def shapes_factory():
    """Build a ShapesDataset with other sizes."""
    return ShapesDataset


@pytest.fixture
def cuda_fp16_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make accelerate treat `mixed_precision=fp16` on the CPU as it does on a CUDA GPU: autocast to float16 around
    the forward passes and a GradScaler on the loss, so the fp16 path of every method runs here, GPU or not.

    (accelerate itself skips both on the CPU, which is why medsd refuses fp16 there; CPU autocast does support
    float16, so the emulation computes what a GPU would, only slower.)
    """
    import accelerate

    class CudaLikeAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.state.mixed_precision == "fp16" and self.device.type == "cpu":
                self.native_amp = True
                self.scaler = torch.amp.GradScaler("cpu")

    monkeypatch.setattr(accelerate, "Accelerator", CudaLikeAccelerator)


class DtypeGuard:
    """Hooks at the boundaries of the U-Net, the VAE encoder / decoder and the text encoder of a run.

    A module whose weights are in one floating type must get floating inputs of that type unless autocast is on
    (otherwise: "mat1 and mat2 must have the same dtype"); every violation is recorded in `problems`, and the
    output dtype of every call in `outputs[name]`, so a test can also see that the compute really ran in half
    precision; `weights[name]` holds the dtypes its weights had when it ran.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.outputs: dict[str, set[torch.dtype]] = {}
        self.weights: dict[str, set[torch.dtype]] = {}  # dtype of each module's weights when it ran

    def attach(self, method) -> None:
        c = method.components
        parts = {"unet": c.unet, "text_encoder": c.text_encoder, "vae.encoder": getattr(c.vae, "encoder", None),
                 "vae.decoder": getattr(c.vae, "decoder", None)}
        for name, module in parts.items():
            if module is not None:
                module.register_forward_pre_hook(self._check(name), with_kwargs=True)
                # accelerate casts a prepared module's outputs back to float32: the U-Net's compute dtype is
                # read at its first layer instead.
                watched = module.conv_in if name == "unet" else module
                watched.register_forward_hook(self._record(name))

    def _check(self, name: str):
        def hook(module, args, kwargs):
            weight = next((p for p in module.parameters() if p.is_floating_point()), None)
            if weight is None:
                return
            self.weights.setdefault(name, set()).add(weight.dtype)
            if torch.is_autocast_enabled(weight.device.type):
                return
            # The U-Net's boundary: the noisy sample and the conditioning (timesteps are cast inside diffusers).
            inputs = [args[0] if args else kwargs.get("sample"), kwargs.get("encoder_hidden_states")]
            if name == "unet" and len(args) > 2:
                inputs.append(args[2])
            for x in inputs:
                if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != weight.dtype:
                    self.problems.append(f"{name}: {x.dtype} input to {weight.dtype} weights outside autocast")
        return hook

    def _record(self, name: str):
        def hook(module, args, output):
            first = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
            if isinstance(first, torch.Tensor):
                self.outputs.setdefault(name, set()).add(first.dtype)
        return hook


@pytest.fixture
def dtype_guard(monkeypatch: pytest.MonkeyPatch) -> DtypeGuard:
    """A DtypeGuard attached to the modules of every run the test trains (after the method's setup)."""
    import medsd.train.loop as loop

    guard = DtypeGuard()
    build = loop.build_run_method

    def build_and_guard(*args, **kwargs):
        method = build(*args, **kwargs)
        guard.attach(method)
        return method

    monkeypatch.setattr(loop, "build_run_method", build_and_guard)
    return guard
