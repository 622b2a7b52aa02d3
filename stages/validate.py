"""Stage `validate`: the data contract on the generated pairs, run with Great Expectations.

Every row-level rule is a GX expectation, on a pair column or on a column derived with polars first
(word counts, `duplicate_of`, `ungrounded_terms`), so GX both decides and reports each failure.
Sources left with fewer than `validate.min_pairs_per_source` valid pairs are reported, not dropped.

Run: `loradag validate` (or `dvc repro validate`). Reads `data/generate/pairs.parquet`; writes
`data/validate/rejected.jsonl` (each failed row with the expectations it broke), a self-contained report
`reports/validate/index.html`, `metrics/validate.json`, and `data/validate/valid.parquet` only if at most
`validate.max_reject_fraction` of the rows were rejected (otherwise it stops with an error).
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from stages.lib.common import (
    UserError,
    atomic_dir,
    log,
    read_table,
    sha256_file,
    write_jsonl,
    write_metrics,
    write_parquet,
    write_text,
)
from stages.lib.pairs import (
    PAIR_COLUMNS,
    history_problem,
    pair_schema,
    question_key,
    refusal_phrases,
    refusal_regex,
)
from stages.lib.params import load_params, require, section_config

INPUT = Path("data/generate/pairs.parquet")
VALID = Path("data/validate/valid.parquet")
REJECTED = Path("data/validate/rejected.jsonl")
REPORTS = Path("reports/validate")
HEADLINE = ("valid",)  # metrics/validate.json; per rule: metrics/all/validate.json

REQUIRED = ("id", "question", "answer", "source")
EXPECTATIONS = (
    *(f"required_{column}" for column in REQUIRED),
    "question_words",
    "answer_words",
    "unique_id",
    "unique_question",
    "history",
    "no_refusal",
    "grounded",
)


@dataclass(frozen=True)
class ValidateConfig:
    question_words: list[int] = field(default_factory=lambda: [3, 80])
    answer_words: list[int] = field(default_factory=lambda: [1, 300])
    min_pairs_per_source: int = 2
    max_reject_fraction: float = 0.5
    grounding: bool = True

    def __post_init__(self) -> None:
        for key in ("question_words", "answer_words"):
            bounds = getattr(self, key)
            ok = len(bounds) == 2 and 0 <= bounds[0] <= bounds[1]
            require(ok, f"validate.{key}", f"must be [min, max] with 0 <= min <= max, got {bounds}")
        n = self.min_pairs_per_source
        require(n >= 0, "validate.min_pairs_per_source", f"must be >= 0, got {n}")
        f = self.max_reject_fraction
        require(0 < f <= 1, "validate.max_reject_fraction", f"must be in (0, 1], got {f}")


@dataclass(frozen=True)
class Contract:
    """The validate section plus the top-level `refusal_phrases` it shares with evaluate."""

    cfg: ValidateConfig
    refusal_phrases: list[str]


@dataclass(frozen=True)
class Outcome:
    valid: pl.DataFrame
    rejected: list[dict[str, Any]]
    failed: dict[str, int]
    below_min: dict[str, int]
    rules: list[RuleResult]

    def metrics(self) -> dict[str, Any]:
        rows = self.valid.height + len(self.rejected)
        return {
            "rows": rows,
            "valid": self.valid.height,
            "rejected": len(self.rejected),
            "pass_rate": round(self.valid.height / rows, 4) if rows else 0.0,
            **{f"failed.{name}": count for name, count in self.failed.items()},
            "sources_below_min": len(self.below_min),
            "sources_below_min_names": ", ".join(sorted(self.below_min)),
        }


def load_contract(params: dict[str, Any]) -> Contract:
    return Contract(section_config(ValidateConfig, params, "validate"), refusal_phrases(params))


# ---------------------------------------------------------------- derived columns

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
LIST_MARKER = re.compile(r"^\s*\d+[.)]\s", re.M)
BACKTICKED = re.compile(r"`([^`\n]+)`")
CAPITALISED_RUN = re.compile(r"\b[A-Z][\w'’-]*(?:[ \t]+[A-Z][\w'’-]*)*")
SENTENCE_START = re.compile(r"(?:\A|[.!?:\n])\W*\Z")
PRONOUN_I = re.compile(r"I(?:['’][a-z]+)?")


def article_gaps(answer: str, context: str) -> list[str]:
    """Numbers, `backticked` and Capitalised terms of an answer that its passage does not contain."""
    context_numbers = {n.replace(",", "") for n in NUMBER.findall(context)}
    gaps = [n for n in NUMBER.findall(LIST_MARKER.sub("", answer)) if n.replace(",", "") not in context_numbers]
    gaps += [f"`{t}`" for t in BACKTICKED.findall(answer) if t.strip() not in context]
    prose = BACKTICKED.sub(" code ", answer)
    for match in CAPITALISED_RUN.finditer(prose):
        words = [re.sub(r"['’]s?$|-$", "", w) for w in match.group().split()]
        if SENTENCE_START.search(prose[: match.start()]):
            words = words[1:]  # capitalised for its position, not as a name
        if words and not PRONOUN_I.fullmatch(" ".join(words)) and not contains_phrase(context, words):
            gaps.append(" ".join(words))
    return gaps


def contains_phrase(text: str, words: list[str]) -> bool:
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return re.search(pattern, text, re.I) is not None


def own_name(symbol: str) -> str:
    """A function's own name in its qualified symbol: `Ring::push` -> `push`, `Queue.[Symbol.iterator]` keeps
    the computed key `[Symbol.iterator]`; that name, not the qualified path, is what the code spells out."""
    if symbol.endswith("]") and "[" in symbol:
        return symbol[symbol.rindex("[") :]
    return re.split(r"::|\.", symbol)[-1]


def ungrounded_terms(kind: str | None, answer: str | None, context: str | None, symbol: str | None) -> str | None:
    """What an answer states that its source does not hold, or None (grounded, or a kind not checked)."""
    if kind == "article" and answer:
        return ", ".join(article_gaps(answer, context or "")) or None
    if kind == "code":
        name = own_name(symbol or "")
        found = name and (contains_phrase(answer or "", [name]) or contains_phrase(context or "", [name]))
        return None if found else f"symbol {symbol!r}"
    return None  # bring-your-own pairs have no source text to check against


def derive_columns(pairs: pl.DataFrame, grounding: bool) -> pl.DataFrame:
    """The frame GX sees: blank required fields as null, plus the columns the computed rules check."""
    frame = pairs.with_columns(pl.when(pl.col(c).str.strip_chars() != "").then(pl.col(c)).alias(c) for c in REQUIRED)
    rows = list(zip(frame["question"].to_list(), frame["history"].to_list(), strict=True))
    norm = pl.Series("question_norm", [None if q is None else question_key(q, h) for q, h in rows], pl.String)
    problems = pl.Series("history_problem", [history_problem(h) for _, h in rows], pl.String)
    frame = frame.with_columns(
        pl.col("question").str.count_matches(r"\S+").alias("question_word_count"),
        pl.col("answer").str.count_matches(r"\S+").alias("answer_word_count"),
        norm,
        problems,
    )
    first_id = pl.col("id").first().over("question_norm").fill_null("(row without id)")
    repeat = pl.int_range(pl.len()).over("question_norm") > 0
    duplicate_of = pl.when(pl.col("question_norm").is_not_null() & repeat).then(first_id)
    frame = frame.with_columns(duplicate_of.alias("duplicate_of"))
    if grounding:
        rows = pairs.select("kind", "answer", "context", "symbol").iter_rows()
        gaps = [ungrounded_terms(kind, answer, context, symbol) for kind, answer, context, symbol in rows]
        frame = frame.with_columns(pl.Series("ungrounded_terms", gaps, dtype=pl.String))
    return frame


# ---------------------------------------------------------------- the GX suite


def build_suite(contract: Contract) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    cfg = contract.cfg
    rules = {f"required_{c}": gxe.ExpectColumnValuesToNotBeNull(column=c) for c in REQUIRED}
    rules |= {
        "question_words": gxe.ExpectColumnValuesToBeBetween(
            column="question_word_count", min_value=cfg.question_words[0], max_value=cfg.question_words[1]
        ),
        "answer_words": gxe.ExpectColumnValuesToBeBetween(
            column="answer_word_count", min_value=cfg.answer_words[0], max_value=cfg.answer_words[1]
        ),
        "unique_id": gxe.ExpectColumnValuesToBeUnique(column="id"),
        "unique_question": gxe.ExpectColumnValuesToBeNull(
            column="duplicate_of",
            notes="Same question (case, whitespace and punctuation folded) after the same turns as an earlier pair.",
        ),
        "history": gxe.ExpectColumnValuesToBeNull(
            column="history_problem",
            notes="A conversation's earlier turns: JSON [{role, content}], an optional system turn, then user and "
            "assistant turns alternating, ending before the question's user turn.",
        ),
        "no_refusal": gxe.ExpectColumnValuesToNotMatchRegexList(
            column="answer", regex_list=[refusal_regex(p) for p in contract.refusal_phrases]
        ),
    }
    if cfg.grounding:
        rules["grounded"] = gxe.ExpectColumnValuesToBeNull(
            column="ungrounded_terms", notes="Answer terms missing from the passage, or a code symbol not found."
        )
    suite = gx.ExpectationSuite(name="pairs_contract")
    for name, expectation in rules.items():
        expectation.meta = {"name": name}
        suite.add_expectation(expectation)
    return suite


def gx_context() -> Any:
    """An offline, in-memory GX context: no stores on disk, no analytics, no Data Docs site."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter would bury our summary
    import great_expectations as gx
    from great_expectations.data_context.types import base

    config = base.DataContextConfig(
        store_backend_defaults=base.InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=base.ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


@dataclass(frozen=True)
class RuleResult:
    name: str  # our name for the rule (EXPECTATIONS)
    expectation: str  # the GX expectation type, e.g. expect_column_values_to_be_between
    kwargs: dict[str, Any]
    failed: list[int]  # row indices that broke it


def run_suite(frame: pl.DataFrame, suite: Any, context: Any) -> list[RuleResult]:
    """Validate frame with a GX Checkpoint; each rule's result, with the rows that broke it."""
    import great_expectations as gx

    batch = context.data_sources.add_or_update_pandas("pairs").add_dataframe_asset("pairs")
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(
            name="pairs_contract",
            data=batch.add_batch_definition_whole_dataframe("all"),
            suite=context.suites.add_or_update(suite),
        )
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(name="validate", validation_definitions=[validation], result_format="COMPLETE")
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame.to_pandas()})
    rules = []
    for rule in next(iter(result.run_results.values())).results:
        config = rule.expectation_config
        name = config.meta["name"]
        errors = crash_messages(rule.exception_info or {})
        if errors:
            raise RuntimeError(f"GX expectation {name} crashed: {'; '.join(errors)}")
        failed = sorted(rule.result.get("unexpected_index_list") or [])
        assert rule.success or failed, f"{name} failed without naming rows"
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        rules.append(RuleResult(name, config.type, kwargs, failed))
    return rules


