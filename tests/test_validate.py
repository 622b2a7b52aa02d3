"""Tests for stages/validate.py: the pair contract run through a real (ephemeral, offline) GX context."""

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from offline import external_references

from stages import validate
from stages.lib.common import UserError, sha256_tree
from stages.lib.pairs import PAIR_COLUMNS
from stages.lib.params import ConfigError
from stages.validate import EXPECTATIONS, Contract, ValidateConfig, ungrounded_terms

REFUSALS = ["not directly provided", "as an ai", "i cannot", "i'm sorry", "not mentioned in"]

RAFT = (
    "Raft is a consensus algorithm designed by Diego Ongaro and John Ousterhout in 2014. A cluster usually runs "
    "5 servers. Set the `election_timeout` option to tune leader elections."
)
PAXOS = "Paxos was described by Leslie Lamport in 1998. Its `prepare` phase collects promises from a majority."
PUSH = "func Push(s *Stack, x int) {\n\ts.items = append(s.items, x)\n}"
POP = "func Pop(s *Stack) int {\n\tx := s.items[len(s.items)-1]\n\ts.items = s.items[:len(s.items)-1]\n\treturn x\n}"


def pair(id: str, kind: str, question: str, answer: str, context: str, source: str, **extra: Any) -> dict[str, Any]:
    row = {
        "id": id,
        "kind": kind,
        "question": question,
        "answer": answer,
        "context": context,
        "history": "",
        "source": source,
        "source_sha256": "0" * 64,
        "chunk_id": f"{source}#0",
        "symbol": None,
        "generator": "test",
    }
    return row | extra


GOOD = [
    pair("a1", "article", "Who designed the Raft consensus algorithm?",
         "Diego Ongaro and John Ousterhout designed Raft in 2014.", RAFT, "raft.md"),
    pair("a2", "article", "How many servers does a Raft cluster usually run?",
         "A typical cluster runs 5 servers; tune elections with `election_timeout`.", RAFT, "raft.md"),
    pair("a3", "article", "Who described the Paxos protocol?", "It was described by Leslie Lamport in 1998.",
         PAXOS, "paxos.md"),
    pair("a4", "article", "What does the prepare phase collect?",
         "The `prepare` phase collects promises from a majority.", PAXOS, "paxos.md"),
    pair("c1", "code", "What does Push do to the stack?", PUSH, PUSH, "stack.go", symbol="Push"),
    pair("c2", "code", "Which element does Pop remove and return?", POP, POP, "stack.go", symbol="Pop"),
    pair("b1", "pair", "What is the capital of France?", "Paris.", "", "faq.jsonl"),
    pair("b2", "pair", "Translate to German: good morning", "Guten Morgen.", "good morning", "faq.jsonl"),
]  # fmt: skip
PLANTED = pair("bad", "pair", "Which planted row is this one?", "The planted one.", "", "faq.jsonl")


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={c: pl.String for c in PAIR_COLUMNS})


@pytest.fixture(scope="module")
def context() -> Any:
    return validate.gx_context()  # one ephemeral context for the module: the GX import is the slow part


def run(context: Any, rows: list[dict[str, Any]], **cfg: Any) -> validate.Outcome:
    return validate.validate_pairs(frame(rows), Contract(ValidateConfig(**cfg), REFUSALS), context)


def reasons(outcome: validate.Outcome) -> dict[str, list[str]]:
    return {row["chunk_id"]: row["failed"] for row in outcome.rejected}


def test_good_pairs_all_pass_and_every_expectation_is_counted(context: Any) -> None:
    outcome = run(context, GOOD)
    assert outcome.rejected == []
    assert outcome.valid.equals(frame(GOOD))
    assert outcome.below_min == {}
    metrics = outcome.metrics()
    assert {k: v for k, v in metrics.items() if k.startswith("failed.")} == {f"failed.{n}": 0 for n in EXPECTATIONS}
    assert (metrics["rows"], metrics["valid"], metrics["rejected"], metrics["pass_rate"]) == (8, 8, 0, 1.0)


