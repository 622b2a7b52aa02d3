"""The `loradag` command and its contract with dvc.yaml."""

import errno
import importlib
import importlib.metadata
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from stages.lib.cli import app, config_defaults, flatten, params_help
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


def test_version_names_loradag_and_its_libraries_without_importing_them() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from stages.lib.cli import app; "
        "r = CliRunner().invoke(app, ['--version']); print(r.output); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    lines = out.splitlines()
    assert lines[0] == f"loradag {importlib.metadata.version('loradag')}"
    assert f"torch {importlib.metadata.version('torch')}" in lines and lines[-1] == "False"


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help_lists_every_param_key_it_reads(stage: str) -> None:
    config = getattr(importlib.import_module(f"stages.{stage}"), f"{stage.capitalize()}Config")
    written = flatten(yaml.safe_load((ROOT / "params.yaml").read_text())[stage], stage)
    result = CliRunner().invoke(app, [stage, "--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.splitlines() if line.startswith(f"  {stage}.")]
    assert listed and set(listed) == set(config_defaults(config, stage)) | set(written)


def test_stage_help_shows_the_value_and_the_comment_of_params_yaml(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("split:\n  seed: 7   # my seed,\n            # said twice\n  strategy: group\n")
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  split:\n    cmd: loradag split\n    params: [split, refusal_phrases]\n")
    lines = params_help("split", params, dvc).splitlines()
    assert [" ".join(line.split()) for line in lines if line.startswith("  split.")] == [
        'split.strategy "group"',
        "split.eval_fraction 0.15",
        "split.eval_min_per_source 1",
        "split.eval_max_per_source 20",
        "split.seed 7 # my seed, said twice",
    ]
    assert lines[-1] == f"It also reads refusal_phrases ({dvc} lists them as the stage's params)."


def test_stage_help_stays_light() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from stages.lib.cli import app; "
        "r = CliRunner().invoke(app, ['evaluate', '--help']); assert 'evaluate.batch_size' in r.output, r.output; "
        "print(sorted(m for m in ('torch', 'transformers', 'great_expectations') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_library_log_records_print_once_under_their_own_name() -> None:
    """transformers, huggingface_hub and dvclive install their own stderr handler; each record still prints once."""
    code = """
import logging
from stages.lib.common import log, setup_logging
setup_logging()
from huggingface_hub.utils import logging as hub_logging
from transformers.utils import logging as transformers_logging
import dvclive
hub_logging.get_logger("huggingface_hub.file_download").warning("offline: no Hub")
transformers_logging.get_logger("transformers.modeling_utils").warning("weights not used")
transformers_logging.get_logger("transformers.modeling_utils").info("library chatter")
logging.getLogger("dvclive.live").warning("no git repo")
logging.getLogger("great_expectations.core").info("Skipping registering function")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward from x")
log.info("model: done")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stderr.splitlines() == [
        "WARNING huggingface_hub.file_download: offline: no Hub",
        "WARNING transformers.modeling_utils: weights not used",
        "WARNING dvclive.live: no git repo",
        "INFO loradag: model: done",
    ]


def test_a_tiny_train_and_evaluate_print_only_our_lines(tiny_model_dir: Path, make_pairs: Any, tmp_path: Path) -> None:
    """No library warning (peft's FutureWarning, bitsandbytes' kernel notice) and, in a pipe, no redrawn bars."""
    from stages.lib.common import write_parquet

    shutil.copytree(tiny_model_dir, tmp_path / "models/base")
    write_parquet(make_pairs(8), tmp_path / "data/split/train.parquet")
    write_parquet(make_pairs(3, start=50), tmp_path / "data/split/eval.parquet")
    (tmp_path / "params.yaml").write_text(
        "train: {max_steps: 2, batch_size: 4, max_length: 128}\n"
        "evaluate: {max_new_tokens: 4, rag: {top_k: 0}, gates: {general: {max_items: 0}, safety: {max_items: 0}}}\n"
        "refusal_phrases: [i cannot]\n"
    )
    loradag = str(Path(sys.executable).parent / "loradag")
    for stage in ("train", "evaluate"):
        result = subprocess.run([loradag, stage], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert [line for line in result.stderr.splitlines() if not line.startswith("INFO loradag: ")] == []
        assert f"INFO loradag: {stage}: " in result.stderr


def test_stage_help_survives_a_broken_params_file(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("split: [\n")  # running the stage names this error; help shows the defaults
    lines = params_help("split", params, tmp_path / "dvc.yaml").splitlines()
    assert lines[-1].split() == ["split.seed", "42"]
