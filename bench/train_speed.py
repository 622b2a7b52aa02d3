"""Benchmark: loradag's train path against plain TRL, same data, model and settings, in one run.

Each side trains in its own subprocess (so peak memory is its own), the sides interleaved when repeated:

    loradag  stages.train's core as `loradag train` runs it (attach_lora, build_trainer, run_training; not the
             CLI): `train.batching` (auto = padding-free), its eval-loss cadence (`train.eval_share`) included
    trl      plain `SFTTrainer` + `peft_config`: its default collator (pad to the longest of the batch), random
             sampler, no eval; the same LoRA, optimiser settings, precision and no gradient checkpointing

Both get the same pairs of data/split (or `--data`): loradag as its chat core tokenizes them, TRL as conversational
prompt/completion rows (its docs' shape), with the same base: models/base (or
`--base`), else a tiny random-init Llama (say which in the results). Counted per optimizer step by a hook on
the model's training forward: real (non-padding) tokens, examples, and the tokens the model computed on
(padding included). The first `--warmup` steps are left out; `train_*` rates leave out eval time as well,
`end_to_end_*` rates divide every trained token by the whole `trainer.train()` time (evals included).

    python bench/train_speed.py --base /work/main/models/base --data /work/main/data/split
    python bench/train_speed.py --also padded,grouped   # more loradag batching modes beside auto

Writes bench/results/train_speed.json. Not a test. Device: CUDA if there is one (bf16/fp16), else CPU fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "train_speed.json"


# ---------------------------------------------------------------- measuring (inside a side's subprocess)


class Meter:
    """Per optimizer step: wall time (eval time taken out), real tokens, examples and computed tokens."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current = {"tokens": 0, "examples": 0, "cells": 0}
        self.eval_s = 0.0
        self.eval_examples = 0
        self.last = time.perf_counter()

    def forward_hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None or not module.training:
            if ids is not None and "attention_mask" in kwargs:
                self.eval_examples += ids.shape[0]
            elif ids is not None:
                self.eval_examples += int((kwargs["position_ids"] == 0).sum())
            return
        if kwargs.get("attention_mask") is not None:  # padded: the mask marks the real tokens
            self.current["tokens"] += int(kwargs["attention_mask"].sum())
            self.current["examples"] += ids.shape[0]
        else:  # padding-free: one row, every token real, each example starts at position 0
            self.current["tokens"] += ids.numel()
            self.current["examples"] += int((kwargs["position_ids"] == 0).sum())
        self.current["cells"] += ids.numel()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        meter = self

        class StepClock(TrainerCallback):
            def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
                meter.last = time.perf_counter()

            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                now = time.perf_counter()
                meter.steps.append({**meter.current, "seconds": now - meter.last})
                meter.current = {"tokens": 0, "examples": 0, "cells": 0}
                meter.last = now

            def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
                meter.eval_s += metrics["eval_runtime"]
                meter.last += metrics["eval_runtime"]  # the next step's clock starts after the eval

        return StepClock()


def summary(meter: Meter, warmup: int, runtime_s: float, peak_rss_mb: float, peak_cuda_mb: float | None) -> dict:
    timed = meter.steps[warmup:]
    seconds = sum(step["seconds"] for step in timed)
    tokens = sum(step["tokens"] for step in timed)
    cells = sum(step["cells"] for step in timed)
    all_tokens = sum(step["tokens"] for step in meter.steps)
    return {
        "steps": len(meter.steps),
        "timed_steps": len(timed),
        "train_tokens_per_s": tokens / seconds,
        "train_samples_per_s": sum(step["examples"] for step in timed) / seconds,
        "end_to_end_tokens_per_s": all_tokens / runtime_s,
        "end_to_end_samples_per_s": sum(step["examples"] for step in meter.steps) / runtime_s,
        "padding_fraction": 1 - tokens / cells,
        "train_runtime_s": runtime_s,
        "eval_s": meter.eval_s,
        "eval_share": meter.eval_s / runtime_s,
        "eval_examples": meter.eval_examples,
        "train_s_per_example": seconds / sum(step["examples"] for step in timed),
        "eval_s_per_example": meter.eval_s / meter.eval_examples if meter.eval_examples else None,
        "peak_rss_mb": peak_rss_mb,
        "peak_cuda_mb": peak_cuda_mb,
    }


def peaks() -> tuple[float, float | None]:
    import resource

    import torch

    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, cuda  # Linux: KiB