@pytest.mark.parametrize(
    ("expectation", "changes"),
    [
        ("required_id", {"id": "  "}),
        ("required_question", {"question": ""}),
        ("required_answer", {"answer": None}),
        ("required_source", {"source": ""}),
        ("question_words", {"question": "Why?"}),
        ("answer_words", {"answer": "word " * 301}),
        ("no_refusal", {"answer": "As an AI, I Cannot know that."}),
        ("no_refusal", {"answer": "I’m  sorry, that is not mentioned in the text."}),
        ("grounded", {"kind": "article", "context": RAFT, "answer": "A cluster usually runs 7 servers."}),
        ("grounded", {"kind": "code", "context": PUSH, "answer": PUSH, "symbol": "Peek"}),
        ("grounded", {"kind": "code", "context": PUSH, "answer": PUSH, "symbol": None}),
        ("history", {"history": "[{'role': 'user'}]"}),  # not JSON
        ("history", {"history": json.dumps([{"role": "user", "content": "Hi"}])}),  # ends before its answer
        (
            "history",
            {"history": json.dumps([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "?"}])},
        ),
        ("history", {"history": json.dumps([{"role": "user", "content": " "}, {"role": "assistant", "content": "A"}])}),
    ],
)
def test_a_planted_bad_row_is_rejected_by_exactly_its_expectation(
    context: Any, expectation: str, changes: dict[str, Any]
) -> None:
    bad = PLANTED | {"chunk_id": "bad"} | changes
    outcome = run(context, [*GOOD[:4], bad, *GOOD[4:]])
    assert reasons(outcome) == {"bad": [expectation]}
    assert outcome.valid.equals(frame(GOOD))  # the good rows pass, in their input order
    assert outcome.failed[expectation] == 1
    assert outcome.rejected[0] == bad | {"failed": [expectation]}  # the row as it came in, plus why


def test_a_well_formed_history_passes_and_makes_a_repeated_question_another_question(context: Any) -> None:
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which port does serve use?"},
             {"role": "assistant", "content": "8000."}]  # fmt: skip
    other = [{"role": "user", "content": "Which port does the remote use?"}, {"role": "assistant", "content": "22."}]
    first = PLANTED | {"id": "h1", "question": "And can I change it?", "history": json.dumps(turns)}
    second = PLANTED | {"id": "h2", "question": "and can I change it", "history": json.dumps(other)}
    again = PLANTED | {"id": "h3", "question": "And can I change it?", "history": json.dumps(turns), "chunk_id": "x"}
    outcome = run(context, [first, second, again])
    assert reasons(outcome) == {"x": ["unique_question"]}  # the same question after the same turns only
    assert outcome.valid["id"].to_list() == ["h1", "h2"]


def test_a_repeated_id_rejects_every_row_that_holds_it(context: Any) -> None:
    clash = PLANTED | {"id": "a1", "chunk_id": "bad"}
    outcome = run(context, [*GOOD, clash])
    assert reasons(outcome) == {"raft.md#0": ["unique_id"], "bad": ["unique_id"]}
    assert [row["id"] for row in outcome.rejected] == ["a1", "a1"]


def test_duplicate_questions_after_normalisation_reject_all_but_the_first(context: Any) -> None:
    first = PLANTED | {"id": "q1", "question": "What is X?", "chunk_id": "first"}
    again = PLANTED | {"id": "q2", "question": "what  is x", "chunk_id": "again"}
    third = PLANTED | {"id": "q3", "question": "WHAT is X !", "chunk_id": "third"}
    outcome = run(context, [first, *GOOD, again, third])
    assert reasons(outcome) == {"again": ["unique_question"], "third": ["unique_question"]}
    assert outcome.valid["id"].to_list() == ["q1", *(row["id"] for row in GOOD)]


def test_grounding_rejects_a_number_or_backticked_flag_missing_from_the_passage(context: Any) -> None:
    number = pair(
        "n", "article", "How many servers run in a cluster?", "It runs 7 servers.", RAFT, "raft.md", chunk_id="number"
    )
    flag = pair(
        "f",
        "article",
        "Which option tunes elections?",
        "Set `heartbeat_ms` to tune them.",
        RAFT,
        "raft.md",
        chunk_id="flag",
    )
    present = pair(
        "p",
        "article",
        "Which option tunes leader elections?",
        "Set `election_timeout`; runs 5.",
        RAFT,
        "raft.md",
        chunk_id="present",
    )
    outcome = run(context, [*GOOD, number, flag, present])
    assert reasons(outcome) == {"number": ["grounded"], "flag": ["grounded"]}
    assert ungrounded_terms("article", number["answer"], RAFT, None) == "7"
    assert ungrounded_terms("article", flag["answer"], RAFT, None) == "`heartbeat_ms`"


