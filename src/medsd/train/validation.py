"""Validation images during training: fixed prompts and seeds, from the live modules (no reload from disk).

Each validation renders one image per (prompt, seed), saves a grid `OUT/validation/step-STEP.png` (rows:
prompts, columns: seeds) and logs each prompt's images to TensorBoard as `validation/PROMPT`. With an EMA the
EMA weights are swapped in for the duration. Random state is forked so validating never changes training.

A pass says what it will render, shows a progress bar and, after the first image, how long the whole pass
will take. It stops after `validation.max_minutes` (a full-size model on a CPU renders an image in minutes):
the images left out stay black in the grid, and a warning names them and the setting.
"""

from __future__ import annotations

import logging
import re
import time
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


def image_grid(rows: list[list[np.ndarray | None]]) -> Image.Image:
    """Stack HxWxC float images in [0, 1] into one grid image (a None cell, an image not rendered, is black)."""
    shape = next(image.shape for row in rows for image in row if image is not None)
    rows = [[image if image is not None else np.zeros(shape, np.float32) for image in row] for row in rows]
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
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
            rows = _render_grid(pipe, cfg, side, step)
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
            rendered = [image for image in row if image is not None]
            if rendered:
                writer.add_images(f"validation/{_slug(prompt)}", np.stack(rendered), step, dataformats="NHWC")
    log.info("validation step %d: %s", step, out)
    return out


def _render_grid(pipe: Any, cfg: ValidationConfig, side: int, step: int) -> list[list[np.ndarray | None]]:
    """One image per (prompt, seed), row by row, until done or `cfg.max_minutes` would be passed (None: skipped)."""
    from tqdm.auto import tqdm

    jobs = [(row, column) for row in range(len(cfg.prompts)) for column in range(len(cfg.seeds))]
    rows: list[list[np.ndarray | None]] = [[None] * len(cfg.seeds) for _ in cfg.prompts]
    log.info("validation step %d: %d image(s) x %d sampler steps at %d px", step, len(jobs),
             cfg.num_inference_steps, side)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else float("inf")
    started, done = time.perf_counter(), 0
    for row, column in tqdm(jobs, desc=f"validation step {step}", leave=False):
        elapsed = time.perf_counter() - started
        # Always render one image; after that, only what still fits in the budget at the measured pace.
        if done and elapsed + elapsed / done > budget:
            break
        generator = torch.Generator(device=pipe.device).manual_seed(cfg.seeds[column])
        image = pipe(
            cfg.prompts[row], num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
            height=side, width=side, generator=generator, output_type="np",
        ).images[0]
        rows[row][column] = image.astype(np.float32)
        done += 1
        if done == 1 and len(jobs) > 1:
            first = time.perf_counter() - started
            log.info("validation step %d: first image took %.1f s; all %d: about %.1f min", step, first, len(jobs),
                     first * len(jobs) / 60)
    if done < len(jobs):
        elapsed = time.perf_counter() - started
        log.warning(
            "validation step %d: rendered %d of %d images in %.1f min and skipped the rest (black in the grid), "
            "which would take about %.1f min more: validation.max_minutes=%s. Raise it, or use fewer "
            "validation.prompts / seeds / num_inference_steps", step, done, len(jobs), elapsed / 60,
            elapsed / done * (len(jobs) - done) / 60, cfg.max_minutes)
    return rows
