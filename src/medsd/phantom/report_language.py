"""What a real radiology sentence says about the phantom's findings: a rule-based, negation-aware matcher.

The phantom's reports are written in the language of real ones: the Indiana / Open-i reports shipped inside
torchxrayvision (3,955 reports, ~8,600 distinct sentences). `analyse` reads one sentence the way NegEx and the
CheXpert labeler do, with rules rather than a model:

1. drop sentences that cannot describe a phantom image on their own: hedged ("may represent", "versus"),
   comparative ("stable", "interval", "again"), de-identified ("XXXX") or pointing elsewhere ("otherwise");
2. find every concept mention (the five findings, "heart size is normal", "lungs are clear", "no acute
   cardiopulmonary abnormality", and pathologies the phantom never shows such as atelectasis or edema);
3. split the sentence into clauses at "but", "however", ";" ..., and negate a mention when a trigger ("no",
   "without", "negative for", "clear of", ...) precedes it in its clause or a post-trigger ("is not seen")
   follows it;
4. read the side, severity and location words around an affirmed finding.

A sentence that affirms a pathology the phantom never renders is unusable; one that only negates findings is
true of every image without them; one that affirms a single finding becomes a *frame*: the sentence with its
noun phrase cut out ("There is a {np}."), refilled later with any side and severity. `medsd.phantom.reports`
builds reports from these pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FINDINGS = ["Cardiomegaly", "Consolidation", "Lung Lesion", "Pneumothorax", "Pleural Effusion"]
LATERAL = ["Consolidation", "Lung Lesion", "Pneumothorax", "Pleural Effusion"]

# Concept patterns, most specific first: a span claimed by an earlier pattern is not matched again.
_CONCEPTS: list[tuple[str, str]] = [
    ("GLOBAL", r"(?:acute|active) (?:cardiopulmonary|cardiac or pulmonary|intrathoracic|pulmonary|chest) "
               r"(?:abnormalit(?:y|ies)|disease|process|findings?|pathology)|(?<=^no )(?:acute|active) "
               r"(?:disease|process|abnormality)\b"),
    ("NORMAL", r"normal chest(?: radiograph| x-ray)?"),
    ("HEART_NORMAL", r"(?:heart size|heart|cardiac silhouette|cardiomediastinal silhouettes?|cardiac size)"
                     r"(?: and [a-z ]+?)?(?: is| are)? (?:normal|within normal limits|unremarkable)\b|"
                     r"normal (?:heart size|cardiac size|cardiomediastinal silhouette|size of the heart)|"
                     r"heart (?:is )?normal in size|cardiomediastinal silhouette within normal limits"),
    ("LUNGS_CLEAR", r"(?:lungs|lung fields) (?:are |appear )?(?:clear|normal)|clear lungs"),
    ("Cardiomegaly", r"cardiomegaly|(?:heart|heart size|cardiac silhouette|cardiac size)(?: is| are)?"
                     r"(?: not)?(?: \w+ly)? enlarged|enlarged (?:heart|cardiac silhouette)|(?:heart|cardiac) "
                     r"enlargement"),
    ("Pneumothorax", r"pneumothora(?:x|ces)"),
    ("Pleural Effusion", r"(?:pleural )?effusions?"),
    ("Consolidation", r"(?:airspace|air space|alveolar) (?:consolidations?|disease|opacit(?:y|ies))|"
                      r"consolidations?|infiltrates?|pneumonia"),
    ("Lung Lesion", r"nodules?|mass(?:es)?\b|lesions?"),
    ("OPACITY", r"opacit(?:y|ies)|densit(?:y|ies)"),
    ("OTHER", r"atelecta\w*|edema|granulom\w*|calcifi\w*|scar\w*|fibros\w*|emphysem\w*|hyperinfla\w*|"
              r"hyperexpan\w*|copd|degenerat\w*|spondyl\w*|osteophyt\w*|fractur\w*|sternotomy|wires?|clips?|"
              r"catheter|tubes?|pacemaker|devices?|hernia|aort\w*|tortuous|ectatic|\w*adenopathy|congesti\w*|"
              r"interstitial|thickening|pericardial|loculated|hydropneumothorax|eventration|elevat\w*|kyphosis|"
              r"scoliosis|lobectomy|surg\w*|postop\w*|chronic|prominen\w*|widen\w*|volume loss|low lung volumes?|"
              r"hypoinflat\w*|crowding|deformit\w*|hyperlucen\w*|bronchiectasis|cardiomediastinal enlargement|"
              r"cavit\w*|metasta\w*|cancer|neoplas\w*|malignan\w*|tumor|markings|vascularity|flatten\w*|"
              r"air[- ]fluid|pleural fluid|mediastinal shift"),
]
_CONCEPT_RE = [(name, re.compile(rf"\b(?:{pattern})", re.IGNORECASE)) for name, pattern in _CONCEPTS]
_NOT_A_STATEMENT = re.compile(
    r"xxxx|\?|:|other than|\bmay\b|\bmight\b|\bcould\b|possib|probab|question|\bversus\b|\bvs\b|suspect|"
    r"suggest|exclude|concern|consider|likely|equivocal|borderline|apparent|recommend|correlat|differential|compatible|"
    r"consistent|represent|cannot|limited|obscur|difficult|evaluat|assess|stable|unchanged|persist|interval|"
    r"again|residual|prior|previous|recurren|\bnew\b|increas|decreas|improv|worse|resolv|since|compar|continu|"
    r"redemonstrat|remain|clearing|still|history|known|follow|change|\bnow\b|today|earlier|develop|progress|otherwise|"
    r"\balso\b|additional|\bthis\b|\bthese\b|\bit\b|\bthey\b|lateral view|frontal|\bpa\b|\bap\b|portable|"
    r"technique|exam\b|study|film|views?\b|patient|clinical|\bdr\b|phone|report|measur|\bmm\b|\bcm\b|\d",
    re.IGNORECASE,
)
# A new subject ("the lungs are") ends a negation's scope: "No pneumothorax the lungs are hyperinflated."
_CLAUSE_BREAK = re.compile(r";|:|\bbut\b|\bhowever\b|\balthough\b|\bexcept\b|\bwhile\b|\bwhereas\b|"
                           r"\band there\b|, and\b|"
                           r"\b(?:the )?(?:lungs|heart|cardiac|cardiomediastinal|mediastin\w*|osseous) (?:is|are)\b",
                           re.IGNORECASE)
_PRE_NEGATION = re.compile(r"\b(?:no|not|without|negative for|negative|free of|clear of|absence of|nor|neither)\b",
                           re.IGNORECASE)
_POST_NEGATION = re.compile(r"\b(?:is|are) (?:not|no longer) (?:seen|identified|present|visualized|evident|"
                            r"appreciated|noted|demonstrated)\b|\b(?:absent|excluded)\b", re.IGNORECASE)

# Words the phantom's parameters map to, and that the matcher reads around an affirmed finding.
SIDE_WORDS = {"left": "left", "right": "right", "bilateral": "bilateral", "bibasilar": "bilateral"}
SEVERITY_WORDS = {"trace": 0, "tiny": 0, "small": 0, "mild": 0, "minimal": 0, "slight": 0, "moderate": 1,
                  "large": 2, "marked": 2, "severe": 2, "massive": 2, "extensive": 2, "mildly": 0,
                  "slightly": 0, "moderately": 1, "markedly": 2, "severely": 2}
_SIDE_RE = re.compile(r"\b(left|right|bilateral|bibasilar)(?:[- ]sided)?\b", re.IGNORECASE)
_SEVERITY_RE = re.compile(r"\b(" + "|".join(SEVERITY_WORDS) + r")\b", re.IGNORECASE)
# A noun phrase around a finding: modifiers before the head noun, a location phrase after it.
_MODIFIER = (r"(?:(?:trace|tiny|small|mild|minimal|slight|moderate|large|marked|severe|massive|extensive|"
             r"moderate-sized|focal|patchy|dense|layering|left|right|bilateral|bibasilar|left-sided|right-sided|"
             r"upper|middle|lower|lobe|basilar|apical|midlung|lung|pulmonary|pleural|area of|areas of|"
             r"focus of)[ -])*")
_POST_LOCATION = (r"(?: (?:in|at|within|involving|of|on) the (?:(?:left|right) )?(?:(?:upper|middle|lower) )?"
                  r"(?:lobe|lung|lung base|base|bases|apex|hemithorax|side|midlung|lung zone)s?)?")


@dataclass
class Mention:
    """One concept found in a sentence: its name, whether it is negated, and where it stands."""

    concept: str
    negated: bool
    start: int
    end: int


@dataclass
class SentenceReading:
    """What a sentence asserts: findings it affirms or denies, and whether it can be used at all."""

    text: str
    mentions: list[Mention] = field(default_factory=list)
    usable: bool = True
    reason: str = ""

    @property
    def affirmed(self) -> list[str]:
        """Phantom findings the sentence says are present."""
        return [m.concept for m in self.mentions if not m.negated and m.concept in FINDINGS]

    @property
    def negated(self) -> set[str]:
        """Phantom findings the sentence says are absent ("no acute abnormality" denies all five; "Cardiomegaly
        without acute abnormality" all but the one it affirms)."""
        out: set[str] = set()
        for m in self.mentions:
            if not m.negated and m.concept not in ("HEART_NORMAL", "LUNGS_CLEAR", "NORMAL"):
                continue
            out |= {"GLOBAL": set(FINDINGS), "NORMAL": set(FINDINGS), "HEART_NORMAL": {"Cardiomegaly"},
                    "LUNGS_CLEAR": {"Consolidation", "Lung Lesion"},
                    "OPACITY": {"Consolidation", "Lung Lesion"}}.get(m.concept, {m.concept} & set(FINDINGS))
        return out - set(self.affirmed)


def find_mentions(sentence: str) -> list[Mention]:
    """Concept mentions in reading order, each claimed by the most specific pattern, with negation."""
    taken = [False] * len(sentence)
    found: list[Mention] = []
    for name, pattern in _CONCEPT_RE:
        for match in pattern.finditer(sentence):
            if any(taken[match.start():match.end()]):
                continue
            taken[match.start():match.end()] = [True] * (match.end() - match.start())
            found.append(Mention(name, False, match.start(), match.end()))
    found.sort(key=lambda m: m.start)
    bounds = [0, *(b.end() for b in _CLAUSE_BREAK.finditer(sentence)), len(sentence) + 1]
    for m in found:
        clause_start = max(b for b in bounds if b <= m.start)
        clause_end = min(b for b in bounds if b > m.start)
        before, after = sentence[clause_start:m.start], sentence[m.end:clause_end]
        inner = sentence[m.start:m.end]
        m.negated = bool(_PRE_NEGATION.search(before) or _POST_NEGATION.search(after)
                         or (m.concept == "Cardiomegaly" and " not " in f" {inner} "))
    return found


def analyse(sentence: str) -> SentenceReading:
    """Read one report sentence (steps 1-3 of the module docstring)."""
    text = " ".join(sentence.split())
    reading = SentenceReading(text)
    if _NOT_A_STATEMENT.search(text):
        reading.usable, reading.reason = False, "hedged, comparative or not self-contained"
        return reading
    reading.mentions = find_mentions(text)
    if any(m.concept in ("OTHER", "OPACITY") and not m.negated for m in reading.mentions):
        reading.usable, reading.reason = False, "affirms something the phantom does not render"
    elif not reading.mentions:
        reading.usable, reading.reason = False, "says nothing about the phantom's findings"
    elif len(reading.affirmed) > 1:
        reading.usable, reading.reason = False, "affirms several findings"
    return reading


def names_any(text: str, findings: set[str] | frozenset[str]) -> bool:
    """True when `text` names one of `findings` (affirmed or denied): "No pneumothorax." names Pneumothorax."""
    return any(name in findings and pattern.search(text) for name, pattern in _CONCEPT_RE)


def noun_phrase_span(sentence: str, mention: Mention) -> tuple[int, int]:
    """The noun phrase around an affirmed finding: its modifiers before, a location phrase after."""
    head = re.compile(_MODIFIER + re.escape(sentence[mention.start:mention.end]) + _POST_LOCATION, re.IGNORECASE)
    best = (mention.start, mention.end)
    for match in head.finditer(sentence):
        if match.start() <= mention.start and match.end() >= mention.end:
            best = (min(best[0], match.start()), max(best[1], match.end()))
    return best


def sides_in(text: str) -> set[str]:
    """Sides named in a piece of text (bibasilar counts as bilateral)."""
    return {SIDE_WORDS[m.group(1).lower()] for m in _SIDE_RE.finditer(text)}


def severities_in(text: str) -> set[int]:
    """Severity levels (0 mild/small, 1 moderate, 2 severe/large) named in a piece of text."""
    return {SEVERITY_WORDS[m.group(1).lower()] for m in _SEVERITY_RE.finditer(text)}


_SIZE_CM = re.compile(r"(\d+(?:\.\d+)?) ?cm\b", re.IGNORECASE)
LESION_CM = (3.0, 6.0)  # the phantom's lesion diameters: a size maps to a severity in [0, 1] over this range


def report_labels(text: str) -> dict[str, dict[str, float | str | None]]:
    """What a report (or label prompt) says is present: {finding: {"side": ..., "severity": 0-1 or None}}.

    The labeler's reading of text that `analyse` would not harvest (measurements, several findings in one
    sentence): a sentence that affirms one finding gives it the sides and the severity word (or a lesion's size
    in cm) it names; a sentence that affirms several ("A chest X-ray with Cardiomegaly and Pleural Effusion")
    gives presence only.
    """
    found: dict[str, dict[str, float | str | None]] = {}
    for sentence in re.split(r"(?<=\.)\s+|\n", text):
        mentions = find_mentions(sentence)
        affirmed = list(dict.fromkeys(m.concept for m in mentions if not m.negated and m.concept in FINDINGS))
        for name in affirmed:
            entry = found.setdefault(name, {"side": None, "severity": None})
            if len(affirmed) > 1:
                continue
            sides = sides_in(sentence)
            if len(sides) == 1 and name in LATERAL:
                entry["side"] = next(iter(sides))
            size = _SIZE_CM.search(sentence)
            levels = severities_in(sentence)
            if name == "Lung Lesion" and size:
                low, high = LESION_CM
                entry["severity"] = min(max((float(size.group(1)) - low) / (high - low), 0.0), 1.0)
            elif len(levels) == 1:
                entry["severity"] = next(iter(levels)) / 2
    return found
