"""Stage `train`: LoRA (or QLoRA) fine-tune of `models/base/` on the train pairs -> `models/adapter/`.

Each pair becomes a conversation (the chat core, stages/lib/chat.py): [system `train.system_prompt` (or the
record's own), the earlier turns of a multi-turn pair, user question, assistant answer], rendered with
`train.chat_template` and tokenized there; the loss falls on every assistant turn (text and end of turn) only.
Precision follows the device (`chat.pick_precision`); `train.quantization: 4bit` loads the base in bitsandbytes
NF4 (CUDA only). Batches are padding-free by default and the eval loss is computed a few times, within
`train.eval_share` of the train time (`stages/lib/batching.py`). Loss is logged per step, eval loss per eval,
to `dvclive/train/`.

Run: `loradag train` (or `dvc repro train`). Writes `models/adapter/` (adapter_config.json,
adapter_model.safetensors, evidence.json: nothing else, so vLLM `--lora-modules` can load it as is)
and `metrics/train.json` (train/eval loss; `metrics/all/train.json` adds timings, memory, parameter counts).
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
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from stages.lib import batching, chat, checkpoints, launch
from stages.lib.common import (
    UserError,
    atomic_dir,
    log,
    read_table,
    sha256_file,
    sha256_tree,
    write_json,
    write_metrics,
)
from stages.lib.pairs import history_messages
from stages.lib.params import ConfigError, load_params, require, section_config
from stages.lib.progress import LogLines

BASE_DIR = Path("models/base")
TRAIN_DATA = Path("data/split/train.parquet")
EVAL_DATA = Path("data/split/eval.parquet")
OUT_DIR = Path("models/adapter")
HEADLINE = ("train_loss", "eval_loss")  # metrics/train.json; timings, memory, parameters: metrics/all/train.json
LIVE_DIR = Path("dvclive/train")
LOCK_FILE = Path("requirements.lock")  # the exact environment scripts/setup.sh installs
CHECKPOINTS = Path("models/checkpoints")  # not a DVC output: see stages/lib/checkpoints.py
# the code that decides what a run computes: a checkpoint of other code is not resumed (dvc.yaml deps, too)
CODE = ("stages.train", "stages.lib.batching", "stages.lib.chat", "stages.lib.checkpoints", "stages.lib.cli",
        "stages.lib.common", "stages.lib.launch", "stages.lib.pairs", "stages.lib.params",
        "stages.lib.progress")  # fmt: skip

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
    chat_template: str = "model"  # model | chatml | chat_templates/<name>.jinja; evaluate, export, serving too
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
    save_steps: int | float = 0.2  # a checkpoint every N optimizer steps, or a fraction of them (< 1); 0 = none
    save_total_limit: int = 1
    processes: int | Literal["auto"] = 1
    accelerate_config: str = ""
    batching: Literal["auto", "padded", "grouped", "padding_free"] = "auto"
    eval_share: float = 0.1

    def __post_init__(self) -> None:
        chat.check_system_prompt(self.system_prompt)
        chat.check_chat_template(self.chat_template)
        require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        require(
            self.max_steps == -1 or self.max_steps >= 1, "train.max_steps", f"must be -1 or >= 1, got {self.max_steps}"
        )
        require(0 < self.learning_rate < 1, "train.learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(self.max_length >= 16, "train.max_length", f"must be >= 16, got {self.max_length}")
        require(
            self.save_steps >= 0 if isinstance(self.save_steps, int) else 0 < self.save_steps < 1,
            "train.save_steps",
            f"must be a step count >= 0 (0 = no checkpoints) or a fraction of the run in (0, 1), got {self.save_steps}",
        )
        require(self.save_total_limit >= 1, "train.save_total_limit", f"must be >= 1, got {self.save_total_limit}")
        if self.processes != "auto":
            require(self.processes >= 1, "train.processes", f"must be auto or >= 1, got {self.processes}")
        require(0 < self.eval_share <= 1, "train.eval_share", f"must be in (0, 1], got {self.eval_share}")


def check_quantization(quantization: str, cuda_available: bool) -> None:
    if quantization == "4bit" and not cuda_available:
        raise UserError(
            "train.quantization: 4bit (QLoRA, bitsandbytes NF4) needs a CUDA GPU and this machine has none; "
            "set train.quantization: none to train in fp32 on the CPU"
        )


def conversations(pairs: pl.DataFrame, system_prompt: str, tokenizer: Any) -> list[dict[str, Any]]:
    """Pairs -> tokenized trl rows (the chat core's training examples, every assistant turn learned), in order."""
    rows = pairs.select("question", "answer", "history").iter_rows()
    return [
        chat.training_example(tokenizer, chat.conversation(q, a, system_prompt, history_messages(h)))
        for q, a, h in rows
    ]


def example_counts(trainer: Any, train_df: pl.DataFrame) -> dict[str, int]:
    """Conversations trained on (trl drops one that truncation left without an answer) and the assistant turns
    they hold: each is learned, so a multi-turn pair counts more than once."""
    turns = sum(1 + sum(m["role"] == "assistant" for m in history_messages(h)) for h in train_df["history"])
    return {"train_examples": len(trainer.train_dataset), "train_assistant_turns": turns}


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
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed,
        # precision and memory: trl's defaults (bf16 on, gradient checkpointing on) are overridden here
        bf16=precision.bf16, fp16=precision.fp16, use_cpu=precision.name == "fp32",
        activation_checkpointing=cfg.gradient_checkpointing, activation_checkpointing_kwargs={"use_reentrant": False},
        # loss on the assistant answer (+ end of turn) only; one conversation per row
        max_length=cfg.max_length, completion_only_loss=True, assistant_only_loss=False,
        logging_steps=1, eval_strategy="steps", eval_steps=eval_steps, report_to="none",
        dataloader_num_workers=0, **batching.sft_kwargs(mode), **run_args(cfg, launch.world_size()),
    )  # fmt: skip


