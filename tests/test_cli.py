"""The `loradag` command and its contract with dvc.yaml."""

import errno
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages.lib.cli import app
from stages.lib.params import STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_stage() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output


def test_cli_import_stays_light() -> None:
    heavy = "('torch', 'transformers', 'polars')"
    code = f"import sys, stages.lib.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_user_errors_exit_1_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["extract", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "loradag extract: error:" in result.output and "nope.yaml: not found" in result.output
    assert "Traceback" not in result.output


def extract_project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "data/raw/articles", tmp_path / "raw")
    (tmp_path / "params.yaml").write_text("extract:\n  root: raw\n", encoding="utf-8")
    return tmp_path


def test_a_stage_that_cannot_write_says_so_in_one_line_and_keeps_the_last_output(tmp_path: Path) -> None:
    """A real write failure: a file-size limit (EFBIG), as a full disk (ENOSPC) would fail the same write."""
    project = extract_project(tmp_path)
    loradag = str(Path(sys.executable).parent / "loradag")
    subprocess.run([loradag, "extract"], cwd=project, check=True, capture_output=True)
    before = (project / "data/extract/records.parquet").read_bytes()
    (project / "raw/more.md").write_text("Another article about adapters and pipelines.\n", encoding="utf-8")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # the records table is about 25 KB

    result = subprocess.run([loradag, "extract"], cwd=project, capture_output=True, text=True, preexec_fn=limit)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "loradag extract: error: data/extract/records.parquet: File too large." in result.stderr
    assert (project / "data/extract/records.parquet").read_bytes() == before
    assert sorted(p.name for p in (project / "data/extract").iterdir()) == ["records.parquet"]


def test_a_read_only_output_folder_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(extract_project(tmp_path))

    def read_only(src: object, dst: object) -> None:  # as root no chmod makes a folder read-only for us
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    result = CliRunner().invoke(app, ["extract"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "loradag extract: error: data/extract/records.parquet: Read-only file system." in result.output
