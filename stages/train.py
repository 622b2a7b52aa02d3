"""Stage `train`: LoRA (or QLoRA) fine-tune of `models/base/` on the train pairs -> `models/adapter/`.

Each pair becomes a conversation: prompt = [system `train.system_prompt`, user question], completion =
[assistant answer]. trl's SFTTrainer applies the base model's chat template and computes the loss on the
completion tokens only. Precision follows the device (`chat.pick_precision`); `train.quantization: 4bit` loads
the base in bitsandbytes NF4 (CUDA only). Batches are padding-free by default and the eval loss is computed
a few times, within `train.eval_share` of the train time (`stages/lib/batching.py`). Loss is logged per step,
eval loss per eval, to `dvclive/train/`.

Run: `loradag train` (or `dvc repro train`). Writes `models/adapter/` (adapter_config.json,
adapter_model.safetensors, evidence.json: nothing else, so vLLM `--lora-modules` can load it as is)
and `metrics/train.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from stages.lib import batching, chat
from stages.lib.common import UserError, atomic_dir, log, read_table, sha256_file, sha256_tree, write_json
from stages.lib.params import ConfigError, load_params, require, section_config

BASE_DIR = Path("models/base")
TRAIN_DATA = Path("data/split/train.parquet")
EVAL_DATA = Path("data/split/eval.parquet")
OUT_DIR = Path("models/adapter")
METRICS = Path("metrics/train.json")
LIVE_DIR = Path("dvclive/train")
LOCK_FILE = Path("requirements.lock")  # the exact environment scripts/setup.sh installs

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        require(self.r >= 1, "train.lora.r", f"must be >= 1, got {self.r}")
        require(self.alpha >= 1, "train.lora.alpha", f"must be >= 1, got {self.alpha}")
        require(0 <= self.dropout < 1, "train.lora.dropout", f"must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str):
            require(
                self.target_modules == "all-linear",
                "train.lora.target_modules",
                f"must be all-linear or a list of module names, got {self.target_modules!r}",
            )
        else:
            require(bool(self.target_modules), "train.lora.target_modules", "must not be an empty list")


@dataclass(frozen=True)
class TrainConfig:
    system_prompt: str = chat.DEFAULT_SYSTEM_PROMPT  # evaluate and serving ask with it too
    quantization: Literal["none", "4bit"] = "none"
    lora: LoraConfig = field(default_factory=LoraConfig)
    epochs: int = 3
    max_steps: int = -1
    learning_rate: float = 2.0e-4
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.05
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 42
    gradient_checkpointing: bool = False
    batching: Literal["auto", "padded", "grouped", "padding_free"] = "auto"
    eval_share: float = 0.1

    def __post_init__(self) -> None:
        chat.check_system_prompt(self.system_prompt)
        require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        require(
            self.max_steps == -1 or self.max_steps >= 1, "train.max_steps", f"must be -1 or >= 1, got {self.max_steps}"
        )
        require(0 < self.learning_rate < 1, "train.learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(self.max_length >= 16, "train.max_length", f"must be >= 16, got {self.max_length}")
        require(0 < self.eval_share <= 1, "train.eval_share", f"must be in (0, 1], got {self.eval_share}")


def check_quantization(quantization: str, cuda_available: bool) -> None:
    if quantization == "4bit" and not cuda_available:
        raise UserError(
            "train.quantization: 4bit (QLoRA, bitsandbytes NF4) needs a CUDA GPU and this machine has none; "
            "set train.quantization: none to train in fp32 on the CPU"
        )


def conversations(pairs: pl.DataFrame, system_prompt: str) -> list[dict[str, Any]]:
    """Pairs -> trl prompt/completion rows (the chat core's training examples), in table order."""
    return [chat.training_example(q, a, system_prompt) for q, a in pairs.select("question", "answer").iter_rows()]


# ---------------------------------------------------------------- model and LoRA


def check_target_modules(model: Any, targets: str | list[str]) -> None:
    """Each target must name linear layers of this model (as peft matches them: full name or last parts)."""
    import torch

    head = model.get_output_embeddings()
    linear = [
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module is not head
    ]
    for target in [] if targets == "all-linear" else targets:
        if not any(name == target or name.endswith("." + target) for name in linear):
            short = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise ConfigError(
                f"train.lora.target_modules: {target!r} is not a linear layer of this model; "
                f"its linear layers are: {', '.join(short)} (or use all-linear)"
            )


def attach_lora(model: Any, cfg: TrainConfig) -> Any:
    """Wrap `model` in a seeded PEFT LoRA model built from `train.lora`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    check_target_modules(model, cfg.lora.target_modules)
    if cfg.quantization == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    lora = PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=cfg.lora.target_modules,
    )
    set_seed(cfg.seed)  # the LoRA A matrices are drawn at random
    return get_peft_model(model, lora)


# ---------------------------------------------------------------- trainer


def sft_args(
    cfg: TrainConfig, precision: chat.Precision, output_dir: Path, eval_steps: int = 1, mode: batching.Mode = "padded"
) -> Any:
    """SFTConfig with every default that matters set explicitly (trl turns bf16 and checkpointing on)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed,
        # precision and memory: trl's defaults (bf16 on, gradient checkpointing on) are overridden here
        bf16=precision.bf16, fp16=precision.fp16, use_cpu=precision.name == "fp32",
        activation_checkpointing=cfg.gradient_checkpointing, activation_checkpointing_kwargs={"use_reentrant": False},
        # loss on the assistant answer (+ end of turn) only; one conversation per row
        max_length=cfg.max_length, completion_only_loss=True, assistant_only_loss=False,
        logging_steps=1, eval_strategy="steps", eval_steps=eval_steps, save_strategy="no", report_to="none",
        dataloader_num_workers=0, **batching.sft_kwargs(mode),
    )  # fmt: skip


