"""Chat datasets for `extract.kind: pairs`: the shapes Axolotl and LLaMA-Factory accept, as one conversation each.

A record is one of (after `extract.pairs.columns` renames the columns of a file):
- ShareGPT: `{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}` (`user`/`assistant` too);
- OpenAI: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}` (content: a string or a
  list of `{"type": "text", "text": ...}` parts);
- alpaca: `{"instruction", "input"?, "output", "system"?}`;
- `{"question", "answer", "system"?}`.
Files: `.jsonl` (a record a line), `.json` (an array of records), `.csv` and `.parquet` (a record a row), and a
saved HF `datasets` folder (`Dataset.save_to_disk`: dataset_info.json + state.json + arrow files), read offline.

Each record becomes a `Conversation`: its own system prompt (if any), then user/assistant turns that alternate,
ending with an assistant turn. Training learns every assistant turn; the last one is the pair's answer.
A record with tool or function-call turns is not a chat loradag can train on: `ToolTurns`, skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

Conversation = list[dict[str, str]]

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HF_DATASET_FILES = ("dataset_info.json", "state.json")  # what `Dataset.save_to_disk` writes beside the arrow files
DATASET_DICT_FILE = "dataset_dict.json"  # `DatasetDict.save_to_disk`: this, and a Dataset folder per split

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TOOL_ROLES = {"tool", "function", "function_call", "observation", "tool_call", "ipython"}


@dataclass(frozen=True)
class PairColumns:
    """`extract.pairs.columns`: which column (or JSON key) holds each field; null = the field's own name."""

    question: str | None = None
    answer: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    system: str | None = None
    messages: str | None = None
    conversations: str | None = None

    def check(self, where: str) -> None:
        from stages.lib.params import ConfigError

        taken: dict[str, str] = {}
        for name, column in self.renames().items():
            if not column.strip():
                raise ConfigError(f"{where}.{name} must be a column name or null, got {column!r}")
            if column in taken:
                raise ConfigError(f"{where}.{name}: column {column!r} is mapped to {taken[column]} already")
            taken[column] = name

    def renames(self) -> dict[str, str]:
        """field -> column, for the fields mapped to another name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, f.name)}


class ToolTurns(ValueError):
    """A record with tool or function-call turns: skipped and counted (`skipped_tool_call`), never trained on."""


# ---------------------------------------------------------------- one record -> one conversation


@dataclass(frozen=True)
class ChatRecord:
    """A record as the pair it trains: the last user turn (alpaca: its instruction, with `input` beside it) and
    the last assistant turn, after `history`: the record's system prompt (if any) and the earlier turns."""

    history: Conversation
    question: str
    input: str
    answer: str


def chat_record(row: Any, columns: PairColumns) -> ChatRecord:
    """One record as a conversation ending with an assistant turn; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    row = renamed(row, columns)
    system, extra = optional_text(row, "system"), ""
    if "conversations" in row:
        turns = sharegpt_turns(row["conversations"])
    elif "messages" in row:
        turns = openai_turns(row["messages"])
    elif "question" in row or "answer" in row:
        turns = [user(required_text(row, "question")), assistant(required_text(row, "answer"))]
    elif "instruction" in row or "output" in row:
        extra = optional_text(row, "input")
        turns = [user(required_text(row, "instruction")), assistant(required_text(row, "output"))]
    else:
        raise ValueError(
            "expected {conversations: [{from, value}]}, {messages: [{role, content}]}, {instruction, input?, output}"
            " or {question, answer} (map other column names with extract.pairs.columns)"
        )
    if system and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": system}, *turns]
    check_turns(turns)
    return ChatRecord(turns[:-2], turns[-2]["content"], extra, turns[-1]["content"])


def renamed(row: dict[str, Any], columns: PairColumns) -> dict[str, Any]:
    out = dict(row)
    for name, column in columns.renames().items():
        if column in out:
            out[name] = out.pop(column)
    return out


def sharegpt_turns(items: Any) -> Conversation:
    if not isinstance(items, list) or not items:
        raise ValueError("'conversations' must be a non-empty list")
    turns = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("from"), str):
            raise ValueError(f"conversations[{i}] must be an object with 'from' and 'value'")
        if item["from"] in TOOL_ROLES:
            raise ToolTurns(f"conversations[{i}] is a {item['from']!r} turn")
        if item["from"] not in SHAREGPT_ROLES:
            raise ValueError(
                f"conversations[{i}].from must be one of {', '.join(SHAREGPT_ROLES)}, got {item['from']!r}"
            )
        turns.append({"role": SHAREGPT_ROLES[item["from"]], "content": content_text(item.get("value"), i, "value")})
    return turns


def openai_turns(items: Any) -> Conversation:
    if not isinstance(items, list) or not items:
        raise ValueError("'messages' must be a non-empty list")
    turns = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        if item["role"] in TOOL_ROLES or item.get("tool_calls") or item.get("function_call"):
            raise ToolTurns(f"messages[{i}] is a tool or function call")
        if item["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}].role must be system, user or assistant, got {item['role']!r}")
        turns.append({"role": item["role"], "content": content_text(item.get("content"), i, "content")})
    return turns


def content_text(content: Any, index: int, key: str) -> str:
    """A turn's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts joined."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(part.get("text", "")) for part in content)
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"turn {index}: '{key}' must be non-empty text")
    return content.strip()


