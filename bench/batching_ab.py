"""Benchmark: padded against padding-free batches, step by step in one process (A, B, B, A, ...).

On a shared machine whose load drifts over minutes, runs in separate processes (bench/train_speed.py) can
differ by more than the batching does; here both modes take the same batches of the same model in turn, so
the drift falls on both. Forward + backward of loradag's LoRA model on trl's tokenized examples, the eval-free
core of a train step.

    python bench/batching_ab.py --base /work/main/models/base --data /work/main/data/split --batches 6

Writes bench/results/batching_ab.json (seconds and tokens per mode, the ratio). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "batching_ab.json"


def main(base: Path, data: Path, batches: int) -> None:
    from stages import train
    from stages.lib import batching, chat
    from stages.lib.common import read_table
    from stages.lib.params import load_params, section_config

    cfg = section_config(train.TrainConfig, load_params(ROOT / "params.yaml"), "train")
    precision = chat.device_precision()
    train_df = read_table(data / "train.parquet", "split", ["question", "answer"])
    tokenizer = chat.load_tokenizer(base)
    model = train.attach_lora(chat.load_model(base, precision), cfg)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = train.build_trainer(model, tokenizer, cfg, precision, train_df, train_df, Path(scratch), [])
    rows = list(trainer.train_dataset)
    random.Random(cfg.seed).shuffle(rows)
    collators = {
        "padded": trainer.data_collator,
        "padding_free": batching.collator("padding_free", tokenizer.pad_token_id),
    }
    if trainer.data_collator.padding_free:  # auto picked padding-free: the padded collator is trl's default
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        collators["padded"] = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    model = trainer.model.train()
    totals = {mode: {"seconds": 0.0, "tokens": 0, "cells": 0} for mode in collators}
    for index in range(batches):
        examples = rows[index * cfg.batch_size : (index + 1) * cfg.batch_size]
        order = list(collators) if index % 2 == 0 else list(collators)[::-1]
        for mode in order:
            batch = collators[mode](examples)
            began = time.perf_counter()
            model(**batch, use_cache=False).loss.backward()
            totals[mode]["seconds"] += time.perf_counter() - began
            totals[mode]["tokens"] += sum(len(example["input_ids"]) for example in examples)
            totals[mode]["cells"] += batch["input_ids"].numel()
            model.zero_grad(set_to_none=True)
        print(index, {mode: round(total["seconds"], 1) for mode, total in totals.items()}, flush=True)
    for total in totals.values():
        total["tokens_per_s"] = total["tokens"] / total["seconds"]
        total["padding_fraction"] = 1 - total["tokens"] / total["cells"]
    results = {
        "ratio_padding_free_to_padded": totals["padding_free"]["tokens_per_s"] / totals["padded"]["tokens_per_s"],
        "modes": totals,
        "batches": batches,
        "batch_size": cfg.batch_size,
        "base": str(base),
        "data": str(data),
        "device": "cuda" if precision.name != "fp32" else "cpu",
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "models" / "base")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "split")
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args()
    main(args.base, args.data, args.batches)
