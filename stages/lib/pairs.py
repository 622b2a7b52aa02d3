"""The Q&A pair table that generate writes and validate, split, train and evaluate read, and how pairs compare."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from stages.lib.params import ConfigError

# kind: article | code | pair (bring-your-own); context: the passage, function source or BYO input an
# answer must be grounded in; chunk_id: the extract record it came from; symbol: code pairs only;
# history: a multi-turn conversation's turns before `question` (see encode_history), "" for a single turn.
PAIR_COLUMNS = (
    "id",
    "kind",
    "question",
    "answer",
    "context",
    "history",
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


def question_key(question: str, history: str | None) -> str:
    """What makes two pairs the same question: the normalised question, and the conversation before it, if any.

    "And the default?" after two different conversations is two questions (validate's unique_question, split's
    leakage check).
    """
    key = normalize_question(question)
    return key + "\0" + hashlib.sha256(history.encode()).hexdigest()[:16] if history else key


# ---------------------------------------------------------------- history: the turns before the question


def encode_history(messages: list[dict[str, str]]) -> str:
    """The turns before a pair's question as the `history` column: JSON of [{role, content}], "" for none.

    It holds the record's own system prompt first (if it brought one), then user and assistant turns that
    alternate, ending with an assistant turn: the pair's question is the next user turn.
    """
    return json.dumps(messages, ensure_ascii=False) if messages else ""


def history_messages(text: str | None) -> list[dict[str, str]]:
    """The `history` column parsed back into messages (checked by validate's contract, so trusted here)."""
    return json.loads(text) if text else []


def history_problem(text: str | None) -> str | None:
    """What is wrong with a `history` value, or None when it is empty or well formed (validate's history rule)."""
    if not text:
        return None
    try:
        messages = json.loads(text)
    except ValueError:
        return "not JSON"
    if not isinstance(messages, list) or not messages:
        return "not a non-empty JSON list of messages"
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["content"], str)):
            return f"message {i} is not {{role, content}} with text content"
        if not m["content"].strip():
            return f"message {i} is empty"
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2)
    if body != expected:
        return f"roles {roles} are not an optional system turn, then user/assistant turns ending before a user turn"
    return None


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
