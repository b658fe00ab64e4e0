"""`medsd data inspect`: what a recipe's data set holds, before anything is trained on it."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from medsd.data.config import DataConfig
from medsd.data.dataset import MedicalImageDataset, build_dataset
from medsd.data.images import UnreadableImage
from medsd.data.prompts import label_combinations

log = logging.getLogger(__name__)


def label_counts(ds: MedicalImageDataset) -> dict[str, dict[str, int]]:
    """Per label: positive / uncertain / negative / blank counts of the raw labels, and positives after policy."""
    out = {}
    for name in ds.pathologies:
        raw = ds.raw_labels[name]
        out[name] = {
            "positive": int((raw == 1).sum()),
            "uncertain": int((raw == -1).sum()),
            "negative": int((raw == 0).sum()),
            "blank": int(raw.isna().sum()),
            "positive_after_policy": int((ds.frame[name] == 1).sum()),
        }
    return out


def inspect_dataset(cfg: DataConfig, out_dir: str | Path, n_samples: int = 16, check_all: bool = False) -> dict:
    """Summarise the data set and write `inspect.json` + `contact_sheet.png` into `out_dir`.

    Reads `n_samples` evenly spaced images (every image with `check_all`) to report shape, dtype, value range
    and unreadable files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = build_dataset(cfg)
    indices = range(len(ds)) if check_all else np.linspace(0, len(ds) - 1, min(n_samples, len(ds))).astype(int)
    tiles, unreadable, stats = [], [], []
    for i in dict.fromkeys(int(i) for i in indices):
        try:
            pixels = ds.load_pixels(i)
        except UnreadableImage as err:
            unreadable.append((err.path, err.reason))
            continue
        stats.append(pixels)
        if len(tiles) < n_samples:
            tiles.append((pixels, ds.frame.at[i, "prompt"]))
    combos = label_combinations(ds.frame, ds.pathologies)
    first = stats[0] if stats else None
    report = {
        "source": cfg.source,
        "size": len(ds),
        "patients": int(ds.frame["patient_id"].nunique()),
        "selection": ds.selection,
        "pathologies": ds.pathologies,
        "label_counts": label_counts(ds),
        "label_combinations": [{"labels": list(c), "count": n} for c, n in combos[:50]],
        "n_label_combinations": len(combos),
        "image_shape": list(first.shape) if first is not None else None,
        "dtype": str(first.dtype).replace("torch.", "") if first is not None else None,
        "value_range": [float(min(t.min() for t in stats)), float(max(t.max() for t in stats))] if stats else None,
        "sample_prompts": ds.frame["prompt"].drop_duplicates().head(10).tolist(),
        "checked_images": len(stats) + len(unreadable),
        "unreadable": [{"path": p, "reason": r} for p, r in unreadable],
    }
    if tiles:
        contact_sheet(tiles).save(out_dir / "contact_sheet.png")
        report["contact_sheet"] = str(out_dir / "contact_sheet.png")
    (out_dir / "inspect.json").write_text(json.dumps(report, indent=2))
    return report


def contact_sheet(tiles: list[tuple[torch.Tensor, str]], tile: int = 160, columns: int = 4) -> Image.Image:
    """Grid of images with their prompts written underneath."""
    caption_h = 48
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (pixels, prompt) in enumerate(tiles):
        arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte()
        arr = arr.expand(3, -1, -1) if arr.shape[0] == 1 else arr
        img = Image.fromarray(arr.permute(1, 2, 0).numpy()).resize((tile, tile), Image.BILINEAR)
        x, y = (k % columns) * tile, (k // columns) * (tile + caption_h)
        sheet.paste(img, (x, y))
        lines = textwrap.wrap(prompt, width=26)[:4]
        draw.multiline_text((x + 2, y + tile + 1), "\n".join(lines), fill="black", spacing=0)
    return sheet
