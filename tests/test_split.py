"""Stage split: stratification bounds, group splits, seeded determinism and the leakage check."""

import json
from pathlib import Path

import polars as pl
import pytest

from stages.lib.common import UserError
from stages.lib.pairs import pair_schema
from stages.lib.params import ConfigError, from_dict
from stages.split import SplitConfig, main, split_pairs


def pairs_frame(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """(source, question, answer) rows -> a pair table with every column of the schema."""
    records = [
        {
            "id": f"{source}-{i}",
            "kind": "article",
            "question": q,
            "answer": a,
            "context": "",
            "source": source,
            "source_sha256": "0" * 64,
            "chunk_id": source,
            "symbol": None,
            "generator": "test",
        }
        for i, (source, q, a) in enumerate(rows)
    ]
    return pl.DataFrame(records, schema=pair_schema())


def corpus(sizes: dict[str, int]) -> pl.DataFrame:
    return pairs_frame([(s, f"Question {s} {i}?", f"answer {s} {i}") for s, n in sizes.items() for i in range(n)])


def config(**overrides: object) -> SplitConfig:
    return from_dict(SplitConfig, overrides, "split")


def test_stratified_takes_a_bounded_share_of_every_source() -> None:
    pairs = corpus({"a.md": 40, "b.md": 10, "c.md": 200, "d.md": 1})
    train, eval_, stats = split_pairs(pairs, config(eval_fraction=0.15, eval_min_per_source=2, eval_max_per_source=12))
    per_source = dict(eval_.group_by("source").len().iter_rows())
    assert per_source == {"a.md": 6, "b.md": 2, "c.md": 12}  # round(6.0), min 2 beats 1.5, max 12 beats 30
    assert stats["per_source.d.md.train"] == 1 and stats["sources_below_eval_min"] == 1  # one-pair source trains
    assert train.height + eval_.height == pairs.height
    assert set(train["id"]).isdisjoint(eval_["id"])


def test_same_seed_same_bytes_other_seed_other_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data/validate").mkdir(parents=True)
    corpus({"a.md": 30, "b.md": 30}).write_parquet("data/validate/valid.parquet")
    outputs = []
    for seed in (7, 7, 8):
        Path("params.yaml").write_text(f"split:\n  seed: {seed}\n")
        main(Path("params.yaml"))
        outputs.append((Path("data/split/train.parquet").read_bytes(), Path("data/split/eval.parquet").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    table = Path("data/split/per_source.csv").read_text().splitlines()  # the pairs_per_source plot
    assert table[0] == "source,part,pairs" and len(table) == 5
    assert sum(int(line.rsplit(",", 1)[1]) for line in table[1:]) == 60
    assert json.loads(Path("metrics/split.json").read_text()).keys() == {"train", "eval"}  # dvc metrics show
    assert "per_source.a.md.eval" in json.loads(Path("metrics/all/split.json").read_text())


def test_group_keeps_each_source_on_one_side() -> None:
    pairs = corpus({f"src{i}.go": 10 for i in range(10)})
    train, eval_, stats = split_pairs(pairs, config(strategy="group", eval_fraction=0.25))
    assert set(train["source"]).isdisjoint(eval_["source"])
    assert eval_.height == 30 and stats["sources_in_eval"] == 3  # sources join until 25 of 100 pairs are held out


def test_group_needs_two_sources() -> None:
    with pytest.raises(UserError, match="needs at least 2 sources"):
        split_pairs(corpus({"only.go": 10}), config(strategy="group"))


def test_leaking_questions_and_answers_are_moved_to_train() -> None:
    rows = [("a.md", f"Unique question {i}?", f"unique {i}") for i in range(20)]
    rows += [("a.md", f"What is rank {i}?", "16") for i in range(1)]
    rows += [("a.md", "Fill in: rank is ____.", "16")]  # same answer, same source as the one above
    rows += [("b.md", "what IS the port", "8000"), ("b.md", "What is the port?", "8080")]  # same normalised question
    rows += [("b.md", f"Other {i}?", f"o{i}") for i in range(20)]
    pairs = pairs_frame(rows)
    for seed in range(30):  # whichever side each twin lands on, none may end up on both
        train, eval_, stats = split_pairs(pairs, config(seed=seed, eval_fraction=0.3))
        train_q = {q.lower().replace("?", "").strip() for q in train["question"]}
        assert not any(q.lower().replace("?", "").strip() in train_q for q in eval_["question"])
        assert not set(zip(eval_["answer"], eval_["source"])) & set(zip(train["answer"], train["source"]))
        assert stats["leakage_moved"] == stats["leakage_moved_question"] + stats["leakage_moved_answer"]
    moved = [split_pairs(pairs, config(seed=s, eval_fraction=0.3))[2]["leakage_moved"] for s in range(30)]
    assert max(moved) >= 1  # the planted twins did get split apart for some seeds, and were moved back


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"split.eval_fraction must be in \(0, 1\), got 1.5"):
        config(eval_fraction=1.5)
    with pytest.raises(ConfigError, match="split.eval_max_per_source must be >="):
        config(eval_min_per_source=5, eval_max_per_source=3)
    with pytest.raises(ConfigError, match="split.strategy must be one of stratified, group"):
        config(strategy="random")
