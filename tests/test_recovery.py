"""Under real `dvc repro`: a stage that fails or is killed leaves the last good outputs, metrics included.

DVC deletes a stage's outputs before running it unless they are `persist: true`; every loradag output is,
and every stage replaces its outputs atomically at the end. So after a failure or a kill -9 each output is
byte for byte the last good one, and once the cause is undone `dvc status` says up to date: nothing to rerun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml
from project import QUICK_PARAMS, Project, copy_project

from stages.lib.common import sha256_tree

DEAD_ENDPOINT = {"base_url": "http://127.0.0.1:9/v1", "retries": 0, "timeout_s": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = copy_project(tmp_path_factory.mktemp("recovery") / "loradag", QUICK_PARAMS)
    project.dvc("repro")
    project.commit("a good run")
    return project


def outputs(project: Project) -> dict[str, str | None]:
    """Each output dvc.lock records (metrics and curves too) -> a hash of what is on disk now (None: missing)."""
    lock = yaml.safe_load(project.read("dvc.lock"))
    found = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = project.root / out["path"]
            found[out["path"]] = sha256_tree(path) if path.exists() else None
    assert None not in found.values() and len(found) >= 16
    return found


def assert_recovered(project: Project, before: dict[str, str | None], undo: Any) -> None:
    assert outputs(project) == before  # nothing deleted, nothing half-written
    undo()
    assert "Data and pipelines are up to date." in project.dvc("status")


def set_params_temporarily(project: Project, values: dict[str, Any]) -> Any:
    original = project.read("params.yaml")
    project.set_params(values)
    return lambda: (project.root / "params.yaml").write_text(original)


@pytest.mark.slow
def test_failing_stages_leave_the_last_good_outputs(project: Project) -> None:
    before = outputs(project)

    bad = project.root / "data/raw/articles/broken.md"
    bad.write_bytes(b"\xff\xfe not text")
    assert "raw/articles/broken.md" in project.dvc("repro", check=False)
    assert_recovered(project, before, bad.unlink)

    undo = set_params_temporarily(project, {"generate.backend": "openai", "generate.openai": DEAD_ENDPOINT})
    assert "no answer from http://127.0.0.1:9/v1" in project.dvc("repro", check=False)
    assert_recovered(project, before, undo)

    undo = set_params_temporarily(project, {"train.lora.target_modules": ["no_such_proj"]})
    assert "'no_such_proj' is not a linear layer" in project.dvc("repro", check=False)
    assert_recovered(project, before, undo)

    undo = set_params_temporarily(project, {"evaluate.judge.backend": "openai", "evaluate.judge.openai": DEAD_ENDPOINT})
    assert "evaluate.judge.openai: no answer" in project.dvc("repro", check=False)
    assert_recovered(project, before, undo)


def kill_while_running(project: Project, stage: str, seconds_in: float) -> None:
    """Start `dvc repro <stage>`, and kill -9 its whole process group `seconds_in` after the stage starts."""
    log = project.root.parent / f"{stage}-killed.log"
    with log.open("w") as out:
        command = [sys.executable, "-m", "dvc", "repro", stage]
        process = subprocess.Popen(command, cwd=project.root, env=project.env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while f"Running stage '{stage}'" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(seconds_in)
        assert process.poll() is None, f"{stage} finished before the kill:\n{log.read_text()}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "seconds_in"), [("model", 8.0), ("train", 10.0), ("evaluate", 10.0)])
def test_kill_9_mid_stage_leaves_the_last_good_outputs(project: Project, stage: str, seconds_in: float) -> None:
    before = outputs(project)
    module = project.root / f"stages/{stage}.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit that makes the stage rerun\n")
    kill_while_running(project, stage, seconds_in)
    assert_recovered(project, before, lambda: module.write_text(original))
    assert "Data and pipelines are up to date." in project.dvc("repro")  # and DVC's own lock was released
