"""Free-text reports for phantom images, written from their known parameters in the language of real reports.

A phantom image's findings are known exactly (`params.jsonl`): which finding, its side, its severity or size
and where it lies. `specs_from_record` turns them into `FindingSpec`s; `compose_report` writes a report:

1. FINDINGS: one sentence per finding, a real Open-i frame ("There is a {np}.") around a real noun phrase
   ("{severity} {side} pleural effusion") filled with the spec's words (`medsd.phantom.phrase_bank`);
2. denials of most absent findings, real sentences chosen so that none denies a finding that is present
   ("No pneumothorax or large pleural effusion.", "Heart size is normal.");
3. sometimes a sentence about bones or the mediastinum, which says nothing about the findings;
4. the sentences in random order, then an IMPRESSION that restates each finding briefly, or a real "no acute
   abnormality" sentence for a normal image;
5. denials and the restatement dropped, in that order, until findings + impression fit the text encoder's
   75 tokens, so the `report` prompt never loses a finding to trimming.

Everything is drawn from one seeded generator, so a report is a pure function of (image parameters, seed).
`held_out=True` writes with the phrases set aside for testing (`PhraseBank` marks them), which the
training reports never use.
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from medsd.phantom.phrase_bank import Frame, NounPhrase, Phrase, PhraseBank, noun_number, phrase_bank
from medsd.phantom.report_language import FINDINGS, LATERAL, names_any

SEVERITY_ADJECTIVES: dict[str, tuple[tuple[str, ...], ...]] = {
    "Cardiomegaly": (("mild", "slight"), ("moderate",), ("marked", "severe")),
    "Pleural Effusion": (("small",), ("moderate",), ("large",)),
    "Pneumothorax": (("small",), ("moderate",), ("large",)),
    "Consolidation": (("small",), ("moderate",), ("extensive", "large")),
    "Lung Lesion": (("small",), ("moderate",), ("large",)),
}
SEVERITY_ADVERBS = (("mildly", "slightly"), ("moderately",), ("markedly", "severely"))
LEVEL_NAMES = ("mild", "moderate", "severe")
# TotalSegmentator lobe labels -> words; lesions get a zone from their mask's centroid (fraction of image height).
LOBE_WORDS = {10: "upper lobe", 11: "lower lobe", 12: "upper lobe", 13: "middle lobe", 14: "lower lobe"}
LESION_ZONES = ((0.33, "upper lobe"), (0.47, "midlung"), (math.inf, "lower lobe"))
MAX_PROMPT_TOKENS = 75  # CLIP's 77 minus the start and end tokens
DENIAL_RATE = 0.85  # share of absent findings a report denies (real reports leave some unmentioned)
NEUTRAL_RATE = 0.3


@dataclass(frozen=True)
class FindingSpec:
    """One finding as a report states it: side (left/right/bilateral), severity level 0-2, a lesion's size, where."""

    name: str
    side: str | None = None
    level: int = 1
    size_cm: float | None = None
    location: str | None = None

    def describe(self) -> str:
        """Short label: "Pleural Effusion, left, mild", "Lung Lesion, right, 4.2 cm"."""
        size = f"{self.size_cm:.1f} cm" if self.size_cm is not None else LEVEL_NAMES[self.level]
        return ", ".join(p for p in (self.name, self.side, size) if p)


@dataclass(frozen=True)
class Report:
    """A report's two sections; `text` is what the CSV holds, `prompt` what `prompt.source: report` reads."""

    findings: str
    impression: str

    @property
    def text(self) -> str:
        return f"FINDINGS: {self.findings}\nIMPRESSION: {self.impression}"

    @property
    def prompt(self) -> str:
        return f"{self.findings} {self.impression}"


def severity_level(severity: float) -> int:
    """The phantom's severity in [0, 1] -> 0 (mild / small), 1 (moderate), 2 (severe / large)."""
    return min(2, max(0, int(float(severity) * 3)))


