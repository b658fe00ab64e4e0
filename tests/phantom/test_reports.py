"""Phantom reports: the matcher reads real sentences right, and every report states what its image holds."""

from __future__ import annotations

import random
import re

import pytest

from medsd.phantom.phrase_bank import abstract_noun_phrase, normalise_frame, phrase_bank
from medsd.phantom.report_language import FINDINGS, analyse, names_any, severities_in, sides_in
from medsd.phantom.reports import (
    MAX_PROMPT_TOKENS,
    FindingSpec,
    compose_report,
    count_tokens,
    report_for_record,
    severity_level,
    specs_from_record,
)

ALL = set(FINDINGS)


@pytest.mark.parametrize(
    ("sentence", "affirmed", "negated"),
    [
        ("No pneumothorax or large pleural effusion.", [], {"Pneumothorax", "Pleural Effusion"}),
        ("Heart size is normal.", [], {"Cardiomegaly"}),
        ("The heart is not enlarged.", [], {"Cardiomegaly"}),
        ("The lungs are clear.", [], {"Consolidation", "Lung Lesion"}),
        ("No acute cardiopulmonary abnormality.", [], ALL),
        ("Small left pleural effusion.", ["Pleural Effusion"], set()),
        ("The heart is mildly enlarged.", ["Cardiomegaly"], set()),
        ("Mild cardiomegaly without pulmonary edema.", ["Cardiomegaly"], set()),
        ("Right lower lobe infiltrate.", ["Consolidation"], set()),
        ("No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses.", [],
         {"Consolidation", "Pleural Effusion", "Pneumothorax", "Lung Lesion"}),
    ],
)
def test_matcher_reads_findings_and_negations(sentence: str, affirmed: list[str], negated: set[str]) -> None:
    reading = analyse(sentence)
    assert reading.usable, reading.reason
    assert reading.affirmed == affirmed and reading.negated == negated


@pytest.mark.parametrize("sentence", [
    "Small left pleural effusion with left basilar atelectasis.",  # affirms something the phantom never shows
    "Stable mild cardiomegaly.",  # a comparison with a prior study
    "Right basilar opacity may represent atelectasis.",  # hedged
    "There is no pneumothorax the lungs are hyperinflated.",  # the negation's scope ends at the new subject
    "Cardiomegaly and small left pleural effusion.",  # two findings in one sentence
])
def test_matcher_rejects_sentences_a_phantom_cannot_illustrate(sentence: str) -> None:
    assert not analyse(sentence).usable


def test_noun_phrases_and_frames_are_abstracted_to_slots() -> None:
    assert abstract_noun_phrase("Pleural Effusion", "Small left pleural effusion") == (
        "{severity} {side} pleural effusion", "noun")
    assert abstract_noun_phrase("Pleural Effusion", "Bilateral small pleural effusions") == (
        "{side} {severity} pleural effusion", "noun")
    assert abstract_noun_phrase("Consolidation", "Right lower lobe infiltrate") == (
        "{severity} {side} {location} infiltrate", "noun")  # the missing severity is added
    assert abstract_noun_phrase("Cardiomegaly", "heart size is enlarged") == (
        "heart size is {severity} enlarged", "clause")
    assert abstract_noun_phrase("Lung Lesion", "innumerable bilateral lung nodules") is None
    assert normalise_frame("There is a {np}.") == "There {be} {a}{np}."
    assert normalise_frame("{np} is present.") == "{np} {be} present."
    assert normalise_frame("{np} with adjacent atelectasis.") is None


def test_phrase_bank_is_harvested_from_open_i() -> None:
    bank = phrase_bank()
    counts = bank.summary()
    assert counts["negatives"] > 500 and counts["frames"] >= 10
    for name in FINDINGS:
        assert counts[f"noun phrases {name}"] >= 2, name
    texts = {p.text for p in bank.negatives}
    assert {"No acute cardiopulmonary abnormality.", "No pneumothorax.", "Heart size is normal."} <= texts
    # Held out: rare phrasings of every kind, never the most frequent ones.
    assert any(p.held_out for p in bank.negatives) and any(f.held_out for f in bank.frames)
    assert not next(p for p in bank.negatives if p.text == "No acute cardiopulmonary abnormality.").held_out


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]


def _read(sentence: str):
    # The harvesting matcher skips measurements ("4.4 cm"); take them out to read a lesion's sentence.
    return analyse(re.sub(r"\d+\.\d cm ", "", sentence))


