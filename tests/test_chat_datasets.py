"""Chat datasets in `extract.kind: pairs`: ShareGPT, OpenAI messages, alpaca, JSON arrays, CSV/Parquet with a column
mapping, saved HF `datasets` folders; malformed records named by file and line (or row), or skipped and counted."""

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from stages.extract import ExtractConfig, extract
from stages.lib.common import UserError
from stages.lib.pairs import history_messages
from stages.lib.params import ConfigError, from_dict

SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "You answer questions about loradag."},
        {"from": "human", "value": "Which command runs the pipeline?"},
        {"from": "gpt", "value": "dvc repro"},
        {"from": "human", "value": "And which one compares two runs?"},
        {"from": "gpt", "value": "dvc metrics diff"},
    ]
}


def config(**overrides: Any) -> ExtractConfig:
    return from_dict(ExtractConfig, {"kind": "pairs", **overrides}, "extract")


def write_jsonl(folder: Path, name: str, rows: list[Any]) -> None:
    (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def rows_of(table: pl.DataFrame) -> list[tuple[Any, ...]]:
    return table.select("source", "line", "instruction", "input", "output").rows()


def test_a_sharegpt_conversation_is_one_record_with_its_earlier_turns_as_history(tmp_path: Path) -> None:
    plain = {"conversations": [{"from": "user", "value": "Where do params live?"},
                               {"from": "assistant", "value": "params.yaml"}]}  # fmt: skip
    write_jsonl(tmp_path, "chats.jsonl", [SHAREGPT, plain])
    table, counts = extract(tmp_path, config(root=str(tmp_path)))
    assert rows_of(table) == [
        ("chats.jsonl", 1, "And which one compares two runs?", "", "dvc metrics diff"),
        ("chats.jsonl", 2, "Where do params live?", "", "params.yaml"),
    ]
    assert history_messages(table["history"][0]) == [
        {"role": "system", "content": "You answer questions about loradag."},
        {"role": "user", "content": "Which command runs the pipeline?"},
        {"role": "assistant", "content": "dvc repro"},
    ]
    assert table["history"][1] == "" and counts["records"] == 2


def test_openai_messages_with_text_parts_alpaca_with_a_system_prompt_and_a_json_array(tmp_path: Path) -> None:
    messages = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text",
                "text": "the stage that trains."}]}, {"role": "assistant", "content": "train"}]}  # fmt: skip
    alpaca = {"instruction": "Translate to German", "input": "good morning", "output": "Guten Morgen",
              "system": "You translate."}  # fmt: skip
    (tmp_path / "mixed.json").write_text(json.dumps([messages, alpaca]), encoding="utf-8")
    table, _ = extract(tmp_path, config(root=str(tmp_path)))
    assert rows_of(table) == [
        ("mixed.json", 1, "Name the stage that trains.", "", "train"),
        ("mixed.json", 2, "Translate to German", "good morning", "Guten Morgen"),
    ]
    assert history_messages(table["history"][1]) == [{"role": "system", "content": "You translate."}]


def test_a_csv_with_a_column_mapping(tmp_path: Path) -> None:
    (tmp_path / "faq.csv").write_text('prompt,response,notes\nWhich port?,"8000, by default",x\nAgent id?,007,\n')
    mapping = {"pairs": {"columns": {"question": "prompt", "answer": "response"}}}
    table, _ = extract(tmp_path, config(root=str(tmp_path), **mapping))
    assert rows_of(table) == [
        ("faq.csv", 1, "Which port?", "", "8000, by default"),
        ("faq.csv", 2, "Agent id?", "", "007"),  # cells are text: 007 stays as written
    ]
    (tmp_path / "faq.csv").write_text("q,a\nWhich port?,8000\n")
    with pytest.raises(UserError, match=r"faq\.csv: .*has no column 'prompt' \(extract\.pairs\.columns\.question\)"):
        extract(tmp_path, config(root=str(tmp_path), **mapping))


