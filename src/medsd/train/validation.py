"""Validation images during training: fixed prompts and seeds, from the live modules (no reload from disk).

Each validation renders one image per (prompt, seed), saves a grid `OUT/validation/step-STEP.png` (rows:
prompts, columns: seeds) and logs each prompt's images to TensorBoard as `validation/PROMPT`. With an EMA the
EMA weights are swapped in for the duration. Random state is forked so validating never changes training.
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medsd.train.config import ValidationConfig

log = logging.getLogger(__name__)


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_").lower()[:limit] or "prompt"


def image_grid(rows: list[list[np.ndarray]]) -> Image.Image:
    """Stack HxWxC float images in [0, 1] into one grid image."""
    strips = [np.concatenate(row, axis=1) for row in rows]
    grid = np.concatenate(strips, axis=0)
    return Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8))


@torch.no_grad()
def run_validation(
    method: Any,
    cfg: ValidationConfig,
    step: int,
    output_dir: str | Path,
    resolution: int,
    noise_scheduler: Any,
    writer: Any = None,
    ema: Any = None,
    autocast_dtype: torch.dtype | None = None,
) -> Path | None:
    """Render the validation prompts with the current (or EMA) weights; returns the grid path."""
    if not cfg.prompts:
        return None
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler.config)
    pipe = method.validation_pipeline(scheduler)
    device = pipe.device
    modules = list(method.trainable_modules().values())
    params = method.trainable_parameters()
    training_modes = [m.training for m in modules]
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    for m in modules:
        m.eval()
    side = cfg.resolution or resolution
    mixed = autocast_dtype not in (None, torch.float32)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if mixed else nullcontext()
    rows: list[list[np.ndarray]] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
            for prompt in cfg.prompts:
                row = []
                for seed in cfg.seeds:
                    generator = torch.Generator(device=device).manual_seed(seed)
                    image = pipe(
                        prompt, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                        height=side, width=side, generator=generator, output_type="np",
                    ).images[0]
                    row.append(image.astype(np.float32))
                rows.append(row)
    finally:
        for m, mode in zip(modules, training_modes, strict=True):
            m.train(mode)
        if ema is not None:
            ema.restore(params)
    out = Path(output_dir) / "validation" / f"step-{step:06d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(out)
    if writer is not None:
        for prompt, row in zip(cfg.prompts, rows, strict=True):
            writer.add_images(f"validation/{_slug(prompt)}", np.stack(row), step, dataformats="NHWC")
    log.info("validation step %d: %s", step, out)
    return out
