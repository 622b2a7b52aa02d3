"""Stage `extract`: raw inputs under `extract.root` -> one Parquet table of records.

`extract.kind` picks the input:
- `articles`: .md/.markdown/.txt/.html/.pdf/.docx files, markup stripped, cut into overlapping word windows;
- `code`: documented functions of at least `code.min_lines` lines in `code.languages`: Go (Go's own go/ast),
  Python (`ast`), TypeScript, JavaScript, Rust, Java, C, C++ (tree-sitter grammars);
- `pairs`: bring-your-own chat data (stages/lib/chat_datasets.py): ShareGPT, OpenAI messages, alpaca or
  question/answer records in .jsonl/.json/.csv/.parquet files or saved HF `datasets` folders; a multi-turn
  conversation is one record (its last turn the pair, the earlier turns its `history`).

Run: `loradag extract` (or `dvc repro extract`). Writes `data/extract/records.parquet` and
`metrics/extract.json` (records; `metrics/all/extract.json`: files, records, skipped by reason).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from stages.lib import articles, chat_datasets, mining
from stages.lib.articles import chunk_article
from stages.lib.common import UserError, log, sha256_bytes, sha256_tree, stable_id, write_metrics, write_parquet
from stages.lib.pairs import encode_history
from stages.lib.params import load_params, require, section_config

OUT = Path("data/extract/records.parquet")
HEADLINE = ("records",)  # metrics/extract.json; skips by reason: metrics/all/extract.json

ARTICLE_SUFFIXES = articles.SUFFIXES
SKIP_REASONS = ("not_utf8", "empty", "parse_error", "bad_line", "tool_call", "vendored", "generated", "outside_root",
                "unreadable")  # fmt: skip

PROVENANCE = {"id": pl.String, "kind": pl.String, "source": pl.String, "source_sha256": pl.String}
SCHEMAS = {
    "articles": PROVENANCE
    | {
        "chunk_index": pl.Int32,
        "page": pl.Int32,
        "char_start": pl.Int64,
        "char_end": pl.Int64,
        "n_words": pl.Int32,
        "text": pl.String,
    },
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
    # line: of a .jsonl file, else the record or row; history: JSON of the turns before (stages/lib/pairs.py)
    "pairs": PROVENANCE
    | {"line": pl.Int32, "instruction": pl.String, "input": pl.String, "output": pl.String, "history": pl.String},
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
class PairsConfig:
    columns: chat_datasets.PairColumns = field(default_factory=chat_datasets.PairColumns)


@dataclass(frozen=True)
class ExtractConfig:
    kind: Literal["articles", "code", "pairs"] = "articles"
    root: str = "data/raw/articles"
    chunk_words: int = 900
    overlap_words: int = 150
    on_bad_file: Literal["error", "skip"] = "error"
    code: CodeConfig = field(default_factory=CodeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)

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


Outcome = list[dict[str, Any]] | BadInput  # one input file: its records, or why it cannot be used

# ---------------------------------------------------------------- articles


def article_records(source: str, raw: bytes, cfg: ExtractConfig) -> list[dict[str, Any]]:
    suffix = Path(source).suffix.lower()
    page_starts: list[int] = []
    try:
        if suffix == ".pdf":
            text, page_starts = articles.pdf_text(raw)
        elif suffix == ".docx":
            text = articles.docx_text(raw)
        else:
            text = articles.clean_article(decode_text(source, raw), suffix)
    except articles.BadArticle as err:
        raise BadInput(source, err.reason, str(err)) from err
    if not text:
        hint = " (a scanned PDF has no text layer: run OCR first)" if suffix == ".pdf" else ""
        raise BadInput(source, "empty", "no text left after stripping markup" + hint)
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
                "page": articles.page_of(start, page_starts) if page_starts else None,
                "char_start": start,
                "char_end": end,
                "n_words": n_words,
                "text": chunk,
            }
        )
    return records


# ---------------------------------------------------------------- code


def code_outcomes(root: Path, files: list[Path], cfg: ExtractConfig, skipped: Counter[str]) -> list[Outcome]:
    """Per code file, in order, its records or why it cannot be used; one batch mines all the texts."""
    real_root = root.resolve()
    outcomes: dict[str, Outcome] = {}
    texts: dict[str, str] = {}
    digests: dict[str, str] = {}
    for path in files:
        source = path.relative_to(root).as_posix()
        try:
            raw = read_inside(path, source, real_root)
            assert raw is not None, "only kind pairs lists folders"
            reason = code_skip_reason(source, raw)
            if reason:
                skipped[reason] += 1
                outcomes[source] = []
                continue
            texts[source], digests[source] = decode_text(source, raw), sha256_bytes(raw)
        except BadInput as bad:
            outcomes[source] = bad
    for source, found in mining.mine_sources(texts, cfg.code.min_lines).items():
        if isinstance(found, mining.PartialParse):  # tree-sitter recovered: the functions around the error are kept
            language = mining.language_of(source, texts[source])
            log.warning("extract: %s:%d: %s syntax error; functions in it skipped", source, found.line, language)
            skipped["partially_parsed"] += 1
            outcomes[source] = [code_record(fn, digests[source]) for fn in found.functions]
        elif isinstance(found, mining.CodeParseError):
            detail = f"does not parse as {mining.language_of(source, texts[source])} ({found.reason})"
            outcomes[source] = BadInput(f"{source}:{found.line}", "parse_error", detail)
        else:
            outcomes[source] = [code_record(fn, digests[source]) for fn in found]
    return [outcomes[path.relative_to(root).as_posix()] for path in files]


def code_skip_reason(source: str, raw: bytes) -> str | None:
    """Why a code file is not ours to mine (vendored, generated), or None."""
    if mining.is_vendored(source):
        return "vendored"
    # utf-8-sig: a byte-order mark must not hide the generated-file marker on the first line
    if mining.is_generated(source, raw.decode("utf-8-sig", "replace")):
        return "generated"
    return None


def code_record(fn: mining.CodeFunction, digest: str) -> dict[str, Any]:
    return {
        "id": stable_id(fn.path, fn.symbol, fn.line, fn.output),
        "kind": "code",
        "source": fn.path,
        "source_sha256": digest,
        "path": fn.path,
        "symbol": fn.symbol,
        "line": fn.line,
        "end_line": fn.end_line,
        "language": fn.language,
        "instruction": fn.instruction,
        "output": fn.output,
    }


# ---------------------------------------------------------------- bring-your-own pairs


def pair_records(
    source: str, path: Path, raw: bytes | None, cfg: ExtractConfig, skipped: Counter[str]
) -> list[dict[str, Any]]:
    """The chat records of one input (a file's bytes, or an HF dataset folder with `raw` None), one per conversation."""
    try:
        if path.suffix.lower() in (".jsonl", ".json") and raw is not None:
            rows = list(chat_datasets.text_rows(source, decode_text(source, raw)))
        else:
            rows = list(chat_datasets.table_rows(source, chat_datasets.read_table(path, raw), cfg.pairs.columns))
    except chat_datasets.read_errors() as err:
        raise BadInput(source, "parse_error", f"cannot be read as a chat dataset: {err}") from err
    digest = sha256_bytes(raw) if raw is not None else sha256_tree(path)
    records = []
    for row in rows:
        found = chat_row(row, cfg, skipped)
        if found is not None:
            records.append(pair_record(source, digest, row.number, found))
    if not records and not (skipped["bad_line"] or skipped["tool_call"]):
        raise BadInput(source, "empty", "holds no pairs")
    return records


def chat_row(row: chat_datasets.Row, cfg: ExtractConfig, skipped: Counter[str]) -> chat_datasets.ChatRecord | None:
    """A row as a chat record; None for a row skipped (and counted): tool calls always, malformed ones on skip."""
    try:
        if isinstance(row.value, Exception):
            raise row.value
        return chat_datasets.chat_record(row.value, cfg.pairs.columns)
    except chat_datasets.ToolTurns as err:
        log.warning("extract: skipped %s: %s (tool and function calls are not trained on)", row.where, err)
        skipped["tool_call"] += 1
        return None
    except (ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        bad = BadInput(row.where, "bad_line", f"malformed pair: {reason}")
        if cfg.on_bad_file == "error":
            raise bad from err
        log.warning("extract: skipped %s", bad)
        skipped["bad_line"] += 1
        return None


def pair_record(source: str, digest: str, number: int, chat: chat_datasets.ChatRecord) -> dict[str, Any]:
    history = encode_history(chat.history)
    return {
        "id": stable_id(source, number, history, chat.question, chat.input, chat.answer),
        "kind": "pair",
        "source": source,
        "source_sha256": digest,
        "line": number,
        "instruction": chat.question,
        "input": chat.input,
        "output": chat.answer,
        "history": history,
    }


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
        suffixes = chat_datasets.FILE_SUFFIXES
    else:
        suffixes = tuple(s for s, lang in mining.LANGUAGES.items() if lang in cfg.code.languages)
        suffixes += (".h",) if "cpp" in cfg.code.languages else ()  # a header is C or C++ by its content
    real_root = root.resolve()
    datasets = hf_datasets(root, real_root) if kind == "pairs" else []
    # rglob does not descend into folder links; one leading outside is listed so that extract refuses it by name
    found = [
        p
        for p in root.rglob("*")
        if ((p.is_file() and p.suffix.lower() in suffixes) or (p.is_dir() and outside_root(p, real_root)))
        and not any(p.is_relative_to(folder) for folder in datasets)
        and p.name != chat_datasets.DATASET_DICT_FILE  # a DatasetDict's index: its split folders are the datasets
    ]
    return sorted(found + datasets, key=lambda p: p.relative_to(root).as_posix())


def hf_datasets(root: Path, real_root: Path) -> list[Path]:
    """Saved HF `datasets` folders under root (inside it): each is one input, its files are not read one by one."""
    folders = {p.parent for p in root.rglob(chat_datasets.HF_DATASET_FILES[0])}
    return [f for f in folders if chat_datasets.is_hf_dataset(f) and not outside_root(f, real_root)]


def outside_root(path: Path, real_root: Path) -> Path | None:
    """Where a symlink takes `path` when that is outside `real_root` (a resolved path); None when it stays inside."""
    target = path.resolve()
    return None if target.is_relative_to(real_root) else target


def read_inside(path: Path, source: str, real_root: Path) -> bytes | None:
    """The bytes of an input file (None for an HF dataset folder), refusing one that a symlink takes outside
    extract.root (a link to /etc/shadow)."""
    target = outside_root(path, real_root)
    if target is not None:
        raise BadInput(source, "outside_root", f"is a symlink to {target}, outside extract.root; not read")
    if path.is_dir():
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        raise BadInput(source, "unreadable", f"cannot be read ({err.strerror or err})") from err


def file_records(path: Path, source: str, real_root: Path, cfg: ExtractConfig, skipped: Counter[str]) -> list[Any]:
    """The records of one article or pairs file; raises BadInput for a file that cannot be used."""
    raw = read_inside(path, source, real_root)
    if cfg.kind == "pairs":
        return pair_records(source, path, raw, cfg, skipped)
    assert raw is not None, "only kind pairs lists folders"
    return article_records(source, raw, cfg)


def file_outcomes(root: Path, files: list[Path], cfg: ExtractConfig, skipped: Counter[str]) -> list[Outcome]:
    """Per input file, in order, its records or why it cannot be used."""
    if cfg.kind == "code":
        return code_outcomes(root, files, cfg, skipped)
    outcomes: list[Outcome] = []
    for path in files:
        try:
            outcomes.append(file_records(path, path.relative_to(root).as_posix(), root.resolve(), cfg, skipped))
        except BadInput as bad:
            outcomes.append(bad)
    return outcomes


def extract(root: Path, cfg: ExtractConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    """Read every input file under root into one table; bad files raise or are counted by reason."""
    if not root.is_dir():
        raise UserError(f"extract.root: {root} is not a folder")
    files = input_files(root, cfg.kind, cfg)
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for outcome in file_outcomes(root, files, cfg, skipped):
        if not isinstance(outcome, BadInput):
            records += outcome
        elif cfg.on_bad_file == "error":
            raise UserError(f"{root.as_posix()}/{outcome} (or set extract.on_bad_file: skip)") from outcome
        else:
            log.warning("extract: skipped %s/%s", root.as_posix(), outcome)
            skipped[outcome.reason] += 1
    if not records:
        raise UserError(f"extract.root: no {cfg.kind} records found under {root}")
    table = pl.DataFrame(records, schema=SCHEMAS[cfg.kind])
    counts = {"files": len(files), "records": table.height}
    counts |= {f"skipped_{reason}": skipped[reason] for reason in SKIP_REASONS}
    counts["partially_parsed"] = skipped["partially_parsed"]  # code files mined around a syntax error
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
