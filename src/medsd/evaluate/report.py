"""One self-contained ``report.html``: image grids, metric tables and plots, all inlined as base64 PNGs.

Rendering only: the numbers come in as the ``metrics.json`` dict built by :mod:`medsd.evaluate.suite`, and
the pictures as tensors. The page has no external resources so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#1d2330;line-height:1.4} h1{font-size:26px} h2{margin-top:34px;border-bottom:2px solid #dde3ea;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px} th,td{border:1px solid #cfd6df;padding:4px 9px;
text-align:right} th{background:#eef2f6} td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:18px} figure{margin:0} figcaption{font-size:13px;color:#4a5568;max-width:520px}
img{image-rendering:pixelated;border:1px solid #cfd6df} .note{color:#6b7280;font-size:13px} .warn{color:#a15c00}
"""


def png_base64(image: Image.Image) -> str:
    """A PIL image as a ``data:`` URI."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def grid_image(images: torch.Tensor, ncols: int = 8, cell: int = 96) -> Image.Image:
    """Images ``[N, C, H, W]`` in [0, 1] tiled into one PIL image (grey for C = 1, RGB for C = 3)."""
    if images.shape[-1] != cell:
        images = torch.nn.functional.interpolate(images.float(), size=(cell, cell), mode="bilinear", antialias=True)
    grid = make_grid(images.clamp(0, 1), nrow=ncols, padding=2, pad_value=1.0)  # grey comes back as 3 equal planes
    pixels = (grid.numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels[0]) if images.shape[1] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))


def pairs_image(left: torch.Tensor, right: torch.Tensor, captions: list[str], cell: int = 112,
                per_row: int = 3) -> Image.Image:
    """(generated, nearest training) pairs, ``per_row`` pairs side by side, a caption above each pair."""
    pair_w, pair_h = 2 * cell + 16, cell + 22
    rows = (len(left) + per_row - 1) // per_row
    mode = "L" if left.shape[1] == 1 else "RGB"
    canvas = Image.new(mode, (min(per_row, len(left)) * pair_w, rows * pair_h), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (a, b, text) in enumerate(zip(left, right, captions, strict=True)):
        x, y = (index % per_row) * pair_w, (index // per_row) * pair_h
        draw.text((x + 4, y + 4), text, fill="black")
        canvas.paste(grid_image(torch.stack([a, b]), ncols=2, cell=cell), (x + 2, y + 18))
    return canvas


def _figure_to_image(fig) -> Image.Image:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def read_scalars(logdir: str | Path, tag: str = "train/loss") -> tuple[list[int], list[float]]:
    """Steps and values of a TensorBoard scalar (empty lists when the logs hold no such tag)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags().get("scalars", []):
        return [], []
    events = accumulator.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def line_plot(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
              errors: dict[str, list] | None = None) -> Image.Image:
    """A small matplotlib line plot of named (x, y) series, optional error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, (x, y) in series.items():
        err = (errors or {}).get(name)
        ax.errorbar(x, y, yerr=err, marker="o" if len(x) < 30 else None, capsize=3, label=name, lw=1.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _figure_to_image(fig)


def loss_plot(logdir: str | Path) -> Image.Image | None:
    """Training loss curve from TensorBoard logs (raw and smoothed), or None without a train/loss tag."""
    steps, values = read_scalars(logdir)
    if not steps:
        return None
    smooth = np.convolve(values, np.ones(min(20, len(values))) / min(20, len(values)), mode="valid").tolist()
    series = {"train/loss": (steps, values)}
    if len(values) >= 10:
        series["moving mean"] = (steps[len(steps) - len(smooth):], smooth)
    return line_plot(series, "step", "loss", "Training loss")


def auc_ratio_plot(augmentation: dict) -> Image.Image | None:
    """Mean test AUC (± std over runs) against the synthetic share of the training set."""
    rows = [r for r in augmentation.get("conditions", []) if r["mean_auc"] is not None]
    if not rows:
        return None
    x = [100 * r["ratio"] for r in rows]
    return line_plot({"mean AUC": (x, [r["mean_auc"] for r in rows])}, "synthetic share of training set (%)",
                     "test AUC", "AUC vs synthetic ratio", errors={"mean AUC": [r["mean_auc_std"] for r in rows]})


# ---------------------------------------------------------------- HTML pieces
def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table(header: list[str], rows: list[list]) -> str:
    """An HTML table; cells are formatted numbers or escaped text."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(image: Image.Image, caption: str, width: int | None = None) -> str:
    """An inlined image with a caption."""
    style = f' width="{width}"' if width else ""
    return f'<figure><img src="{png_base64(image)}"{style} alt="{html.escape(caption)}">' \
           f"<figcaption>{html.escape(caption)}</figcaption></figure>"


def section(title: str, body: str) -> str:
    """A titled section."""
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def render_html(title: str, sections: list[str], notes: list[str] | None = None) -> str:
    """The whole page."""
    note_html = "".join(f'<p class="note warn">{html.escape(n)}</p>' for n in notes or [])
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{note_html}{''.join(sections)}"
            "</body></html>")
