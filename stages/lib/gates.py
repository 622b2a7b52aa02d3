"""Regression gates for `evaluate`: what the adapter may not break, each a registry entry like ANSWER_METRICS.

A gate compares one per-question score of base and adapter on one answer set ("eval": the held-out pairs,
"general": a general Q&A set, "safety": requests to decline) with a paired bootstrap interval of
adapter - base, against the worst change its params allow (declared before the run):

    pass     the whole interval is within the allowed change
    fail     the whole interval is beyond it (the adapter is discarded)
    unclear  the interval straddles it (the adapter cannot be kept)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.lib.metrics import ANSWER_METRICS, Scoring, question_scores
from stages.lib.verdict import GateResult, Interval, gate_result, paired_bootstrap

Preds = dict[str, list[dict[str, Any]]]  # side -> prediction rows


@dataclass(frozen=True)
class Gate:
    answers: str  # which answer set: eval | general | safety
    metric: str  # an ANSWER_METRICS name, scored per question
    higher_is_better: bool
    worst_allowed: Callable[[Any, float], float]  # (evaluate config, base mean) -> worst allowed adapter - base
    rule: Callable[[Any], str]  # the rule in words, for the report
    applies: Callable[[Scoring], bool] = lambda scoring: True


# In report order.
GATES = {
    "general": Gate(
        "general",
        "token_f1",
        True,
        lambda cfg, base: -cfg.gates.general.max_drop,
        lambda cfg: f"general-set token_f1 may drop by at most {cfg.gates.general.max_drop}",
    ),
    "safety": Gate(
        "safety",
        "refusal_rate",
        True,
        lambda cfg, base: -cfg.gates.safety.max_drop,
        lambda cfg: f"refusal rate on harmful requests may drop by at most {cfg.gates.safety.max_drop}",
    ),
    "format": Gate(
        "eval",
        "format_compliance",
        True,
        lambda cfg, base: -cfg.gates.format.max_drop,
        lambda cfg: f"JSON-schema compliance may drop by at most {cfg.gates.format.max_drop}",
        applies=lambda scoring: scoring.validator is not None,
    ),
    "latency": Gate(
        "eval",
        "mean_latency_s",
        False,
        lambda cfg, base: (cfg.gates.latency.max_factor - 1) * base,
        lambda cfg: f"mean latency may rise by at most a factor {cfg.gates.latency.max_factor}",
    ),
    "degenerate": Gate(
        "eval",
        "degenerate_rate",
        False,
        lambda cfg, base: cfg.decision.max_degenerate_increase,
        lambda cfg: f"degenerate_rate may rise by at most {cfg.decision.max_degenerate_increase}",
    ),
}


@dataclass(frozen=True)
class GateOutcome:
    interval: Interval
    worst_allowed: float
    result: GateResult


def run_gate(gate: Gate, preds: Preds, scoring: Scoring, cfg: Any) -> GateOutcome | None:
    """The gate's interval and result on its answer set; None when no answer has the gate's score."""
    metric = ANSWER_METRICS[gate.metric]
    base = question_scores(preds["base"], metric, scoring)
    adapter = question_scores(preds["adapter"], metric, scoring)
    decision = cfg.decision
    interval = paired_bootstrap(base, adapter, decision.confidence, decision.resamples, decision.seed)
    if interval is None:
        return None
    scored = [s for s in base if s is not None]
    worst = round(gate.worst_allowed(cfg, sum(scored) / len(scored)), 4)
    return GateOutcome(interval, worst, gate_result(interval, worst, gate.higher_is_better))


def run_gates(answer_sets: dict[str, Preds], scoring: Scoring, cfg: Any) -> dict[str, GateOutcome]:
    """Every gate that applies and has answers to score, by name."""
    outcomes = {}
    for name, gate in GATES.items():
        if gate.applies(scoring) and gate.answers in answer_sets:
            outcome = run_gate(gate, answer_sets[gate.answers], scoring, cfg)
            if outcome is not None:
                outcomes[name] = outcome
    return outcomes


def gate_metrics(outcomes: dict[str, GateOutcome]) -> dict[str, Any]:
    """Flat keys: gate.<name>.delta (.ci_low, .ci_high), .worst_allowed, .result (pass | fail | unclear), .pass."""
    flat: dict[str, Any] = {}
    for name, outcome in outcomes.items():
        flat |= {
            f"gate.{name}.delta": outcome.interval.delta,
            f"gate.{name}.delta.ci_low": outcome.interval.low,
            f"gate.{name}.delta.ci_high": outcome.interval.high,
            f"gate.{name}.worst_allowed": outcome.worst_allowed,
            f"gate.{name}.result": outcome.result,
            f"gate.{name}.pass": outcome.result == "pass",
        }
    return flat
