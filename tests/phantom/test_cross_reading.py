"""Which findings the judge reads in images asked for one finding: the counts behind the heat map."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from medsd.phantom.cross_reading import NORMAL, asked_single, cross_reading, format_cross_reading, plot_cross_reading

FINDINGS = ["Consolidation", "Lung Lesion"]


def _row(kind: str, co: int, ll: int, p_co: float, p_ll: float) -> dict:
    return {"kind": kind, "Consolidation": co, "Lung Lesion": ll, "Consolidation|p": p_co, "Lung Lesion|p": p_ll}


@pytest.fixture()
def judged() -> pd.DataFrame:
    return pd.DataFrame([
        _row("report", 1, 0, 0.9, 0.7),  # a consolidation also read as a lesion
        _row("report", 1, 0, 0.8, 0.2),
        _row("report", 0, 1, 0.1, 0.9),
        _row("report", 0, 0, 0.1, 0.6),  # a normal prompt read as a lesion
        _row("report", 1, 1, 0.9, 0.9),  # a combination: in no row
        _row("real", 0, 0, 0.0, 0.1),
        _row("real", 0, 1, 0.5, 0.5),  # at the threshold counts as positive
    ])


def test_rows_are_the_single_asked_finding_or_normal(judged: pd.DataFrame) -> None:
    rows = asked_single(judged, FINDINGS).tolist()
    assert rows[:4] == ["Consolidation", "Consolidation", "Lung Lesion", NORMAL]
    assert pd.isna(rows[4]) and rows[5:] == [NORMAL, "Lung Lesion"]


def test_shares_judged_positive_per_asked_finding(judged: pd.DataFrame) -> None:
    table = cross_reading(judged, FINDINGS)
    assert set(table) == {"report", "real"}
    assert table["report"]["Consolidation"] == {"n": 2, "Consolidation": 1.0, "Lung Lesion": 0.5}
    assert table["report"]["Lung Lesion"] == {"n": 1, "Consolidation": 0.0, "Lung Lesion": 1.0}
    assert table["report"][NORMAL] == {"n": 1, "Consolidation": 0.0, "Lung Lesion": 1.0}
    assert sum(row["n"] for row in table["report"].values()) == 4  # the combination is left out
    assert table["real"]["Lung Lesion"] == {"n": 1, "Consolidation": 1.0, "Lung Lesion": 1.0}
    assert "Consolidation" not in table["real"]  # no real image asked for it alone: no empty row


def test_heat_map_and_printed_table(judged: pd.DataFrame, tmp_path: Path) -> None:
    table = cross_reading(judged, FINDINGS)
    path = plot_cross_reading(table, FINDINGS, tmp_path / "plots" / "cross.png")
    with Image.open(path) as image:
        assert image.width > 1.5 * image.height  # a panel per kind present (report, real), side by side
    lines = format_cross_reading(table["report"], FINDINGS, "report prompts")
    assert lines[0].strip() == "report prompts" and len(lines) == 2 + 3
    assert lines[3].split()[-2:] == ["1.00", "0.50"] and "Consolidation (2)" in lines[3]