def specs_from_record(record: dict[str, Any]) -> list[FindingSpec]:
    """FindingSpecs of one `params.jsonl` record (its findings, and the lesion's place from its mask)."""
    specs = []
    for f in record["findings"]:
        level, name = severity_level(f["severity"]), f["name"]
        location, size = None, None
        if name == "Consolidation":
            location = LOBE_WORDS.get(int(f["lobe"]))
        elif name == "Lung Lesion":
            size = round(2 * f["radius_mm"] / 10, 1)
            centre = (record.get("locations", {}).get(name) or {}).get("centroid_xy")
            location = next(word for limit, word in LESION_ZONES if centre[1] < limit) if centre else None
        elif name == "Pneumothorax" and level == 0:
            location = "apical"
        specs.append(FindingSpec(name, f.get("side"), level, size, location))
    return specs


def _weighted(items: list[Any], rng: random.Random) -> Any:
    """One item, drawn with weight sqrt(corpus count): common phrasings often, rare ones still."""
    return rng.choices(items, weights=[math.sqrt(getattr(i, "count", 1)) for i in items], k=1)[0]


def _pool(items: tuple[Any, ...], held_out: bool, fits: Any, unnamed: frozenset[str] = frozenset()) -> list[Any]:
    """Items that fit and name none of `unnamed`; for held-out text the held-out ones when any fit, else the
    training ones."""
    fitting = [i for i in items if fits(i) and not (unnamed and names_any(getattr(i, "text", ""), unnamed))]
    preferred = [i for i in fitting if i.held_out == held_out]
    return preferred if preferred or not held_out else fitting


def _severity_words(spec: FindingSpec, adverb: bool, rng: random.Random) -> str:
    # A lesion is described by its size ("4.2 cm"), sometimes by a word; a "moderate lesion" is not said.
    if spec.name == "Lung Lesion" and spec.size_cm is not None and (spec.level == 1 or rng.random() < 0.8):
        return f"{spec.size_cm:.1f} cm"
    table = SEVERITY_ADVERBS if adverb else SEVERITY_ADJECTIVES[spec.name]
    return rng.choice(table[spec.level])


def fill_noun_phrase(spec: FindingSpec, np: NounPhrase, rng: random.Random) -> str:
    """A noun phrase pattern filled with the spec's words; a bilateral effusion takes the plural."""
    text = np.pattern
    if spec.side == "bilateral":
        text = text.replace("{side}-sided", "{side}")
        text = re.sub(r"\beffusion\b", "effusions", text)
    severity = _severity_words(spec, "{severity} enlarged" in text, rng)
    text = text.format(severity=severity, side=spec.side or "",
                       location=spec.location or "")
    return " ".join(text.split())


def fill_frame(frame: Frame, np_text: str) -> str:
    """A frame around a filled noun phrase, verb and article agreeing with it; first letter capitalised."""
    number = noun_number(np_text)
    article = "" if number != "sg" else ("an " if np_text[:1].lower() in "aeiou" else "a ")
    text = frame.text.format(np=np_text, be="are" if number == "pl" else "is", a=article)
    return text[0].upper() + text[1:]


def positive_sentence(spec: FindingSpec, present: set[str], rng: random.Random, bank: PhraseBank,
                      held_out: bool = False, short: bool = False, unnamed: frozenset[str] = frozenset()) -> str:
    """One sentence stating `spec`; its frame denies nothing in `present` and names nothing in `unnamed`.
    `short`: the bare "{np}." frame."""
    def np_fits(n: NounPhrase) -> bool:
        return n.finding == spec.name and ("{location}" not in n.pattern or spec.location is not None) and (
            "{side}" not in n.pattern or spec.side is not None)

    np = _weighted(_pool(bank.noun_phrases, held_out, np_fits), rng)

    def frame_fits(f: Frame) -> bool:
        return f.kind == np.kind and not (f.negates & (present - {spec.name})) and (
            not short or f.text in ("{np}.", "The {np}."))

    frame = _weighted(_pool(bank.frames, held_out, frame_fits, unnamed), rng)
    return fill_frame(frame, fill_noun_phrase(spec, np, rng))


