"""Benchmark: what the verdict's additions (retrieval, general and safety gates, intervals) cost in `evaluate`.

Times evaluate's stage functions on a project where `dvc repro` has run, with its params: loading base +
adapter, then both sides answering each answer set (`eval`, the pipeline's evaluate before issue 9; `rag`,
`general`, `safety`: the additions), and the metrics with their bootstrap intervals. The additions' cost is
everything but loading and `eval`; the target is at most 60 s.

    python bench/evaluate_time.py /tmp/loradag-copy   # a copy made by tests/project.py copy_project + dvc repro

Writes bench/results/evaluate_time.json (seconds per part, per side, the machine). Not a test.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "evaluate_time.json"
TARGET_EXTRA_S = 60.0


def main(project: Path) -> None:
    from stages import evaluate
    from stages.lib import chat
    from stages.lib.metrics import Scoring

    os.chdir(project)
    params = evaluate.load_params(Path("params.yaml"))
    cfg, system_prompt = evaluate.load_config(params), chat.system_prompt(params)
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    sets = evaluate.answer_sets(evaluate.read_questions(evaluate.EVAL_DATA, cfg.max_questions), cfg)
    model, tokenizer = chat.load_for_generation(evaluate.BASE_DIR, evaluate.ADAPTER_DIR)
    seconds["load_and_retrieve"] = time.perf_counter() - began
    answers: dict[str, dict[str, list]] = {name: {} for name in sets}
    for side in ("base", "adapter"):
        for name, (items, max_new_tokens) in sets.items():
            began = time.perf_counter()
            if side == "base":
                with model.disable_adapter():
                    rows = evaluate.generate_answers(model, tokenizer, items, system_prompt, max_new_tokens, 16)
            else:
                rows = evaluate.generate_answers(model, tokenizer, items, system_prompt, max_new_tokens, 16)
            answers[name][side] = rows
            seconds[f"{name}.{side}"] = time.perf_counter() - began
    began = time.perf_counter()
    scoring = Scoring(evaluate.refusal_patterns(params))
    gate_answers = {name: answers[name] for name in ("general", "safety") if name in answers}
    metrics = evaluate.flat_metrics(evaluate.eval_sides(answers), gate_answers, scoring, cfg)
    seconds["metrics_and_intervals"] = time.perf_counter() - began
    before = sum(seconds[f"eval.{side}"] for side in ("base", "adapter"))
    extra = sum(seconds.values()) - before - seconds["load_and_retrieve"]
    results = {
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
        "eval_generation_s": round(before, 2),
        "extra_s": round(extra, 2),
        "target_extra_s": TARGET_EXTRA_S,
        "met": extra <= TARGET_EXTRA_S,
        "items": {name: len(items) for name, (items, _) in sets.items()},
        "verdict": metrics["decision.verdict"],
        "settings": {key: params["evaluate"].get(key) for key in ("max_new_tokens", "batch_size", "rag", "gates")},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other jobs share this machine
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/evaluate_time.py PROJECT_DIR (a project after `dvc repro`)")
    main(Path(sys.argv[1]).resolve())
