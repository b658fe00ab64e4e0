"""The phrases phantom reports are made of, harvested from the real Open-i reports by the rule-based matcher.

`phrase_bank()` reads every FINDINGS / IMPRESSION sentence of the Indiana / Open-i reports shipped in
torchxrayvision, lets `medsd.phantom.report_language.analyse` read it, and keeps

- **negatives**: sentences, verbatim, that deny some of the five findings and affirm nothing
  ("No pneumothorax or large pleural effusion.", "Heart size is normal.", "No acute cardiopulmonary abnormality.");
- **neutral** sentences that deny only things the phantom never shows ("No bony fractures are seen.");
- **frames**: sentences that affirm one finding, with its noun phrase cut out ("There is a {np}.", "{np} is
  present.", "{np} without pulmonary edema.") and nothing else left but function words and denials;
- **noun phrases** per finding, abstracted to slots ("{severity} {side} pleural effusion", "{side} {location}
  infiltrate", "heart size is {severity} enlarged") and completed with any slot the finding needs but the
  sentence lacked, so that every report states side and severity.

Each phrase is marked *held out* or not, stably by its text: the most frequent phrases of each kind always train,
and about a quarter of the rest are kept for test prompts that the text-to-image model never sees in training.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medsd.phantom.report_language import FINDINGS, SEVERITY_WORDS, analyse, noun_phrase_span

HELD_OUT_SHARE = 0.25
ALWAYS_TRAIN = 2  # the most frequent phrases of each kind (per finding) never go to the held-out set
# The sentence shapes a frame may have around its noun phrase: an optional "There is a" / "The" before it,
# "is present" after it, and a denial at the end ("without pulmonary edema"). Verb and article are stored as
# slots ({be}, {a}) and agree with the noun phrase they are filled with.
_FRAME_SHAPE = re.compile(r"^(?P<pre>[Tt]here (?:is|are)(?: an?)? |[Tt]he )?\{np\}"
                          r"(?P<verb> (?:is|are) (?:present|seen|noted|identified|demonstrated)| identified)?"
                          r"(?P<denial>,? (?:but )?(?:no|without|with no) [a-z ]+)?\.$")
# Neutral sentences kept as filler: about bones, soft tissues or the mediastinum, and naming no side.
_NEUTRAL_TOPIC = re.compile(r"osseous|bony|bones|skeletal|soft tissue|mediastin|fracture", re.IGNORECASE)
_SIDE_WORD = re.compile(r"\b(?:left|right|bilateral)\b", re.IGNORECASE)
# Noun phrases that describe something the phantom does not draw (several lesions, odd places, asymmetry).
_UNSUPPORTED_NP = re.compile(r"multiple|innumerable|numerous|several|three|two|greater|larger|perihilar|"
                             r"retrocardiac|suprahilar|lingul|hilum|hilar|parahilar|multilobar|multifocal|diffuse|"
                             r"segment|posterior|anterior|\blateral|medial|recess|nonconsolidating|\bto\b|/|"
                             r"fibronodular|acute|ill-defined|vague|volume|amount|calcified|noncalcified|sized|lobes|significant",
                             re.IGNORECASE)
_HEAD_NOUNS = {  # singular -> plural of each finding's head nouns
    "effusion": "effusions", "pneumothorax": "pneumothoraces", "infiltrate": "infiltrates",
    "opacity": "opacities", "consolidation": "consolidations", "nodule": "nodules", "mass": "masses",
    "lesion": "lesions",
}
_MASS_NOUNS = ("cardiomegaly", "disease", "consolidation", "pneumonia")
# Sentences that start mid-clause ("without focal consolidation ...") or run two together ("Chest No acute ...").
_FRAGMENT = re.compile(r"^(?:[a-z]|With\b|Without\b)|\w [A-Z][a-z]")
_LOCATION_WORDS = r"(?:upper lobe|middle lobe|lower lobe|lung base|base|basilar|basal|midlung|apical|apex)"


@dataclass(frozen=True)
class Phrase:
    """A real sentence used verbatim: what it denies, how often the corpus has it, whether it is held out."""

    text: str
    negates: frozenset[str]
    count: int
    held_out: bool


@dataclass(frozen=True)
class Frame:
    """A real sentence around a finding, its noun phrase cut out as `{np}` (verb and article as {be} and {a})."""

    text: str
    kind: str  # "noun" ("There {be} {a}{np}.") or "clause" ("The {np}." with "heart is {severity} enlarged")
    negates: frozenset[str]
    count: int
    held_out: bool


@dataclass(frozen=True)
class NounPhrase:
    """A finding's noun phrase with slots {severity} {side} {location} ({severity} of a lesion is its size)."""

    finding: str
    pattern: str
    kind: str
    count: int
    held_out: bool


