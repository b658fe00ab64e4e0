"""Prompts: templates, joining, no-finding wording, placeholder tokens, report sections, trimming, combinations."""

from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd

from medsd.data.config import PromptConfig
from medsd.data.prompts import (
    build_prompt,
    extract_sections,
    label_combinations,
    placeholder_token,
    report_prompt,
    trim_prompt,
)

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough

 FINDINGS:
 The heart is mildly enlarged. There is a small left pleural effusion.
 No pneumothorax.

 IMPRESSION:
 1. Mild cardiomegaly. 2. Small left pleural effusion.
"""


def test_label_prompts():
    cfg = PromptConfig()
    labels = {"Cardiomegaly": 1.0, "Edema": float("nan"), "Pleural Effusion": 1.0, "Fracture": 0.0}
    assert build_prompt(labels, cfg) == "A chest X-ray with Cardiomegaly and Pleural Effusion"
    assert build_prompt({"Cardiomegaly": 0.0}, cfg) == "A chest X-ray with no finding"
    assert build_prompt(["Pleural_Thickening"], cfg.model_copy(update={"lowercase": True})) == (
        "A chest X-ray with pleural thickening"
    )
    assert build_prompt(["Edema", "Cardiomegaly", "Pleural Effusion"], cfg) == (
        "A chest X-ray with Edema, Cardiomegaly and Pleural Effusion"
    )
    ti = PromptConfig(template="a photo of {labels}", placeholder_tokens=True, last_joiner=" ", no_finding="<healthy>")
    assert build_prompt(labels, ti) == "a photo of <cardiomegaly> <pleural_effusion>"
    assert build_prompt([], ti) == "a photo of <healthy>"
    assert placeholder_token("Enlarged Cardiomediastinum") == "<enlarged_cardiomediastinum>"


def test_report_sections_and_sentences():
    sections = extract_sections(MIMIC_REPORT)
    assert sections["impression"] == "1. Mild cardiomegaly. 2. Small left pleural effusion."
    assert (
        sections["findings"].startswith("The heart is mildly enlarged.") and sections["indication"] == "___ with cough"
    )
    cfg = PromptConfig(source="impression")
    assert report_prompt(sections, cfg) == sections["impression"]
    assert report_prompt({}, cfg) is None
    both = report_prompt(sections, cfg.model_copy(update={"source": "report"}))
    assert both.startswith("The heart") and both.endswith("pleural effusion.")
    sent = report_prompt(sections, PromptConfig(source="sentences", n_sentences=2), random.Random(3))
    pool = [
        "The heart is mildly enlarged.",
        "There is a small left pleural effusion.",
        "No pneumothorax.",
        "Mild cardiomegaly.",
        "Small left pleural effusion.",
    ]
    picked = [s for s in pool if s in sent]
    assert len(picked) == 2 and " ".join(picked) == sent


def test_trim_warns_what_was_cut(caplog):
    cfg = PromptConfig(max_tokens=7)  # 5 tokens of text: words and punctuation
    with caplog.at_level(logging.WARNING):
        out = trim_prompt("Heart size is normal. Lungs are clear bilaterally.", cfg)
    assert out == "Heart size is normal."
    assert "cut: 'Lungs are clear bilaterally.'" in caplog.text
    assert trim_prompt("short one", cfg) == "short one"


def test_label_combinations_counts():
    frame = pd.DataFrame({"A": [1, 1, 0, 0, 1, np.nan], "B": [0, 1, 0, 0, 1, 1]}, dtype=float)
    assert label_combinations(frame, ["A", "B"]) == [((), 2), (("A", "B"), 2), (("A",), 1), (("B",), 1)]
