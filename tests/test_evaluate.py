"""Stage evaluate: metric functions on hand-built answers, the decision rule, config checks, and main() end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from stages import evaluate
from stages.evaluate import DecisionConfig, decide
from stages.lib import chat
from stages.lib import metrics as scoring
from stages.lib.common import write_parquet
from stages.lib.pairs import refusal_regex
from stages.lib.params import ConfigError

GO_FUNCTION = """func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}"""


# ---------------------------------------------------------------- metric functions


def test_token_f1_is_squad_style() -> None:
    # normalised: "cat sat on mat" vs "cat sat": precision 2/4, recall 2/2
    assert scoring.token_f1("The cat sat on the mat.", "the cat sat") == pytest.approx(2 / 3)
    assert scoring.token_f1("A Cat, sat!", "cat sat") == 1.0
    assert scoring.token_f1("dog", "cat sat") == 0.0
    assert scoring.token_f1("", "") == 1.0 and scoring.token_f1("", "cat") == 0.0


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert scoring.exact_match("The  Paris.", "paris") == 1.0
    assert scoring.exact_match("Paris, France", "Paris") == 0.0


def test_keyword_overlap_counts_reference_content_words() -> None:
    # content words of the reference: adapter, saved, safetensors
    assert scoring.keyword_overlap("It is saved as safetensors", "The adapter is saved as safetensors") == 2 / 3
    assert scoring.keyword_overlap("anything", "it is what it is") is None


def test_numeric_match_needs_every_reference_number() -> None:
    assert scoring.numeric_match("It has 1,024 steps in 3 stages", "3 stages and 1024 steps") == 1.0
    assert scoring.numeric_match("It has 1024 steps", "3 stages and 1024 steps") == 0.0
    assert scoring.numeric_match("It has 2.5 GB", "2.5 GB") == 1.0 and scoring.numeric_match("2 GB", "2.5 GB") == 0.0
    assert scoring.numeric_match("42", "no numbers here") is None


def test_refusal_matches_phrases_like_validate() -> None:
    patterns = [re.compile(refusal_regex(p)) for p in ["I don't know", "as an AI"]]
    assert scoring.is_refusal("Sorry, I don’t  KNOW that.", patterns)
    assert scoring.is_refusal("As an AI model, I cannot say", patterns)
    assert not scoring.is_refusal("I know: it is 42.", patterns)


@pytest.mark.parametrize(
    ("answer", "degenerate"),
    [
        ("the the the the the the the the", True),
        ("", True),
        ("   \n\t ", True),
        ("The adapter goes to models/adapter. " * 6 + "The adapter", True),
        ("!!!!!!!!!!!!!!!!!!!!", True),
        ("The train stage writes the adapter to models/adapter and the metrics to metrics/train.json.", False),
        ("The the cat sat on the mat with the hat.", False),
        ("Paris", False),
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", False),
        (GO_FUNCTION, False),  # repeated `if err != nil` blocks, but not back to back
    ],
)
def test_degenerate_answers_are_empty_or_looping(answer: str, degenerate: bool) -> None:
    assert scoring.is_degenerate(answer) is degenerate


def test_json_compliance_against_a_schema() -> None:
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    validator = evaluate.json_validator(schema)
    assert scoring.json_compliant('{"name": "loradag"}', validator)
    assert scoring.json_compliant('```json\n{"name": "loradag"}\n```', validator)
    assert not scoring.json_compliant('{"name": 3}', validator)
    assert not scoring.json_compliant("name: loradag", validator)
    assert not scoring.json_compliant('Sure! {"name": "loradag"}', validator)


@pytest.mark.parametrize(
    ("reply", "score"),
    [("4", 4), ("Score: 3/5", 3), (" 0 ", 0), ("I'd give it a 7", None), ("4.5", None), ("", None), (None, None)],
)
def test_judge_score_parsing(reply: str | None, score: int | None) -> None:
    assert scoring.parse_judge_score(reply) == score


def test_side_metrics_on_hand_built_predictions() -> None:
    preds = [
        {"answer": "Stage 1 has 5 steps.", "reference": "Stage 1 has 5 steps.", "tokens": 6, "latency_s": 0.5},
        {"answer": "I don't know.", "reference": "It is blue.", "tokens": 4, "latency_s": 0.25},
        {"answer": "", "reference": "Red", "tokens": 0, "latency_s": 0.75},
        {"answer": "red red red red red", "reference": "Red", "tokens": 5, "latency_s": 0.5},
    ]
    metrics = scoring.side_metrics(preds, scoring.Scoring([re.compile(refusal_regex("I don't know"))]))
    assert metrics == {
        "refusal_rate": 0.25,
        "exact_match": 0.25,
        "token_f1": round((1 + 0 + 0 + 2 * 0.2 * 1 / 1.2) / 4, 4),
        "keyword_overlap": 0.5,
        "numeric_match": 1.0,
        "mean_answer_tokens": 3.75,
        "mean_latency_s": 0.5,
        "degenerate_rate": 0.5,
    }


# ---------------------------------------------------------------- decision and config


@pytest.mark.parametrize(
    ("delta_f1", "delta_degenerate", "keep"),
    [(0.05, 0.0, True), (0.02, 0.0, True), (0.0199, 0.0, False), (0.05, 0.1, False), (-0.2, -0.1, False)],
)
def test_decision_rule_both_ways(delta_f1: float, delta_degenerate: float, keep: bool) -> None:
    metrics = {"delta.token_f1": delta_f1, "delta.degenerate_rate": delta_degenerate}
    assert decide(metrics, DecisionConfig(metric="token_f1", min_delta=0.02, max_degenerate_increase=0.0)) is keep


def test_decision_without_the_metric_discards() -> None:
    # no reference held a number, so numeric_match was not measured: nothing shows an improvement
    assert decide({"delta.degenerate_rate": 0.0}, DecisionConfig(metric="numeric_match")) is False


def test_flat_metrics_take_deltas_from_rounded_values() -> None:
    sides = {"base": {"token_f1": 0.28, "degenerate_rate": 0.0}, "adapter": {"token_f1": 0.3, "degenerate_rate": 0.0}}
    metrics = evaluate.flat_metrics(sides, DecisionConfig(min_delta=0.02), questions=10)
    assert metrics["delta.token_f1"] == 0.02 and metrics["decision.keep"] is True  # not 0.0199999 -> discard
    assert metrics["eval_questions"] == 10 and metrics["base.token_f1"] == 0.28


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"evaluate": {"decision": {"metric": "judge_mean"}}}, "judge_mean needs evaluate.judge.backend"),
        ({"evaluate": {"decision": {"metric": "format_compliance"}}}, "format_compliance needs evaluate.json_schema"),
        ({"evaluate": {"json_schema": {"type": "objekt"}}}, "evaluate.json_schema is not a valid JSON Schema"),
        ({"evaluate": {"json_schema": "object"}}, "evaluate.json_schema must be a mapping"),
        ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size must be >= 1"),
        ({"evaluate": {"judge": {"backend": "claude"}}}, "evaluate.judge.backend must be one of"),
    ],
)
def test_bad_params_name_the_key(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate.load_config(params)


def test_refusal_phrases_must_be_a_list() -> None:
    with pytest.raises(ConfigError, match="refusal_phrases must be a non-empty list"):
        evaluate.refusal_patterns({})


# ---------------------------------------------------------------- main, end to end on the tiny model


class FakeJudge:
    """Scores the base side 0..4 (one unparseable) and the adapter side 5."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def chat(self, conversations: list[list[dict[str, str]]], label: str) -> list[str | None]:
        self.labels.append(label)
        assert all("Reference answer:" in c[-1]["content"] for c in conversations)
        if "base" in label:
            return ["Score: 0", "1", "no idea", "3/5", "4"][: len(conversations)]
        return ["5"] * len(conversations)