def test_a_parquet_file_of_openai_messages_under_another_column_name(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "Which stage splits?"}, {"role": "assistant", "content": "split"},
            {"role": "user", "content": "With which seed?"}, {"role": "assistant", "content": "42"}]  # fmt: skip
    pl.DataFrame({"dialog": [chat], "lang": ["en"]}).write_parquet(tmp_path / "chats.parquet")
    table, _ = extract(tmp_path, config(root=str(tmp_path), pairs={"columns": {"messages": "dialog"}}))
    assert rows_of(table) == [("chats.parquet", 1, "With which seed?", "", "42")]
    assert history_messages(table["history"][0]) == chat[:2]


def test_a_saved_hf_dataset_folder_is_one_source_read_offline(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = {"question": ["What splits?", "What trains?"], "answer": ["split", "train"], "system": [None, "Be brief."]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "hf" / "faq"))
    write_jsonl(tmp_path, "more.jsonl", [{"question": "What exports?", "answer": "export"}])
    table, counts = extract(tmp_path, config(root=str(tmp_path)))
    assert rows_of(table) == [  # the folder's dataset_info.json and state.json are not read as .json records
        ("hf/faq", 1, "What splits?", "", "split"),
        ("hf/faq", 2, "What trains?", "", "train"),
        ("more.jsonl", 1, "What exports?", "", "export"),
    ]
    assert history_messages(table["history"][1]) == [{"role": "system", "content": "Be brief."}]
    assert counts["files"] == 2 and len(set(table["source_sha256"])) == 2


def test_a_saved_dataset_dict_is_a_source_per_split(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    def split(question: str) -> Dataset:
        return Dataset.from_dict({"question": [question], "answer": ["yes"]})

    DatasetDict({"train": split("Is this train?"), "test": split("Is this test?")}).save_to_disk(str(tmp_path / "dd"))
    table, _ = extract(tmp_path, config(root=str(tmp_path)))
    assert rows_of(table) == [("dd/test", 1, "Is this test?", "", "yes"), ("dd/train", 1, "Is this train?", "", "yes")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}]}],
         r"p\.jsonl:2: .*must end with an assistant"),
        ("p.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
         r"p\.jsonl:2: .*turn 1 is 'user' where 'assistant' was expected"),
        ("p.jsonl", [{"conversations": [{"from": "bot", "value": "x"}]}], r"p\.jsonl:2: .*from must be one of"),
        ("p.jsonl", [{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}],
         r"p\.jsonl:2: .*'content' must be non-empty text"),
        ("p.json", [{"prompt": "x"}], r"p\.json: record 2: .*expected \{conversations"),
    ],
)  # fmt: skip
def test_a_malformed_record_names_its_file_and_line_or_is_skipped_and_counted(
    tmp_path: Path, name: str, content: list[Any], message: str
) -> None:
    good = {"question": "Which stage trains?", "answer": "train"}
    if name.endswith(".jsonl"):
        write_jsonl(tmp_path, name, [good, *content])
    else:
        (tmp_path / name).write_text(json.dumps([good, *content]), encoding="utf-8")
    with pytest.raises(UserError, match=message):
        extract(tmp_path, config(root=str(tmp_path)))
    table, counts = extract(tmp_path, config(root=str(tmp_path), on_bad_file="skip"))
    assert table.height == 1 and counts["skipped_bad_line"] == 1


def test_a_bad_csv_row_is_named_by_row(tmp_path: Path) -> None:
    (tmp_path / "faq.csv").write_text("question,answer\nWhich port?,8000\nNo answer here?,\n")
    with pytest.raises(UserError, match=r"faq\.csv: row 2: malformed pair: 'answer' must be a non-empty string"):
        extract(tmp_path, config(root=str(tmp_path)))


