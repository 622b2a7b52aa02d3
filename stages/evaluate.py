"""Stage `evaluate`: base model vs base + adapter on the held-out pairs -> metrics and a keep/discard verdict.

Both sides answer every eval question from the same loaded weights (the baseline runs inside
`model.disable_adapter()`), with the train system prompt, the chat template, greedy decoding and the same
`max_new_tokens`, in left-padded batches. Answers are scored by `stages/scoring.py` (and optionally by an
LLM judge through `stages/llm.py`); the rule in `evaluate.decision`, fixed before the run, decides.

Run: `loradag evaluate` (or `dvc repro evaluate`). Writes `data/evaluate/preds_{base,adapter}.jsonl`,
`data/evaluate/judge_scores.csv`, `metrics/evaluate.json` and `reports/decision.md`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from stages import scoring
from stages.common import (
    ConfigError,
    UserError,
    from_dict,
    load_params,
    log,
    read_table,
    refusal_phrases,
    refusal_regex,
    require,
    section_config,
    sha256_file,
    sha256_tree,
    write_json,
    write_jsonl,
    write_text,
)
from stages.llm import ChatBackend, OpenAIConfig, TransformersConfig, make_chat_backend
from stages.train import TrainConfig, pick_precision

BASE_DIR = Path("models/base")
ADAPTER_DIR = Path("models/adapter")
EVAL_DATA = Path("data/split/eval.parquet")
OUT_DIR = Path("data/evaluate")
JUDGE_CSV = OUT_DIR / "judge_scores.csv"
METRICS = Path("metrics/evaluate.json")
REPORT = Path("reports/decision.md")
MODEL_METRICS = Path("metrics/model.json")

SIDES = ("base", "adapter")
METRIC_NAMES = (
    "token_f1", "keyword_overlap", "numeric_match", "exact_match", "refusal_rate", "degenerate_rate",
    "format_compliance", "judge_mean", "judge_unparseable", "mean_answer_tokens", "mean_latency_s",
)  # fmt: skip
JUDGE_SYSTEM = (
    "You grade an answer against a reference answer to the same question. Scores: 0 = a refusal or no content; "
    "1 = wrong on the key fact; 3 = directionally right but incomplete or imprecise; 5 = correct and as terse as "
    "the reference. Use 2 or 4 for answers in between. Reply with the score only: one integer from 0 to 5."
)


@dataclass(frozen=True)
class DecisionConfig:
    metric: Literal[
        "token_f1", "keyword_overlap", "numeric_match", "exact_match", "judge_mean", "format_compliance"
    ] = "token_f1"
    min_delta: float = 0.02
    max_degenerate_increase: float = 0.0

    def __post_init__(self) -> None:
        require(-1 <= self.min_delta <= 5, "evaluate.decision.min_delta", f"must be in [-1, 5], got {self.min_delta}")
        require(
            0 <= self.max_degenerate_increase <= 1,
            "evaluate.decision.max_degenerate_increase",
            f"must be in [0, 1], got {self.max_degenerate_increase}",
        )


@dataclass(frozen=True)
class JudgeConfig:
    backend: Literal["none", "openai", "transformers"] = "none"
    cache_dir: str = ".cache/evaluate"
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    transformers: TransformersConfig = field(default_factory=TransformersConfig)

    def __post_init__(self) -> None:
        require(bool(self.cache_dir.strip()), "evaluate.judge.cache_dir", "must not be empty")
        self.openai.check("evaluate.judge.openai")
        self.transformers.check("evaluate.judge.transformers")


@dataclass(frozen=True)
class EvaluateConfig:
    max_new_tokens: int = 96
    batch_size: int = 16
    max_questions: int = 0
    examples_in_report: int = 5
    json_schema: dict[str, Any] | None = None
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 1, "evaluate.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.batch_size >= 1, "evaluate.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_questions >= 0, "evaluate.max_questions", f"must be >= 0, got {self.max_questions}")
        require(
            self.examples_in_report >= 0, "evaluate.examples_in_report", f"must be >= 0, got {self.examples_in_report}"
        )
        metric = self.decision.metric
        require(
            metric != "judge_mean" or self.judge.backend != "none",
            "evaluate.decision.metric",
            "judge_mean needs evaluate.judge.backend: openai or transformers",
        )


def load_config(params: dict[str, Any]) -> EvaluateConfig:
    """The evaluate section; `json_schema` (a free-form mapping) is checked as a JSON Schema here."""
    raw = dict(params.get("evaluate") or {})
    schema = raw.pop("json_schema", None)
    cfg = from_dict(EvaluateConfig, raw, "evaluate")
    if schema is not None:
        json_validator(schema)
    elif cfg.decision.metric == "format_compliance":
        raise ConfigError("evaluate.decision.metric format_compliance needs evaluate.json_schema")
    return dataclasses.replace(cfg, json_schema=schema)


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
    for name in METRIC_NAMES:
        if name in sides["base"] and name in sides["adapter"]:
            metrics[f"delta.{name}"] = round(sides["adapter"][name] - sides["base"][name], 4)
    metrics["decision.keep"] = decide(metrics, rule)
    return metrics


# ---------------------------------------------------------------- generation


def load_models(base_dir: Path, adapter_dir: Path) -> tuple[Any, Any]:
    """(base + adapter PEFT model in eval mode, left-padding tokenizer) on the best device."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for folder, stage in ((base_dir, "model"), (adapter_dir, "train")):
        if not folder.is_dir():
            raise UserError(f"{folder}: not found; run `dvc repro {stage}` first")
    cuda = torch.cuda.is_available()
    precision = pick_precision(cuda, cuda and torch.cuda.is_bf16_supported())
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, precision.dtype))
    model = PeftModel.from_pretrained(base.to("cuda" if cuda else "cpu"), adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def generate_answers(
    model: Any, tokenizer: Any, questions: pl.DataFrame, system_prompt: str, cfg: EvaluateConfig
) -> list[dict[str, Any]]:
    """Greedy answers to every question, `cfg.batch_size` at a time; latency_s is the batch time per question."""
    import torch
    from transformers import GenerationConfig

    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    generation = GenerationConfig(do_sample=False, max_new_tokens=cfg.max_new_tokens,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop))  # fmt: skip
    rows = questions.select("id", "question", "answer").to_dicts()
    preds = []
    for start in range(0, len(rows), cfg.batch_size):
        batch = rows[start : start + cfg.batch_size]
        chats = [[{"role": "system", "content": system_prompt}, {"role": "user", "content": row["question"]}]
                 for row in batch]  # fmt: skip
        texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        began = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=generation)
        latency = (time.perf_counter() - began) / len(batch)
        for row, new in zip(batch, output[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
            length = next((i for i, token in enumerate(new) if token in stop), len(new))
            answer = tokenizer.decode(new[:length], skip_special_tokens=True).strip()
            preds.append({"id": row["id"], "question": row["question"], "reference": row["answer"],
                          "answer": answer, "tokens": length, "latency_s": round(latency, 4)})  # fmt: skip
    return preds


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
            row["judge_score"] = scoring.parse_judge_score(reply)


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
        "# Adapter decision", "",
        f"**Verdict: {'KEEP' if keep else 'DISCARD'} the adapter.**", "",
        f"- Task: {info['task']}", f"- Base model: {info['base_model']}", f"- Adapter: `{ADAPTER_DIR}`",
        f"- Eval questions: {fmt(metrics['eval_questions'])} from `{EVAL_DATA}`",
        f"- sha256: eval `{info['eval_sha256']}`, base `{info['base_sha256']}`, adapter `{info['adapter_sha256']}`",
        "", "| metric | base | adapter | delta |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for name in METRIC_NAMES:
        if f"base.{name}" in metrics:
            values = [metrics.get(f"{side}.{name}") for side in (*SIDES, "delta")]
            lines.append(f"| {name} | {' | '.join(fmt(v) for v in values)} |")
    delta = metrics.get(f"delta.{rule.metric}")
    lines += [
        "", f"Rule, declared in params.yaml before the run: {rule_in_words(rule)}.",
        f"Here delta {rule.metric} = {fmt(delta)} and delta degenerate_rate = "
        f"{fmt(metrics['delta.degenerate_rate'])}, so the verdict is {'KEEP' if keep else 'DISCARD'}.", "",
    ]  # fmt: skip
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
    return {"task": task, "base_model": base_model, "eval_sha256": sha256_file(EVAL_DATA),
            "base_sha256": sha256_tree(BASE_DIR), "adapter_sha256": sha256_tree(ADAPTER_DIR)}  # fmt: skip


def read_questions(path: Path, max_questions: int) -> pl.DataFrame:
    questions = read_table(path, "split", ["id", "question", "answer"])
    return questions.head(max_questions) if max_questions else questions


def main(params_path: Path) -> None:
    params = load_params(params_path)
    cfg, refusals = load_config(params), refusal_patterns(params)
    system_prompt = section_config(TrainConfig, params, "train").system_prompt
    validator = json_validator(cfg.json_schema) if cfg.json_schema is not None else None
    questions = read_questions(EVAL_DATA, cfg.max_questions)
    model, tokenizer = load_models(BASE_DIR, ADAPTER_DIR)
    preds = answer_both_sides(model, tokenizer, questions, system_prompt, cfg)
    if cfg.judge.backend != "none":
        judge = make_chat_backend(cfg.judge.backend, cfg.judge.openai, cfg.judge.transformers,
                                  Path(cfg.judge.cache_dir), where="evaluate.judge")  # fmt: skip
        add_judge_scores(preds, judge)
    sides = {side: scoring.side_metrics(preds[side], refusals, validator) for side in SIDES}
    metrics = flat_metrics(sides, cfg.decision, questions.height)
    for side in SIDES:
        write_jsonl(preds[side], OUT_DIR / f"preds_{side}.jsonl")
    write_text(judge_distribution(preds), JUDGE_CSV)
    write_json(metrics, METRICS)
    write_text(render_report(metrics, cfg, report_info(params), preds), REPORT)
    verdict = "keep" if metrics["decision.keep"] else "discard"
    log.info("evaluate: %d questions, delta %s %s -> %s (%s)", questions.height, cfg.decision.metric,
             fmt(metrics.get(f"delta.{cfg.decision.metric}")), verdict, REPORT)  # fmt: skip