def crash_messages(info: dict[str, Any]) -> list[str]:
    """GX reports an expectation that could not run flat or per metric; collect the messages either way."""
    entries = [info] if "raised_exception" in info else list(info.values())
    return [e["exception_message"] for e in entries if isinstance(e, dict) and e.get("raised_exception")]


# ---------------------------------------------------------------- the stage


def validate_pairs(pairs: pl.DataFrame, contract: Contract, context: Any) -> Outcome:
    """Run the contract on pairs; split them into valid rows and rejected rows with reasons."""
    rules = run_suite(derive_columns(pairs, contract.cfg.grounding), build_suite(contract), context)
    failed = {rule.name: rule.failed for rule in rules}
    assert set(failed) <= set(EXPECTATIONS), f"suite names {set(failed) - set(EXPECTATIONS)} missing from EXPECTATIONS"
    reasons: dict[int, list[str]] = {}
    for name in EXPECTATIONS:
        for index in failed.get(name, []):
            reasons.setdefault(index, []).append(name)
    valid = pairs.filter(pl.Series([i not in reasons for i in range(pairs.height)]))
    rejected = [row | {"failed": reasons[i]} for i, row in enumerate(pairs.iter_rows(named=True)) if i in reasons]
    counts = {name: len(failed.get(name, [])) for name in EXPECTATIONS}
    below = sources_below_min(pairs, valid, contract.cfg.min_pairs_per_source)
    return Outcome(valid, rejected, counts, below, rules)


