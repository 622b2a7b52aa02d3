"""Stage `extract`: raw inputs under `extract.root` -> one Parquet table of records.

`extract.kind` picks the input:
- `articles`: .md/.markdown/.txt/.html files, markup stripped, cut into overlapping word windows;
- `code`: documented Go (tree-sitter) and Python (`ast`) functions of at least `code.min_lines` lines;
- `pairs`: bring-your-own JSONL ({instruction, input?, output} | {question, answer} | {messages}).

Run: `loradag extract` (or `dvc repro extract`). Writes `data/extract/records.parquet` and
`metrics/extract.json` (records; `metrics/all/extract.json`: files, records, skipped by reason).
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from stages.lib import mining
from stages.lib.common import UserError, log, sha256_bytes, stable_id, write_metrics, write_parquet
from stages.lib.params import load_params, require, section_config

OUT = Path("data/extract/records.parquet")
HEADLINE = ("records",)  # metrics/extract.json; skips by reason: metrics/all/extract.json

ARTICLE_SUFFIXES = (".md", ".markdown", ".txt", ".html")
PAIR_SUFFIXES = (".jsonl",)
SKIP_REASONS = ("not_utf8", "empty", "parse_error", "bad_line", "vendored", "generated", "outside_root", "unreadable")

PROVENANCE = {"id": pl.String, "kind": pl.String, "source": pl.String, "source_sha256": pl.String}
SCHEMAS = {
    "articles": PROVENANCE
    | {"chunk_index": pl.Int32, "char_start": pl.Int64, "char_end": pl.Int64, "n_words": pl.Int32, "text": pl.String},
    "code": PROVENANCE
    | {
        "path": pl.String,
        "symbol": pl.String,
        "line": pl.Int32,
        "end_line": pl.Int32,
        "language": pl.String,
        "instruction": pl.String,
        "output": pl.String,
    },
    "pairs": PROVENANCE | {"line": pl.Int32, "instruction": pl.String, "input": pl.String, "output": pl.String},
}


@dataclass(frozen=True)
class CodeConfig:
    min_lines: int = 5
    languages: list[str] = field(default_factory=lambda: ["go", "python"])

    def __post_init__(self) -> None:
        require(self.min_lines >= 1, "extract.code.min_lines", f"must be >= 1, got {self.min_lines}")
        known = sorted(set(mining.LANGUAGES.values()))
        for lang in self.languages:
            require(lang in known, "extract.code.languages", f"must be among {known}, got {lang!r}")


@dataclass(frozen=True)
class ExtractConfig:
    kind: Literal["articles", "code", "pairs"] = "articles"
    root: str = "data/raw/articles"
    chunk_words: int = 900
    overlap_words: int = 150
    on_bad_file: Literal["error", "skip"] = "error"
    code: CodeConfig = field(default_factory=CodeConfig)

    def __post_init__(self) -> None:
        require(self.chunk_words >= 1, "extract.chunk_words", f"must be >= 1, got {self.chunk_words}")
        require(
            0 <= self.overlap_words < self.chunk_words,
            "extract.overlap_words",
            f"must be in [0, chunk_words={self.chunk_words}), got {self.overlap_words}",
        )


class BadInput(UserError):
    """One input file (or line) that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, where: str, reason: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.reason = reason


# ---------------------------------------------------------------- articles

FRONT_MATTER = re.compile(r"\A(?:---|\+\+\+)\n.*?\n(?:---|\+\+\+)\n", re.S)
FENCE_LINE = re.compile(r"^[ \t]*(?:```|~~~).*$", re.M)
HTML_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.S | re.I)
HTML_BLOCK = re.compile(r"</?(?:p|div|h[1-6]|li|ul|ol|pre|br|tr|table|section|article|blockquote)\b[^>]*>", re.I)
INLINE_CODE = re.compile(r"<code\b[^>]*>([^<\n]*)</code>", re.I)  # keep `backticks`: they mark commands and flags
TAG = re.compile(r"<[^>]+>")