@pytest.fixture
def eval_project(tiny_model_dir: Path, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with models/base (tiny), models/adapter (random LoRA), 5 eval pairs and params."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, "models/base")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0: changes outputs
    get_peft_model(AutoModelForCausalLM.from_pretrained("models/base"), lora).save_pretrained("models/adapter")
    write_parquet(make_pairs(5, start=20), "data/split/eval.parquet")
    params = {
        "refusal_phrases": ["I don't know", "as an AI"],
        "train": {"system_prompt": "Answer tersely."},
        "evaluate": {
            "max_new_tokens": 6,
            "batch_size": 2,
            "examples_in_report": 3,
            "judge": {"backend": "openai"},
            "decision": {"metric": "judge_mean", "min_delta": 0.5},
        },
    }
    Path("params.yaml").write_text(json.dumps(params))  # JSON is YAML
    return tmp_path


def test_main_answers_in_batches_and_reports_the_metrics(eval_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import GenerationMixin

    batches: list[int] = []
    generate = GenerationMixin.generate

    def counting_generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(kwargs["input_ids"].shape[0])
        assert kwargs["generation_config"].do_sample is False and kwargs["generation_config"].max_new_tokens == 6
        return generate(self, *args, **kwargs)

    judge = FakeJudge()
    monkeypatch.setattr(GenerationMixin, "generate", counting_generate)
    monkeypatch.setattr(evaluate, "make_backend", lambda *args, **kwargs: judge)
    evaluate.main(Path("params.yaml"))

    assert batches == [2, 2, 1, 2, 2, 1]  # ceil(5 / 2) = 3 batched calls per side
    assert judge.labels == ["evaluate judge (base)", "evaluate judge (adapter)"]
    preds = {
        side: [json.loads(line) for line in Path(f"data/evaluate/preds_{side}.jsonl").read_text().splitlines()]
        for side in ("base", "adapter")
    }
    for rows in preds.values():
        assert [row["id"] for row in rows] == [f"p{i:03d}" for i in range(20, 25)]
        assert {"id", "question", "reference", "answer", "tokens", "latency_s"} <= set(rows[0])
        assert all(0 <= row["tokens"] <= 6 and row["latency_s"] >= 0 for row in rows)

    metrics = json.loads(Path("metrics/evaluate.json").read_text())
    assert metrics["eval_questions"] == 5
    for name in (
        "refusal_rate",
        "exact_match",
        "token_f1",
        "keyword_overlap",
        "numeric_match",
        "mean_answer_tokens",
        "mean_latency_s",
        "degenerate_rate",
        "judge_mean",
    ):
        assert {f"base.{name}", f"adapter.{name}", f"delta.{name}"} <= set(metrics), name
    assert metrics["base.judge_mean"] == 2.0 and metrics["base.judge_unparseable"] == 1.0  # (0+1+3+4)/4
    assert metrics["adapter.judge_mean"] == 5.0 and metrics["delta.judge_mean"] == 3.0
    assert metrics["decision.keep"] is (metrics["delta.degenerate_rate"] <= 0.0)
    assert "format_compliance" not in " ".join(metrics)  # no json_schema set

    csv = Path("data/evaluate/judge_scores.csv").read_text().splitlines()
    assert csv == ["score,base,adapter", "0,1,0", "1,1,0", "2,0,0", "3,1,0", "4,1,0", "5,0,5"]  # + 1 unparseable

    report = Path("reports/decision.md").read_text()
    for name in scoring.ANSWER_METRICS:
        if f"base.{name}" in metrics:
            values = [evaluate.fmt(metrics[f"{side}.{name}"]) for side in ("base", "adapter", "delta")]
            assert f"| {name} | {' | '.join(values)} |" in report, name
    assert ("KEEP" if metrics["decision.keep"] else "DISCARD") + " the adapter" in report
    assert json.loads(Path("models/adapter/adapter_config.json").read_text())["r"] == 4
    assert report.count("| What colour is the stage number") == 3  # examples_in_report
    assert "keep the adapter if adapter judge_mean - base judge_mean >= 0.5" in report


def test_baseline_answers_are_the_plain_base_model(eval_project: Path) -> None:
    import polars as pl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = evaluate.load_config({"evaluate": {"max_new_tokens": 6, "batch_size": 2}})
    questions = pl.read_parquet("data/split/eval.parquet")
    model, tokenizer = chat.load_for_generation(Path("models/base"), Path("models/adapter"))
    both = evaluate.answer_both_sides(model, tokenizer, questions, "Answer tersely.", cfg)
    plain = AutoModelForCausalLM.from_pretrained("models/base").eval()
    left = AutoTokenizer.from_pretrained("models/base", padding_side="left")
    expected = evaluate.generate_answers(plain, left, questions, "Answer tersely.", cfg)
    assert [p["answer"] for p in both["base"]] == [p["answer"] for p in expected]
    assert all(p["answer"] for p in expected)  # real text, not an empty string on both sides
    assert [p["answer"] for p in both["adapter"]] != [p["answer"] for p in expected]  # the adapter is on


def test_max_questions_caps_the_eval_set(eval_project: Path) -> None:
    assert evaluate.read_questions(Path("data/split/eval.parquet"), 3).height == 3
    assert evaluate.read_questions(Path("data/split/eval.parquet"), 0).height == 5


def test_judge_distribution_is_all_zero_without_a_judge() -> None:
    preds = {side: [{"answer": "x"}, {"answer": "y"}] for side in ("base", "adapter")}
    rows = evaluate.judge_distribution(preds).splitlines()
    assert rows == ["score,base,adapter", *(f"{score},0,0" for score in range(6))]
