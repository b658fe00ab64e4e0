"""Prompts from labels (templates, placeholder tokens) or from report text (sections, sentences), trimmed to fit."""

from __future__ import annotations

import functools
import logging
import math
import random
import re
from collections import Counter

import pandas as pd

from medsd.data.config import PromptConfig

log = logging.getLogger(__name__)

# Headings in MIMIC-CXR free-text reports and Open-i XML labels, in the order radiologists write them
SECTION_RE = re.compile(
    r"^\s*(FINDINGS|IMPRESSION|INDICATION|HISTORY|COMPARISON|TECHNIQUE|EXAMINATION|CLINICAL HISTORY|"
    r"REASON FOR EXAM|NOTIFICATION|RECOMMENDATION\(S\)|CONCLUSION)\s*:",
    re.IGNORECASE | re.MULTILINE,
)


def placeholder_token(label: str, fmt: str = "<{slug}>") -> str:
    """Textual-inversion placeholder for a class: "Pleural Effusion" → "<pleural_effusion>"."""
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return fmt.format(slug=slug, label=label)


def positive_labels(labels: dict[str, float] | list[str] | tuple[str, ...]) -> list[str]:
    """Names of positive findings, in the given (canonical) order; NaN and 0 are not positive."""
    if isinstance(labels, dict):
        return [name for name, value in labels.items() if value is not None and not _isnan(value) and value > 0]
    return list(labels)


def _isnan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def build_prompt(labels: dict[str, float] | list[str], cfg: PromptConfig) -> str:
    """Label prompt: `cfg.template` with `{labels}` = positive findings joined by `cfg.joiner`.

    `labels` is either {name: 1/0/NaN} in canonical order or the list of positive names.
    """
    names = positive_labels(labels)
    if cfg.placeholder_tokens:
        words = [placeholder_token(n, cfg.placeholder_format) for n in names]
    else:
        words = [n.replace("_", " ").lower() if cfg.lowercase else n.replace("_", " ") for n in names]
    if not words:
        text = cfg.no_finding
    else:
        text = words[0] if len(words) == 1 else cfg.joiner.join(words[:-1]) + cfg.last_joiner + words[-1]
    return cfg.template.format(labels=text)


def label_combinations(frame: pd.DataFrame, pathologies: list[str]) -> list[tuple[tuple[str, ...], int]]:
    """Every combination of positive findings present in `frame`, with its count, most frequent first.

    The empty tuple stands for "no finding". Ties are ordered by the combination itself for determinism.
    """
    if frame.empty:
        return []
    values = frame[pathologies].fillna(0).to_numpy() > 0
    counts = Counter(tuple(p for p, v in zip(pathologies, row, strict=True) if v) for row in values)
    return sorted(counts.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))


def extract_sections(text: str) -> dict[str, str]:
    """Split a free-text report into {"findings": ..., "impression": ..., ...} by its upper-case headings."""
    if not isinstance(text, str) or not text.strip():
        return {}
    matches = list(SECTION_RE.finditer(text))
    sections: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[m.end() : end].split())
        if body:
            sections[m.group(1).lower()] = body
    return sections


def split_sentences(text: str) -> list[str]:
    """Sentences of a report section; numbered list markers ("1.") are not sentence ends."""
    text = re.sub(r"(^|\s)\d+\.\s", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def report_prompt(sections: dict[str, str], cfg: PromptConfig, rng: random.Random | None = None) -> str | None:
    """Prompt from report text per `cfg.source`; None when the report lacks that section."""
    if cfg.source == "impression":
        return sections.get("impression")
    if cfg.source == "findings":
        return sections.get("findings")
    if cfg.source == "report":
        parts = [sections.get("findings"), sections.get("impression")]
        return " ".join(p for p in parts if p) or None
    if cfg.source == "sentences":
        body = " ".join(p for p in (sections.get("findings"), sections.get("impression")) if p)
        sentences = split_sentences(body)
        if not sentences:
            return None
        rng = rng or random.Random(0)
        picked = sorted(rng.sample(range(len(sentences)), min(cfg.n_sentences, len(sentences))))
        return " ".join(sentences[i] for i in picked)
    return None


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(path)


def count_tokens(text: str, tokenizer: str | None = None) -> list[str]:
    """Token pieces of `text` (without start/end tokens): the CLIP tokenizer's, or words and punctuation."""
    if tokenizer:
        return _load_tokenizer(tokenizer).tokenize(text)
    return re.findall(r"<[^>\s]+>|\w+|[^\w\s]", text)


def trim_prompt(text: str, cfg: PromptConfig, warn: bool = True) -> str:
    """Cut `text` to `cfg.max_tokens` (minus start/end tokens), warning with the part that was cut."""
    limit = cfg.max_tokens - 2
    pieces = count_tokens(text, cfg.tokenizer)
    if len(pieces) <= limit:
        return text
    # walk words until the token budget runs out, so we cut at a word boundary
    words, kept = text.split(), []
    for word in words:
        if len(count_tokens(" ".join([*kept, word]), cfg.tokenizer)) > limit:
            break
        kept.append(word)
    trimmed = " ".join(kept)
    if warn:
        cut = " ".join(words[len(kept) :])
        log.warning("prompt trimmed to %d tokens; cut: %r", limit, cut if len(cut) < 120 else cut[:117] + "...")
    return trimmed
