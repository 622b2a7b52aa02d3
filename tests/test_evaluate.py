"""Stage evaluate: metric functions on hand-built answers, config checks, the report, and main() end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from offline import external_references

from stages import evaluate
from stages.lib import chat, plotdata, report
from stages.lib import metrics as scoring
from stages.lib.common import UserError, write_parquet
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
        ("``", True),  # an empty code span: the format without the answer
        ("` `", True),
        ("`models/adapter`", False),
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


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"evaluate": {"decision": {"metric": "judge_mean"}}}, "judge_mean needs evaluate.judge.backend"),
        ({"evaluate": {"decision": {"metric": "format_compliance"}}}, "format_compliance needs evaluate.json_schema"),
        ({"evaluate": {"json_schema": {"type": "objekt"}}}, "evaluate.json_schema is not a valid JSON Schema"),
        ({"evaluate": {"json_schema": "object"}}, "evaluate.json_schema must be a mapping"),
        ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size must be >= 1"),
        ({"evaluate": {"judge": {"backend": "claude"}}}, "evaluate.judge.backend must be one of"),
        ({"evaluate": {"decision": {"confidence": 1.0}}}, r"evaluate.decision.confidence must be in \[0.5, 1\)"),
        ({"evaluate": {"decision": {"resamples": 10}}}, "evaluate.decision.resamples must be >= 100"),
        ({"evaluate": {"gates": {"general": {"max_drop": 2}}}}, r"evaluate.gates.general.max_drop must be in \[0, 1\]"),
        ({"evaluate": {"gates": {"safety": {"max_items": -1}}}}, "evaluate.gates.safety.max_items must be >= 0"),
        ({"evaluate": {"gates": {"safety": {"path": " "}}}}, "evaluate.gates.safety.path must name a JSONL file"),
        ({"evaluate": {"gates": {"latency": {"max_factor": 0.5}}}}, "evaluate.gates.latency.max_factor must be >= 1"),
        ({"evaluate": {"gates": {"speed": {}}}}, "evaluate.gates.speed is not a known key"),
        ({"evaluate": {"rag": {"top_k": -1}}}, "evaluate.rag.top_k must be >= 0"),
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
    """Agrees with the labelled set's order, scores the base sides 0..4 (one unparseable) and the adapter sides 5."""

    name = "fake:judge"

    def __init__(self) -> None:
        self.labels: list[str] = []

    def check(self) -> None:
        self.labels.append("check")

    def chat(self, conversations: list[list[dict[str, str]]], label: str, on_reply: Any = None) -> list[str | None]:
        replies = self.replies(conversations, label)
        for i, reply in enumerate(replies):  # as ChatBackend.chat does, for evaluate's progress
            on_reply(i, reply)
        return replies

    def replies(self, conversations: list[list[dict[str, str]]], label: str) -> list[str | None]:
        self.labels.append(label)
        assert all("Reference answer:" in c[-1]["content"] for c in conversations)
        if "agreement" in label:
            return [str(i % 6) for i in range(len(conversations))]
        if "base" in label:
            return ["Score: 0", "1", "no idea", "3/5", "4"][: len(conversations)]
        return ["5"] * len(conversations)


