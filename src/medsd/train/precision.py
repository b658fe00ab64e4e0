"""Precision and device of a training run: what `training.mixed_precision`, `model.dtype` and `model.device` mean.

- `training.mixed_precision` (no | fp16 | bf16) is the compute precision: the forward passes run under autocast
  in that type, trained weights stay float32.
- `model.dtype` is the precision the *frozen* parts (VAE, frozen U-Net or text encoder) are held in: `auto`
  follows mixed_precision; `float32` keeps them in full precision under mixed precision (twice the memory, but
  no fp16 overflow in the VAE); float16 / bfloat16 must match mixed_precision, because half-precision weights
  meet float32 inputs without autocast.
- `training.cpu_fp32_math` (ieee | bf16) is the CPU's counterpart of TF32 on GPUs: with `bf16`, oneDNN runs
  float32 convolutions and matmuls on bfloat16 inputs with float32 accumulation (weights, activations and the
  optimizer stay float32). It is off by default: on both CPUs it was measured on it made the demo models'
  training steps slower, twice on an AMD EPYC with AVX512-BF16 and no AMX, 2.4 times on a Xeon with AMX
  (docs/training.md); their operations are too small for oneDNN's bf16 kernels to pay back the conversions.
- fp16 autocast exists only where accelerate turns it on (CUDA and other accelerators, not the CPU): on a CPU
  run accelerate silently skips it, and the first half-precision layer fails with "mat1 and mat2 must have the
  same dtype" after the data has been encoded. `check_run_device` refuses such a run before any work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from medsd.errors import MedsdError

COMPUTE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF_FOR = {"fp16": "float16", "bf16": "bfloat16"}
MIXED_FOR = {dtype: mixed for mixed, dtype in HALF_FOR.items()}


def frozen_weight_dtype(model_dtype: str, mixed_precision: str) -> torch.dtype:
    """The dtype of the frozen modules for `model.dtype` under `training.mixed_precision` (MedsdError if they clash)."""
    from medsd.models import resolve_dtype

    if model_dtype == "auto":
        return COMPUTE_DTYPES[mixed_precision]
    if model_dtype == "float32" or HALF_FOR.get(mixed_precision) == model_dtype:
        return resolve_dtype(model_dtype)
    allowed = ["auto", "float32"] + ([HALF_FOR[mixed_precision]] if mixed_precision in HALF_FOR else [])
    raise MedsdError(
        f"model.dtype={model_dtype} does not go with training.mixed_precision={mixed_precision}: frozen "
        f"{model_dtype} weights meet float32 inputs only under {MIXED_FOR[model_dtype]} autocast. Use model.dtype: "
        f"{' or '.join(allowed)} (auto follows mixed_precision), or training.mixed_precision={MIXED_FOR[model_dtype]}"
    )


def check_precision_settings(cfg: Any) -> None:
    """Config-time check: `model.dtype` agrees with `training.mixed_precision` (MedsdError naming both)."""
    frozen_weight_dtype(cfg.model.dtype, cfg.training.mixed_precision)


def check_run_device(cfg: Any, accelerator: Any) -> None:
    """Run-time check, before the model loads: the requested device is the one in use, fp16 really autocasts."""
    from accelerate.utils import DistributedType

    requested = str(cfg.model.device)
    actual = accelerator.device
    if requested.startswith("cuda:"):
        raise MedsdError(
            f"model.device={requested}: training places each process on its GPU through accelerate; use "
            f"model.device: cuda and choose the GPU with CUDA_VISIBLE_DEVICES={requested.split(':', 1)[1]}"
        )
    if requested in ("cuda", "mps") and actual.type != requested:
        visible = torch.cuda.is_available() if requested == "cuda" else torch.backends.mps.is_available()
        why = f"accelerate placed this run on {actual}" if visible else (
            "no CUDA GPU is visible (torch.cuda.is_available() is False)" if requested == "cuda"
            else "MPS (Apple GPU) is not available")
        raise MedsdError(f"model.device={requested} but {why}; use model.device: cpu or auto, or check the driver, "
                         "CUDA_VISIBLE_DEVICES and `accelerate env`")
    mixed = cfg.training.mixed_precision
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED  # DeepSpeed casts the model itself
    if mixed == "fp16" and not accelerator.native_amp and not deepspeed:
        raise MedsdError(
            f"training.mixed_precision=fp16 needs a CUDA GPU, and this run is on {actual.type} (model.device="
            f"{requested}), where accelerate does not autocast to fp16, so half-precision frozen weights would "
            "meet float32 inputs. On the CPU use --set training.mixed_precision=bf16 (CPU autocast supports it; "
            "model.dtype: auto follows) or =no"
        )


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bfloat16 instructions (AVX512-BF16, AMX). Whether bf16 math is faster there depends on
    the CPU and the model (twice as slow on the demo model on an AVX512-BF16 EPYC): bench_cpu_fp32_math.py."""
    return bool(torch.backends.mkldnn.is_available() and (torch.cpu._is_avx512_bf16_supported()
                                                          or torch.cpu._is_amx_tile_supported()))


def cpu_fp32_math_mode(setting: str, device: torch.device, mixed_precision: str) -> str:
    """What `training.cpu_fp32_math` means for this run: "bf16" or "ieee" ("ieee" off the CPU and under
    mixed precision, where autocast already chooses each operation's precision)."""
    if device.type != "cpu" or mixed_precision != "no":
        return "ieee"
    return setting


@contextlib.contextmanager
def cpu_fp32_math(mode: str) -> Iterator[None]:
    """oneDNN's float32 math mode for the block (the setting is process-wide; it is put back afterwards, so the
    evaluation that follows training in the same process computes in full float32)."""
    backend = torch.backends.mkldnn
    before = backend.fp32_precision
    backend.fp32_precision = mode
    try:
        yield
    finally:
        backend.fp32_precision = before
