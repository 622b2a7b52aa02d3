"""The Q&A pair table that generate writes and validate, split, train and evaluate read, and how pairs compare."""

from __future__ import annotations

import re
from typing import Any

from stages.lib.params import ConfigError

# kind: article | code | pair (bring-your-own); context: the passage, function source or BYO input an
# answer must be grounded in; chunk_id: the extract record it came from; symbol: code pairs only.
PAIR_COLUMNS = (
    "id",
    "kind",
    "question",
    "answer",
    "context",
    "source",
    "source_sha256",
    "chunk_id",
    "symbol",
    "generator",
)


def pair_schema() -> dict[str, Any]:
    import polars as pl

    return {name: pl.String for name in PAIR_COLUMNS}


def normalize_question(text: str) -> str:
    """Case, whitespace and punctuation (backticks and dots too) folded away.

    The one way questions are compared: generate's de-duplication, validate's unique_question rule and
    split's leakage check all use it, so "What sets `train.lora.r`?" and "what sets train.lora.r" are one question.
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def refusal_phrases(params: dict[str, Any]) -> list[str]:
    """The top-level `refusal_phrases` list that validate and evaluate share, checked."""
    phrases = params.get("refusal_phrases")
    if not (isinstance(phrases, list) and phrases and all(isinstance(p, str) and p.strip() for p in phrases)):
        raise ConfigError(f"refusal_phrases must be a non-empty list of non-empty strings, got {phrases!r}")
    return phrases


def refusal_regex(phrase: str) -> str:
    """A refusal phrase as a regex: case-insensitive, any whitespace between words, ' and ’ alike."""
    words = [re.escape(word).replace("'", "['’]") for word in phrase.split()]
    return "(?i)" + r"\s+".join(words)
