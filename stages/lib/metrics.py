"""Answer metrics for `evaluate`: pure functions on strings, and the registry `ANSWER_METRICS` that names them.

Per-answer scores are 0/1 or in [0, 1]; `None` means "not applicable" (a reference without numbers has
no numeric match) and is left out of the mean. `side_metrics` turns one side's predictions into the
flat numbers of metrics/evaluate.json. A metric is one entry of `ANSWER_METRICS`: add one there and it is
scored, reported, and (if `decidable`) a valid `evaluate.decision.metric`.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*")
FENCE = re.compile(r"\A```[\w-]*\s*\n(.*?)\n?```\Z", re.S)
JUDGE_SCORE = re.compile(r"(?<![\d.])([0-5])(?![\d.])")

# Function words carry no fact: keyword_overlap counts only the other words of the reference.
STOPWORDS = frozenset(
    "a an the and or but if then else of to in on at by for with from as into onto over under about is are was "
    "were be been being am do does did has have had it its this that these those there here which who whom whose "
    "what when where why how not no yes so than too very can could will would shall should may might must you "
    "your yours we our ours they their theirs he his she her i me my mine us them also just only".split()
)

# Repetition collapse: a stretch repeated back to back MIN_REPEATS times covers COLLAPSE_SHARE of the answer.
MIN_REPEATS = 3
COLLAPSE_SHARE = 0.5


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower().translate(PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalize_answer(answer) == normalize_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    """SQuAD token F1 of the normalised words; two empty strings match."""
    predicted, expected = normalize_answer(answer).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def content_words(text: str) -> set[str]:
    return {word for word in normalize_answer(text).split() if word not in STOPWORDS}


def keyword_overlap(answer: str, reference: str) -> float | None:
    """Share of the reference's content words found in the answer; None if the reference has none."""
    keywords = content_words(reference)
    if not keywords:
        return None
    return len(keywords & set(normalize_answer(answer).split())) / len(keywords)


def numbers_in(text: str) -> set[str]:
    """Numbers as written, thousands separators dropped: '1,024' and '1024' are the same number."""
    return {match.replace(",", "").lstrip("+") for match in NUMBER.findall(text)}


def numeric_match(answer: str, reference: str) -> float | None:
    """1 if the answer holds every number of the reference, 0 if not; None if the reference has no numbers."""
    expected = numbers_in(reference)
    if not expected:
        return None
    return float(expected <= numbers_in(answer))


def is_refusal(answer: str, patterns: list[re.Pattern[str]]) -> bool:
    return any(pattern.search(answer) for pattern in patterns)


def looped_share(units: list[str], max_period: int) -> float:
    """Share of positions inside stretches where one unit sequence repeats back to back MIN_REPEATS+ times.

    Back to back is what tells a generation loop from legitimately repeated text: a Go function repeats
    `if err != nil { return nil, err }` with other statements between the repeats, a collapsed answer does not.
    """
    covered = [False] * len(units)
    for period in range(1, max_period + 1):
        run = 0  # how many positions so far equal the one `period` before
        for i in range(period, len(units)):
            run = run + 1 if units[i] == units[i - period] else 0
            if run >= (MIN_REPEATS - 1) * period:
                covered[i - run - period + 1 : i + 1] = [True] * (run + period)
    return sum(covered) / len(units) if units else 0.0


def is_degenerate(answer: str) -> bool:
    """Empty, whitespace or empty code spans only ("``"), or collapsed into a loop ("the the the ...")."""
    words = answer.split()
    if not "".join(words).strip("`"):
        return True
    if len(words) >= 4:
        return looped_share(words, max_period=25) >= COLLAPSE_SHARE
    text = "".join(words)  # few words: look for a run of characters ("!!!!!!!!!!!!", "hahahahahaha")
    return len(text) >= 12 and looped_share(list(text), max_period=4) >= 0.9


def parse_json_answer(answer: str) -> Any:
    """The answer as JSON (bare or in one ``` fence); raises ValueError if it is not JSON."""
    text = answer.strip()
    fenced = FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


def json_compliant(answer: str, validator: Any) -> bool:
    """Whether the answer is JSON that a `jsonschema` validator accepts."""
    try:
        value = parse_json_answer(answer)
    except ValueError:
        return False
    return validator.is_valid(value)


def parse_judge_score(reply: str | None) -> int | None:
    """The first standalone integer 0-5 of a judge reply ("4", "Score: 4/5"); None if there is none."""
    match = JUDGE_SCORE.search(reply or "")
    return int(match.group(1)) if match else None


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


@dataclass(frozen=True)
class Scoring:
    """What scoring an answer may need besides the prediction row itself."""

    refusals: list[re.Pattern[str]]
    validator: Any = None  # a jsonschema validator when evaluate.json_schema is set
    judge: bool = False  # prediction rows carry judge_score


@dataclass(frozen=True)
class Metric:
    score: Callable[[dict[str, Any], Scoring], float | None]  # one prediction row -> score, None: not applicable
    needs: str | None = None  # "json_schema" | "judge": scored only when that is configured
    decidable: bool = True  # may be evaluate.decision.metric (higher is better)
    total: bool = False  # summed over answers instead of averaged


def _answer_vs_reference(fn: Callable[[str, str], float | None]) -> Callable[[dict[str, Any], Scoring], float | None]:
    return lambda pred, _: fn(pred["answer"], pred["reference"])


# In report order. mean_latency_s and the rates are not decidable: lower is better for them.
ANSWER_METRICS = {
    "token_f1": Metric(_answer_vs_reference(token_f1)),
    "keyword_overlap": Metric(_answer_vs_reference(keyword_overlap)),
    "numeric_match": Metric(_answer_vs_reference(numeric_match)),
    "exact_match": Metric(_answer_vs_reference(exact_match)),
    "refusal_rate": Metric(lambda p, s: float(is_refusal(p["answer"], s.refusals)), decidable=False),
    "degenerate_rate": Metric(lambda p, s: float(is_degenerate(p["answer"])), decidable=False),
    "format_compliance": Metric(lambda p, s: float(json_compliant(p["answer"], s.validator)), needs="json_schema"),
    "judge_mean": Metric(lambda p, s: p["judge_score"], needs="judge"),
    "judge_unparseable": Metric(
        lambda p, s: float(p["judge_score"] is None), needs="judge", decidable=False, total=True
    ),
    "mean_answer_tokens": Metric(lambda p, s: float(p["tokens"]), decidable=False),
    "mean_latency_s": Metric(lambda p, s: float(p["latency_s"]), decidable=False),
}
DECIDABLE = tuple(name for name, metric in ANSWER_METRICS.items() if metric.decidable)


def applies(metric: Metric, scoring: Scoring) -> bool:
    return (
        metric.needs is None
        or (metric.needs == "json_schema" and scoring.validator is not None)
        or (metric.needs == "judge" and scoring.judge)
    )


def question_scores(preds: list[dict[str, Any]], metric: Metric, scoring: Scoring) -> list[float | None]:
    """The metric's score of each answer, in order (None: not applicable to that answer)."""
    return [metric.score(pred, scoring) for pred in preds]


def side_metrics(preds: list[dict[str, Any]], scoring: Scoring) -> dict[str, float]:
    """One side's metrics, rounded to 4 decimals; metrics with no applicable answers are left out."""
    values = {}
    for name, metric in ANSWER_METRICS.items():
        if not applies(metric, scoring):
            continue
        scores = question_scores(preds, metric, scoring)
        value = sum(s for s in scores if s is not None) if metric.total else mean(scores)
        if value is not None:
            values[name] = round(value, 4)
    return values
