"""reports/decision.md for `evaluate`: the verdict and its interval first, then tables, every number from the metrics.

text = render(metrics, cfg, info(params, eval_path, base_dir, adapter_dir), preds, scoring)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.lib.common import sha256_file, sha256_tree
from stages.lib.gates import GATES
from stages.lib.metrics import ANSWER_METRICS, Scoring
from stages.lib.verdict import TIE

MODEL_METRICS = Path("metrics/model.json")
HEADLINES = {
    "keep": "KEEP the adapter",
    "discard": "DISCARD the adapter",
    "inconclusive": "INCONCLUSIVE: not enough evidence to keep the adapter",
}
RETRIEVAL = {
    "better": "Retrieval alone beat the adapter",
    "matched": "Retrieval alone matched the adapter (the interval holds 0)",
    "worse": "Retrieval alone fell short of the adapter",
}
BAR_WIDTH = 30


def fmt(value: Any) -> str:
    """How every number appears in reports/decision.md (metrics are already rounded to 4 decimals)."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "n/a"}[value]
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def with_interval(metrics: dict[str, Any], key: str) -> str:
    """`+0.0760 [0.0000, 0.1900]`, or the bare value when no interval was computed."""
    value = metrics.get(key)
    if f"{key}.ci_low" not in metrics:
        return fmt(value)
    return f"{value:+.4f} [{fmt(metrics[f'{key}.ci_low'])}, {fmt(metrics[f'{key}.ci_high'])}]"