def eval_cadence(cfg: TrainConfig, train_examples: int, eval_examples: int) -> int:
    """Steps between eval-loss passes: together they cost about `train.eval_share` of the training time."""
    steps = batching.total_steps(train_examples, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_steps)
    return batching.eval_steps(steps, cfg.batch_size * cfg.grad_accum, eval_examples, cfg.eval_share)


def eval_at_end_callback() -> Any:
    from transformers import TrainerCallback

    class EvalAtEnd(TrainerCallback):
        """Evaluate after the last step too, so the final eval loss is on the curve and in metrics."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= state.max_steps:
                control.should_evaluate = True

    return EvalAtEnd()


# trainer log key -> dvclive metric (plots under dvclive/train/plots/metrics/{train,eval}/)
LIVE_METRICS = {
    "loss": "train/loss",
    "eval_loss": "eval/loss",
    "learning_rate": "train/learning_rate",
    "mean_token_accuracy": "train/token_accuracy",
    "eval_mean_token_accuracy": "eval/token_accuracy",
}


def live_callback(live_dir: Path) -> Any:
    """dvclive curves on the trainer's step axis; dvc.yaml declares the plots, so dvclive must not edit it.

    The stock DVCLiveCallback counts every log call (train, eval, end-of-run summary) as a step, so train and
    eval curves would not share an x axis and the run summary would land in train/loss.tsv.
    """
    from dvclive import Live
    from transformers import TrainerCallback

    class LiveCurves(TrainerCallback):
        def __init__(self) -> None:
            self.live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            self.live.step = state.global_step
            for key, name in LIVE_METRICS.items():
                if key in (logs or {}):
                    self.live.log_metric(name, logs[key])

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.live.end()

    return LiveCurves()


def build_trainer(
    model: Any,
    tokenizer: Any,
    cfg: TrainConfig,
    precision: chat.Precision,
    train_df: pl.DataFrame,
    eval_df: pl.DataFrame,
    output_dir: Path,
    callbacks: list[Any],
) -> Any:
    from datasets import Dataset
    from trl import SFTTrainer

    mode = batching.pick(cfg.batching, cuda=precision.name != "fp32")
    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg, precision, output_dir, eval_cadence(cfg, len(train_df), len(eval_df)), mode),
        train_dataset=Dataset.from_list(conversations(train_df, cfg.system_prompt)),
        eval_dataset=Dataset.from_list(conversations(eval_df, cfg.system_prompt)),
        processing_class=tokenizer,
        data_collator=batching.collator(mode, tokenizer.pad_token_id),
        callbacks=[eval_at_end_callback(), *callbacks],
    )
    if precision.lora_fp32:  # after SFTTrainer, which casts the LoRA params of a quantized model to bf16
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    return trainer


@contextlib.contextmanager
def oom_as_user_error(cfg: TrainConfig) -> Iterator[None]:
    """Turn an out-of-memory error into a message naming the params that lower memory use."""
    try:
        yield
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
        if type(err).__name__ != "OutOfMemoryError" and "out of memory" not in str(err).lower():
            raise
        raise UserError(
            f"train: out of memory (batch_size={cfg.batch_size}, max_length={cfg.max_length}). Lower "
            "train.batch_size (and raise train.grad_accum to keep the effective batch), lower train.max_length, "
            "set train.gradient_checkpointing: true, or use train.quantization: 4bit on a CUDA GPU"
        ) from err


def run_training(trainer: Any, cfg: TrainConfig) -> dict[str, Any]:
    """Train, then return the flat numbers of metrics/train.json."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with oom_as_user_error(cfg):
        output = trainer.train()
    state = trainer.state
    eval_losses = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    eval_s = sum(entry["eval_runtime"] for entry in state.log_history if "eval_runtime" in entry)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    runtime = output.metrics["train_runtime"]
    return {
        "train_loss": output.training_loss,
        "eval_loss": eval_losses[-1] if eval_losses else math.nan,
        "runtime_s": runtime,
        "eval_runtime_s": eval_s,  # inside runtime_s; train.eval_share caps the share
        "eval_share": eval_s / runtime if runtime > 0 else 0.0,
        "samples_per_s": output.metrics["train_samples_per_second"],
        "tokens_per_s": state.num_input_tokens_seen / runtime if runtime > 0 else 0.0,
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_mb": peak_memory_mb(cuda),
        "steps": state.global_step,
        "epochs": state.epoch,
    }