def run_args(cfg: TrainConfig, processes: int) -> dict[str, Any]:
    """Checkpoints, and the batch split over data-parallel processes so the global batch stays train.batch_size."""
    per_device = cfg.batch_size // processes  # processes_for checked that it divides
    return {
        "per_device_train_batch_size": per_device, "per_device_eval_batch_size": per_device,
        "save_strategy": "steps" if cfg.save_steps else "no", "save_steps": cfg.save_steps or 1,
        "save_total_limit": cfg.save_total_limit,
        "ddp_find_unused_parameters": False,  # every LoRA weight gets a gradient: skip DDP's extra graph walk
    }  # fmt: skip


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

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for logs in state.log_history:  # resumed: the curve up to the checkpoint, as the killed run logged it
                self.log(logs["step"], logs)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            self.log(state.global_step, logs or {})

        def log(self, step: int, logs: dict[str, Any]) -> None:
            self.live.step = step
            for key, name in LIVE_METRICS.items():
                if key in logs:
                    self.live.log_metric(name, logs[key])

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.live.end()

    return LiveCurves()


def progress_callback() -> Any:
    """Steps done as log lines (stages/lib/progress.py), for a stderr that is not a terminal: there the trainer's
    own tqdm bar is off (common.setup_logging) and a two-minute run would otherwise print nothing."""
    from transformers import TrainerCallback

    class StepLines(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.lines = LogLines("train", state.max_steps, "steps")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.lines.update(1)

    return StepLines()


def quiet_trainer(trainer: Any) -> None:
    """In a log, the step lines above say how far training is: drop the trainer's dict per step on stdout."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


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
        train_dataset=Dataset.from_list(conversations(train_df, cfg.system_prompt, tokenizer)),
        eval_dataset=Dataset.from_list(conversations(eval_df, cfg.system_prompt, tokenizer)),
        processing_class=tokenizer,
        data_collator=batching.collator(mode, tokenizer.pad_token_id),
        callbacks=[eval_at_end_callback(), checkpoints.no_checkpoint_at_end(), *callbacks],
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


def run_training(trainer: Any, cfg: TrainConfig, resume: Path | None = None) -> dict[str, Any]:
    """Train (from checkpoint `resume` if given), then return the flat numbers of metrics/train.json."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with oom_as_user_error(cfg):
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    eval_losses = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    # the mean over every step, the resumed run's included (the trainer's training_loss covers this call only)
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    eval_s = sum(entry["eval_runtime"] for entry in state.log_history if "eval_runtime" in entry)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    runtime = output.metrics["train_runtime"]
    return {
        "train_loss": round(sum(losses) / len(losses), 4) if losses else math.nan,
        "eval_loss": round(eval_losses[-1], 4) if eval_losses else math.nan,
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


def save_adapter(model: Any, out_dir: Path, evidence: dict[str, Any], state_dict: dict | None = None) -> None:
    """Write only the adapter files (no README, checkpoints or tokenizer) and evidence.json, atomically.

    `state_dict`: the gathered weights when the processes held shards (FSDP, DeepSpeed ZeRO-3)."""
    from safetensors import SafetensorError

    with tempfile.TemporaryDirectory(prefix="loradag-adapter-") as scratch, atomic_dir(out_dir) as tmp:
        try:
            model.save_pretrained(scratch, safe_serialization=True, state_dict=state_dict)
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


def input_hashes() -> dict[str, str | None]:
    return {
        "train": sha256_file(TRAIN_DATA),
        "eval": sha256_file(EVAL_DATA),
        "base": sha256_tree(BASE_DIR),
        "environment_lock": sha256_file(LOCK_FILE) if LOCK_FILE.is_file() else None,
        "chat_templates": sha256_tree(chat.TEMPLATE_DIR) if chat.TEMPLATE_DIR.is_dir() else None,
    }


def build_evidence(cfg: TrainConfig, precision: chat.Precision, hashes: dict[str, str | None]) -> dict[str, Any]:
    return {
        "hardware": hardware(),
        "packages": package_versions(),
        "precision": precision.name,
        "params": dataclasses.asdict(cfg),
        "sha256": hashes,
    }


# ---------------------------------------------------------------- run orchestration: processes, checkpoints


def main(params_path: Path) -> None:
    import torch

    cfg = section_config(TrainConfig, load_params(params_path), "train")
    cuda = torch.cuda.is_available()
    check_quantization(cfg.quantization, cuda)
    processes = launch.processes_for(cfg.processes, cfg.quantization, cfg.batch_size, torch.cuda.device_count())
    precision = chat.device_precision()
    columns = ["question", "answer", "history"]
    train_df, eval_df = (read_table(path, "split", columns) for path in (TRAIN_DATA, EVAL_DATA))
    hashes = input_hashes()  # read once: the fingerprint and the adapter's evidence name the same inputs
    parts = {"sha256": hashes, "code": checkpoints.code_hashes(CODE), "params": dataclasses.asdict(cfg),
             "precision": precision.name, "processes": processes}  # fmt: skip
    fingerprint = checkpoints.fingerprint(parts)
    if launch.launched():  # one of several processes: the one that launched them prepared the checkpoints
        resume = checkpoints.resume_point(CHECKPOINTS, fingerprint)
    else:
        resume = checkpoints.prepare(CHECKPOINTS, fingerprint, parts)
        if processes > 1:
            launch.relaunch(processes, params_path, cfg.accelerate_config, cuda)
            return
    train_and_save(cfg, precision, train_df, eval_df, resume, hashes)


def gathered_weights(trainer: Any) -> dict[str, Any] | None:
    """Under FSDP or DeepSpeed each process holds a shard: every process joins in gathering the full weights."""
    if trainer.accelerator.distributed_type.name not in ("FSDP", "DEEPSPEED"):
        return None  # DDP or one process: the model in hand holds every weight
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def train_and_save(
    cfg: TrainConfig,
    precision: chat.Precision,
    train_df: pl.DataFrame,
    eval_df: pl.DataFrame,
    resume: Path | None,
    hashes: dict[str, str | None],
) -> None:
    model = chat.load_model(BASE_DIR, precision, cfg.quantization)
    tokenizer = chat.load_tokenizer(BASE_DIR, chat_template=cfg.chat_template)
    peft_model = attach_lora(model, cfg)
    writer = launch.is_main_process()  # the other processes of a data-parallel run hold the same weights
    # The curves are written to a folder that replaces dvclive/train only when training succeeds, like every output.
    with atomic_dir(LIVE_DIR) if writer else contextlib.nullcontext() as live_dir:
        callbacks = [live_callback(live_dir)] if writer else []
        callbacks += [progress_callback()] if writer and not sys.stderr.isatty() else []
        trainer = build_trainer(peft_model, tokenizer, cfg, precision, train_df, eval_df, CHECKPOINTS, callbacks)
        if not sys.stderr.isatty():
            quiet_trainer(trainer)
        metrics = run_training(trainer, cfg, resume) | example_counts(trainer, train_df)
        gathered = gathered_weights(trainer)
        if writer:
            save_adapter(peft_model, OUT_DIR, build_evidence(cfg, precision, hashes), gathered)
    if not writer:
        return
    write_metrics(metrics, "train", HEADLINE)
    checkpoints.clear(CHECKPOINTS)
    log.info(
        "train: %d steps (%s) -> %s: train_loss %.4f, eval_loss %.4f, %.1f s",
        metrics["steps"],
        precision.name,
        OUT_DIR,
        metrics["train_loss"],
        metrics["eval_loss"],
        metrics["runtime_s"],
    )
