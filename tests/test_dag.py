"""dvc.yaml against the code: each stage sees the modules it runs, the paths it touches, only the params it reads."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import yaml
from dag import REPO, stage_modules
from project import copy_project

from stages.lib.params import STAGES

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# written by a stage but deliberately not a DVC output (stages/lib/checkpoints.py says why)
SCRATCH = {"models/checkpoints"}


def test_every_stage_is_a_cli_command_in_dag_order() -> None:
    assert list(DVC) == list(STAGES)
    assert all(stage["cmd"] == f"loradag {name}" for name, stage in DVC.items())


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_name_exactly_the_project_modules_the_stage_runs(stage: str) -> None:
    declared = {dep for dep in DVC[stage]["deps"] if dep.startswith("stages/")}
    expected = stage_modules(stage)
    assert declared == expected, f"dvc.yaml {stage}: missing {expected - declared}, not imported {declared - expected}"


def test_package_inits_hold_only_a_docstring() -> None:
    """Importing stages.lib runs its __init__.py: it may stay out of the deps only while it has no code."""
    for init in (REPO / "stages").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body), init


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_and_outs_declare_every_path_the_stage_module_names(stage: str) -> None:
    """Each stage's paths live in its module (INPUT, OUT, METRICS, ...); dvc.yaml must declare each of them."""
    declared = set(DVC[stage]["deps"])
    for key in ("outs", "metrics", "plots"):
        for entry in DVC[stage].get(key, []):
            declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    module = importlib.import_module(f"stages.{stage}")
    paths = {str(v) for k, v in vars(module).items() if k.isupper() and isinstance(v, Path)}
    paths -= SCRATCH
    missing = {p for p in paths if p not in declared and not any(d.startswith(p + "/") for d in declared)}
    assert paths and not missing, f"{stage}: {sorted(missing)} missing from dvc.yaml"


def test_params_are_as_narrow_as_what_changes_the_outputs() -> None:
    generate = DVC["generate"]["params"]
    assert "generate" not in generate and "generate.${generate.backend}" in generate
    assert "generate.cache_dir" not in generate
    evaluate = {"evaluate", "extract.kind", "refusal_phrases", "train.system_prompt", "train.chat_template"}
    assert evaluate == set(DVC["evaluate"]["params"])
    assert {"export", "train.chat_template"} == set(DVC["export"]["params"])  # the exported tokenizer's template


def changed_stages(project, *stages: str) -> set[str]:  # noqa: ANN001
    return set(json.loads(project.dvc("status", "--json", *stages) or "{}"))


def test_real_dvc_reruns_what_a_change_touches_and_nothing_else(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "loradag")
    project.dvc("repro", "generate")  # extract + generate: no model needed
    assert changed_stages(project, "extract", "generate") == set()

    project.set_params({"generate.openai.model": "another-model", "generate.cache_dir": ".cache/elsewhere"})
    assert changed_stages(project, "extract", "generate") == set()  # extractive reads neither

    helper = project.root / "stages/lib/extractive.py"
    helper.write_text(helper.read_text() + "\n# an edit\n")
    assert changed_stages(project, "extract", "generate") == {"generate"}  # only generate imports it

    common = project.root / "stages/lib/common.py"
    common.write_text(common.read_text() + "\n# an edit\n")
    assert changed_stages(project, "extract", "generate") == {"extract", "generate"}

    project.dvc("repro", "generate")
    project.set_params({"generate.pairs_per_chunk": 3})
    assert changed_stages(project, "extract", "generate") == {"generate"}
    project.set_params({"generate.pairs_per_chunk": 5, "generate.backend": "openai"})
    assert changed_stages(project, "extract", "generate") == {"generate"}  # now the openai section counts


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_output_persists_so_a_failed_run_keeps_the_last_good_one(stage: str) -> None:
    """Without persist DVC deletes outputs before the stage runs; tests/test_recovery.py shows why that matters."""
    for key in ("outs", "metrics"):
        for entry in DVC[stage].get(key, []):
            assert isinstance(entry, dict) and next(iter(entry.values())).get("persist") is True, (stage, entry)
