"""Plumbing every stage uses: the user-facing error, logging, atomic outputs, table input, hashing."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

if typing.TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("loradag")


class UserError(Exception):
    """A problem the user can fix (bad input, bad params, unreachable service): no traceback needed."""


# ---------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = _prepare(Path(path))
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions (vLLM may run as another user)
    try:
        with _named(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = _prepare(Path(path))
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        with _named(path):
            yield tmp
            # Two renames, then the slow delete: a kill at any point leaves a whole old or a whole new folder.
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """A write error without a file name (a full disk fails write(), not open()) names the output."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.loradag-"


def _prepare(path: Path) -> Path:
    """Make the parent folder, and remove temporaries of `path` that a killed run left behind.

    Stages run one at a time (DVC's lock) and each writes only its own outputs, so such a leftover is stale.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(glob.escape(_temp_prefix(path)) + "*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(df: pl.DataFrame, path: Path | str) -> None:
    buffer = io.BytesIO()  # serialised first, so a full disk is an OSError naming the file, not a polars error
    df.write_parquet(buffer, statistics=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def write_json(obj: Any, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_metrics(metrics: dict[str, Any], stage: str, headline: tuple[str, ...]) -> None:
    """metrics/<stage>.json: the few numbers people compare (DVC metrics, so `dvc metrics show` and `dvc exp show`
    fit a terminal); metrics/all/<stage>.json: every number of the stage (per source, per rule, timings)."""
    write_json(metrics, Path("metrics/all") / f"{stage}.json")
    write_json({key: metrics[key] for key in headline if key in metrics}, Path("metrics") / f"{stage}.json")


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
