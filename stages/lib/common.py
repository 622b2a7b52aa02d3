"""Shared plumbing for every stage: params, typed configs, atomic writes, hashing, logging.

If you are about to write a helper that two stages need, it belongs here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

if typing.TYPE_CHECKING:
    import polars as pl

PARAMS_FILE = Path("params.yaml")

log = logging.getLogger("loradag")


class UserError(Exception):
    """A problem the user can fix (bad input, bad params, unreachable service): no traceback needed."""


class ConfigError(UserError, ValueError):
    """A params.yaml key that is unknown, mistyped or out of range; the message names the key."""


# ---------------------------------------------------------------- the pair table

# Q&A pairs as generate writes them and validate / split / train / evaluate read them.
# kind: article | code | pair (bring-your-own); context: the passage, function source or BYO input an
# answer must be grounded in; chunk_id: the extract record it came from; symbol: code pairs only.
PAIR_COLUMNS = (
    "id", "kind", "question", "answer", "context", "source", "source_sha256", "chunk_id", "symbol", "generator",
)  # fmt: skip


def normalize_question(text: str) -> str:
    """Case, whitespace and punctuation folded away: how duplicate and leaking questions are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def refusal_phrases(params: dict[str, Any]) -> list[str]:
    """The top-level `refusal_phrases` list that validate and evaluate share, checked."""
    phrases = params.get("refusal_phrases")
    if not (isinstance(phrases, list) and phrases and all(isinstance(p, str) and p.strip() for p in phrases)):
        raise ConfigError(f"refusal_phrases must be a non-empty list of non-empty strings, got {phrases!r}")
    return phrases


def refusal_regex(phrase: str) -> str:
    """A refusal phrase as a regex: case-insensitive, any whitespace between words, ' and ’ alike."""
    words = [re.escape(word).replace("'", "['’]") for word in phrase.split()]
    return "(?i)" + r"\s+".join(words)


def pair_schema() -> dict[str, Any]:
    import polars as pl

    return {name: pl.String for name in PAIR_COLUMNS}


# ---------------------------------------------------------------- params and typed configs

T = TypeVar("T")


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml as a dict; a missing or malformed file names itself."""
    if not path.exists():
        raise UserError(f"{path}: not found; run loradag from the project folder that holds params.yaml")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise UserError(f"{path}: top level must be a mapping of sections")
    return params


def section_config(cls: type[T], params: dict[str, Any], section: str) -> T:
    """Build the typed config of one params.yaml section; a missing section takes the defaults."""
    return from_dict(cls, params.get(section) or {}, section)


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by their dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}.{key} is not a known key (known: {', '.join(known)})")
    values = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in raw.items()}
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; or ".join(errors))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads `2e-4` as a string, and `dvc exp run -S` passes such values through.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def require(ok: bool, key: str, message: str) -> None:
    """Range check for a config's __post_init__: `require(x > 0, "split.seed", "must be > 0, got -1")`."""
    if not ok:
        raise ConfigError(f"{key} {message}")


# ---------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions (vLLM may run as another user)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(df: pl.DataFrame, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, statistics=False)


def write_json(obj: Any, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path | str) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_text(text: str, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_table(path: Path, producer: str, columns: Iterable[str]) -> pl.DataFrame:
    """A stage's Parquet input; a missing file, missing columns or no rows stop with what to run."""
    import polars as pl

    if not path.is_file():
        raise UserError(f"{path}: not found; run `loradag {producer}` (or `dvc repro {producer}`) first")
    table = pl.read_parquet(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{path}: lacks column(s) {', '.join(missing)}; rerun `loradag {producer}`")
    if table.is_empty():
        raise UserError(f"{path}: holds no rows; check `loradag {producer}` and metrics/{producer}.json")
    return table


# ---------------------------------------------------------------- hashing and ids


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path | str) -> str:
    """One hash for a file or a folder (relative names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def stable_id(*parts: object) -> str:
    """A short content-derived id: same parts, same id, on every machine."""
    joined = "\0".join(str(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- logging


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s loradag: %(message)s")
