"""The report's pictures: new-finding AUC against N, retained against new, and image grids per method.

Plots are inlined with `medsd.evaluate.report.figure`, so the page stays one file. They are drawn here rather
than with its `line_plot` because eleven methods need more colours than matplotlib's default cycle (a marker per
family, a colour per method) and the base needs a point of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medsd.benchmark.measures import NEW

GRID_COLUMNS = 12
MARKERS = {"textual_inversion": "o", "lora": "s", "dreambooth": "^", "full": "D", "text_encoder_swap": "v"}


def _series(rows: list[dict[str, Any]], finding: str, x: str, y: str) -> dict[str, tuple[str, list, list]]:
    """{method id: (family, xs, ys)} over N for one finding (the base left out)."""
    series: dict[str, tuple[str, list, list]] = {}
    for row in sorted((r for r in rows if r["finding"] == finding and r["method"] != "base"),
                      key=lambda r: r["n_examples"]):
        if row.get(x) is not None and row.get(y) is not None:
            _, xs, ys = series.setdefault(row["method_id"], (row["method"], [], []))
            xs.append(row[x])
            ys.append(row[y])
    return series


def _findings(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["finding"] for r in rows))


def _plot(series: dict[str, tuple[str, list, list]], base: tuple[float, float] | None, xlabel: str, ylabel: str,
          title: str, log_x: bool = False) -> Any:
    """One line per method (colour per method, marker per family) and the base as a black star."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    colours = plt.get_cmap("tab20").colors
    for i, (name, (family, xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, marker=MARKERS.get(family, "o"), color=colours[i % len(colours)], lw=1.3, ms=5, label=name)
    if base is not None:
        ax.plot([base[0]], [base[1]], marker="*", color="black", ms=11, ls="none", label="base")
    if log_x:
        ax.set_xscale("log")
        ax.set_xticks(sorted({x for _, xs, _ in series.values() for x in xs}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _base_point(rows: list[dict[str, Any]], finding: str, x: str, y: str) -> tuple[float, float] | None:
    base = [r for r in rows if r["finding"] == finding and r["method"] == "base"]
    if base and base[0].get(x) is not None and base[0].get(y) is not None:
        return base[0][x], base[0][y]
    return None


def auc_against_n(rows: list[dict[str, Any]]) -> str:
    """One plot per held-out finding: new-finding AUC against N, a line per method; the base's AUC (it was asked
    the same prompts) as a star at the smallest N."""
    from medsd.evaluate.report import figure

    parts = []
    for finding in _findings(rows):
        series = _series(rows, finding, "n_examples", "new_finding_auc")
        if series:
            base = _base_point(rows, finding, "n_examples", "new_finding_auc")
            smallest = min(x for _, xs, _ in series.values() for x in xs)
            image = _plot(series, (smallest, base[1]) if base else None, "training images N (log scale)",
                          "new-finding AUC", f"{finding}: AUC against N", log_x=True)
            parts.append(figure(image, f"{finding}: judge AUC of the new finding against the number of examples "
                                       "(star: the base, which never saw it)"))
    return f'<div class="grid">{"".join(parts)}</div>'


def retained_against_new(rows: list[dict[str, Any]]) -> str:
    """One plot per finding: base findings' AUC (y) against the new finding's (x); each line runs through N."""
    from medsd.evaluate.report import figure

    parts = []
    for finding in _findings(rows):
        series = _series(rows, finding, "new_finding_auc", "retained_auc")
        if series:
            image = _plot(series, _base_point(rows, finding, "new_finding_auc", "retained_auc"), "new-finding AUC",
                          "base findings' AUC", f"{finding}: retained against new")
            parts.append(figure(image, f"{finding}: what each method keeps (up) against what it learns (right); "
                                       "a line runs through its N in increasing order; star: the base"))
    return f'<div class="grid">{"".join(parts)}</div>'


def image_grids(rows: list[dict[str, Any]]) -> str:
    """Per finding and method (at its largest N, and the base): the images asked for the new finding (label
    prompts, then report prompts), then the base conditions' label-prompt images (what forgetting looks like)."""
    from medsd.evaluate.io import read_image
    from medsd.evaluate.report import figure, grid_image

    parts = []
    for finding in _findings(rows):
        mine = [r for r in rows if r["finding"] == finding]
        n_max = max((r["n_examples"] for r in mine), default=0)
        for row in (r for r in mine if r["method"] == "base" or r["n_examples"] == n_max):
            judged_csv = Path(row["run"]) / "judged.csv"
            if not judged_csv.is_file():
                continue
            judged = pd.read_csv(judged_csv)
            new = judged.loc[judged["condition"] == NEW, "file"].head(2 * GRID_COLUMNS)
            base = judged.loc[(judged["condition"] != NEW) & (judged["kind"] == "label"), "file"].head(GRID_COLUMNS)
            files = [*new, *base]
            images = torch.stack([read_image(Path(row["run"]) / "generated" / f, None) for f in files])
            caption = (f"{finding}, {row['method_id']} ({row['setting']}), N = {row['n_examples']}: new-finding AUC "
                       f"{_f(row['new_finding_auc'])}, retained {_f(row['retained_auc'])}")
            parts.append(figure(grid_image(images, ncols=GRID_COLUMNS, cell=64), caption))
    return f'<div class="grid">{"".join(parts)}</div>'


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
