"""Stage train: config checks, label mask, adapter files, determinism, OOM, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from stages import train
from stages.lib import chat
from stages.lib.common import UserError, write_parquet
from stages.lib.params import ConfigError, from_dict
from stages.train import TrainConfig

QUICK = TrainConfig(max_steps=2, batch_size=4, max_length=128, save_steps=0)  # checkpoints: test_resume.py
FP32 = chat.pick_precision(cuda_available=False, bf16_supported=False)


def load_base(base_dir: Path) -> tuple[Any, Any]:
    return chat.load_model(base_dir, FP32), chat.load_tokenizer(base_dir)


def train_tiny(base_dir: Path, pairs: Any, out_dir: Path, cfg: TrainConfig = QUICK) -> tuple[Any, dict[str, Any]]:
    """Train LoRA on the tiny model; return the in-memory PEFT model and the metrics, and save the adapter."""
    model, tokenizer = load_base(base_dir)
    peft_model = train.attach_lora(model, cfg)
    trainer = train.build_trainer(peft_model, tokenizer, cfg, FP32, pairs(12), pairs(4, start=100), out_dir / "run", [])
    metrics = train.run_training(trainer, cfg)
    train.save_adapter(peft_model, out_dir / "adapter", {"note": "test"})
    return peft_model, metrics


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, make_pairs: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("trained")
    peft_model, _ = train_tiny(tiny_model_dir, make_pairs, out)
    return peft_model, out / "adapter"


def test_sft_args_override_trl_defaults_on_cpu(tmp_path: Path) -> None:
    args = train.sft_args(QUICK, FP32, tmp_path)
    assert (args.bf16, args.fp16, args.gradient_checkpointing) == (False, False, False)
    assert args.completion_only_loss is True and args.save_strategy == "no" and args.logging_steps == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"lora": {"target_modules": "q_proj"}}, "train.lora.target_modules must be all-linear or a list"),
        ({"lora": {"dropout": 1.5}}, r"train.lora.dropout must be in \[0, 1\), got 1.5"),
        ({"batch_size": 0}, "train.batch_size must be >= 1, got 0"),
        ({"quantization": "8bit"}, "train.quantization must be one of none, 4bit"),
        ({"epoch": 3}, "train.epoch is not a known key"),
    ],
)
def test_bad_params_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, raw, "train")


def test_4bit_without_cuda_fails_before_loading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)  # no models/base and no data here: getting past the check would fail differently
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    Path("params.yaml").write_text("train:\n  quantization: 4bit\n")
    with pytest.raises(UserError, match=r"train.quantization: 4bit .* needs a CUDA GPU"):
        train.main(Path("params.yaml"))


def test_unknown_target_module_lists_the_real_linear_layers(tiny_model_dir: Path) -> None:
    model, _ = load_base(tiny_model_dir)
    cfg = from_dict(TrainConfig, {"lora": {"target_modules": ["q_proj", "qkv"]}}, "train")
    with pytest.raises(ConfigError) as err:
        train.attach_lora(model, cfg)
    message = str(err.value)
    assert message.startswith("train.lora.target_modules: 'qkv' is not a linear layer")
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message
    assert "lm_head" not in message


def test_loss_mask_covers_exactly_the_answer_and_end_of_turn(
    tiny_model_dir: Path, make_pairs: Any, tmp_path: Path
) -> None:
    model, tokenizer = load_base(tiny_model_dir)
    pairs = make_pairs(3)
    trainer = train.build_trainer(train.attach_lora(model, QUICK), tokenizer, QUICK, FP32, pairs, pairs, tmp_path, [])
    assert [row["labels"] for row in train.conversations(pairs, QUICK.system_prompt, tokenizer)] == [
        example["labels"] for example in trainer.train_dataset
    ]  # what trl trains on is the chat core's example, unchanged
    for example, (question, answer) in zip(trainer.train_dataset, pairs.select("question", "answer").iter_rows(),
                                            strict=True):  # fmt: skip
        ids, labels = example["input_ids"], example["labels"]
        start = next(i for i, label in enumerate(labels) if label != -100)
        assert all(label != -100 for label in labels[start:])  # one contiguous span up to the end
        assert labels[start:] == ids[start:]
        assert tokenizer.decode(ids[start:]) == answer + "<|im_end|>\n"
        messages = chat.prompt_messages(question, QUICK.system_prompt)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(ids[:start]) == prompt
        assert QUICK.system_prompt in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_fp16_precision_keeps_a_fp32_copy_of_the_lora_params(
    tiny_model_dir: Path, make_pairs: Any, tmp_path: Path
) -> None:
    import torch

    model, tokenizer = load_base(tiny_model_dir)
    peft_model = train.attach_lora(model.half(), QUICK)
    for param in peft_model.parameters():  # as trl leaves them for a quantized model (bf16) or peft could (fp16)
        param.data = param.data.half()
    # the fp16 recipe without CUDA autocast (which this CPU cannot run): only the LoRA upcast is under test
    fp16_lora = chat.Precision("fp32", "float32", bf16=False, fp16=False, lora_fp32=True)
    trainer = train.build_trainer(peft_model, tokenizer, QUICK, fp16_lora, make_pairs(2), make_pairs(2), tmp_path, [])
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.float16 for p in frozen)  # the base stays in half precision


def test_adapter_folder_holds_only_the_adapter_and_evidence(trained: tuple[Any, Path]) -> None:
    _, adapter_dir = trained
    assert sorted(p.name for p in adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "evidence.json",
    ]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32 and config["peft_type"] == "LORA"
    # sorted, not peft's set order (which follows PYTHONHASHSEED): same training, same dvc.lock hash
    modules = config["target_modules"]
    assert len(modules) == 14 and modules == sorted(modules)  # 7 linears x 2 blocks


def test_saved_adapter_reloads_to_identical_logits(trained: tuple[Any, Path], tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    in_memory, adapter_dir = trained
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    ids = torch.tensor([[1, 520, 2713, 314, 260, 3517, 47, 2]])
    in_memory.eval()
    reloaded.eval()
    with torch.no_grad():
        expected, got = in_memory(input_ids=ids).logits, reloaded(input_ids=ids).logits
        with in_memory.disable_adapter():
            base = in_memory(input_ids=ids).logits
    assert torch.equal(expected, got)
    assert not torch.equal(base, got)  # the trained adapter does change the model


def test_training_is_bitwise_deterministic_on_cpu(
    trained: tuple[Any, Path], tiny_model_dir: Path, make_pairs: Any, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    _, first_dir = trained
    train_tiny(tiny_model_dir, make_pairs, tmp_path)
    first = load_file(first_dir / "adapter_model.safetensors")
    second = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys() and len(first) == 2 * 7 * 2  # A and B of 7 linear layers in 2 blocks
    for name, tensor in first.items():
        assert tensor.dtype == second[name].dtype and tensor.equal(second[name]), name


def test_out_of_memory_names_the_knobs(
    tiny_model_dir: Path, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from trl import SFTTrainer

    def no_memory(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "training_step", no_memory)
    with pytest.raises(UserError) as err:
        train_tiny(tiny_model_dir, make_pairs, tmp_path)
    message = str(err.value)
    assert message.startswith("train: out of memory (batch_size=4, max_length=128)")
    for knob in (
        "train.batch_size",
        "train.grad_accum",
        "train.max_length",
        "train.gradient_checkpointing: true",
        "train.quantization: 4bit",
    ):
        assert knob in message
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


def test_other_runtime_errors_are_not_disguised_as_oom() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch"), train.oom_as_user_error(QUICK):
        raise RuntimeError("shape mismatch")


def test_main_writes_adapter_metrics_and_dvclive_curves(
    tiny_model_dir: Path, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, "models/base")
    write_parquet(make_pairs(10), "data/split/train.parquet")
    write_parquet(make_pairs(3, start=50), "data/split/eval.parquet")
    Path("params.yaml").write_text("train:\n  max_steps: 2\n  batch_size: 4\n  max_length: 128\n")
    train.main(Path("params.yaml"))

    metrics = json.loads(Path("metrics/all/train.json").read_text())
    compared = json.loads(Path("metrics/train.json").read_text())  # what `dvc metrics show` lists
    assert compared == {key: metrics[key] for key in ("train_loss", "eval_loss")}
    assert sorted(metrics) == sorted(
        [
            "train_loss",
            "eval_loss",
            "runtime_s",
            "eval_runtime_s",
            "eval_share",
            "samples_per_s",
            "tokens_per_s",
            "trainable_params",
            "total_params",
            "peak_memory_mb",
            "steps",
            "epochs",
            "train_examples",
            "train_assistant_turns",
        ]
    )
    assert metrics["train_examples"] == metrics["train_assistant_turns"] == 10  # single-turn pairs: one turn each
    assert metrics["steps"] == 2 and metrics["trainable_params"] == 32768  # r=16 on 7 linears x 2 blocks
    assert 0 < metrics["trainable_params"] < metrics["total_params"] and metrics["tokens_per_s"] > 0
    assert 5 < metrics["eval_loss"] < 15 and metrics["peak_memory_mb"] > 100  # random init: ~ln(49152) = 10.8
    assert sorted(p.name for p in Path("models/adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "evidence.json",
    ]
    evidence = json.loads(Path("models/adapter/evidence.json").read_text())
    assert evidence["params"]["max_steps"] == 2 and evidence["precision"] == "fp32"
    assert set(evidence["packages"]) >= {"torch", "transformers", "peft", "trl", "datasets", "bitsandbytes"}
    assert evidence["hardware"]["gpu_count"] == 0 and evidence["hardware"]["cpu"]
    assert all(len(evidence["sha256"][k]) == 64 for k in ("train", "eval", "base"))

    live = Path("dvclive/train")
    loss = (live / "plots/metrics/train/loss.tsv").read_text().splitlines()
    eval_loss = (live / "plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert loss[0] == "step\tloss" and [row.split("\t")[0] for row in loss[1:]] == ["1", "2"]  # the trainer's steps
    assert [row.split("\t")[0] for row in eval_loss[1:]] == ["2"]  # 3 eval pairs vs 8 trained: the final eval only
    assert 0 < metrics["eval_runtime_s"] < metrics["runtime_s"] and metrics["eval_share"] < 1
    # metrics/*.json round to 4 decimals; the curves keep every digit
    assert float(eval_loss[-1].split("\t")[1]) == pytest.approx(metrics["eval_loss"], abs=5e-5)
    assert json.loads((live / "metrics.json").read_text())["eval"]["loss"] == pytest.approx(
        metrics["eval_loss"], abs=5e-5
    )
    assert not Path("dvc.yaml").exists()  # dvclive must not write pipeline files


def test_an_adapter_that_cannot_be_written_is_an_error_and_the_last_one_stays(
    trained: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import SafetensorError

    peft_model, adapter_dir = trained
    out = tmp_path / "adapter"
    shutil.copytree(adapter_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args: Any, **kwargs: Any) -> None:  # what safetensors raises when the write fails
        raise SafetensorError("Error while serializing: IoError(Os { code: 27, message: File too large })")

    monkeypatch.setattr(type(peft_model), "save_pretrained", full_disk)
    with pytest.raises(UserError, match=r"adapter: could not write the adapter weights .*File too large"):
        train.save_adapter(peft_model, out, {"note": "test"})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