def load_rows(data: Path) -> tuple[Any, Any]:
    from stages.lib.common import read_table

    train_df, eval_df = (
        read_table(data / f"{name}.parquet", "split", ["question", "answer", "history"]) for name in ("train", "eval")
    )
    return train_df, eval_df


def run_loradag(base: Path, data: Path, cfg: Any, warmup: int) -> dict:
    from stages import train
    from stages.lib import chat

    precision = chat.device_precision()
    train_df, eval_df = load_rows(data)
    model = train.attach_lora(chat.load_model(base, precision), cfg)
    meter = Meter()
    model.register_forward_pre_hook(meter.forward_hook, with_kwargs=True)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = train.build_trainer(
            model, chat.load_tokenizer(base), cfg, precision, train_df, eval_df, Path(scratch), [meter.callback()]
        )
        metrics = train.run_training(trainer, cfg)
    return summary(meter, warmup, metrics["runtime_s"], *peaks()) | {"train_loss": metrics["train_loss"]}


def run_trl(base: Path, data: Path, cfg: Any, warmup: int) -> dict:
    """Plain TRL: what a user writes from its docs, with loradag's settings where the two differ by default."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from stages.lib import chat

    precision = chat.device_precision()
    train_df, _ = load_rows(data)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, precision.dtype))
    meter = Meter()
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        seed=cfg.seed, max_length=cfg.max_length, bf16=precision.bf16, fp16=precision.fp16,
        use_cpu=precision.name == "fp32", gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        report_to="none", dataloader_num_workers=0,
    )  # fmt: skip
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(prompt_completion_rows(train_df, cfg.system_prompt)),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[meter.callback()],
    )
    trainer.model.register_forward_pre_hook(meter.forward_hook, with_kwargs=True)
    output = trainer.train()
    return summary(meter, warmup, output.metrics["train_runtime"], *peaks()) | {"train_loss": output.training_loss}


def prompt_completion_rows(pairs: Any, system_prompt: str) -> list[dict[str, Any]]:
    """The same pairs as TRL's docs shape them (conversational prompt/completion: loss on the completion only)."""
    rows = []
    for question, answer in pairs.select("question", "answer").iter_rows():
        prompt = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return rows


def side_main(side: str, base: Path, data: Path, overrides: dict[str, Any], warmup: int, out: Path) -> None:
    from stages.lib.params import load_params, section_config
    from stages.train import TrainConfig

    cfg = section_config(TrainConfig, load_params(ROOT / "params.yaml"), "train")
    cfg = dataclasses.replace(cfg, **overrides)
    result = run_trl(base, data, cfg, warmup) if side == "trl" else run_loradag(base, data, cfg, warmup)
    out.write_text(json.dumps(result | {"settings": dataclasses.asdict(cfg)}, indent=2))


# ---------------------------------------------------------------- the run (parent process)

RATIO_KEYS = ("train_tokens_per_s", "train_samples_per_s", "end_to_end_tokens_per_s", "end_to_end_samples_per_s",
              "peak_rss_mb", "peak_cuda_mb")  # fmt: skip