def clean_article(raw: str, suffix: str) -> str:
    """Strip front matter, code-fence markers and HTML tags; keep the words and paragraph breaks."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = FRONT_MATTER.sub("", text, count=1)
    if suffix == ".html":
        text = HTML_DROP.sub(" ", text)
        text = INLINE_CODE.sub(r"`\1`", text)
        text = HTML_BLOCK.sub("\n\n", text)
    else:
        text = FENCE_LINE.sub("", text)
    text = html.unescape(TAG.sub("", text)) if suffix in (".html", ".md", ".markdown") else text
    lines = [line.strip() if suffix == ".html" else line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def chunk_article(text: str, chunk_words: int, overlap_words: int) -> list[tuple[int, int, int]]:
    """Overlapping word windows as (char_start, char_end, n_words) spans of `text`.

    Windows start every `chunk_words - overlap_words` words; the last one ends at the last word,
    and a text shorter than one window is a single chunk.
    """
    words = [m.span() for m in re.finditer(r"\S+", text)]
    if not words:
        return []
    step = chunk_words - overlap_words
    spans = []
    start = 0
    while True:
        end = min(start + chunk_words, len(words))
        spans.append((words[start][0], words[end - 1][1], end - start))
        if end == len(words):
            return spans
        start += step


def article_records(source: str, raw: bytes, cfg: ExtractConfig) -> list[dict[str, Any]]:
    text = clean_article(decode_text(source, raw), Path(source).suffix.lower())
    if not text:
        raise BadInput(source, "empty", "no text left after stripping markup")
    digest = sha256_bytes(raw)
    records = []
    for i, (start, end, n_words) in enumerate(chunk_article(text, cfg.chunk_words, cfg.overlap_words)):
        chunk = text[start:end]
        records.append(
            {
                "id": stable_id(source, i, chunk),
                "kind": "article",
                "source": source,
                "source_sha256": digest,
                "chunk_index": i,
                "char_start": start,
                "char_end": end,
                "n_words": n_words,
                "text": chunk,
            }
        )
    return records


# ---------------------------------------------------------------- code


def code_records(source: str, raw: bytes, cfg: ExtractConfig) -> list[dict[str, Any]]:
    text = decode_text(source, raw)
    language = mining.LANGUAGES[Path(source).suffix]
    try:
        if language == "go":
            found = mining.mine_go_functions(text, source, cfg.code.min_lines)
        else:
            found = mining.mine_python_functions(text, source, cfg.code.min_lines)
    except mining.CodeParseError as err:
        raise BadInput(f"{source}:{err.line}", "parse_error", "does not parse as " + language) from err
    digest = sha256_bytes(raw)
    return [
        {
            "id": stable_id(source, fn.symbol, fn.line, fn.output),
            "kind": "code",
            "source": source,
            "source_sha256": digest,
            "path": fn.path,
            "symbol": fn.symbol,
            "line": fn.line,
            "end_line": fn.end_line,
            "language": fn.language,
            "instruction": fn.instruction,
            "output": fn.output,
        }
        for fn in found
    ]


# ---------------------------------------------------------------- bring-your-own pairs


def normalize_pair(row: Any) -> list[tuple[str, str, str]]:
    """One JSONL row -> [(instruction, input, output)]; raises ValueError naming what is wrong."""
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    if "messages" in row:
        return pairs_from_messages(row["messages"])
    if "question" in row or "answer" in row:
        return [(_text(row, "question"), "", _text(row, "answer"))]
    if "instruction" in row or "output" in row:
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("'input' must be a string")
        return [(_text(row, "instruction"), extra, _text(row, "output"))]
    raise ValueError("expected keys {instruction, input?, output}, {question, answer} or {messages}")


def pairs_from_messages(messages: Any) -> list[tuple[str, str, str]]:
    """Each user turn followed by an assistant turn is one pair; system turns are context, not pairs."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    pairs = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with a string 'content'")
        if message.get("role") == "assistant" and i > 0 and messages[i - 1].get("role") == "user":
            pairs.append((messages[i - 1]["content"].strip(), "", message["content"].strip()))
    if not pairs or any(not q or not a for q, _, a in pairs):
        raise ValueError("'messages' holds no non-empty user turn answered by an assistant turn")
    return pairs


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string")
    return value.strip()


def pair_records(source: str, raw: bytes, cfg: ExtractConfig, skipped: Counter[str]) -> list[dict[str, Any]]:
    text = decode_text(source, raw)
    digest = sha256_bytes(raw)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs = normalize_pair(json.loads(line))
        except (ValueError, RecursionError) as err:  # json.JSONDecodeError is a ValueError too
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            bad = BadInput(f"{source}:{number}", "bad_line", f"malformed pair: {reason}")
            if cfg.on_bad_file == "error":
                raise bad from err
            log.warning("extract: skipped %s", bad)
            skipped["bad_line"] += 1
            continue
        for turn, (instruction, extra, output) in enumerate(pairs):
            records.append(
                {
                    "id": stable_id(source, number, turn, instruction, output),
                    "kind": "pair",
                    "source": source,
                    "source_sha256": digest,
                    "line": number,
                    "instruction": instruction,
                    "input": extra,
                    "output": output,
                }
            )
    if not records and not skipped["bad_line"]:
        raise BadInput(source, "empty", "holds no pairs")
    return records


