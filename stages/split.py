"""Stage `split`: valid pairs -> seeded, leakage-checked train and eval sets.

`split.strategy: stratified` holds out a share of every source (bounded per source); `group` puts whole
sources on one side (right for code: no file on both sides). A leakage check then moves to train every
eval pair whose normalised question, or whose answer from the same source, also appears in train.

Run: `loradag split` (or `dvc repro split`). Writes `data/split/train.parquet`, `data/split/eval.parquet`
`data/split/per_source.csv` (for `dvc plots`), `metrics/split.json` (sizes per side) and `metrics/all/split.json`
(also per source, and pairs moved by the leakage check).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from stages.lib.common import UserError, log, read_table, write_metrics, write_parquet, write_text
from stages.lib.pairs import PAIR_COLUMNS, question_key
from stages.lib.params import load_params, require, section_config

INPUT = Path("data/validate/valid.parquet")
TRAIN = Path("data/split/train.parquet")
EVAL = Path("data/split/eval.parquet")
HEADLINE = ("train", "eval")  # metrics/split.json; per source: metrics/all/split.json
PER_SOURCE = Path("data/split/per_source.csv")  # pairs per source and side, for `dvc plots`


@dataclass(frozen=True)
class SplitConfig:
    strategy: Literal["stratified", "group"] = "stratified"
    eval_fraction: float = 0.15
    eval_min_per_source: int = 1
    eval_max_per_source: int = 20
    seed: int = 42

    def __post_init__(self) -> None:
        require(0 < self.eval_fraction < 1, "split.eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")
        require(self.eval_min_per_source >= 0, "split.eval_min_per_source", "must be >= 0")
        require(
            self.eval_max_per_source >= max(self.eval_min_per_source, 1),
            "split.eval_max_per_source",
            f"must be >= max(1, eval_min_per_source={self.eval_min_per_source}), got {self.eval_max_per_source}",
        )


def seeded_rank(seed: int, key: str) -> str:
    """A per-key shuffle order: stable when other keys come or go, unlike drawing from one RNG."""
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def stratified_eval_ids(pairs: pl.DataFrame, cfg: SplitConfig) -> set[str]:
    """From each source hold out round(n * eval_fraction) pairs, clipped to the per-source bounds.

    A source always keeps at least one training pair, so a one-pair source stays in train.
    """
    chosen: set[str] = set()
    for (_source,), group in pairs.group_by("source", maintain_order=True):
        n = group.height
        k = min(max(round(n * cfg.eval_fraction), cfg.eval_min_per_source), cfg.eval_max_per_source, n - 1)
        ids = sorted(group["id"].to_list(), key=lambda i: seeded_rank(cfg.seed, i))
        chosen.update(ids[:k])
    return chosen


def group_eval_ids(pairs: pl.DataFrame, cfg: SplitConfig) -> set[str]:
    """Whole sources, in seeded order, go to eval until it holds eval_fraction of the pairs."""
    sizes = dict(pairs.group_by("source").len().iter_rows())
    if len(sizes) < 2:
        raise UserError(f"split.strategy: group needs at least 2 sources, found {len(sizes)}; use stratified")
    target = cfg.eval_fraction * pairs.height
    eval_sources: list[str] = []
    taken = 0
    for source in sorted(sizes, key=lambda s: seeded_rank(cfg.seed, s)):
        if taken >= target or len(eval_sources) == len(sizes) - 1:
            break
        eval_sources.append(source)
        taken += sizes[source]
    return set(pairs.filter(pl.col("source").is_in(eval_sources))["id"])


def leaking_ids(train: pl.DataFrame, eval_: pl.DataFrame) -> tuple[set[str], set[str]]:
    """Eval ids whose normalised question (after the same turns), or whose (answer, source), also occurs in train."""
    train_questions = {question_key(q, h) for q, h in zip(train["question"], train["history"], strict=True)}
    train_answers = set(zip(train["answer"], train["source"], strict=True))
    by_question, by_answer = set(), set()
    for row in eval_.iter_rows(named=True):
        if question_key(row["question"], row["history"]) in train_questions:
            by_question.add(row["id"])
        elif (row["answer"], row["source"]) in train_answers:
            by_answer.add(row["id"])
    return by_question, by_answer


def split_pairs(pairs: pl.DataFrame, cfg: SplitConfig) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Split, then move leaking eval pairs to train (repeated until none leak); input order is kept."""
    if pairs.height < 2:
        raise UserError(f"{INPUT}: {pairs.height} pairs; a split needs at least 2")
    eval_ids = stratified_eval_ids(pairs, cfg) if cfg.strategy == "stratified" else group_eval_ids(pairs, cfg)
    moved_question = moved_answer = 0
    while True:
        train, eval_ = pairs.filter(~pl.col("id").is_in(eval_ids)), pairs.filter(pl.col("id").is_in(eval_ids))
        by_question, by_answer = leaking_ids(train, eval_)
        if not by_question and not by_answer:
            break
        moved_question, moved_answer = moved_question + len(by_question), moved_answer + len(by_answer)
        eval_ids -= by_question | by_answer
    if eval_.height == 0:
        raise UserError("split: the eval set is empty (too few pairs, or every eval pair leaked into train)")
    stats = split_metrics(train, eval_, cfg)
    stats |= {
        "leakage_moved": moved_question + moved_answer,
        "leakage_moved_question": moved_question,
        "leakage_moved_answer": moved_answer,
    }
    return train, eval_, stats


def split_metrics(train: pl.DataFrame, eval_: pl.DataFrame, cfg: SplitConfig) -> dict[str, Any]:
    stats: dict[str, Any] = {"train": train.height, "eval": eval_.height}
    stats["eval_fraction_actual"] = round(eval_.height / (train.height + eval_.height), 4)
    train_sizes = dict(train.group_by("source").len().iter_rows())
    eval_sizes = dict(eval_.group_by("source").len().iter_rows())
    sources = sorted(set(train_sizes) | set(eval_sizes))
    stats["sources"] = len(sources)
    stats["sources_in_eval"] = len(eval_sizes)
    if cfg.strategy == "stratified":
        stats["sources_below_eval_min"] = sum(eval_sizes.get(s, 0) < cfg.eval_min_per_source for s in sources)
    for source in sources:
        stats[f"per_source.{source}.train"] = train_sizes.get(source, 0)
        stats[f"per_source.{source}.eval"] = eval_sizes.get(source, 0)
    return stats


def per_source_csv(stats: dict[str, Any]) -> str:
    """source,part,pairs from the per_source.<source>.<part> counts (csv quotes a source name with a comma)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("source", "part", "pairs"))
    for key, count in stats.items():
        if key.startswith("per_source."):
            writer.writerow((*key.removeprefix("per_source.").rsplit(".", 1), count))
    return out.getvalue()


def main(params_path: Path) -> None:
    cfg = section_config(SplitConfig, load_params(params_path), "split")
    pairs = read_table(INPUT, "validate", PAIR_COLUMNS).select(list(PAIR_COLUMNS))
    train, eval_, stats = split_pairs(pairs, cfg)
    write_parquet(train, TRAIN)
    write_parquet(eval_, EVAL)
    write_text(per_source_csv(stats), PER_SOURCE)
    write_metrics({"strategy": cfg.strategy, **stats}, "split", HEADLINE)
    log.info(
        "split: %d train / %d eval pairs (%s, %d moved by the leakage check)",
        stats["train"],
        stats["eval"],
        cfg.strategy,
        stats["leakage_moved"],
    )
