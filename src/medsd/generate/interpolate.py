"""Interpolation between two conditions (e.g. healthy → cardiomegaly) with one seed, plus a strip image.

Two ways to move between conditions: "embedding" blends the encoder hidden states of the two conditions
(works for text and class-conditional models alike), "compose" blends the two conditional noise predictions
with composable-diffusion weights (1 - a, a). The same seed for every frame keeps the anatomy fixed so only
the finding changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from medsd.errors import MedsdError
from medsd.files import output_dir
from medsd.generate import jobs as J
from medsd.generate.api import check_settings, check_size, run_jobs
from medsd.generate.compose import is_plain, parse_prompt
from medsd.generate.loading import LoadedModel, check_prompt, load_model
from medsd.generate.sampling import Condition, sample
from medsd.generate.schedulers import canonical_scheduler_name

METHODS = ("embedding", "compose")


def interpolate(
    model: str | Path | LoadedModel,
    start: str,
    end: str,
    *,
    frames: int = 5,
    method: str = "embedding",
    out_dir: str | Path = "interpolation",
    negative_prompt: str = "",
    steps: int = 50,
    guidance: float = 7.5,
    scheduler: str = "pndm",
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    embeddings: Sequence[str | Path] = (),
    device: str = "auto",
    dtype: str = "float32",
    progress: bool = True,
) -> pd.DataFrame:
    """Generate `frames` images from `start` (a = 0) to `end` (a = 1) with one seed; writes frame PNGs,
    `strip.png` (frames side by side) and generation_results.csv with an `alpha` column."""
    if frames < 2:
        raise MedsdError(f"--frames must be at least 2 (start and end), got {frames}")
    if method not in METHODS:
        raise MedsdError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    check_settings(batch_size=batch_size, steps=steps, scheduler=scheduler, guidance=guidance,
                   lora_scale=lora_scale, height=height, width=width)
    for name, text in (("--start", start), ("--end", end)):
        if not is_plain(parse_prompt(text)):
            raise MedsdError(f"{name} {text!r} is composable; interpolation goes between two plain conditions")
    output_dir(out_dir, "--out")
    if not isinstance(model, LoadedModel):
        model = load_model(model, lora=lora, lora_scale=lora_scale, embeddings=embeddings, device=device, dtype=dtype)
    height, width = check_size(model, height, width)
    for text in (start, end):
        check_prompt(model, text)

    alphas = np.linspace(0.0, 1.0, frames)
    jobs = [
        J.Job(k, f"frame_{k:03d}.png", f"{1 - a:.3f}*{start} AND {a:.3f}*{end}", seed, extra={"alpha": round(a, 4)})
        for k, a in enumerate(alphas)
    ]
    start_emb = end_emb = None
    if method == "embedding":
        with torch.no_grad():
            start_emb, end_emb = model.encode([start, end])

    def make(batch: list[J.Job]) -> np.ndarray:
        conds = []
        for job in batch:
            a = float(job.extra["alpha"])
            if method == "embedding":
                conds.append(Condition([(1.0, (1 - a) * start_emb + a * end_emb)], negative_prompt))
            else:
                conds.append(Condition([(1 - a, start), (a, end)], negative_prompt))
        return sample(model, conds, [job.seed for job in batch], steps, guidance, scheduler, height, width)

    settings = {"negative_prompt": negative_prompt, "steps": steps, "guidance": guidance,
                "scheduler": canonical_scheduler_name(scheduler), "height": height, "width": width,
                "interpolation": method}
    frame = run_jobs(model, jobs, make, out_dir, settings, batch_size, progress=progress)
    save_strip([Path(out_dir) / job.file for job in jobs], Path(out_dir) / "strip.png")
    return frame


def save_strip(files: Sequence[Path], path: Path) -> Path:
    """The frames side by side in one PNG (healthy → diseased reads left to right)."""
    images = [Image.open(f).convert("RGB") for f in files]
    w, h = images[0].size
    strip = Image.new("RGB", (w * len(images), h))
    for i, img in enumerate(images):
        strip.paste(img, (i * w, 0))
    strip.save(path)
    return path