def cell(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def headline(metrics: dict[str, Any], cfg: Any) -> list[str]:
    rule, outcome = cfg.decision, metrics["decision.verdict"]
    name = rule.metric
    lines = [
        f"**Verdict: {HEADLINES[outcome]}.** Adapter - base {name} = "
        f"{with_interval(metrics, f'delta.{name}')} ({rule.confidence:.0%} paired bootstrap interval over the "
        f"questions), against min_delta {rule.min_delta}; the adapter won {metrics.get(f'wins.{name}', 0)}, tied "
        f"{metrics.get(f'ties.{name}', 0)} and lost {metrics.get(f'losses.{name}', 0)} of "
        f"{metrics['eval_questions']} questions.",
    ]
    failed = [gate for gate in GATES if metrics.get(f"gate.{gate}.result") == "fail"]
    unclear = [gate for gate in GATES if metrics.get(f"gate.{gate}.result") == "unclear"]
    if failed:
        lines.append(f"Failed gate(s): {', '.join(failed)}.")
    if unclear:
        lines.append(f"Gate(s) neither passed nor failed: {', '.join(unclear)}.")
    needed = metrics.get("decision.questions_to_settle")
    if outcome == "inconclusive" and needed:
        lines.append(f"About {needed} eval questions (now {metrics['eval_questions']}) would settle it.")
    if "retrieval" in metrics:
        key = f"retrieval.rag_minus_adapter.{name}"
        lines.append(f"{RETRIEVAL[metrics['retrieval']]}: base+rag - adapter {name} = {with_interval(metrics, key)}.")
    return [" ".join(lines), ""]


def rule_in_words(cfg: Any) -> str:
    rule = cfg.decision
    return (
        f"keep the adapter if the {rule.confidence:.0%} interval of adapter {rule.metric} - base {rule.metric} lies "
        f"at or above {rule.min_delta} and every gate passes; discard it if the interval lies below "
        f"{rule.min_delta} or a gate fails; otherwise the verdict is inconclusive"
    )


def metric_table(metrics: dict[str, Any]) -> list[str]:
    rag = "base+rag.token_f1" in metrics
    head = "| metric | base | adapter | adapter - base [interval] | wins/ties/losses |"
    head += " base+rag | - base [interval] | adapter+rag | - base [interval] |" if rag else ""
    lines = [head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
    for name in ANSWER_METRICS:
        if f"base.{name}" not in metrics:
            continue
        row = [name, fmt(metrics.get(f"base.{name}")), fmt(metrics.get(f"adapter.{name}"))]
        row.append(with_interval(metrics, f"delta.{name}"))
        wtl = [metrics.get(f"{kind}.{name}") for kind in ("wins", "ties", "losses")]
        row.append("/".join(map(str, wtl)) if None not in wtl else "")
        if rag:
            for side in ("base+rag", "adapter+rag"):
                row += [fmt(metrics.get(f"{side}.{name}")), with_interval(metrics, f"delta.{side}.{name}")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def gate_table(metrics: dict[str, Any], cfg: Any) -> list[str]:
    lines = ["| gate | rule | adapter - base [interval] | worst allowed | result |", "|---|---|---:|---:|---|"]
    for name, gate in GATES.items():
        if f"gate.{name}.result" in metrics:
            interval = with_interval(metrics, f"gate.{name}.delta")
            result = metrics[f"gate.{name}.result"]
            lines.append(f"| {name} | {gate.rule(cfg)} | {interval} | {fmt(metrics[f'gate.{name}.worst_allowed'])} "
                         f"| {result.upper() if result == 'fail' else result} |")  # fmt: skip
    return lines


def pick_examples(
    preds: dict[str, list[dict[str, Any]]], metric: str, scoring: Scoring, count: int
) -> list[tuple[str, int]]:
    """(outcome, index) of up to `count` questions, taken in turn from wins, losses and ties (largest first)."""
    score = ANSWER_METRICS[metric].score
    groups: dict[str, list[tuple[float, int]]] = {"win": [], "loss": [], "tie": []}
    for i, (base, adapter) in enumerate(zip(preds["base"], preds["adapter"], strict=True)):
        b, a = score(base, scoring), score(adapter, scoring)
        if a is None or b is None:
            continue
        kind = "win" if a - b > TIE else "loss" if b - a > TIE else "tie"
        groups[kind].append((-abs(a - b), i))
    queues = {kind: [i for _, i in sorted(group)] for kind, group in groups.items()}
    picked: list[tuple[str, int]] = []
    while len(picked) < count and any(queues.values()):
        for kind, queue in queues.items():
            if queue and len(picked) < count:
                picked.append((kind, queue.pop(0)))
    return picked


def example_table(preds: dict[str, list[dict[str, Any]]], metric: str, scoring: Scoring, count: int) -> list[str]:
    rag = "base+rag" in preds
    head = "| outcome | question | reference | base | adapter |" + (" base+rag |" if rag else "")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for kind, i in pick_examples(preds, metric, scoring, count):
        row = [kind, preds["base"][i]["question"], preds["base"][i]["reference"], preds["base"][i]["answer"]]
        row += [preds["adapter"][i]["answer"]] + ([preds["base+rag"][i]["answer"]] if rag else [])
        lines.append("| " + " | ".join(cell(text) for text in row) + " |")
    return lines


def judge_section(metrics: dict[str, Any], preds: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "## Judge",
        "",
        f"- Model: `{metrics['judge.model']}`; prompt sha256 `{metrics['judge.prompt_sha256']}`",
        f"- Agreement with the hand-labelled set: Spearman {fmt(metrics.get('judge.agreement_spearman'))} over "
        f"{metrics['judge.agreement_items']} scored items",
        "",
        "Score distribution (answers per score, per side):",
        "",
        "```",
    ]
    for side, rows in preds.items():
        counts = [sum(row.get("judge_score") == score for row in rows) for score in range(6)]
        top = max(max(counts), 1)
        lines.append(side)
        for score, count in enumerate(counts):
            lines.append(f"  {score} | {'█' * round(count / top * BAR_WIDTH)} {count}")
    return [*lines, "```", ""]


def render(
    metrics: dict[str, Any], cfg: Any, info: dict[str, str], preds: dict[str, list[dict[str, Any]]], scoring: Scoring
) -> str:
    lines = ["# Adapter decision", "", *headline(metrics, cfg)]
    lines += [
        f"- Task: {info['task']}",
        f"- Base model: {info['base_model']}",
        f"- Eval questions: {fmt(metrics['eval_questions'])}",
        f"- sha256: eval `{info['eval_sha256']}`, base `{info['base_sha256']}`, adapter `{info['adapter_sha256']}`",
        "",
        f"Rule, declared in params.yaml before the run: {rule_in_words(cfg)}.",
        "",
        *metric_table(metrics),
        "",
        "## Regression gates",
        "",
        *gate_table(metrics, cfg),
        "",
    ]
    if "judge.model" in metrics:
        lines += judge_section(metrics, preds)
    lines += ["## Examples", "", *example_table(preds, cfg.decision.metric, scoring, cfg.examples_in_report)]
    return "\n".join(lines) + "\n"


def info(params: dict[str, Any], eval_data: Path, base_dir: Path, adapter_dir: Path) -> dict[str, str]:
    kind = (params.get("extract") or {}).get("kind", "articles")
    task = f"answer questions about the `{kind}` input like the held-out reference answers"
    if MODEL_METRICS.is_file():
        model = json.loads(MODEL_METRICS.read_text(encoding="utf-8"))
        base_model = f"{model.get('base', '?')} ({model.get('parameters', '?')} parameters)"
    else:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
        base_model = f"{config.get('_name_or_path') or ', '.join(config.get('architectures', ['?']))}"
    return {
        "task": task,
        "base_model": base_model,
        "eval_sha256": sha256_file(eval_data),
        "base_sha256": sha256_tree(base_dir),
        "adapter_sha256": sha256_tree(adapter_dir),
    }