def denials(present: set[str], rng: random.Random, bank: PhraseBank, held_out: bool = False,
            max_sentences: int = 3, unnamed: frozenset[str] = frozenset()) -> list[str]:
    """Real sentences denying most absent findings (each absent one with probability DENIAL_RATE), naming
    none of `unnamed`."""
    absent = set(FINDINGS) - present
    wanted = {f for f in sorted(absent - unnamed) if rng.random() < DENIAL_RATE}
    chosen: list[Phrase] = []

    def fits(p: Phrase) -> bool:
        return p.negates <= absent and bool(p.negates & wanted) and p not in chosen

    while wanted and len(chosen) < max_sentences:
        pool = _pool(bank.negatives, held_out, fits, unnamed)
        if not pool:
            break
        pick = _weighted(pool, rng)
        chosen.append(pick)
        wanted -= pick.negates
    return [p.text for p in chosen]


def compose_report(specs: list[FindingSpec], rng: random.Random, bank: PhraseBank | None = None,
                   held_out: bool = False, findings: list[str] | tuple[str, ...] = tuple(FINDINGS)) -> Report:
    """A report stating every spec (steps 1-5 of the module docstring). `findings`: the only findings the
    report may name; denials of the others are left out (a model trained on it never reads their names)."""
    bank = bank or phrase_bank()
    unnamed = frozenset(FINDINGS) - set(findings)
    present = {s.name for s in specs}
    positives = [positive_sentence(s, present, rng, bank, held_out, unnamed=unnamed) for s in specs]
    negatives = denials(present, rng, bank, held_out, unnamed=unnamed)
    neutral = [_weighted(_pool(bank.neutral, held_out, lambda p: True, unnamed), rng).text] \
        if rng.random() < NEUTRAL_RATE else []
    if specs:
        impression = [positive_sentence(s, present, rng, bank, held_out, short=True, unnamed=unnamed)
                      for s in specs]
    else:
        normal = _pool(bank.negatives, held_out,
                       lambda p: p.negates == set(FINDINGS) and len(p.text.split()) <= 8, unnamed)
        impression = [_weighted(normal, rng).text]
    while True:
        body = positives + negatives
        rng.shuffle(body)
        report = Report(" ".join(body + neutral), " ".join(impression))
        if count_tokens(report.prompt) <= MAX_PROMPT_TOKENS:
            return report
        if neutral:
            neutral = []
        elif negatives:
            negatives.pop(rng.randrange(len(negatives)))
        elif len(impression) > 1 or specs:
            impression = impression[:-1] if len(impression) > 1 else [positives[0]]
            if count_tokens(" ".join(positives)) > MAX_PROMPT_TOKENS:
                raise ValueError(f"the findings {specs} need more than {MAX_PROMPT_TOKENS} tokens")
        else:
            return report


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from medsd.tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()


def count_tokens(text: str) -> int:
    """Tokens of `text` under the shipped radiology CLIP tokenizer, without the start and end tokens."""
    return len(_tokenizer()(text, truncation=False).input_ids) - 2


def report_for_record(record: dict[str, Any], findings: list[str] | tuple[str, ...] = tuple(FINDINGS),
                      held_out: bool = False) -> Report:
    """The report of one phantom image, a pure function of its parameters (seed and index included);
    `findings`: the findings the report may name (a set rendered without some names none of them)."""
    rng = random.Random(f"medsd-report:{record['seed']}:{record['index']}")
    return compose_report(specs_from_record(record), rng, held_out=held_out, findings=findings)


def lateral(spec: FindingSpec) -> bool:
    """True for findings a report places on one side (or both)."""
    return spec.name in LATERAL