def pick_inputs(base: Path, data: Path, scratch: Path) -> tuple[Path, str, Path, str]:
    """The given base and data, or a tiny random-init Llama and synthetic pairs of varied length."""
    if not (base / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import smollm2_tokenizer
        from tiny import save_tiny_llama

        base = save_tiny_llama(scratch / "tiny", smollm2_tokenizer(), hidden_size=256, max_position_embeddings=1024)
        base_note = "tiny random-init Llama (hidden 256, 2 layers; no models/base)"
    else:
        base_note = str(base)
    if not (data / "train.parquet").is_file():
        import polars as pl

        data = scratch / "split"
        data.mkdir()
        for name, count, start in (("train", 66, 0), ("eval", 14, 500)):
            rows = [{"question": f"What does part {i} of the manual say?" + " Be precise." * (i % 5),
                     "answer": f"Part {i} says to check" + " the valve and the gauge" * (1 + i % 9) + "."}
                    for i in range(start, start + count)]  # fmt: skip
            pl.DataFrame(rows).write_parquet(data / f"{name}.parquet")
        data_note = "synthetic pairs, 66 train / 14 eval (no data/split)"
    else:
        data_note = str(data)
    return base, base_note, data, data_note


def run_side(side: str, base: Path, data: Path, extra: list[str], scratch: Path) -> dict:
    out = scratch / f"{side.replace(':', '-')}-{time.monotonic_ns()}.json"
    command = [sys.executable, __file__, "--side", side, "--base", str(base), "--data", str(data), "--out", str(out)]
    began = time.perf_counter()
    subprocess.run([*command, *extra], check=True)
    result = json.loads(out.read_text())
    print(f"{side}: {result['train_tokens_per_s']:.1f} tokens/s (train), {time.perf_counter() - began:.0f} s")
    return result


def median_of(runs: list[dict]) -> dict:
    keys = [key for key, value in runs[0].items() if isinstance(value, int | float) and not isinstance(value, bool)]
    return {key: statistics.median(run[key] for run in runs) for key in keys if None not in (r[key] for r in runs)}


def ratios(ours: dict, theirs: dict) -> dict:
    return {key: ours[key] / theirs[key] for key in RATIO_KEYS if ours.get(key) and theirs.get(key)}


def eval_cost(measured: dict, data: Path) -> dict:
    """What an eval example costs against a train example here, and the eval share it gives params.yaml's run
    (its step count and eval cadence, these per-example costs): a projection when the bench ran capped."""
    import polars as pl

    from stages import train
    from stages.lib import batching
    from stages.lib.params import load_params, section_config

    cfg = section_config(train.TrainConfig, load_params(ROOT / "params.yaml"), "train")
    n_train, n_eval = (pl.read_parquet(data / f"{name}.parquet").height for name in ("train", "eval"))
    steps = batching.total_steps(n_train, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_steps)
    every = train.eval_cadence(cfg, n_train, n_eval)
    train_s = min(steps * cfg.batch_size * cfg.grad_accum, n_train * cfg.epochs) * measured["train_s_per_example"]

    def share(evals: int) -> float:
        eval_s = evals * n_eval * (measured.get("eval_s_per_example") or 0.0)
        return eval_s / (train_s + eval_s)

    evals = steps // every + (steps % every != 0)
    before = math.ceil(0.1 * steps)  # the cadence before train.eval_share: every 10% of the steps, and at the end
    evals_before = steps // before + (steps % before != 0)
    return {
        "measured_eval_to_train_per_example": (measured.get("eval_s_per_example") or 0.0)
        / measured["train_s_per_example"],
        "assumed_eval_to_train_per_example": batching.EVAL_COST_PER_EXAMPLE,
        "default_run": {
            "steps": steps,
            "eval_every": every,
            "evals": evals,
            "train_examples": n_train,
            "eval_examples": n_eval,
            "projected_eval_share": share(evals),
            "previous_cadence": {
                "eval_every": before,
                "evals": evals_before,
                "projected_eval_share": share(evals_before),
            },
        },
    }


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other jobs share this machine
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def main(args: argparse.Namespace) -> None:
    sides = ["loradag", *(f"loradag:{mode}" for mode in args.also), "trl"]
    extra = ["--warmup", str(args.warmup), "--max-steps", str(args.max_steps)]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="loradag-bench-") as tmp:
        base, base_note, data, data_note = pick_inputs(args.base, args.data, Path(tmp))
        for repeat in range(args.repeats):
            for side in sides if repeat % 2 == 0 else sides[::-1]:  # interleaved: load drifts hit both sides
                runs[side].append(run_side(side, base, data, extra, Path(tmp)))
    medians = {side: median_of(side_runs) for side, side_runs in runs.items()}
    results = {
        "ratio_loradag_to_trl": ratios(medians["loradag"], medians["trl"]),
        "eval_cost": eval_cost(medians["loradag"], data),
        "median": medians,
        "runs": runs,
        "repeats": args.repeats,
        "warmup_steps_left_out": args.warmup,
        "base": base_note,
        "data": data_note,
        "machine": machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({key: results[key] for key in ("ratio_loradag_to_trl", "median")}, indent=2))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "models" / "base")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "split")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, interleaved; medians compared")
    parser.add_argument("--warmup", type=int, default=2, help="first optimizer steps left out of the rates")
    parser.add_argument("--max-steps", type=int, default=-1, help="> 0 caps the steps (default: params.yaml's run)")
    parser.add_argument("--also", type=lambda text: [m for m in text.split(",") if m], default=[],
                        help="more loradag train.batching modes to run, e.g. padded,grouped")  # fmt: skip
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.side:
        side, _, mode = arguments.side.partition(":")
        overrides: dict[str, Any] = {"batching": mode} if mode else {}
        if arguments.max_steps > 0:
            overrides["max_steps"] = arguments.max_steps
        side_main(side, arguments.base, arguments.data, overrides, arguments.warmup, arguments.out)
    else:
        main(arguments)