@dataclass(frozen=True)
class PhraseBank:
    """Everything a report is assembled from."""

    negatives: tuple[Phrase, ...]
    neutral: tuple[Phrase, ...]
    frames: tuple[Frame, ...]
    noun_phrases: tuple[NounPhrase, ...]

    def summary(self) -> dict[str, int]:
        """Counts of each kind, for docs and logs."""
        nps = Counter(n.finding for n in self.noun_phrases)
        return {"negatives": len(self.negatives), "neutral": len(self.neutral), "frames": len(self.frames),
                **{f"noun phrases {k}": v for k, v in sorted(nps.items())},
                "held out": sum(p.held_out for group in (self.negatives, self.neutral, self.frames, self.noun_phrases)
                                for p in group)}


def _stable_fraction(text: str) -> float:
    return int(hashlib.sha256(text.lower().encode()).hexdigest()[:8], 16) / 16**8


def _mark_held_out(items: list[tuple[str, int]]) -> dict[str, bool]:
    """text -> held out: the most frequent ALWAYS_TRAIN train, the rest by a stable hash of the text (and at
    least one of them, so that every kind of phrase has some the model never sees)."""
    ranked = [text for text, _ in sorted(items, key=lambda kv: (-kv[1], kv[0]))]
    held = {text: i >= ALWAYS_TRAIN and _stable_fraction(text) < HELD_OUT_SHARE for i, text in enumerate(ranked)}
    rest = ranked[ALWAYS_TRAIN:]
    if rest and not any(held.values()):
        held[min(rest, key=_stable_fraction)] = True
    return held


def abstract_noun_phrase(finding: str, text: str) -> tuple[str, str] | None:
    """A real noun phrase -> (slot pattern, kind), completed with the slots the finding needs; None if unusable."""
    np = " ".join(text.lower().replace("bibasilar", "bilateral basilar").split())
    if _UNSUPPORTED_NP.search(np):
        return None
    np = re.sub(r"\bvery ", "", np)
    # "heart size is mildly enlarged" is a clause (frames "The {np}."); "mildly enlarged heart" a noun phrase.
    kind = "clause" if re.search(r"(?:heart|silhouette|size)\b.*\benlarged", np) else "noun"
    np = re.sub(r"\b" + _LOCATION_WORDS + r"\b", "{location}", np)
    np = re.sub(r"\b(?:left|right|bilateral)(-| )sided\b", r"{side}\1sided", np)
    np = re.sub(r"\b(?:left|right|bilateral)\b", "{side}", np)
    np = re.sub(r"\b(?:" + "|".join(SEVERITY_WORDS) + r")\b", "{severity}", np)
    if np.count("{side}") > 1 or np.count("{severity}") > 1 or np.count("{location}") > 1:
        return None
    if finding == "Cardiomegaly":
        if "{side}" in np or "{location}" in np:
            return None
        if "{severity}" not in np:
            np = np.replace("enlarged", "{severity} enlarged") if "enlarged" in np else "{severity} " + np
        return np, kind
    if kind == "clause":
        return None
    if "{severity}" not in np:
        np = "{severity} " + np
    if "{side}" not in np:
        if re.search(r" the \{location\}", np):
            np = np.replace(" the {location}", " the {side} {location}")
        else:
            np = np.replace("{severity} ", "{severity} {side} ", 1)
    if finding == "Pleural Effusion" and "{location}" in np:
        return None
    if finding in ("Pleural Effusion", "Pneumothorax") and "{location}" in np and "apical" not in text.lower():
        return None
    return _singular(np), kind


def _singular(np: str) -> str:
    for singular, plural in _HEAD_NOUNS.items():
        np = re.sub(rf"\b{plural}\b", singular, np)
    return np


def noun_number(np_text: str) -> str:
    """'pl' for a plural head noun, 'mass' for an uncountable one ("cardiomegaly", "airspace disease"), else 'sg'."""
    words = re.findall(r"[a-z]+", np_text.lower())
    if any(w in _HEAD_NOUNS.values() for w in words):
        return "pl"
    if any(w in _MASS_NOUNS for w in words[-2:]):
        return "mass"
    return "sg"


def normalise_frame(frame: str) -> str | None:
    """A frame in its agreeing form ("There {be} {a}{np}.", "{np} {be} present."), or None if its shape is
    not one a noun phrase can be dropped into."""
    match = _FRAME_SHAPE.match(frame)
    if match is None:
        return None
    pre = (match.group("pre") or "").lower()
    out = "There {be} {a}" if pre.startswith("there") else ("The " if pre == "the " else "")
    out += "{np}"
    verb = match.group("verb") or ""
    out += re.sub(r"^ (?:is|are) ", " {be} ", verb)
    return out + (match.group("denial") or "") + "."


