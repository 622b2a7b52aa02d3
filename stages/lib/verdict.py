"""The statistics behind evaluate's verdict: paired bootstrap intervals, wins/ties/losses, the three-valued rule.

Pure functions on per-question scores (the same questions, in the same order, on both sides):

    interval = paired_bootstrap(base_scores, adapter_scores, confidence=0.95, resamples=2000, seed=0)
    verdict(interval, min_delta=0.02, gates=["pass", "pass"])   # keep | discard | inconclusive

A paired bootstrap resamples questions, not answers: each resample draws n questions with replacement and takes
the mean of their adapter - base differences, so a question that is hard for both sides moves both together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

Verdict = Literal["keep", "discard", "inconclusive"]
GateResult = Literal["pass", "fail", "unclear"]
TIE = 1e-9  # per-question differences smaller than this are ties (float noise)


@dataclass(frozen=True)
class Interval:
    """The mean of adapter - base over the questions and its bootstrap percentile interval (4 decimals)."""

    delta: float
    low: float
    high: float


def paired_deltas(base: list[float | None], adapter: list[float | None]) -> list[float]:
    """adapter - base per question; questions a metric does not apply to on either side (None) are left out."""
    assert len(base) == len(adapter), "paired scores must cover the same questions"
    return [a - b for b, a in zip(base, adapter, strict=True) if a is not None and b is not None]


def bootstrap_means(deltas: list[float], resamples: int, seed: int) -> list[float]:
    """Means of `resamples` resamples of `deltas` with replacement, from a generator seeded with `seed`."""
    import numpy as np

    values = np.asarray(deltas, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    return values[picks].mean(axis=1).tolist()


def paired_bootstrap(
    base: list[float | None], adapter: list[float | None], confidence: float, resamples: int, seed: int
) -> Interval | None:
    """The paired bootstrap interval of mean(adapter - base); None when no question has both scores."""
    import numpy as np

    deltas = paired_deltas(base, adapter)
    if not deltas:
        return None
    means = bootstrap_means(deltas, resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = sum(deltas) / len(deltas)
    # rounding also removes float noise: ten deltas of 0.1 average to 0.1, not 0.09999999999999999
    return Interval(round(mean, 4), round(min(float(low), mean), 4), round(max(float(high), mean), 4))


def wins_ties_losses(base: list[float | None], adapter: list[float | None]) -> tuple[int, int, int]:
    """How many questions the adapter scored higher on, the same, lower (higher is better)."""
    deltas = paired_deltas(base, adapter)
    wins = sum(d > TIE for d in deltas)
    losses = sum(d < -TIE for d in deltas)
    return wins, len(deltas) - wins - losses, losses


def gate_result(interval: Interval, worst_allowed: float, higher_is_better: bool = True) -> GateResult:
    """pass: the whole interval is within the allowed change; fail: all of it is beyond; unclear: it straddles."""
    low, high = (interval.low, interval.high) if higher_is_better else (-interval.high, -interval.low)
    bound = worst_allowed if higher_is_better else -worst_allowed
    if low >= bound:
        return "pass"
    if high < bound:
        return "fail"
    return "unclear"


def verdict(interval: Interval | None, min_delta: float, gates: list[GateResult]) -> Verdict:
    """keep: the interval clears min_delta and every gate passes; discard: it is below or a gate fails."""
    if interval is None or "fail" in gates or interval.high < min_delta:
        return "discard"
    if interval.low >= min_delta and all(result == "pass" for result in gates):
        return "keep"
    return "inconclusive"


def questions_to_settle(deltas: list[float], min_delta: float, confidence: float) -> int | None:
    """About how many questions would put the interval wholly on one side of min_delta (normal approximation).

    The half-width of a mean's interval is z * sd / sqrt(n); it settles once that is below |mean - min_delta|.
    None when the mean sits on min_delta itself (no sample size settles it) or there are fewer than 2 deltas.
    """
    if len(deltas) < 2:
        return None
    mean = sum(deltas) / len(deltas)
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1))
    gap = abs(mean - min_delta)
    if gap < TIE:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return max(len(deltas), math.ceil((z * sd / gap) ** 2))


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            result[i] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on tie-averaged ranks), 4 decimals; None if either side is constant."""
    assert len(x) == len(y), "spearman needs paired values"
    rx, ry = ranks(x), ranks(y)
    n = len(rx)
    if n < 2:
        return None
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return round(sxy / math.sqrt(sxx * syy), 4)