def test_grounding_checks_capitalised_names_but_not_sentence_starts() -> None:
    assert ungrounded_terms("article", "It was Leslie Lamport. Then Paxos won.", PAXOS, None) is None
    assert ungrounded_terms("article", "Paxos was described by Barbara Liskov.", PAXOS, None) == "Barbara Liskov"
    assert ungrounded_terms("article", "Lamport used Zookeeper.", PAXOS, None) == "Zookeeper"
    assert ungrounded_terms("article", "Yes, I'd say Lamport's paper, as I recall.", PAXOS, None) is None
    assert ungrounded_terms("article", "Set it in 1,998 ways.\n1. Then go.", "in 1998", None) is None


def test_grounding_skips_byo_pairs_and_can_be_turned_off(context: Any) -> None:
    assert ungrounded_terms("pair", "Paris has 2 million people.", "", None) is None
    ungrounded = pair(
        "u",
        "article",
        "How many servers run in a cluster?",
        "It runs 7 servers.",
        RAFT,
        "raft.md",
        chunk_id="ungrounded",
    )
    outcome = run(context, [*GOOD, ungrounded], grounding=False)
    assert outcome.rejected == []
    assert outcome.failed["grounded"] == 0


def test_sources_below_min_pairs_are_reported_not_dropped(context: Any) -> None:
    lonely = pair("l", "pair", "Is this the only pair of its file?", "Yes.", "", "lonely.jsonl")
    outcome = run(context, [*GOOD, lonely, PLANTED | {"source": "paxos.md", "question": "Why?"}])
    assert "l" in outcome.valid["id"].to_list()
    assert outcome.below_min == {"lonely.jsonl": 1}
    assert run(context, [*GOOD, lonely], min_pairs_per_source=3).below_min == {
        "faq.jsonl": 2,
        "lonely.jsonl": 1,
        "paxos.md": 2,
        "raft.md": 2,
        "stack.go": 2,
    }
    assert outcome.metrics()["sources_below_min"] == 1
    assert outcome.metrics()["sources_below_min_names"] == "lonely.jsonl"


def test_reject_fraction_at_the_limit_passes_and_above_it_stops() -> None:
    valid = frame(GOOD[:2])
    at_limit = validate.Outcome(valid, [{"id": "x"}, {"id": "y"}], {"grounded": 2}, {}, [])
    assert validate.rejection_error(at_limit, ValidateConfig(max_reject_fraction=0.5)) is None
    error = validate.rejection_error(at_limit, ValidateConfig(max_reject_fraction=0.4))
    assert error is not None and "grounded 2" in str(error) and "rejected.jsonl" in str(error)


# ---------------------------------------------------------------- params


def params(**validate_section: Any) -> dict[str, Any]:
    return {"refusal_phrases": REFUSALS, "validate": validate_section}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (params(question_words=[10, 3]), "validate.question_words must be [min, max]"),
        (params(answer_words=[1]), "validate.answer_words must be [min, max]"),
        (params(question_words="3-80"), "validate.question_words must be a list"),
        (params(max_reject_fraction=0), "validate.max_reject_fraction must be in (0, 1], got 0"),
        (params(max_reject_fraction=1.5), "validate.max_reject_fraction must be in (0, 1], got 1.5"),
        (params(min_pairs_per_source=-1), "validate.min_pairs_per_source must be >= 0"),
        (params(grounding="yes"), "validate.grounding must be true or false"),
        (params(max_words=5), "validate.max_words is not a known key"),
        ({"validate": {}}, "refusal_phrases must be a non-empty list"),
        ({"refusal_phrases": []}, "refusal_phrases must be a non-empty list"),
        ({"refusal_phrases": ["as an ai", ""]}, "refusal_phrases must be a non-empty list"),
    ],
)
def test_bad_params_raise_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate.load_contract(raw)


def test_params_defaults_match_the_documented_contract() -> None:
    contract = validate.load_contract({"refusal_phrases": ["as an ai"]})
    assert contract.cfg == ValidateConfig([3, 80], [1, 300], 2, 0.5, True)


# ---------------------------------------------------------------- the stage end to end


def stage_dir(tmp: Path, rows: list[dict[str, Any]], **validate_section: Any) -> Path:
    (tmp / "params.yaml").write_text(yaml.safe_dump(params(**validate_section)), encoding="utf-8")
    (tmp / "data/generate").mkdir(parents=True)
    frame(rows).write_parquet(tmp / "data/generate/pairs.parquet")
    return tmp / "params.yaml"


