"""Composable prompts (Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion Models").

`"0.25*<healthy> AND 0.75*<cardiomegaly>"` is two terms with weights; each term gets its own conditional
noise prediction and the sampler combines them as  eps = eps_uncond + g * sum_i w_i (eps_i - eps_uncond).
A negative weight (or the `NOT` prefix, weight -1) pushes away from a term. A plain prompt is one term of
weight 1, which reduces exactly to ordinary classifier-free guidance.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from medsd.errors import MedsdError

# "AND" between terms; also at either end, so that a dangling "0.3*A AND" is an empty term, not the text "AND".
AND_RE = re.compile(r"(?:^|\s+)AND(?:\s+|$)")
# A weight prefix is a short token without spaces before the first "*"; longer text with spaces before a "*"
# is treated as prompt text, so ordinary prompts containing "*" still work.
WEIGHT_RE = re.compile(r"^\s*(?P<weight>[^\s*]{1,24})\s*\*\s*(?P<text>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One part of a composable prompt."""

    weight: float
    text: str


def parse_prompt(prompt: str) -> list[Term]:
    """Split a (possibly composable) prompt into weighted terms; MedsdError for non-numeric weights."""
    if not isinstance(prompt, str):
        raise MedsdError(f"prompt {prompt!r} is not text")
    if "AND" not in prompt and "*" not in prompt and not prompt.lstrip().startswith("NOT "):
        return [Term(1.0, prompt)]
    terms = []
    for part in AND_RE.split(prompt.strip()):
        weight, text = 1.0, part.strip()
        if text.startswith("NOT "):
            weight, text = -1.0, text[4:].strip()
        match = WEIGHT_RE.match(text)
        if match:
            weight *= _parse_weight(match.group("weight"), prompt)
            text = match.group("text").strip()
        if not text:
            raise MedsdError(
                f"composable prompt {prompt!r} has an empty term; write e.g. '0.5*<healthy> AND 0.5*<edema>'"
            )
        terms.append(Term(weight, text))
    return terms


def _parse_weight(raw: str, prompt: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise MedsdError(
            f"weight {raw!r} in composable prompt {prompt!r} is not a number; write terms as "
            "'0.25*<healthy> AND 0.75*<cardiomegaly>' (use a negative weight or 'NOT term' to steer away)"
        ) from None
    if not math.isfinite(value):
        raise MedsdError(f"weight {raw!r} in composable prompt {prompt!r} must be a finite number")
    return value


def is_plain(terms: list[Term]) -> bool:
    """True for a single term of weight 1: ordinary classifier-free guidance."""
    return len(terms) == 1 and terms[0].weight == 1.0


def format_terms(terms: list[Term]) -> str:
    """Canonical text of parsed terms, e.g. '0.25*<healthy> AND 0.75*<cardiomegaly>'."""
    if is_plain(terms):
        return terms[0].text
    return " AND ".join(f"{t.weight:g}*{t.text}" for t in terms)
