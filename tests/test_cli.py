"""The `loradag` command and its contract with dvc.yaml."""

import importlib
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from stages.cli import STAGES, app

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_stage() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output


def test_cli_import_stays_light() -> None:
    code = "import sys, stages.cli; print(sorted(m for m in ('torch', 'transformers', 'polars') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_user_errors_exit_1_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["extract", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "loradag extract: error:" in result.output and "nope.yaml: not found" in result.output
    assert "Traceback" not in result.output


def test_dvc_yaml_stages_are_cli_commands_and_declare_every_module_path() -> None:
    """Each stage's paths live in its module (INPUT, OUT, METRICS, ...); dvc.yaml must declare each of them."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in dvc.items():
        assert stage["cmd"] == f"loradag {name}" and name in STAGES
        declared = set(stage["deps"])
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
        module = importlib.import_module(f"stages.{name}")
        paths = {str(v) for k, v in vars(module).items() if k.isupper() and isinstance(v, Path)}
        missing = {p for p in paths if p not in declared and not any(d.startswith(p + "/") for d in declared)}
        assert paths and not missing, f"{name}: {sorted(missing)} missing from dvc.yaml"
        assert f"stages/{name}.py" in stage["deps"] and name in stage["params"]