def test_main_writes_valid_rejected_metrics_and_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    validate.main(stage_dir(tmp_path, [*GOOD, PLANTED | {"question": "Why?"}]))
    assert pl.read_parquet("data/validate/valid.parquet").equals(frame(GOOD))
    rejected = [json.loads(line) for line in Path("data/validate/rejected.jsonl").read_text().splitlines()]
    assert rejected == [PLANTED | {"question": "Why?", "failed": ["question_words"]}]
    assert json.loads(Path("metrics/validate.json").read_text()) == {"valid": 8}  # what `dvc metrics show` lists
    metrics = json.loads(Path("metrics/all/validate.json").read_text())
    assert metrics["rows"] == 9 and metrics["valid"] == 8 and metrics["failed.question_words"] == 1
    assert metrics["failed.grounded"] == 0 and metrics["sources_below_min"] == 0
    report = Path("reports/validate/index.html").read_text(encoding="utf-8")
    assert "pairs_contract" in report and "expect_column_values_to_be_between" in report
    assert "<td>Why?</td>" in report and "<td>question_words</td>" in report


def test_the_report_is_the_same_bytes_for_the_same_pairs_and_loads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params_path = stage_dir(tmp_path, [*GOOD, PLANTED | {"question": "Why?"}])
    validate.main(params_path)
    first = sha256_tree("reports/validate")
    validate.main(params_path)
    assert sha256_tree("reports/validate") == first  # so dvc.lock keeps one hash for the same pairs
    report = Path("reports/validate/index.html").read_text(encoding="utf-8")
    assert external_references(report) == [] and "<script" not in report  # opens offline
    assert "<tr><td>faq.jsonl</td><td>3</td><td>2</td><td>1</td></tr>" in report  # pairs, valid, rejected
    assert '<span class="fail">FAIL: 1 row</span>' in report and '<span class="pass">pass</span>' in report


def test_main_stops_above_max_reject_fraction_without_a_valid_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params_path = stage_dir(tmp_path, [*GOOD, PLANTED | {"answer": "I cannot answer."}], max_reject_fraction=0.1)
    stale = Path("data/validate/valid.parquet")
    stale.parent.mkdir(parents=True)
    frame(GOOD).write_parquet(stale)
    with pytest.raises(UserError, match=r"1 of 9 pairs broke the contract.*no_refusal 1"):
        validate.main(params_path)
    assert not stale.exists()
    assert json.loads(Path("metrics/all/validate.json").read_text())["failed.no_refusal"] == 1
    assert len(Path("data/validate/rejected.jsonl").read_text().splitlines()) == 1
    assert Path("reports/validate/index.html").exists()


def test_main_names_a_missing_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()), encoding="utf-8")
    with pytest.raises(UserError, match="data/generate/pairs.parquet: not found"):
        validate.main(tmp_path / "params.yaml")


def test_an_expectation_gx_cannot_evaluate_raises_instead_of_passing(context: Any) -> None:
    suite = validate.build_suite(Contract(ValidateConfig(grounding=True), REFUSALS))
    without_grounding = validate.derive_columns(frame(GOOD), grounding=False)  # no ungrounded_terms column
    with pytest.raises(RuntimeError, match="GX expectation grounded crashed"):
        validate.run_suite(without_grounding, suite, context)


@pytest.mark.parametrize(
    ("symbol", "code"),
    [
        ("Stack.Push", "func (s *Stack) Push(x int) {\n}"),
        ("Ring::push", "pub fn push(&mut self, item: T) -> Option<T> {\n}"),
        ("linalg::Matrix::transposed", "template <typename T>\nMatrix<T> Matrix<T>::transposed() const {\n}"),
        ("linalg::operator<<", "std::ostream& operator<<(std::ostream& os, const Matrix<double>& m) {\n}"),
        ("CallQueue.[Symbol.iterator]", "*[Symbol.iterator]() {\n}"),
        ("TokenBucket.Stats.denialRate", "public double denialRate() {\n}"),
    ],
)
def test_a_qualified_code_symbol_is_grounded_by_its_own_name(symbol: str, code: str) -> None:
    assert ungrounded_terms("code", code, code, symbol) is None
    assert ungrounded_terms("code", "func other() {}", "func other() {}", symbol) == f"symbol {symbol!r}"
