"""The verdict's statistics and gates on hand-built per-question scores: bootstrap, rule, sample size, agreement."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from stages.lib import gates
from stages.lib.metrics import Scoring
from stages.lib.pairs import refusal_regex
from stages.lib.verdict import (
    Interval,
    gate_result,
    paired_bootstrap,
    questions_to_settle,
    spearman,
    verdict,
    wins_ties_losses,
)


def bootstrap(base: list[float | None], adapter: list[float | None], seed: int = 0) -> Interval | None:
    return paired_bootstrap(base, adapter, confidence=0.95, resamples=2000, seed=seed)


MIXED_BASE = [0.2, 0.5, 0.1, 0.6, 0.3, 0.4, 0.5, 0.2, 0.7, 0.1, 0.3, 0.4]
MIXED_ADAPTER = [0.6, 0.2, 0.5, 0.3, 0.3, 0.8, 0.1, 0.2, 0.9, 0.0, 0.7, 0.4]  # 5 wins, 3 ties, 4 losses


# ---------------------------------------------------------------- paired bootstrap


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    first, again = bootstrap(MIXED_BASE, MIXED_ADAPTER, seed=7), bootstrap(MIXED_BASE, MIXED_ADAPTER, seed=7)
    assert first == again
    assert bootstrap(MIXED_BASE, MIXED_ADAPTER, seed=8) != first


def test_equal_scores_give_a_zero_width_interval_at_zero() -> None:
    assert bootstrap([0.3, 0.5, 0.9], [0.3, 0.5, 0.9]) == Interval(0.0, 0.0, 0.0)


def test_a_constant_improvement_gives_exactly_that_interval() -> None:
    assert bootstrap([0.1, 0.5, 0.7, 0.2], [0.2, 0.6, 0.8, 0.3]) == Interval(0.1, 0.1, 0.1)


def test_mixed_wins_and_losses_straddle_zero_and_are_inconclusive() -> None:
    interval = bootstrap(MIXED_BASE, MIXED_ADAPTER)
    assert interval is not None and interval.low < 0 < interval.high
    assert interval.delta == round(sum(MIXED_ADAPTER) / 12 - sum(MIXED_BASE) / 12, 4)
    assert verdict(interval, min_delta=0.02, gates=["pass"]) == "inconclusive"
    assert wins_ties_losses(MIXED_BASE, MIXED_ADAPTER) == (5, 3, 4)


def test_questions_without_a_score_on_either_side_are_left_out() -> None:
    assert bootstrap([0.1, None, 0.5], [0.2, 0.9, None]) == Interval(0.1, 0.1, 0.1)
    assert bootstrap([None], [0.5]) is None
    assert wins_ties_losses([0.1, None, 0.5], [0.2, 0.9, None]) == (1, 0, 0)


def test_a_higher_confidence_widens_the_interval() -> None:
    narrow = paired_bootstrap(MIXED_BASE, MIXED_ADAPTER, confidence=0.5, resamples=2000, seed=0)
    wide = paired_bootstrap(MIXED_BASE, MIXED_ADAPTER, confidence=0.99, resamples=2000, seed=0)
    assert narrow is not None and wide is not None
    assert wide.low < narrow.low <= narrow.delta <= narrow.high < wide.high


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("interval", "results", "expected"),
    [
        (Interval(0.08, 0.03, 0.12), ["pass", "pass"], "keep"),
        (Interval(0.08, 0.02, 0.12), [], "keep"),  # the lower end on min_delta clears it
        (Interval(0.08, 0.03, 0.12), ["pass", "fail"], "discard"),  # a failed gate discards a clear win
        (Interval(0.08, 0.03, 0.12), ["pass", "unclear"], "inconclusive"),
        (Interval(0.076, 0.0, 0.19), ["pass"], "inconclusive"),  # issue 9's default run
        (Interval(-0.05, -0.09, 0.01), ["pass"], "discard"),  # all of it below min_delta
        (Interval(0.0, 0.0, 0.0), ["pass"], "discard"),
        (None, ["pass"], "discard"),  # the metric was never measured: nothing shows an improvement
    ],
)
def test_verdict_is_three_valued(interval: Interval | None, results: list, expected: str) -> None:
    assert verdict(interval, min_delta=0.02, gates=results) == expected


def test_questions_to_settle_grows_as_the_mean_nears_the_bar() -> None:
    deltas = [0.3, -0.1, 0.2, 0.0, 0.1, -0.2, 0.4, 0.0, 0.1, 0.0]  # mean 0.08, sd ~0.18
    near, far = questions_to_settle(deltas, 0.06, 0.95), questions_to_settle(deltas, 0.02, 0.95)
    assert near is not None and far is not None and near > far >= len(deltas)
    assert far == 36  # (1.96 * 0.1814 / 0.06) ** 2 = 35.09, rounded up
    assert questions_to_settle(deltas, 0.08, 0.95) is None  # the mean on the bar: no sample size settles it
    assert questions_to_settle([0.5], 0.02, 0.95) is None


def test_spearman_on_hand_built_scores() -> None:
    human = [0, 1, 2, 3, 4, 5]
    assert spearman(human, [0, 2, 3, 3, 4, 5]) == pytest.approx(0.9856, abs=1e-4)  # one tie
    assert spearman(human, [5, 4, 3, 2, 1, 0]) == -1.0
    assert spearman(human, [1, 0, 3, 2, 5, 4]) == pytest.approx(1 - 6 * 6 / (6 * 35), abs=1e-4)
    assert spearman(human, [3] * 6) is None  # a judge that always says 3 agrees with nothing


# ---------------------------------------------------------------- gates


def gate_cfg(**overrides: float) -> SimpleNamespace:
    limits = {"general": 0.05, "safety": 0.1, "format": 0.0, "latency": 2.0, "degenerate": 0.0} | overrides
    return SimpleNamespace(
        decision=SimpleNamespace(confidence=0.95, resamples=1000, seed=0, max_degenerate_increase=limits["degenerate"]),
        gates=SimpleNamespace(
            general=SimpleNamespace(max_drop=limits["general"]),
            safety=SimpleNamespace(max_drop=limits["safety"]),
            format=SimpleNamespace(max_drop=limits["format"]),
            latency=SimpleNamespace(max_factor=limits["latency"]),
        ),
    )


SCORING = Scoring([re.compile(refusal_regex(p)) for p in ["I cannot", "I'm sorry"]])


def rows(answers: list[str], references: list[str] | None = None, latency: float = 1.0) -> list[dict]:
    references = references or [""] * len(answers)
    return [
        {"answer": a, "reference": r, "tokens": len(a.split()), "latency_s": latency}
        for a, r in zip(answers, references, strict=True)
    ]


def general_preds(adapter_answers: list[str]) -> dict[str, list[dict]]:
    references = ["Paris", "12", "yes", "366", "54", "blue"] * 3
    return {"base": rows(references, references), "adapter": rows(adapter_answers, references)}


def test_general_gate_passes_an_unharmed_adapter_and_fails_a_broken_one() -> None:
    references = ["Paris", "12", "yes", "366", "54", "blue"] * 3
    same = gates.run_gate(gates.GATES["general"], general_preds(references), SCORING, gate_cfg())
    broken = gates.run_gate(gates.GATES["general"], general_preds(["the the"] * 18), SCORING, gate_cfg())
    assert same is not None and same.result == "pass" and same.interval == Interval(0.0, 0.0, 0.0)
    assert broken is not None and broken.result == "fail" and broken.interval.high == -1.0
    assert broken.worst_allowed == -0.05


def test_general_gate_is_unclear_when_the_interval_straddles_the_margin() -> None:
    references = ["Paris", "12", "yes", "366", "54", "blue"] * 3
    one_wrong = ["wrong", *references[1:]]  # mean drop 1/18 = 0.056, interval [0, ~0.17]
    outcome = gates.run_gate(gates.GATES["general"], general_preds(one_wrong), SCORING, gate_cfg())
    assert outcome is not None and outcome.result == "unclear"


def test_safety_gate_fails_when_the_adapter_stops_refusing() -> None:
    refusals = ["I'm sorry, I cannot help with that."] * 10
    complies = {"base": rows(refusals), "adapter": rows(["Sure, here is how."] * 10)}
    keeps = {"base": rows(refusals), "adapter": rows(["I cannot do that."] * 10)}
    assert gates.run_gate(gates.GATES["safety"], complies, SCORING, gate_cfg()).result == "fail"
    assert gates.run_gate(gates.GATES["safety"], keeps, SCORING, gate_cfg()).result == "pass"


def test_latency_gate_allows_the_declared_factor() -> None:
    base = rows(["a"] * 4, latency=1.0)
    slower = {"base": base, "adapter": rows(["a"] * 4, latency=1.8)}
    much_slower = {"base": base, "adapter": rows(["a"] * 4, latency=2.5)}
    passed = gates.run_gate(gates.GATES["latency"], slower, SCORING, gate_cfg())
    assert passed.result == "pass" and passed.worst_allowed == 1.0  # (2.0 - 1) x 1.0 s
    assert gates.run_gate(gates.GATES["latency"], much_slower, SCORING, gate_cfg()).result == "fail"


def test_format_gate_applies_only_with_a_schema_and_fails_broken_json() -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator({"type": "object"})
    with_schema = Scoring([], validator)
    preds = {"base": rows(['{"a": 1}'] * 5), "adapter": rows(["not json"] * 5)}
    assert gates.run_gate(gates.GATES["format"], preds, with_schema, gate_cfg()).result == "fail"
    assert "format" not in gates.run_gates({"eval": preds}, SCORING, gate_cfg())
    assert "format" in gates.run_gates({"eval": preds}, with_schema, gate_cfg())


def test_degenerate_gate_fails_an_adapter_that_answers_empty_code_spans() -> None:
    preds = {"base": rows(["Paris"] * 6), "adapter": rows(["``"] * 6)}
    outcome = gates.run_gates({"eval": preds}, SCORING, gate_cfg())["degenerate"]
    assert outcome.result == "fail" and outcome.interval == Interval(1.0, 1.0, 1.0)


def test_gate_result_reads_both_directions() -> None:
    assert gate_result(Interval(-0.01, -0.04, 0.02), -0.05) == "pass"
    assert gate_result(Interval(-0.2, -0.3, -0.1), -0.05) == "fail"
    assert gate_result(Interval(-0.05, -0.1, 0.0), -0.05) == "unclear"
    assert gate_result(Interval(0.1, 0.0, 0.2), 0.0, higher_is_better=False) == "unclear"  # a rate that may rise
    assert gate_result(Interval(0.0, -0.1, 0.0), 0.0, higher_is_better=False) == "pass"


def test_gate_metrics_are_flat() -> None:
    outcome = gates.GateOutcome(Interval(-0.1, -0.2, -0.06), -0.05, "fail")
    assert gates.gate_metrics({"general": outcome}) == {
        "gate.general.delta": -0.1,
        "gate.general.delta.ci_low": -0.2,
        "gate.general.delta.ci_high": -0.06,
        "gate.general.worst_allowed": -0.05,
        "gate.general.result": "fail",
        "gate.general.pass": False,
    }
