"""Checkpoints and resume (stages/lib/checkpoints.py), and data-parallel processes (stages/lib/launch.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dag import REPO
from project import QUICK_PARAMS, Project, copy_project

from stages import train
from stages.lib import checkpoints, launch
from stages.lib.common import UserError, sha256_tree, write_parquet
from stages.lib.params import ConfigError, from_dict

# ---------------------------------------------------------------- which checkpoint a rerun resumes from


def fake_checkpoint(folder: Path, step: int, state: str | None = '{"global_step": 1}') -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_a_rerun_of_the_same_run_resumes_from_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    assert checkpoints.prepare(folder, "fp-a", {"params": 1}) is None  # nothing yet: fresh
    fake_checkpoint(folder, 2)
    fake_checkpoint(folder, 10)
    fake_checkpoint(folder, 12, state=None)  # killed before the trainer wrote its state
    fake_checkpoint(folder, 14, state='{"global_st')  # killed while writing it
    assert checkpoints.prepare(folder, "fp-a", {"params": 1}) == folder / "checkpoint-10"  # 10 > 2: by step
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10", "checkpoint-2", "fingerprint.json"]


def test_checkpoints_of_a_different_run_are_deleted_and_the_run_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "checkpoints"
    checkpoints.prepare(folder, "fp-a", {"params": 1})
    fake_checkpoint(folder, 4)
    with caplog.at_level(logging.INFO, logger="loradag"):
        assert checkpoints.prepare(folder, "fp-b", {"params": 2}) is None
    assert "starting fresh" in caplog.text and "different run" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["fingerprint.json"]
    assert json.loads((folder / "fingerprint.json").read_text())["fingerprint"] == "fp-b"


def test_the_fingerprint_changes_with_any_part() -> None:
    parts = {"sha256": {"train": "a" * 64}, "params": {"learning_rate": 2e-4}}
    same = json.loads(json.dumps(parts))
    assert checkpoints.fingerprint(parts) == checkpoints.fingerprint(same)
    assert checkpoints.fingerprint(parts) != checkpoints.fingerprint(parts | {"params": {"learning_rate": 1e-4}})


def test_the_fingerprinted_code_is_the_train_stage_code_in_dvc_yaml() -> None:
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    code = {dep.removesuffix(".py").replace("/", ".") for dep in deps if dep.startswith("stages/")}
    assert set(train.CODE) == code


# ---------------------------------------------------------------- processes


def test_processes_auto_is_one_per_gpu_and_one_without() -> None:
    assert launch.resolve_processes("auto", 0) == 1
    assert launch.resolve_processes("auto", 4) == 4
    assert launch.resolve_processes(3, 0) == 3


@pytest.mark.parametrize(
    ("processes", "quantization", "batch_size", "message"),
    [
        (2, "4bit", 8, "train.processes: 2 with train.quantization: 4bit"),
        (3, "none", 8, r"train.batch_size \(8\) must be a multiple of the 3 processes"),
    ],
)
def test_processes_that_cannot_work_are_refused_by_key(
    processes: int, quantization: str, batch_size: int, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError, match=message):
        launch.processes_for(processes, quantization, batch_size, cuda_devices=0)


def test_the_launch_runs_loradag_train_under_accelerate(tmp_path: Path) -> None:
    command = launch.launch_command(2, Path("params.yaml"), "", cuda=False)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and command[command.index("--num_processes") + 1] == "2"
    assert command[-5:] == ["-m", "stages.lib.cli", "train", "--params", "params.yaml"]
    fsdp = launch.launch_command(4, Path("params.yaml"), "configs/accelerate/fsdp.yaml", cuda=True)
    assert fsdp[fsdp.index("--config_file") + 1] == "configs/accelerate/fsdp.yaml" and "--multi_gpu" not in fsdp


def test_each_process_takes_its_share_of_the_batch_and_checkpoints_are_on(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = train.TrainConfig(batch_size=8, grad_accum=2)
    assert train.run_args(cfg, 2)["per_device_train_batch_size"] == 4  # global batch 2 x 4 x 2 = 8 x 2, as alone
    args = train.run_args(cfg, 1)
    assert (args["per_device_train_batch_size"], args["save_strategy"], args["save_steps"]) == (8, "steps", 0.2)
    assert train.run_args(train.TrainConfig(save_steps=0), 1)["save_strategy"] == "no"
    assert train.run_args(train.TrainConfig(save_steps=20), 1)["save_steps"] == 20  # a step count
    with pytest.raises(ConfigError, match=r"train.save_steps must be a step count >= 0 .* got 1.5"):
        from_dict(train.TrainConfig, {"save_steps": 1.5}, "train")


@pytest.mark.parametrize("example", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"])
def test_the_accelerate_config_examples_are_valid_accelerate_configs(example: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs/accelerate" / example))
    assert config.num_machines == 1 and config.distributed_type.name in ("MULTI_GPU", "FSDP", "DEEPSPEED")


# ---------------------------------------------------------------- end to end on the tiny model


def tiny_project(root: Path, tiny_model_dir: Path, make_pairs: Any, params: str) -> Path:
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "models/base")
    write_parquet(make_pairs(16), root / "data/split/train.parquet")
    write_parquet(make_pairs(4, start=50), root / "data/split/eval.parquet")
    (root / "params.yaml").write_text("train:\n  max_steps: 4\n  batch_size: 4\n  max_length: 128\n" + params)
    return root


def run_train(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(root)
    train.main(Path("params.yaml"))
    return json.loads(Path("metrics/all/train.json").read_text())


def curve(root: Path, name: str = "train/loss") -> list[tuple[int, float]]:
    rows = (root / f"dvclive/train/plots/metrics/{name}.tsv").read_text().splitlines()[1:]
    return [(int(step), float(value)) for step, value in (row.split("\t") for row in rows)]


def test_a_run_that_crashed_resumes_to_the_adapter_and_curves_of_an_uninterrupted_run(
    tiny_model_dir: Path, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from trl import SFTTrainer

    whole = tiny_project(tmp_path / "whole", tiny_model_dir, make_pairs, "  save_steps: 2\n")
    expected = run_train(whole, monkeypatch)
    assert not (whole / "models/checkpoints").exists()  # a finished run leaves none

    crashed = tiny_project(tmp_path / "crashed", tiny_model_dir, make_pairs, "  save_steps: 2\n")
    step = SFTTrainer.training_step
    calls = []

    def crash_at_step_4(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the machine went down")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", crash_at_step_4)
    with pytest.raises(RuntimeError, match="went down"):
        run_train(crashed, monkeypatch)
    assert (crashed / "models/checkpoints/checkpoint-2/trainer_state.json").is_file()
    assert not (crashed / "models/adapter").exists()
    monkeypatch.setattr(SFTTrainer, "training_step", step)
    with caplog.at_level(logging.INFO, logger="loradag"):
        resumed = run_train(crashed, monkeypatch)
    assert "resuming from models/checkpoints/checkpoint-2" in caplog.text

    for output in ("models/adapter/adapter_model.safetensors", "dvclive/train"):
        assert sha256_tree(crashed / output) == sha256_tree(whole / output), output  # bitwise
    assert [s for s, _ in curve(crashed)] == [1, 2, 3, 4]  # no step twice
    same = ("train_loss", "eval_loss", "steps", "epochs", "trainable_params")
    assert {k: resumed[k] for k in same} == {k: expected[k] for k in same}
    assert not (crashed / "models/checkpoints").exists()


@pytest.mark.slow
def test_two_cpu_processes_train_what_one_process_trains(
    tiny_model_dir: Path, make_pairs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    params = "  learning_rate: 0.01\n  max_steps: 6\n  save_steps: 0\n"  # a rate at which the loss visibly falls
    one = tiny_project(tmp_path / "one", tiny_model_dir, make_pairs, params)
    two = tiny_project(tmp_path / "two", tiny_model_dir, make_pairs, params + "  processes: 2\n")
    alone, together = run_train(one, monkeypatch), run_train(two, monkeypatch)

    assert sorted(together) == sorted(alone) and together["steps"] == alone["steps"] == 6
    for (step_1, loss_1), (step_2, loss_2) in zip(curve(one), curve(two), strict=True):
        assert step_1 == step_2 and loss_2 == pytest.approx(loss_1, rel=2e-3), step_1
    assert curve(one)[-1][1] < curve(one)[0][1] - 0.2  # it did learn, so matching curves mean something
    assert together["eval_loss"] == pytest.approx(alone["eval_loss"], rel=2e-3)
    assert sorted(p.name for p in (two / "models/adapter").iterdir()) == sorted(
        p.name for p in (one / "models/adapter").iterdir()
    )
    evidence = json.loads((two / "models/adapter/evidence.json").read_text())
    assert evidence["params"]["processes"] == 2


# ---------------------------------------------------------------- kill -9 under real `dvc repro`

TRAIN_OUTPUTS = ("models/adapter", "dvclive/train")


def forget_train_outputs(project: Project) -> None:
    """So that `dvc repro train` trains again (missing outputs), with nothing of the last run to fall back on."""
    for output in TRAIN_OUTPUTS:
        shutil.rmtree(project.root / output)
    (project.root / "metrics/all/train.json").unlink()


def kill_9_after_first_checkpoint(project: Project) -> Path:
    """Start `dvc repro train`, kill -9 its process group once a checkpoint is complete; that checkpoint."""
    folder = project.root / train.CHECKPOINTS
    log = project.root.parent / "train-killed.log"
    with log.open("w") as out:
        command = [sys.executable, "-m", "dvc", "repro", "train"]
        process = subprocess.Popen(command, cwd=project.root, env=project.env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 600
        while not checkpoints.complete_checkpoints(folder):
            assert process.poll() is None, f"train ended before its first checkpoint:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert not (project.root / "models/adapter").exists()  # it really was killed mid-training
    return checkpoints.complete_checkpoints(folder)[-1]


@pytest.mark.slow
def test_kill_9_under_dvc_repro_then_rerun_resumes_to_the_adapter_of_an_uninterrupted_run(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # the tiny model as models/base (the model stage copies the folder): the run is seconds, not minutes, and 18
    # steps after the first checkpoint leave the kill plenty of time to land mid-training
    tiny = {"model.base": str(tiny_model_dir), "train.max_steps": 20, "train.save_steps": 2}
    project = copy_project(tmp_path / "loradag", QUICK_PARAMS | tiny)
    project.dvc("repro", "train")
    uninterrupted = {output: sha256_tree(project.root / output) for output in TRAIN_OUTPUTS}
    assert not (project.root / train.CHECKPOINTS).exists()

    forget_train_outputs(project)
    killed_at = kill_9_after_first_checkpoint(project)
    left_by_the_kill = tmp_path / "left-by-the-kill"
    shutil.copytree(project.root / train.CHECKPOINTS, left_by_the_kill)
    log = project.dvc("repro", "train")
    assert f"resuming from {train.CHECKPOINTS}/{killed_at.name}" in log
    resumed = {output: sha256_tree(project.root / output) for output in TRAIN_OUTPUTS}
    print(f"\nkilled with {killed_at.name} complete; uninterrupted {uninterrupted}; resumed {resumed}")
    assert resumed == uninterrupted  # the adapter, bitwise, and the loss curves: same steps, same values
    assert "Data and pipelines are up to date." in project.dvc("status", "train")

    # the same kill, then another experiment (a changed param): the checkpoint is not its own
    shutil.copytree(left_by_the_kill, project.root / train.CHECKPOINTS)
    project.set_params({"train.max_steps": 2})
    log = project.dvc("repro", "train")
    assert "starting fresh" in log and "resuming" not in log
    assert json.loads(project.read("metrics/all/train.json"))["steps"] == 2
