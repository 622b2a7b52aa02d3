"""BM25 retrieval over a tiny corpus: passages cut by words, the right passage first."""

from __future__ import annotations

import polars as pl

from stages.lib import chat, retrieval

ARTICLES = pl.DataFrame(
    {
        "kind": ["article"] * 3,
        "text": [
            "The train stage writes the LoRA adapter to models/adapter with an evidence file beside it.",
            "Paris is the capital of France. The Seine runs through it.",
            "The evaluate stage writes reports/decision.md with the verdict and its interval.",
        ],
    }
)


def test_the_passage_holding_the_answer_ranks_first() -> None:
    index = retrieval.build_index(retrieval.passages(ARTICLES, passage_words=50))
    hits = index.top_k(["Where does the train stage write the adapter?", "What is the capital of France?"], k=2)
    assert hits[0][0].startswith("The train stage writes the LoRA adapter")
    assert hits[1][0].startswith("Paris is the capital of France")
    assert [len(h) for h in hits] == [2, 2]


def test_k_beyond_the_corpus_returns_every_passage() -> None:
    index = retrieval.build_index(retrieval.passages(ARTICLES.head(1), passage_words=50))
    assert index.top_k(["adapter"], k=5) == [[ARTICLES["text"][0]]]


def test_records_are_cut_into_passages_of_at_most_passage_words() -> None:
    cut = retrieval.passages(ARTICLES.head(1), passage_words=6)
    assert cut == ["The train stage writes the LoRA", "adapter to models/adapter with an evidence", "file beside it."]


def test_code_records_contribute_their_path_and_function() -> None:
    code = pl.DataFrame({"kind": ["code"], "path": ["go/stack.go"], "instruction": ["x"], "output": ["func Push() {}"]})
    assert retrieval.record_texts(code) == ["go/stack.go\nfunc Push() {}"]


def test_the_rag_prompt_goes_through_the_chat_core() -> None:
    messages = chat.prompt_messages(chat.with_passages("Where is the adapter?", ["p one", "p two"]), "Be terse.")
    assert messages[0] == {"role": "system", "content": "Be terse."}
    assert messages[1]["content"] == (
        "Passages:\n[1] p one\n\n[2] p two\n\nAnswer from the passages if they help.\nQuestion: Where is the adapter?"
    )