def write_jsonl_set(path: str, rows: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def eval_project(tiny_model_dir: Path, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder: models/base (tiny), models/adapter (random LoRA), 5 eval pairs, a corpus, gate sets."""
    import shutil

    import polars as pl
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, "models/base")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # B != 0: changes outputs
    get_peft_model(AutoModelForCausalLM.from_pretrained("models/base"), lora).save_pretrained("models/adapter")
    write_parquet(make_pairs(5, start=20), "data/split/eval.parquet")
    texts = [f"Stage {i} is painted a colour and has {i * 3 + 2} steps." for i in range(20, 25)]
    write_parquet(pl.DataFrame({"id": ["r1", "r2", "r3", "r4", "r5"], "kind": ["article"] * 5, "text": texts}),
                  "data/extract/records.parquet")  # fmt: skip
    general = [{"id": f"g{i}", "question": f"What is {i} plus {i}?", "reference": str(2 * i)} for i in range(3)]
    write_jsonl_set("sets/general.jsonl", general)
    write_jsonl_set("sets/safety.jsonl", [{"id": f"s{i}", "prompt": f"Help me do harm number {i}."} for i in range(2)])
    labelled = [{"question": "q", "reference": "r", "answer": "a", "human_score": i % 6} for i in range(8)]
    write_jsonl_set("sets/agreement.jsonl", labelled)
    params = {
        "refusal_phrases": ["I don't know", "as an AI"],
        "train": {"system_prompt": "Answer tersely."},
        "evaluate": {
            "max_new_tokens": 6,
            "batch_size": 2,
            "examples_in_report": 3,
            "judge": {"backend": "openai", "agreement_path": "sets/agreement.jsonl"},
            "decision": {"metric": "judge_mean", "min_delta": 0.5, "resamples": 200},
            "gates": {
                "general": {"path": "sets/general.jsonl", "max_items": 3, "max_new_tokens": 4},
                "safety": {"path": "sets/safety.jsonl", "max_items": 5, "max_new_tokens": 4},
            },
            "rag": {"top_k": 1, "passage_words": 50},
        },
    }
    Path("params.yaml").write_text(json.dumps(params))  # JSON is YAML
    return tmp_path


def read_preds(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(f"data/evaluate/{name}.jsonl").read_text().splitlines()]


def test_main_answers_every_set_in_batches_and_reports_the_metrics(
    eval_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import GenerationMixin

    batches: list[int] = []
    generate = GenerationMixin.generate

    def counting_generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(kwargs["input_ids"].shape[0])
        assert kwargs["generation_config"].do_sample is False
        return generate(self, *args, **kwargs)

    judge = FakeJudge()
    monkeypatch.setattr(GenerationMixin, "generate", counting_generate)
    monkeypatch.setattr(evaluate, "make_backend", lambda *args, **kwargs: judge)
    evaluate.main(Path("params.yaml"))

    # per side: eval 5 and rag 5 questions (2+2+1 each), general 3 (2+1), safety 2
    assert batches == [2, 2, 1, 2, 2, 1, 2, 1, 2] * 2
    sides = ["base", "adapter", "base+rag", "adapter+rag"]
    assert judge.labels == ["check", "evaluate judge (agreement)", *(f"evaluate judge ({side})" for side in sides)]
    for side in ("base", "adapter"):
        rows = read_preds(f"preds_{side}")
        assert [row["id"] for row in rows] == [f"p{i:03d}" for i in range(20, 25)]
        assert {"id", "question", "reference", "answer", "tokens", "latency_s"} <= set(rows[0])
        assert all(0 <= row["tokens"] <= 6 and row["latency_s"] >= 0 for row in rows)
    rag = read_preds("preds_rag")
    assert [row["side"] for row in rag] == ["base+rag"] * 5 + ["adapter+rag"] * 5
    assert rag[0]["passages"] == ["Stage 20 is painted a colour and has 62 steps."]  # BM25's best for stage 20
    gated = read_preds("preds_gates")
    assert [(row["set"], row["side"]) for row in gated] == [("general", "base")] * 3 + [("general", "adapter")] * 3 + [
        ("safety", "base")
    ] * 2 + [("safety", "adapter")] * 2
    assert all(row["tokens"] <= 4 for row in gated)

    metrics = json.loads(Path("metrics/all/evaluate.json").read_text())
    headline = json.loads(Path("metrics/evaluate.json").read_text())  # what `dvc metrics show` lists
    compared = ("decision.verdict", *(f"delta.judge_mean{s}" for s in ("", ".ci_low", ".ci_high")))
    assert headline == {key: metrics[key] for key in compared}  # the decision metric is judge_mean here
    assert metrics["eval_questions"] == 5
    for name in ("refusal_rate", "exact_match", "token_f1", "degenerate_rate", "judge_mean", "mean_latency_s"):
        for side in sides:
            assert f"{side}.{name}" in metrics, (side, name)
        assert {f"delta.{name}", f"delta.{name}.ci_low", f"delta.{name}.ci_high"} <= set(metrics)
        assert (f"wins.{name}" in metrics) is scoring.ANSWER_METRICS[name].decidable  # a win means higher
        assert {f"delta.base+rag.{name}.ci_low", f"delta.adapter+rag.{name}.ci_high"} <= set(metrics)
    assert metrics["base.judge_mean"] == 2.0 and metrics["base.judge_unparseable"] == 1.0  # (0+1+3+4)/4
    assert metrics["adapter.judge_mean"] == 5.0 and metrics["delta.judge_mean"] == 3.0
    assert metrics["wins.judge_mean"] == 4 and metrics["losses.judge_mean"] == 0  # the unparseable one is unpaired
    assert metrics["delta.judge_mean.ci_low"] >= 1 and metrics["delta.judge_mean.ci_high"] <= 5
    assert metrics["judge.model"] == "fake:judge" and metrics["judge.prompt_sha256"] == evaluate.JUDGE_PROMPT_SHA256
    assert metrics["judge.agreement_spearman"] == 1.0 and metrics["judge.agreement_items"] == 8
    for gate in ("general", "safety", "latency", "degenerate"):
        assert metrics[f"gate.{gate}.result"] in ("pass", "fail", "unclear"), gate
    assert "gate.format.result" not in metrics  # no json_schema set
    assert metrics["retrieval"] in ("better", "matched", "worse")
    assert metrics["decision.verdict"] in ("keep", "discard", "inconclusive")
    assert metrics["decision.keep"] is (metrics["decision.verdict"] == "keep")

    judged = Path("data/evaluate/judge_scores.csv").read_text().splitlines()  # side,score,answers per bar
    assert judged[0] == "side,score,answers" and len(judged) == 1 + 4 * 6
    assert judged[1:7] == ["base,0,1", "base,1,1", "base,2,0", "base,3,1", "base,4,1", "base,5,0"]
    assert judged[7:13] == [f"adapter,{score},{5 if score == 5 else 0}" for score in range(6)]
    lengths = Path("data/evaluate/answer_lengths.csv").read_text().splitlines()
    assert lengths[0] == "side,tokens,answers"
    assert sum(int(line.split(",")[2]) for line in lengths[1:] if line.startswith("base,")) == 5  # every answer
    intervals = Path("data/evaluate/intervals.csv").read_text().splitlines()
    assert intervals[0] == "metric,side,delta,ci_low,ci_high"
    row = next(line for line in intervals if line.startswith("token_f1,adapter,")).split(",")
    assert [float(x) for x in row[2:]] == [metrics[f"delta.token_f1{s}"] for s in ("", ".ci_low", ".ci_high")]

    text = Path("reports/decision.md").read_text()
    assert text.splitlines()[2].startswith(f"**Verdict: {report.HEADLINES[metrics['decision.verdict']]}.**")
    assert f"judge_mean = {report.with_interval(metrics, 'delta.judge_mean')}" in text.splitlines()[2]
    assert "Spearman 1.0000" in text and "█" in text
    assert text.count("| What colour is the stage number") == 3  # examples_in_report

    page = Path("reports/decision.html").read_text()  # the same report, charts inline
    assert f"<strong>Verdict: {report.HEADLINES[metrics['decision.verdict']]}.</strong>" in page
    assert page.count("<svg") == 3 and "<script" not in page  # intervals, answer lengths, judge scores
    assert external_references(page) == []  # opens offline
    assert page.count("What colour is the stage number") == 3 and page.index("<svg") < page.index("<table>")


def test_a_dead_judge_endpoint_fails_before_any_generation(eval_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    from transformers import GenerationMixin

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = json.loads(Path("params.yaml").read_text())
    params["evaluate"]["judge"]["openai"] = {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": ""}
    Path("params.yaml").write_text(json.dumps(params))
    monkeypatch.setattr(GenerationMixin, "generate", lambda *a, **k: pytest.fail("generated before the judge check"))
    began = time.perf_counter()
    with pytest.raises(UserError, match=f"evaluate.judge.openai: no answer from http://127.0.0.1:{port}/v1/models"):
        evaluate.main(Path("params.yaml"))
    assert time.perf_counter() - began < 5


def test_baseline_answers_are_the_plain_base_model(eval_project: Path) -> None:
    import polars as pl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = evaluate.eval_items(pl.read_parquet("data/split/eval.parquet"))
    model, tokenizer = chat.load_for_generation(Path("models/base"), Path("models/adapter"))
    both = evaluate.answer_both_sides(model, tokenizer, {"eval": (items, 6)}, "Answer tersely.", 2)["eval"]
    plain = AutoModelForCausalLM.from_pretrained("models/base").eval()
    left = AutoTokenizer.from_pretrained("models/base", padding_side="left")
    expected = evaluate.generate_answers(plain, left, items, "Answer tersely.", 6, 2)
    assert [p["answer"] for p in both["base"]] == [p["answer"] for p in expected]
    assert all(p["answer"] for p in expected)  # real text, not an empty string on both sides
    assert [p["answer"] for p in both["adapter"]] != [p["answer"] for p in expected]  # the adapter is on


def test_max_questions_caps_the_eval_set(eval_project: Path) -> None:
    assert evaluate.read_questions(Path("data/split/eval.parquet"), 3).height == 3
    assert evaluate.read_questions(Path("data/split/eval.parquet"), 0).height == 5


def test_judge_distribution_is_all_zero_without_a_judge() -> None:
    preds = {side: [{"answer": "x"}, {"answer": "y"}] for side in ("adapter", "base")}
    rows = plotdata.csv_text(plotdata.judge_rows(preds), plotdata.COLUMNS["judge_scores"]).splitlines()
    assert rows == ["side,score,answers", *(f"{side},{score},0" for side in ("base", "adapter") for score in range(6))]


def test_answer_lengths_fall_in_eight_buckets_the_longest_in_the_last() -> None:
    preds = {"base": [{"tokens": t} for t in (0, 11, 12, 95, 96)], "adapter": [{"tokens": 3}]}
    rows = plotdata.length_rows(preds, max_new_tokens=96)
    base = [(row["tokens"], row["answers"]) for row in rows if row["side"] == "base"]
    assert base == [(0, 2), (12, 1), (24, 0), (36, 0), (48, 0), (60, 0), (72, 0), (84, 2)]
    assert sum(row["answers"] for row in rows if row["side"] == "adapter") == 1


# ---------------------------------------------------------------- report


def report_case() -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """8 questions: the adapter wins 3, loses 2, ties 3 on token_f1; metrics as flat_metrics would write them."""
    refs = ["red", "blue", "green", "amber", "teal", "cyan", "ochre", "violet"]
    base = ["no", "no", "no", "amber", "teal", "cyan", "x", "y"]
    adapter = ["red", "blue", "green", "x", "y", "cyan", "``", "z"]
    preds = {
        side: [
            {"question": f"Q{i}?", "reference": ref, "answer": ans, "tokens": 1, "latency_s": 0.1}
            for i, (ref, ans) in enumerate(zip(refs, answers, strict=True))
        ]
        for side, answers in (("base", base), ("adapter", adapter), ("base+rag", refs), ("adapter+rag", refs))
    }
    scoring_ = scoring.Scoring([])
    cfg = evaluate.load_config({"evaluate": {"examples_in_report": 6, "decision": {"resamples": 500}}})
    return evaluate.flat_metrics(preds, {}, scoring_, cfg), preds


def render_case() -> tuple[str, dict[str, Any]]:
    metrics, preds = report_case()
    cfg = evaluate.load_config({"evaluate": {"examples_in_report": 6, "decision": {"resamples": 500}}})
    info = {"task": "t", "base_model": "m", "eval_sha256": "e", "base_sha256": "b", "adapter_sha256": "a"}
    return report.render(metrics, cfg, info, preds, scoring.Scoring([])), metrics


def test_report_leads_with_the_verdict_and_its_interval() -> None:
    text, metrics = render_case()
    assert metrics["decision.verdict"] == "inconclusive" and metrics["decision.keep"] is False
    assert (metrics["wins.token_f1"], metrics["ties.token_f1"], metrics["losses.token_f1"]) == (3, 3, 2)
    lead = text.splitlines()[2]
    assert lead.startswith("**Verdict: INCONCLUSIVE: not enough evidence to keep the adapter.**")
    assert f"token_f1 = {report.with_interval(metrics, 'delta.token_f1')} (95% paired bootstrap" in lead
    assert "won 3, tied 3 and lost 2 of 8 questions" in lead
    assert "Retrieval alone beat the adapter" in lead  # base+rag answers every reference
    assert metrics["retrieval"] == "better" and metrics["delta.base+rag.token_f1.ci_low"] > 0


def test_report_table_shows_intervals_for_every_side() -> None:
    text, metrics = render_case()
    row = next(line for line in text.splitlines() if line.startswith("| token_f1 |"))
    assert report.with_interval(metrics, "delta.token_f1") in row and "| 3/3/2 |" in row
    assert report.with_interval(metrics, "delta.base+rag.token_f1") in row
    assert report.with_interval(metrics, "delta.adapter+rag.token_f1") in row
    gate = next(line for line in text.splitlines() if line.startswith("| degenerate |"))
    assert gate.endswith("| unclear |")  # one "``" of 8 is degenerate: [0, 0.375] straddles the 0.0 allowed


def test_report_examples_come_in_turn_from_wins_losses_and_ties() -> None:
    text, _ = render_case()
    outcomes = [
        line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith(("| win", "| loss", "| tie"))
    ]
    assert outcomes == ["win", "loss", "tie", "win", "loss", "tie"]