def check_turns(turns: Conversation) -> None:
    """An optional system turn first, then user/assistant alternating from a user turn to an assistant turn."""
    body = turns[1:] if turns[0]["role"] == "system" else turns
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise ValueError(f"turn {i + len(turns) - len(body)} is {turn['role']!r} where {expected!r} was expected "
                             "(one system turn first, then user and assistant alternating)")  # fmt: skip
    if not body or body[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant turn (the answer to learn)")


def optional_text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value.strip()


def required_text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string")
    return value.strip()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------- files -> records


@dataclass(frozen=True)
class Row:
    number: int  # 1-based: the line of a .jsonl file, else the record or row
    where: str  # how an error names it: "p.jsonl:3", "p.csv: row 3"
    value: Any  # the parsed record, or the exception that parsing its line raised


def is_hf_dataset(folder: Path) -> bool:
    return all((folder / name).is_file() for name in HF_DATASET_FILES)


def text_rows(source: str, text: str) -> Iterator[Row]:
    """Records of a .jsonl (a line each) or .json (an array) file; a line that is not JSON is a Row of its error."""
    if source.lower().endswith(".jsonl"):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield Row(number, f"{source}:{number}", parsed(line))
        return
    data = parsed(text)
    if isinstance(data, Exception) or not isinstance(data, list):
        detail = "nested too deeply" if isinstance(data, RecursionError) else str(data)
        raise ValueError("expected a JSON array of records" + (f" ({detail})" if isinstance(data, Exception) else ""))
    yield from (Row(i, f"{source}: record {i}", item) for i, item in enumerate(data, start=1))


def parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # json.JSONDecodeError is a ValueError too
        return err


def table_rows(source: str, table: Any, columns: PairColumns) -> Iterator[Row]:
    """Rows of a polars table (CSV, Parquet, an HF dataset); a mapped column it lacks is a ValueError."""
    missing = [f"{column!r} (extract.pairs.columns.{name})" for name, column in columns.renames().items()
               if column not in table.columns and name not in ("system", "input")]  # fmt: skip
    if missing:
        raise ValueError(f"has no column {', '.join(missing)}; its columns: {', '.join(table.columns)}")
    for number, row in enumerate(table.iter_rows(named=True), start=1):
        yield Row(number, f"{source}: row {number}", {k: v for k, v in row.items() if v is not None})


def read_table(path: Path, raw: bytes | None) -> Any:
    """A CSV (every cell as text, so an answer like 007 stays as written), Parquet or HF dataset folder as polars."""
    import io

    import polars as pl

    if path.is_dir():
        from datasets import Dataset

        return pl.from_arrow(Dataset.load_from_disk(str(path)).with_format("arrow")[:])  # memory-mapped, offline
    assert raw is not None
    if path.suffix.lower() == ".csv":
        return pl.read_csv(io.BytesIO(raw), infer_schema=False)
    return pl.read_parquet(io.BytesIO(raw))


def read_errors() -> tuple[type[Exception], ...]:
    """What reading a broken CSV, Parquet or dataset folder raises (a ValueError from text_rows too)."""
    import polars as pl
    import pyarrow as pa

    return (ValueError, OSError, pl.exceptions.PolarsError, pa.ArrowException)