def _random_specs(rng: random.Random) -> list[FindingSpec]:
    names = rng.sample(FINDINGS, rng.choice([0, 1, 1, 2]))
    sides = iter(rng.sample(["left", "right"], 2))
    specs = []
    for name in names:
        side = None if name == "Cardiomegaly" else (
            rng.choice(["left", "right", "bilateral"]) if name == "Pleural Effusion" else next(sides))
        size = rng.choice([3.2, 4.4, 5.9]) if name == "Lung Lesion" else None
        location = {"Consolidation": "lower lobe", "Lung Lesion": "midlung"}.get(name)
        level = severity_level((size - 3) / 3) if size else rng.randrange(3)
        specs.append(FindingSpec(name, side, level, size, location))
    return specs


@pytest.mark.parametrize("held_out", [False, True])
def test_every_finding_side_and_severity_is_stated_and_nothing_else(held_out: bool) -> None:
    rng = random.Random(7)
    for _ in range(150):
        specs = _random_specs(rng)
        report = compose_report(specs, rng, held_out=held_out)
        present = {s.name for s in specs}
        sentences = _sentences(report.findings) + _sentences(report.impression)
        readings = list(zip(sentences, [_read(s) for s in sentences], strict=True))
        assert count_tokens(report.prompt) <= MAX_PROMPT_TOKENS
        # The matcher reads the report back: no absent finding affirmed, no present one denied.
        for _, reading in readings:
            assert set(reading.affirmed) <= present, (report.text, reading.text)
            assert not (reading.negated & present), (report.text, reading.text)
        for spec in specs:
            stating = [s for s, r in readings if spec.name in r.affirmed]
            assert len(stating) >= 2, (spec, report.text)  # once in FINDINGS, once in IMPRESSION
            for sentence in stating:
                if spec.side:
                    assert sides_in(sentence) == {spec.side}, (spec, sentence)
                if spec.size_cm is not None and "cm" in sentence:
                    assert f"{spec.size_cm:.1f} cm" in sentence
                else:
                    assert severities_in(sentence) == {spec.level}, (spec, sentence)


def test_absent_findings_are_mostly_denied() -> None:
    rng = random.Random(3)
    denied, absent = 0, 0
    for _ in range(100):
        specs = _random_specs(rng)
        report = compose_report(specs, rng)
        missing = ALL - {s.name for s in specs}
        said = set().union(*(analyse(s).negated for s in _sentences(report.text.replace("FINDINGS:", "")
                                                                         .replace("IMPRESSION:", ""))))
        denied += len(said & missing)
        absent += len(missing)
    assert denied / absent > 0.6


def test_reports_are_deterministic_and_vary_with_the_image() -> None:
    record = {"seed": 5, "index": 12, "findings": [
        {"name": "Pleural Effusion", "severity": 0.9, "side": "bilateral"},
        {"name": "Lung Lesion", "severity": 0.2, "side": "left", "radius_mm": 18.0}],
        "locations": {"Lung Lesion": {"centroid_xy": [0.7, 0.5]}}}
    assert specs_from_record(record) == [FindingSpec("Pleural Effusion", "bilateral", 2),
                                         FindingSpec("Lung Lesion", "left", 0, 3.6, "lower lobe")]
    first = report_for_record(record)
    assert report_for_record(dict(record)) == first
    assert first.text.startswith("FINDINGS: ") and "\nIMPRESSION: " in first.text
    assert "bilateral" in first.findings.lower() and "effusions" in first.findings.lower()
    others = {report_for_record({**record, "index": i}).text for i in range(20)}
    assert len(others) >= 15  # varied wording and order, image to image


def test_held_out_sentences_never_appear_in_training_reports() -> None:
    spec = [FindingSpec("Pleural Effusion", "left", 0)]
    trained = set()
    for i in range(400):
        trained |= set(_sentences(compose_report(spec, random.Random(i)).findings))
    held = set()
    for i in range(60):
        held |= {s for s in _sentences(compose_report(spec, random.Random(i), held_out=True).findings)
                 if analyse(s).affirmed}
    assert held and not (held & trained)


def test_a_vocabulary_without_some_findings_never_names_them() -> None:
    rng = random.Random(0)
    allowed = ["Cardiomegaly", "Pleural Effusion", "Consolidation"]
    for _ in range(100):
        specs = [s for s in _random_specs(rng) if s.name in allowed]
        report = compose_report(specs, rng, findings=allowed)
        assert not names_any(report.text, frozenset({"Pneumothorax", "Lung Lesion"})), report.text
