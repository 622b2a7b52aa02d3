"""The `loradag` command and its contract with dvc.yaml."""

import subprocess
import sys
from pathlib import Path

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