# ---------------------------------------------------------------- reading the input tree


def decode_text(source: str, raw: bytes) -> str:
    if b"\0" in raw[:8192]:
        raise BadInput(source, "not_utf8", "looks binary (NUL bytes); expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise BadInput(f"{source}:{line}", "not_utf8", f"not UTF-8 text (byte 0x{raw[err.start]:02x})") from err
    text = text.removeprefix("\ufeff")  # a BOM (Windows editors) would hide front matter and break JSON/code parsers
    if not text.strip():
        raise BadInput(source, "empty", "file is empty")
    return text


def input_files(root: Path, kind: str, cfg: ExtractConfig) -> list[Path]:
    """Input files of `kind` under root, sorted by relative path for a deterministic row order."""
    if kind == "articles":
        suffixes = ARTICLE_SUFFIXES
    elif kind == "pairs":
        suffixes = PAIR_SUFFIXES
    else:
        suffixes = tuple(s for s, lang in mining.LANGUAGES.items() if lang in cfg.code.languages)
    real_root = root.resolve()
    # rglob does not descend into folder links; one leading outside is listed so that extract refuses it by name
    return sorted(
        (
            p
            for p in root.rglob("*")
            if (p.is_file() and p.suffix.lower() in suffixes) or (p.is_dir() and outside_root(p, real_root))
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def outside_root(path: Path, real_root: Path) -> Path | None:
    """Where a symlink takes `path` when that is outside `real_root` (a resolved path); None when it stays inside."""
    target = path.resolve()
    return None if target.is_relative_to(real_root) else target


def read_inside(path: Path, source: str, real_root: Path) -> bytes:
    """The bytes of an input file, refusing one that a symlink takes outside extract.root (a link to /etc/shadow)."""
    target = outside_root(path, real_root)
    if target is not None:
        raise BadInput(source, "outside_root", f"is a symlink to {target}, outside extract.root; not read")
    try:
        return path.read_bytes()
    except OSError as err:
        raise BadInput(source, "unreadable", f"cannot be read ({err.strerror or err})") from err


def file_records(path: Path, source: str, real_root: Path, cfg: ExtractConfig, skipped: Counter[str]) -> list[Any]:
    """The records of one input file; raises BadInput for a file that cannot be used."""
    raw = read_inside(path, source, real_root)
    if cfg.kind == "code" and mining.is_vendored(source):
        skipped["vendored"] += 1
        return []
    if cfg.kind == "code" and path.suffix == ".go" and mining.is_generated_go(raw.decode("utf-8", "replace")):
        skipped["generated"] += 1
        return []
    if cfg.kind == "articles":
        return article_records(source, raw, cfg)
    if cfg.kind == "code":
        return code_records(source, raw, cfg)
    return pair_records(source, raw, cfg, skipped)


def extract(root: Path, cfg: ExtractConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    """Read every input file under root into one table; bad files raise or are counted by reason."""
    if not root.is_dir():
        raise UserError(f"extract.root: {root} is not a folder")
    files = input_files(root, cfg.kind, cfg)
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for path in files:
        try:
            records += file_records(path, path.relative_to(root).as_posix(), root.resolve(), cfg, skipped)
        except BadInput as bad:
            if cfg.on_bad_file == "error":
                raise UserError(f"{root.as_posix()}/{bad} (or set extract.on_bad_file: skip)") from bad
            log.warning("extract: skipped %s/%s", root.as_posix(), bad)
            skipped[bad.reason] += 1
    if not records:
        raise UserError(f"extract.root: no {cfg.kind} records found under {root}")
    table = pl.DataFrame(records, schema=SCHEMAS[cfg.kind])
    counts = {"files": len(files), "records": table.height}
    counts |= {f"skipped_{reason}": skipped[reason] for reason in SKIP_REASONS}
    return table, counts


def main(params_path: Path) -> None:
    cfg = section_config(ExtractConfig, load_params(params_path), "extract")
    table, counts = extract(Path(cfg.root), cfg)
    write_parquet(table, OUT)
    write_metrics({"kind": cfg.kind, **counts}, "extract", HEADLINE)
    skipped = {k: v for k, v in counts.items() if k.startswith("skipped_") and v}
    log.info(
        "extract: %d %s files -> %d records (skipped: %s)",
        counts["files"],
        cfg.kind,
        counts["records"],
        skipped or "none",
    )