def peak_memory_mb(cuda: bool) -> float:
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------- outputs


def save_adapter(model: Any, out_dir: Path, evidence: dict[str, Any]) -> None:
    """Write only the adapter files (no README, checkpoints or tokenizer) and evidence.json, atomically."""
    from safetensors import SafetensorError

    with tempfile.TemporaryDirectory(prefix="loradag-adapter-") as scratch, atomic_dir(out_dir) as tmp:
        try:
            model.save_pretrained(scratch, safe_serialization=True)
        except SafetensorError as err:  # its writer's error for a full disk or a file-size limit
            raise UserError(f"{out_dir}: could not write the adapter weights ({err}); the last good adapter is "
                            "still in place: free space and rerun") from err  # fmt: skip
        for name in ADAPTER_FILES:
            shutil.copy2(Path(scratch) / name, tmp / name)
        sort_target_modules(tmp / "adapter_config.json")
        write_json(evidence, tmp / "evidence.json")


def sort_target_modules(config_path: Path) -> None:
    """peft writes target_modules from a set, in an order that changes with PYTHONHASHSEED: sort it so the
    same training gives the same adapter folder hash in dvc.lock on every run."""
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def hardware() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus)}


def package_versions() -> dict[str, str | None]:
    installed = {dist.metadata["Name"].lower(): dist.version for dist in importlib.metadata.distributions()}
    return {name: installed.get(name) for name in PACKAGES}


def build_evidence(cfg: TrainConfig, precision: chat.Precision) -> dict[str, Any]:
    return {
        "hardware": hardware(),
        "packages": package_versions(),
        "precision": precision.name,
        "params": dataclasses.asdict(cfg),
        "sha256": {
            "train": sha256_file(TRAIN_DATA),
            "eval": sha256_file(EVAL_DATA),
            "base": sha256_tree(BASE_DIR),
            "environment_lock": sha256_file(LOCK_FILE) if LOCK_FILE.is_file() else None,
        },
    }


def main(params_path: Path) -> None:
    import torch

    cfg = section_config(TrainConfig, load_params(params_path), "train")
    cuda = torch.cuda.is_available()
    check_quantization(cfg.quantization, cuda)
    precision = chat.device_precision()
    train_df, eval_df = (read_table(path, "split", ["question", "answer"]) for path in (TRAIN_DATA, EVAL_DATA))
    model = chat.load_model(BASE_DIR, precision, cfg.quantization)
    tokenizer = chat.load_tokenizer(BASE_DIR)
    peft_model = attach_lora(model, cfg)
    # The curves are written to a folder that replaces dvclive/train only when training succeeds, like every output.
    with tempfile.TemporaryDirectory(prefix="loradag-train-") as scratch, atomic_dir(LIVE_DIR) as live_dir:
        callbacks = [live_callback(live_dir)]
        trainer = build_trainer(peft_model, tokenizer, cfg, precision, train_df, eval_df, Path(scratch), callbacks)
        metrics = run_training(trainer, cfg)
        save_adapter(peft_model, OUT_DIR, build_evidence(cfg, precision))
    write_json(metrics, METRICS)
    log.info(
        "train: %d steps (%s) -> %s: train_loss %.4f, eval_loss %.4f, %.1f s",
        metrics["steps"],
        precision.name,
        OUT_DIR,
        metrics["train_loss"],
        metrics["eval_loss"],
        metrics["runtime_s"],
    )