@functools.lru_cache(maxsize=2)
def phrase_bank(reports: str | None = None) -> PhraseBank:
    """The bank harvested from Open-i reports (default: the copy shipped in torchxrayvision).

    Reading the 3,955 XML reports takes 5-15 s, so the bank is kept per process and on disk (``~/.cache/medsd``
    or ``$MEDSD_CACHE``), keyed by the reports file and by this module's and the matcher's source code.
    """
    from medsd.data.sources import xrv_data_file

    source = Path(reports) if reports else xrv_data_file("NLMCXR_reports.tgz")
    cache = _cache_file(source)
    if cache is not None and cache.is_file():
        return _from_json(json.loads(cache.read_text()))
    bank = harvest(source)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(dataclasses.asdict(bank), default=sorted))
        os.replace(partial, cache)  # atomic: two processes building it at once never read half a file
    return bank


def _cache_file(source: Path) -> Path | None:
    if not source.exists():
        return None
    from medsd.phantom import report_language

    stat = source.stat()
    code = "".join(Path(m.__file__).read_text() for m in (report_language, sys.modules[__name__]))
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime}|{code}".encode()).hexdigest()[:16]
    return Path(os.environ.get("MEDSD_CACHE", Path.home() / ".cache" / "medsd")) / f"phrase_bank_{key}.json"


def _from_json(data: dict) -> PhraseBank:
    def items(cls, rows):
        return tuple(cls(**{k: frozenset(v) if k == "negates" else v for k, v in row.items()}) for row in rows)

    return PhraseBank(items(Phrase, data["negatives"]), items(Phrase, data["neutral"]), items(Frame, data["frames"]),
                      items(NounPhrase, data["noun_phrases"]))


def harvest(source: Path) -> PhraseBank:
    """Read every sentence of the reports at `source` with the matcher and sort it into the bank."""
    from medsd.data.prompts import split_sentences
    from medsd.data.sources import read_openi_reports

    counts: Counter[str] = Counter()
    for sections in read_openi_reports(source).values():
        for key in ("findings", "impression"):
            for sentence in split_sentences(sections.get(key, "")):
                counts[" ".join(sentence.split()).rstrip(".") + "."] += 1
    negatives: Counter[tuple[str, frozenset[str]]] = Counter()
    frames: Counter[tuple[str, str, frozenset[str]]] = Counter()
    nps: Counter[tuple[str, str, str]] = Counter()
    for sentence, n in counts.items():
        reading = analyse(sentence)
        if not reading.usable or _FRAGMENT.search(sentence):
            continue
        if not reading.affirmed:
            neutral = not reading.negated
            if not neutral or (_NEUTRAL_TOPIC.search(sentence) and not _SIDE_WORD.search(sentence)):
                negatives[(reading.text, frozenset(reading.negated))] += n
            continue
        finding = reading.affirmed[0]
        mention = next(m for m in reading.mentions if m.concept == finding and not m.negated)
        span = noun_phrase_span(reading.text, mention)
        abstract = abstract_noun_phrase(finding, reading.text[span[0]:span[1]])
        if abstract is None:
            continue
        nps[(finding, *abstract)] += n
        frame = normalise_frame(reading.text[: span[0]] + "{np}" + reading.text[span[1]:])
        if frame is not None and (abstract[1] == "clause" or not frame.startswith("The ")):
            # "without acute disease" after a finding denies every other finding, though the matcher's global
            # pattern needs a "cardiopulmonary"-like qualifier to say so on its own.
            denies = set(FINDINGS) if "acute" in frame else reading.negated - {finding}
            frames[(frame, abstract[1], frozenset(denies))] += n
    return _assemble(negatives, frames, nps)


def _assemble(negatives: Counter, frames: Counter, nps: Counter) -> PhraseBank:
    denial = {(t, g): c for (t, g), c in negatives.items() if g}
    neutral = {(t, g): c for (t, g), c in negatives.items() if not g}
    held = _mark_held_out([(t, c) for (t, _), c in denial.items()])
    held_neutral = _mark_held_out([(t, c) for (t, _), c in neutral.items()])
    frame_held = _mark_held_out([(k[0], c) for k, c in frames.items()])
    np_held: dict[tuple[str, str], bool] = {}
    for finding in FINDINGS:
        mine = [(k[1], c) for k, c in nps.items() if k[0] == finding]
        np_held.update({(finding, t): h for t, h in _mark_held_out(mine).items()})
    return PhraseBank(
        negatives=tuple(Phrase(t, g, c, held[t]) for (t, g), c in sorted(denial.items())),
        neutral=tuple(Phrase(t, g, c, held_neutral[t]) for (t, g), c in sorted(neutral.items())),
        frames=tuple(Frame(t, kind, g, c, frame_held[t]) for (t, kind, g), c in sorted(frames.items())),
        noun_phrases=tuple(NounPhrase(f, p, kind, c, np_held[(f, p)]) for (f, p, kind), c in sorted(nps.items())),
    )
