"""Stage `evaluate`: base model vs base + adapter on the held-out pairs -> metrics and a keep/discard verdict.

Both sides answer every eval question from the same loaded weights (the baseline runs inside
`model.disable_adapter()`), with the train system prompt, through the chat core (stages/lib/chat.py: the
prompt tokens train saw), greedy decoding and the same `max_new_tokens`, in left-padded batches. Answers are
scored by the metric registry (stages/lib/metrics.py) and optionally by an LLM judge (a chat backend from
stages/lib/backends.py); the rule in `evaluate.decision`, fixed before the run, decides.

Run: `loradag evaluate` (or `dvc repro evaluate`). Writes `data/evaluate/preds_{base,adapter}.jsonl`,
`data/evaluate/judge_scores.csv`, `metrics/evaluate.json` and `reports/decision.md`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from stages.lib import chat
from stages.lib.backends import BACKENDS, ChatBackend, config_with_backends, make_backend
from stages.lib.common import (
    log,
    read_table,
    sha256_file,
    sha256_tree,
    write_json,
    write_jsonl,
    write_text,
)
from stages.lib.metrics import ANSWER_METRICS, DECIDABLE, Scoring, parse_judge_score, side_metrics
from stages.lib.pairs import refusal_phrases, refusal_regex
from stages.lib.params import NOT_A_PARAM, ConfigError, from_dict, load_params, require

BASE_DIR = Path("models/base")
ADAPTER_DIR = Path("models/adapter")
EVAL_DATA = Path("data/split/eval.parquet")
OUT_DIR = Path("data/evaluate")
JUDGE_CSV = OUT_DIR / "judge_scores.csv"
METRICS = Path("metrics/evaluate.json")
REPORT = Path("reports/decision.md")
MODEL_METRICS = Path("metrics/model.json")

SIDES = ("base", "adapter")
JUDGE_SYSTEM = (
    "You grade an answer against a reference answer to the same question. Scores: 0 = a refusal or no content; "
    "1 = wrong on the key fact; 3 = directionally right but incomplete or imprecise; 5 = correct and as terse as "
    "the reference. Use 2 or 4 for answers in between. Reply with the score only: one integer from 0 to 5."
)


@dataclass(frozen=True)
class DecisionConfig:
    metric: str = "token_f1"
    min_delta: float = 0.02
    max_degenerate_increase: float = 0.0

    def __post_init__(self) -> None:
        require(
            self.metric in DECIDABLE,
            "evaluate.decision.metric",
            f"must be one of {', '.join(DECIDABLE)}, got {self.metric!r}",
        )
        require(-1 <= self.min_delta <= 5, "evaluate.decision.min_delta", f"must be in [-1, 5], got {self.min_delta}")
        require(
            0 <= self.max_degenerate_increase <= 1,
            "evaluate.decision.max_degenerate_increase",
            f"must be in [0, 1], got {self.max_degenerate_increase}",
        )


@dataclass(frozen=True)
class JudgeConfig:
    backend: str = "none"  # none or a chat backend (stages/lib/backends.py BACKENDS)
    cache_dir: str = ".cache/evaluate"
    backends: dict[str, Any] = field(default_factory=dict, metadata=NOT_A_PARAM)  # each backend's subsection

    def __post_init__(self) -> None:
        choices = ("none", *BACKENDS)
        require(
            self.backend in choices,
            "evaluate.judge.backend",
            f"must be one of {', '.join(choices)}, got {self.backend!r}",
        )
        require(bool(self.cache_dir.strip()), "evaluate.judge.cache_dir", "must not be empty")


@dataclass(frozen=True)
class EvaluateConfig:
    max_new_tokens: int = 96
    batch_size: int = 16
    max_questions: int = 0
    examples_in_report: int = 5
    json_schema: dict[str, Any] | None = field(default=None, metadata=NOT_A_PARAM)  # checked by load_config
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata=NOT_A_PARAM)  # built by load_config

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 1, "evaluate.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.batch_size >= 1, "evaluate.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_questions >= 0, "evaluate.max_questions", f"must be >= 0, got {self.max_questions}")
        require(
            self.examples_in_report >= 0, "evaluate.examples_in_report", f"must be >= 0, got {self.examples_in_report}"
        )


def load_config(params: dict[str, Any]) -> EvaluateConfig:
    """The evaluate section: `json_schema` (free-form) is checked as a JSON Schema, the judge's backends by name."""
    raw = dict(params.get("evaluate") or {})
    schema = raw.pop("json_schema", None)
    judge = config_with_backends(JudgeConfig, raw.pop("judge", None) or {}, "evaluate.judge")
    cfg = dataclasses.replace(from_dict(EvaluateConfig, raw, "evaluate"), json_schema=schema, judge=judge)
    if schema is not None:
        json_validator(schema)
    needs = ANSWER_METRICS[cfg.decision.metric].needs
    if needs == "json_schema" and schema is None:
        raise ConfigError(f"evaluate.decision.metric {cfg.decision.metric} needs evaluate.json_schema")
    if needs == "judge" and judge.backend == "none":
        raise ConfigError(
            f"evaluate.decision.metric {cfg.decision.metric} needs evaluate.judge.backend: one of {', '.join(BACKENDS)}"
        )
    return cfg


