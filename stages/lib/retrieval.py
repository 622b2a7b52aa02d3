"""BM25 retrieval over the extracted corpus, for evaluate's question "would retrieval alone have done as well?".

The records of `data/extract/records.parquet` are cut into passages of at most `passage_words` words (an
article chunk is ~900 words: too long to put several into a small model's prompt), indexed with bm25s, and
each question gets its `top_k` passages:

    index = build_index(passages(records, passage_words=80))
    index.top_k(["What does the train stage write?"], k=2)  # [[passage, passage]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

# What each record kind (extract.kind) contributes as text to the corpus.
PASSAGE_COLUMNS = {"articles": ("text",), "code": ("path", "output"), "pairs": ("instruction", "input", "output")}


def record_texts(records: pl.DataFrame) -> list[str]:
    """Each record's text: an article chunk, a function with its path, a pair's instruction and output."""
    kind = records["kind"][0] if "kind" in records.columns else "articles"
    kind = {"article": "articles", "pair": "pairs"}.get(kind, kind)
    columns = [c for c in PASSAGE_COLUMNS.get(kind, ("text",)) if c in records.columns]
    assert columns, f"records of kind {kind!r} have none of {PASSAGE_COLUMNS.get(kind)}"
    return ["\n".join(str(row[c]) for c in columns if row[c]) for row in records.select(columns).iter_rows(named=True)]


def passages(records: pl.DataFrame, passage_words: int) -> list[str]:
    """The corpus cut into passages of at most `passage_words` words, in record order."""
    cut = []
    for text in record_texts(records):
        words = text.split(" ")  # split on spaces only: code keeps its line breaks and indentation
        for start in range(0, len(words), passage_words):
            piece = " ".join(words[start : start + passage_words]).strip()
            if piece:
                cut.append(piece)
    return cut


@dataclass
class Index:
    passages: list[str]
    bm25: Any  # a bm25s.BM25 over `passages`

    def top_k(self, questions: list[str], k: int) -> list[list[str]]:
        """The k best passages for each question, best first (fewer when the corpus is smaller)."""
        import bm25s

        k = min(k, len(self.passages))
        tokens = bm25s.tokenize(questions, stopwords="en", show_progress=False)
        ids, _ = self.bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [[self.passages[int(i)] for i in row] for row in ids]


def build_index(corpus: list[str]) -> Index:
    """A BM25 (Lucene variant, bm25s defaults) index of the passages."""
    import bm25s

    assert corpus, "an empty corpus has nothing to retrieve"
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    return Index(corpus, bm25)
