"""The report's pictures: new-finding AUC against N, retained against new, and image grids per method.

Plots are drawn with `medsd.evaluate.report.line_plot` and inlined with its `figure`, so the page stays one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medsd.benchmark.measures import NEW

GRID_COLUMNS = 12


def _series(rows: list[dict[str, Any]], finding: str, x: str, y: str) -> dict[str, tuple[list, list]]:
    series: dict[str, tuple[list, list]] = {}
    for row in sorted((r for r in rows if r["finding"] == finding and r["method"] != "base"),
                      key=lambda r: r["n_examples"]):
        if row.get(x) is not None and row.get(y) is not None:
            xs, ys = series.setdefault(row["method_id"], ([], []))
            xs.append(row[x])
            ys.append(row[y])
    return series


def _findings(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["finding"] for r in rows))


def auc_against_n(rows: list[dict[str, Any]]) -> str:
    """One plot per held-out finding: new-finding AUC against N, a line per method (the base as N = 0)."""
    from medsd.evaluate.report import figure, line_plot

    parts = []
    for finding in _findings(rows):
        series = _series(rows, finding, "n_examples", "new_finding_auc")
        if series:
            image = line_plot(series, "training images N", "new-finding AUC", f"{finding}: AUC against N")
            parts.append(figure(image, f"{finding}: judge AUC of the new finding against the number of examples"))
    return f'<div class="grid">{"".join(parts)}</div>'


def retained_against_new(rows: list[dict[str, Any]]) -> str:
    """One plot per finding: base findings' AUC (y) against the new finding's (x); each line runs through N."""
    from medsd.evaluate.report import figure, line_plot

    parts = []
    for finding in _findings(rows):
        series = _series(rows, finding, "new_finding_auc", "retained_auc")
        base = [r for r in rows if r["finding"] == finding and r["method"] == "base"]
        if base and base[0]["retained_auc"] is not None and base[0]["new_finding_auc"] is not None:
            series["base"] = ([base[0]["new_finding_auc"]], [base[0]["retained_auc"]])
        if series:
            image = line_plot(series, "new-finding AUC", "base findings' AUC", f"{finding}: retained against new")
            parts.append(figure(image, f"{finding}: what each method keeps (up) against what it learns (right); "
                                       "points along a line are N = 5, 25, 100"))
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