def sources_below_min(pairs: pl.DataFrame, valid: pl.DataFrame, minimum: int) -> dict[str, int]:
    """Sources of the input left with fewer than `minimum` valid pairs, with how many they kept."""
    kept = dict(valid.group_by("source").len().iter_rows())
    below = {}
    for source in pairs["source"].drop_nulls().unique().sort():
        if kept.get(source, 0) < minimum:
            below[source] = kept.get(source, 0)
    return below


def read_pairs(path: Path) -> pl.DataFrame:
    pairs = read_table(path, "generate", PAIR_COLUMNS)
    if pairs.columns != list(PAIR_COLUMNS):
        raise UserError(f"{path}: columns {pairs.columns} are not the pair schema {list(PAIR_COLUMNS)}")
    return pairs.cast(pair_schema())


def rejection_error(outcome: Outcome, cfg: ValidateConfig) -> UserError | None:
    """The error that stops the pipeline when too many rows broke the contract, else None."""
    m = outcome.metrics()
    if m["rejected"] <= cfg.max_reject_fraction * m["rows"]:
        return None
    broken = ", ".join(f"{name} {n}" for name, n in outcome.failed.items() if n)
    return UserError(
        f"{m['rejected']} of {m['rows']} pairs broke the contract, more than validate.max_reject_fraction="
        f"{cfg.max_reject_fraction} (failed: {broken}). Read {REJECTED} (each row names what it broke) and "
        f"{REPORTS}/index.html, then fix generate or its params; {VALID} was not written."
    )


