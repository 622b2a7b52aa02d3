"""Tiny random-init Llama models saved as HF folders: real architectures, built offline in a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_tiny_llama(folder: Path, tokenizer: Any, hidden_size: int = 64, **config: Any) -> Path:
    """A 2-layer Llama of `hidden_size` sized to `tokenizer`'s vocabulary, seeded, saved with the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **shape, **special, **config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
