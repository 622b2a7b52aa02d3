"""Long tables for `dvc plots` (dvc.yaml `plots:`, templates in .dvc/plots/) and reports/decision.html's charts.

One row per bar or point, so DVC's templates colour by a column (`side`, `part`) instead of by file.
"""

from __future__ import annotations

import math
from typing import Any

from stages.lib.metrics import ANSWER_METRICS

SIDES = ("base", "adapter", "base+rag", "adapter+rag")  # report order; "+rag": with retrieved passages
COMPARED = {"adapter": "delta", "base+rag": "delta.base+rag", "adapter+rag": "delta.adapter+rag"}  # vs base
UNBOUNDED = ("mean_answer_tokens", "mean_latency_s", "judge_mean", "judge_unparseable")  # not on a 0-1 axis
LENGTH_BUCKETS = 8
COLUMNS = {  # data/evaluate/<name>.csv, drawn by the dvc.yaml plot of the same name
    "judge_scores": ("side", "score", "answers"),
    "answer_lengths": ("side", "tokens", "answers"),
    "intervals": ("metric", "side", "delta", "ci_low", "ci_high"),
}


def tables(preds: dict[str, list[dict[str, Any]]], metrics: dict[str, Any], max_new_tokens: int) -> dict:
    """Each table of COLUMNS as rows, for evaluate to write and reports/decision.html to chart."""
    return {
        "judge_scores": judge_rows(preds),
        "answer_lengths": length_rows(preds, max_new_tokens),
        "intervals": interval_rows(metrics),
    }


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Plain CSV (the values hold no commas or quotes: sides, metric names, numbers)."""
    lines = [",".join(columns)] + [",".join(str(row[column]) for column in columns) for row in rows]
    return "\n".join(lines) + "\n"


def judge_rows(preds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """side, score 0-5, answers with that score (all zero when no judge ran; unparseable replies have no score)."""
    return [
        {"side": side, "score": score, "answers": sum(row.get("judge_score") == score for row in preds[side])}
        for side in SIDES
        if side in preds
        for score in range(6)
    ]


def length_rows(preds: dict[str, list[dict[str, Any]]], max_new_tokens: int) -> list[dict[str, Any]]:
    """side, tokens (a bucket's first length), answers: the histogram of answer lengths in tokens per side."""
    width = max(1, math.ceil(max_new_tokens / LENGTH_BUCKETS))  # the longest answers share the last bucket
    rows = []
    for side in SIDES:
        if side not in preds:
            continue
        counts = [0] * max(1, math.ceil(max_new_tokens / width))
        for row in preds[side]:
            counts[min(row["tokens"] // width, len(counts) - 1)] += 1
        rows += [{"side": side, "tokens": i * width, "answers": n} for i, n in enumerate(counts)]
    return rows


def interval_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metric, side, delta (side - base), ci_low, ci_high for each 0-1 metric the verdict gave an interval."""
    rows = []
    for name in ANSWER_METRICS:
        if name in UNBOUNDED:
            continue
        for side, prefix in COMPARED.items():
            key = f"{prefix}.{name}"
            if f"{key}.ci_low" in metrics:
                rows.append({"metric": name, "side": side, "delta": metrics[key],
                             "ci_low": metrics[f"{key}.ci_low"], "ci_high": metrics[f"{key}.ci_high"]})  # fmt: skip
    return rows
