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
import sys
import tempfile
import typing
import warnings
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


# Library noise on our normal path that no call of ours can avoid (each: logger or warning, exact message, why).
QUIET_LOG_RECORDS = {
    # bitsandbytes (imported by peft) looks for an optional CPU 4-bit kernel at import; loradag never runs 4-bit
    # on the CPU (train.quantization: 4bit is CUDA only), so "pip install kernels" would be bad advice.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
}
QUIET_WARNINGS = [
    # peft reads the deprecated `model.is_gradient_checkpointing` when it wraps a model (PeftModel.__init__):
    # transformers warns about peft's call, not ours; it goes away when peft reads is_activation_checkpointing.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", "transformers.modeling_utils"),
]


class _LibraryHandlers:
    """A record factory that, on a library's first record, removes the stderr handler the library installed
    on its own logger (transformers, datasets, huggingface_hub, dvclive do), so the record reaches the root
    handler instead: printed once, under its own logger name, in the same format as ours."""

    def __init__(self, factory: Any) -> None:
        self.factory, self.adopted = factory, {"loradag"}

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> logging.LogRecord:
        if name not in self.adopted and not name.startswith("uvicorn"):  # `loradag serve`'s own server log
            self.adopted.add(name)
            self.adopt(logging.getLogger(name))
        return self.factory(name, *args, **kwargs)

    @staticmethod
    def adopt(logger: logging.Logger | logging.PlaceHolder | None) -> None:
        while isinstance(logger, logging.Logger) and logger is not logging.root:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler and getattr(handler.stream, "name", "") == "<stderr>":
                    logger.removeHandler(handler)
                    logger.propagate = True
            logger = logger.parent


def _shown(record: logging.LogRecord) -> bool:
    """Our INFO lines; from libraries, warnings and errors only (their INFO chatter would bury our summary)."""
    if record.name == "loradag" or record.name.startswith("loradag."):
        return True
    text = QUIET_LOG_RECORDS.get(record.name)
    return record.levelno >= logging.WARNING and not (text and record.getMessage().startswith(text))


def setup_logging() -> None:
    """One stderr handler for every logger: `INFO loradag: ...` for ours, `WARNING <library logger>: ...`;
    the known library noise silenced; library progress bars off when stderr is not a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_shown)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "loradag", False)]:
        root.removeHandler(old)  # called once per command; in tests, once per invoke
    handler.loradag = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    if not isinstance(logging.getLogRecordFactory(), _LibraryHandlers):
        logging.setLogRecordFactory(_LibraryHandlers(logging.getLogRecordFactory()))
    for category, message, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if not sys.stderr.isatty():
        # A pipe or a file (CI, `dvc repro 2>&1 | tee`): the libraries' redrawn tqdm bars (loading weights,
        # tokenizing, the trainer's steps) would fill it with carriage returns; stages/lib/progress.py writes
        # lines there instead. tqdm reads TQDM_* overrides when it is first imported, which is after this.
        os.environ.setdefault("TQDM_DISABLE", "1")
