"""Tests for stages/extractive.py: sentence splitting, span types, question forms and per-chunk selection."""

from pathlib import Path

import pytest

from stages.lib.extractive import find_spans, pick_pairs, sentences

FIXTURES = Path(__file__).parent / "fixtures" / "generate"
PASSAGES = {name: (FIXTURES / name).read_text(encoding="utf-8").strip() for name in ("serving.md", "contract.txt")}


def spans_of(sentence: str) -> list[tuple[str, str]]:
    return [(sentence[s.start : s.end], s.kind) for s in find_spans(sentence, 0, len(sentence))]


# --- extractive: spans --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("The inference server listens on port 8000 by default.", [("port 8000", "number")]),
        ("Each chunk holds 900 words of cleaned text.", [("900 words", "number")]),
        ("The split stage holds out 15 percent of the pairs.", [("15 percent", "number")]),
        ("The default reject budget is 0.5 of all pairs.", [("0.5", "number")]),
        ("A quantized model takes about 270 MB on disk.", [("270 MB", "number")]),
        ("The pipeline needs transformers 4.57 and torch 2.13.0 to run.", [("4.57", "version"), ("2.13.0", "version")]),
        ("Pass --strict to the validator to fail early.", [("--strict", "flag")]),
        ("Start the server with `vllm serve` before the run.", [("`vllm serve`", "command")]),
        ("The flag `--max-model-len` caps the context.", [("`--max-model-len`", "flag")]),
        ("Set `extract.chunk_words: 900` for long articles.", [("`extract.chunk_words: 900`", "setting")]),
        ("Models come from the Hugging Face Hub when online.", [("Hugging Face Hub", "name")]),
        ("Great Expectations checks the data contract early.", [("Great Expectations", "name")]),
        ("The value of max_new_tokens bounds every answer.", [("max_new_tokens", "identifier")]),
        ("The rules live in params.yaml for every stage.", [("params.yaml", "identifier")]),
        ("The helper GgufConfig reads the quantized file.", [("GgufConfig", "identifier")]),
        ("Results land in data/generate/pairs.parquet after the run.", [("data/generate/pairs.parquet", "identifier")]),
    ],
)
def test_span_types_are_detected_in_hand_made_sentences(sentence: str, expected: list[tuple[str, str]]) -> None:
    assert spans_of(sentence) == expected


@pytest.mark.parametrize(
    "sentence",
    [
        "Training usually converges within the first epoch on small data.",  # sentence-initial capital only
        "The model changes 32 weights at most.",  # `32 weights` is fine, but not `32 changes`
        "It runs 2 times faster than the other one.",  # a bare one-digit number is too vague
    ],
)
def test_no_name_from_a_single_sentence_initial_capital(sentence: str) -> None:
    assert all(kind != "name" for _, kind in spans_of(sentence))
    assert ("32 changes", "number") not in spans_of(sentence)
    assert ("2", "number") not in spans_of(sentence)


def test_headings_code_lines_and_the_cut_first_sentence_are_not_used() -> None:
    text = PASSAGES["serving.md"]
    found = [text[s:e] for s, e in sentences(text)]
    assert not any("Port 9000" in s or "Requirements" in s or "dvc exp run" in s for s in found)
    assert "Each chunk holds 900 words of cleaned text." in found  # a list item, marker removed
    assert found[0].startswith("The inference server")
    assert sentences(text, partial_start=True)[0] == sentences(text)[1]


# --- extractive: questions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "question", "answer"),
    [
        ("The default backend is `extractive`.", "What is the default backend?", "`extractive`"),
        (
            "The `generate.backend` key defaults to `extractive`.",
            "What does the `generate.backend` key default to?",
            "`extractive`",
        ),
        (
            "The command `dvc repro` runs every stale stage, and records hashes.",
            "Which command runs every stale stage?",
            "`dvc repro`",
        ),
        (
            "The stage uses 4 threads for tokenisation.",
            "How many threads does the stage use for tokenisation?",
            "4 threads",
        ),
        (
            "The split stage holds out 15 percent of the pairs by default.",
            "Fill in the blank: The split stage holds out ____ of the pairs by default.",
            "15 percent",
        ),
    ],
)
def test_questions_take_a_wh_form_where_the_sentence_allows_else_a_blank(
    sentence: str, question: str, answer: str
) -> None:
    pairs = {p.answer: p.question for p in pick_pairs(sentence, 5)}
    assert pairs[answer] == question


@pytest.mark.parametrize("name", sorted(PASSAGES))
def test_extractive_answers_are_literal_spans_and_questions_are_well_formed(name: str) -> None:
    text = PASSAGES[name]
    pairs = pick_pairs(text, 5)
    assert len(pairs) == 5
    for pair in pairs:
        assert text[pair.start : pair.start + len(pair.answer)] == pair.answer
        assert pair.question.endswith("?") or "____" in pair.question
        assert pair.answer.casefold() not in pair.question.casefold()
        assert "\n" not in pair.question


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_extractive_respects_the_cap_without_repeating_answers_or_questions(limit: int) -> None:
    pairs = pick_pairs(PASSAGES["serving.md"], limit)
    assert len(pairs) == limit
    assert len({p.answer for p in pairs}) == limit
    assert len({p.question for p in pairs}) == limit


def test_extractive_prefers_specific_spans_spread_over_the_chunk() -> None:
    text = PASSAGES["contract.txt"]
    pairs = pick_pairs(text, 3)
    kinds = [p.kind for p in pairs]
    assert kinds.count("number") >= 2  # numbers outrank names and identifiers
    starts = [p.start for p in pairs]
    assert starts == sorted(starts)
    assert starts[-1] > len(text) // 2  # not all bunched at the top