def main(params_path: Path) -> None:
    contract = load_contract(load_params(params_path))
    pairs = read_pairs(INPUT)
    outcome = validate_pairs(pairs, contract, gx_context())
    metrics = outcome.metrics()
    with atomic_dir(REPORTS) as tmp:
        write_text(render_report(outcome, sha256_file(INPUT)), tmp / "index.html")
    write_jsonl(outcome.rejected, REJECTED)
    write_metrics(metrics, "validate", HEADLINE)
    log.info(
        "validate: %d pairs -> %d valid, %d rejected (%s); sources below %d valid pairs: %s",
        metrics["rows"],
        metrics["valid"],
        metrics["rejected"],
        {k: v for k, v in outcome.failed.items() if v} or "none",
        contract.cfg.min_pairs_per_source,
        metrics["sources_below_min_names"] or "none",
    )
    error = rejection_error(outcome, contract.cfg)
    if error:
        VALID.unlink(missing_ok=True)  # a table from an earlier run must not pass for this run's result
        raise error
    write_parquet(outcome.valid, VALID)


# ---------------------------------------------------------------- the report


REPORT_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;width:100%;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}.pass{color:#17692f}.fail{color:#b3261e}"
    "code{font-size:90%}"
)


def render_report(outcome: Outcome, input_sha256: str) -> str:
    """One self-contained HTML page of the contract's run: no scripts, no external assets, no clock."""
    m = outcome.metrics()
    lines = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>pairs_contract</title>',
        f"<style>{REPORT_STYLE}</style></head><body>",
        "<h1>Data contract <code>pairs_contract</code></h1>",
        f"<p>Input <code>{INPUT}</code> (sha256 <code>{input_sha256}</code>): {m['rows']} pairs, "
        f"<b>{m['valid']} valid</b>, {m['rejected']} rejected (pass rate {m['pass_rate']}). "
        f"Checked by Great Expectations {gx_version()}.</p>",
        "<table><tr><th>rule</th><th>expectation</th><th>arguments</th><th>result</th></tr>",
    ]
    for rule in outcome.rules:
        failed = f"FAIL: {len(rule.failed)} row{'s' * (len(rule.failed) > 1)}"
        verdict = f'<span class="fail">{failed}</span>' if rule.failed else '<span class="pass">pass</span>'
        arguments = html.escape(json.dumps(rule.kwargs, sort_keys=True, ensure_ascii=False))
        lines.append(
            f"<tr><td>{rule.name}</td><td><code>{rule.expectation}</code></td>"
            f"<td><code>{arguments}</code></td><td>{verdict}</td></tr>"
        )
    lines.append("</table>")
    if outcome.below_min:
        below = ", ".join(f"{html.escape(s)} ({n})" for s, n in outcome.below_min.items())
        lines.append(f"<p>Sources below the minimum of valid pairs: {below}</p>")
    lines += source_table(outcome)
    lines.append(f"<h2>Rejected pairs ({len(outcome.rejected)})</h2>")
    if outcome.rejected:
        lines.append("<table><tr><th>id</th><th>source</th><th>question</th><th>answer</th><th>broke</th></tr>")
        for row in outcome.rejected:
            cells = [row["id"], row["source"], row["question"], row["answer"], ", ".join(row["failed"])]
            lines.append("<tr>" + "".join(f"<td>{html.escape(str(c or ''))}</td>" for c in cells) + "</tr>")
        lines.append("</table>")
    return "\n".join(lines) + "\n</body></html>\n"


def source_table(outcome: Outcome) -> list[str]:
    """Pairs per source: how many came in, stayed valid and were rejected."""
    valid = dict(outcome.valid.group_by("source").len().iter_rows())
    rejected: dict[str, int] = {}
    for row in outcome.rejected:
        rejected[row["source"] or ""] = rejected.get(row["source"] or "", 0) + 1
    lines = [
        "<h2>Pairs per source</h2>",
        "<table><tr><th>source</th><th>pairs</th><th>valid</th><th>rejected</th></tr>",
    ]
    for source in sorted(set(valid) | set(rejected)):
        counts = (valid.get(source, 0) + rejected.get(source, 0), valid.get(source, 0), rejected.get(source, 0))
        lines.append(f"<tr><td>{html.escape(source)}</td>" + "".join(f"<td>{n}</td>" for n in counts) + "</tr>")
    return [*lines, "</table>"]


def gx_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("great_expectations")