def json_validator(schema: Any) -> Any:
    import jsonschema

    if not isinstance(schema, dict):
        raise ConfigError(f"evaluate.json_schema must be a mapping (a JSON Schema) or null, got {schema!r}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise ConfigError(f"evaluate.json_schema is not a valid JSON Schema: {err.message}") from err
    return jsonschema.validators.validator_for(schema)(schema)


def refusal_patterns(params: dict[str, Any]) -> list[re.Pattern[str]]:
    return [re.compile(refusal_regex(p)) for p in refusal_phrases(params)]


# ---------------------------------------------------------------- decision


def decide(metrics: dict[str, Any], rule: DecisionConfig) -> bool:
    """Keep the adapter if the decision metric rose by min_delta and degenerate answers did not rise too much."""
    delta = metrics.get(f"delta.{rule.metric}")
    if delta is None:  # e.g. numeric_match when no reference holds a number: nothing shows an improvement
        return False
    return delta >= rule.min_delta and metrics["delta.degenerate_rate"] <= rule.max_degenerate_increase


def rule_in_words(rule: DecisionConfig) -> str:
    return (
        f"keep the adapter if adapter {rule.metric} - base {rule.metric} >= {rule.min_delta} and "
        f"degenerate_rate rises by at most {rule.max_degenerate_increase}"
    )


def flat_metrics(sides: dict[str, dict[str, float]], rule: DecisionConfig, questions: int) -> dict[str, Any]:
    """base.*, adapter.*, delta.* (adapter - base, from the rounded values), decision.keep, eval_questions."""
    metrics: dict[str, Any] = {"eval_questions": questions}
    for side in SIDES:
        metrics |= {f"{side}.{name}": value for name, value in sides[side].items()}
    for name in ANSWER_METRICS:
        if name in sides["base"] and name in sides["adapter"]:
            metrics[f"delta.{name}"] = round(sides["adapter"][name] - sides["base"][name], 4)
    metrics["decision.keep"] = decide(metrics, rule)
    return metrics


# ---------------------------------------------------------------- generation


def generate_answers(
    model: Any, tokenizer: Any, questions: pl.DataFrame, system_prompt: str, cfg: EvaluateConfig
) -> list[dict[str, Any]]:
    """Greedy answers to every question, `cfg.batch_size` at a time; latency_s is the batch time per question."""
    rows = questions.select("id", "question", "answer").to_dicts()
    conversations = [chat.prompt_messages(row["question"], system_prompt) for row in rows]
    answers = chat.generate(model, tokenizer, conversations, chat.Sampling(cfg.max_new_tokens), cfg.batch_size)
    return [
        {
            "id": row["id"],
            "question": row["question"],
            "reference": row["answer"],
            "answer": answer.text,
            "tokens": answer.tokens,
            "latency_s": answer.latency_s,
        }
        for row, answer in zip(rows, answers, strict=True)
    ]


def answer_both_sides(
    model: Any, tokenizer: Any, questions: pl.DataFrame, system_prompt: str, cfg: EvaluateConfig
) -> dict[str, list[dict[str, Any]]]:
    with model.disable_adapter():  # the same loaded base weights, LoRA off
        base = generate_answers(model, tokenizer, questions, system_prompt, cfg)
    return {"base": base, "adapter": generate_answers(model, tokenizer, questions, system_prompt, cfg)}


# ---------------------------------------------------------------- judge


def judge_conversation(pred: dict[str, Any]) -> list[dict[str, str]]:
    user = (
        f"Question: {pred['question']}\n\nReference answer: {pred['reference']}\n\n"
        f"Answer to grade: {pred['answer'] or '(empty)'}\n\nScore (0-5):"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def add_judge_scores(preds: dict[str, list[dict[str, Any]]], judge: ChatBackend) -> None:
    """Add judge_reply and judge_score (0-5, None when the reply holds no score) to every prediction."""
    for side, rows in preds.items():
        replies = judge.chat([judge_conversation(row) for row in rows], label=f"evaluate judge ({side})")
        for row, reply in zip(rows, replies, strict=True):
            row["judge_reply"] = reply
            row["judge_score"] = parse_judge_score(reply)


def judge_distribution(preds: dict[str, list[dict[str, Any]]]) -> str:
    """CSV of how many answers got each score 0-5 per side, for `dvc plots` (all zero when no judge ran).

    Unparseable replies have no score to plot; metrics/evaluate.json counts them (judge_unparseable).
    """
    lines = ["score,base,adapter"]
    for score in range(6):
        counts = [sum(row.get("judge_score") == score for row in preds[side]) for side in SIDES]
        lines.append(f"{score},{counts[0]},{counts[1]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- report


def fmt(value: Any) -> str:
    """How every number appears in reports/decision.md (metrics are already rounded to 4 decimals)."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "n/a"}[value]
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def cell(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def render_report(
    metrics: dict[str, Any], cfg: EvaluateConfig, info: dict[str, str], preds: dict[str, list[dict[str, Any]]]
) -> str:
    rule, keep = cfg.decision, metrics["decision.keep"]
    lines = [
        "# Adapter decision",
        "",
        f"**Verdict: {'KEEP' if keep else 'DISCARD'} the adapter.**",
        "",
        f"- Task: {info['task']}",
        f"- Base model: {info['base_model']}",
        f"- Adapter: `{ADAPTER_DIR}`",
        f"- Eval questions: {fmt(metrics['eval_questions'])} from `{EVAL_DATA}`",
        f"- sha256: eval `{info['eval_sha256']}`, base `{info['base_sha256']}`, adapter `{info['adapter_sha256']}`",
        "",
        "| metric | base | adapter | delta |",
        "|---|---:|---:|---:|",
    ]
    for name in ANSWER_METRICS:
        if f"base.{name}" in metrics:
            values = [metrics.get(f"{side}.{name}") for side in (*SIDES, "delta")]
            lines.append(f"| {name} | {' | '.join(fmt(v) for v in values)} |")
    delta = metrics.get(f"delta.{rule.metric}")
    lines += [
        "",
        f"Rule, declared in params.yaml before the run: {rule_in_words(rule)}.",
        f"Here delta {rule.metric} = {fmt(delta)} and delta degenerate_rate = "
        f"{fmt(metrics['delta.degenerate_rate'])}, so the verdict is {'KEEP' if keep else 'DISCARD'}.",
        "",
    ]
    lines += ["## Examples", "", "| question | reference | base | adapter |", "|---|---|---|---|"]
    for base, adapter in list(zip(preds["base"], preds["adapter"], strict=True))[: cfg.examples_in_report]:
        row = [base["question"], base["reference"], base["answer"], adapter["answer"]]
        lines.append("| " + " | ".join(cell(text) for text in row) + " |")
    return "\n".join(lines) + "\n"


def report_info(params: dict[str, Any]) -> dict[str, str]:
    kind = (params.get("extract") or {}).get("kind", "articles")
    task = f"answer questions about the `{kind}` input like the held-out reference answers"
    if MODEL_METRICS.is_file():
        model = json.loads(MODEL_METRICS.read_text(encoding="utf-8"))
        base_model = f"{model.get('base', '?')} ({model.get('parameters', '?')} parameters)"
    else:
        config = json.loads((BASE_DIR / "config.json").read_text(encoding="utf-8"))
        base_model = f"{config.get('_name_or_path') or ', '.join(config.get('architectures', ['?']))}"
    return {
        "task": task,
        "base_model": base_model,
        "eval_sha256": sha256_file(EVAL_DATA),
        "base_sha256": sha256_tree(BASE_DIR),
        "adapter_sha256": sha256_tree(ADAPTER_DIR),
    }


def read_questions(path: Path, max_questions: int) -> pl.DataFrame:
    questions = read_table(path, "split", ["id", "question", "answer"])
    return questions.head(max_questions) if max_questions else questions


def main(params_path: Path) -> None:
    params = load_params(params_path)
    cfg, system_prompt = load_config(params), chat.system_prompt(params)
    scoring = Scoring(
        refusal_patterns(params),
        json_validator(cfg.json_schema) if cfg.json_schema else None,
        judge=cfg.judge.backend != "none",
    )
    questions = read_questions(EVAL_DATA, cfg.max_questions)
    model, tokenizer = chat.load_for_generation(BASE_DIR, ADAPTER_DIR)
    preds = answer_both_sides(model, tokenizer, questions, system_prompt, cfg)
    if scoring.judge:
        judge = make_backend(cfg.judge.backend, cfg.judge.backends, Path(cfg.judge.cache_dir), "evaluate.judge")
        add_judge_scores(preds, judge)
    sides = {side: side_metrics(preds[side], scoring) for side in SIDES}
    metrics = flat_metrics(sides, cfg.decision, questions.height)
    for side in SIDES:
        write_jsonl(preds[side], OUT_DIR / f"preds_{side}.jsonl")
    write_text(judge_distribution(preds), JUDGE_CSV)
    write_json(metrics, METRICS)
    write_text(render_report(metrics, cfg, report_info(params), preds), REPORT)
    verdict = "keep" if metrics["decision.keep"] else "discard"
    log.info(
        "evaluate: %d questions, delta %s %s -> %s (%s)",
        questions.height,
        cfg.decision.metric,
        fmt(metrics.get(f"delta.{cfg.decision.metric}")),
        verdict,
        REPORT,
    )