def test_tool_call_records_are_skipped_and_counted_never_trained_on(tmp_path: Path) -> None:
    tool = {"messages": [{"role": "user", "content": "Weather?"},
                         {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
                         {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}  # fmt: skip
    observation = {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "function_call", "value": "{}"},
                                     {"from": "observation", "value": "4"}, {"from": "gpt", "value": "4"}]}  # fmt: skip
    write_jsonl(tmp_path, "p.jsonl", [tool, {"question": "Which stage trains?", "answer": "train"}, observation])
    table, counts = extract(tmp_path, config(root=str(tmp_path)))  # on_bad_file: error, and still no error
    assert table["instruction"].to_list() == ["Which stage trains?"] and counts["skipped_tool_call"] == 2


def test_a_file_that_is_not_a_table_names_itself(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match=r"broken\.parquet: cannot be read as a chat dataset"):
        extract(tmp_path, config(root=str(tmp_path)))
    (tmp_path / "object.json").write_text('{"question": "Q?", "answer": "A"}')  # an object, not an array
    write_jsonl(tmp_path, "good.jsonl", [{"question": "Which stage trains?", "answer": "train"}])
    table, counts = extract(tmp_path, config(root=str(tmp_path), on_bad_file="skip"))
    assert table["source"].to_list() == ["good.jsonl"] and counts["skipped_parse_error"] == 2


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"question": "q", "answer": "q"}, r"extract\.pairs\.columns\.answer: column 'q' is mapped to question"),
        ({"prompt": "q"}, r"extract\.pairs\.columns\.prompt is not a known key"),
        ({"question": " "}, r"extract\.pairs\.columns\.question must be a column name or null"),
        ({"question": 3}, r"extract\.pairs\.columns\.question must be a string"),
    ],
)
def test_a_bad_column_mapping_names_the_key(columns: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(pairs={"columns": columns})


# ---------------------------------------------------------------- the whole DAG on a ShareGPT file

TOOLS = ["dvc", "git", "ruff", "pytest", "uvicorn", "polars", "peft", "trl", "bm25s", "typer", "rich", "tqdm"]


def sharegpt_chats() -> list[dict[str, Any]]:
    """Two- and three-turn conversations about made-up facts; every last question is different."""
    chats = []
    for i, tool in enumerate(TOOLS):
        turns = [("system", f"You are the {tool} desk. Answer in one sentence.")] if i % 3 == 0 else []
        turns += [("human", f"Which desk looks after {tool}?"), ("gpt", f"Desk {i + 1} looks after {tool}.")]
        if i % 2 == 0:
            turns += [("human", f"Who staffs desk {i + 1} on Mondays?"), ("gpt", f"Mondays at desk {i + 1}: Ana.")]
        turns += [
            ("human", f"And which floor is the {tool} desk on?"),
            ("gpt", f"The {tool} desk is on floor {i % 5}."),
        ]
        chats.append({"conversations": [{"from": who, "value": text} for who, text in turns]})
    return chats


@pytest.mark.slow
def test_a_sharegpt_multi_turn_file_goes_through_the_whole_dag(tmp_path: Path) -> None:
    from project import QUICK_PARAMS, copy_project

    chats = sharegpt_chats()
    project = copy_project(tmp_path / "loradag", QUICK_PARAMS)
    (project.root / "data/raw/chats").mkdir(parents=True)
    write_jsonl(project.root / "data/raw/chats", "desks.jsonl", chats)
    project.set_params({"extract.kind": "pairs", "extract.root": "data/raw/chats", "evaluate.rag.top_k": 0})
    project.commit("a ShareGPT file")
    project.dvc("repro", "evaluate")

    assert json.loads(project.read("metrics/extract.json"))["records"] == len(chats)
    split = json.loads(project.read("metrics/split.json"))
    assert split["train"] + split["eval"] == len(chats)  # one pair per conversation, every one valid
    trained = json.loads(project.read("metrics/all/train.json"))
    assert trained["train_examples"] == split["train"]
    train_pairs = pl.read_parquet(project.root / "data/split/train.parquet")
    turns = {
        chat["conversations"][-2]["value"]: sum(t["from"] == "gpt" for t in chat["conversations"]) for chat in chats
    }
    assert trained["train_assistant_turns"] == sum(turns[q] for q in train_pairs["question"])  # every turn learned
    preds = [json.loads(line) for line in project.read("data/evaluate/preds_adapter.jsonl").splitlines()]
    last_turns = {chat["conversations"][-2]["value"]: chat["conversations"][:-2] for chat in chats}
    assert preds and all(p["question"] in last_turns for p in preds)  # evaluate asks the last user turn ...
    for pred in preds:  # ... after the earlier turns, the record's own system prompt included
        earlier = last_turns[pred["question"]]
        assert [m["content"] for m in pred["history"]] == [t["value"] for t in earlier]
    assert json.loads(project.read("metrics/all/evaluate.json"))["eval_questions"] == len(preds)
    assert "Verdict" in project.read("reports/decision.md")
