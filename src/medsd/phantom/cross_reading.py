"""Which findings the judge reads in images asked for one finding: where a generator's false positives come from.

An AUC says how well "asked" and "not asked" images separate; it does not say *which* not-asked images the judge
calls positive. This table does: for the images whose prompt asks for exactly one finding (or none), the share
the judge calls positive for every finding. On real images the diagonal is near 1 and the rest near 0; a
generator that draws a lesion-like blotch whenever it draws a consolidation shows it as a bright off-diagonal
cell (row Consolidation, column Lung Lesion), which the AUC alone would hide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsd.phantom.prompt_faithfulness import THRESHOLD

NORMAL = "no finding"


def asked_single(frame: pd.DataFrame, findings: list[str]) -> pd.Series:
    """Per row, the one finding asked for, NORMAL when none, NaN for combinations."""
    counts = frame[findings].sum(axis=1)
    return frame[findings].idxmax(axis=1).where(counts == 1).mask(counts == 0, NORMAL)


def cross_reading(frame: pd.DataFrame, findings: list[str]) -> dict[str, dict[str, Any]]:
    """{kind: {asked: {"n": images, finding: share judged positive, ...}}} over single-finding and normal
    prompts; `frame` as `prompt_faithfulness.judged_frame` (with a "kind" column)."""
    out: dict[str, dict[str, Any]] = {}
    for kind, part in frame.groupby("kind", sort=False):
        asked = asked_single(part, findings)
        table: dict[str, Any] = {}
        for row in [NORMAL, *findings]:
            rows = part[asked == row]
            if len(rows):
                table[row] = {"n": int(len(rows)), **{name: float((rows[f"{name}|p"] >= THRESHOLD).mean())
                                                      for name in findings}}
        out[str(kind)] = table
    return out


def write_cross_reading(frame: pd.DataFrame, findings: list[str], folder: Path) -> dict[str, dict[str, Any]]:
    """`cross_reading` of `frame`, written to FOLDER/cross_reading.json and drawn to FOLDER/cross_reading.png."""
    import json

    table = cross_reading(frame, findings)
    (folder / "cross_reading.json").write_text(json.dumps(table, indent=2))
    plot_cross_reading(table, findings, folder / "cross_reading.png")
    return table


def plot_cross_reading(table: dict[str, dict[str, Any]], findings: list[str], path: Path,
                       kinds: tuple[str, ...] = ("label", "report", "held_out", "real")) -> Path:
    """One heat map per prompt kind: rows what was asked, columns what the judge reads (share positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in kinds if table.get(k)]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.6 * max(len(shown), 1), 3.8), squeeze=False)
    short = [f.replace("Pleural ", "Pl. ").replace("Cardiomegaly", "Cardiomeg.") for f in findings]
    for ax, kind in zip(axes[0], shown, strict=False):
        rows = [r for r in [NORMAL, *findings] if r in table[kind]]
        grid = np.array([[table[kind][r][f] for f in findings] for r in rows])
        ax.imshow(grid, vmin=0, vmax=1, cmap="magma")
        for i, j in np.ndindex(grid.shape):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if grid[i, j] > 0.6 else "white")
        ax.set_xticks(range(len(findings)), short, rotation=45, ha="right", fontsize=7)
        labels = [f"{(NORMAL if r == NORMAL else short[findings.index(r)])} ({table[kind][r]['n']})" for r in rows]
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(f"{kind}: judged positive", fontsize=9)
        ax.set_xlabel("judged", fontsize=8)
    axes[0][0].set_ylabel("asked (images)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_cross_reading(table: dict[str, Any], findings: list[str], title: str) -> list[str]:
    """Printable lines of one kind's table."""
    short = [f[:10] for f in findings]
    lines = [f"  {title}", "    " + f"{'asked (images)':<24}" + "".join(f"{s:>11}" for s in short)]
    for row, cells in table.items():
        lines.append("    " + f"{row + ' (' + str(cells['n']) + ')':<24}"
                     + "".join(f"{cells[f]:>11.2f}" for f in findings))
    return lines
