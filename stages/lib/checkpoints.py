"""Training checkpoints that survive a crash or a kill, and the rule for when a rerun may resume from them.

The trainer saves a checkpoint (LoRA weights, optimizer, scheduler, RNG states, trainer state with the loss
history) every `train.save_steps` optimizer steps into `models/checkpoints/`. That folder is not a DVC output:
DVC never deletes what it does not track, and a clone or `dvc pull` (which has no checkpoints) must not make
`train` look stale. A rerun resumes from the newest complete checkpoint only if `fingerprint.json` there equals
the fingerprint of this run: the hashes of the data, the base model, the environment lock, the training code
and the params. Anything else (new data, a param changed by `dvc exp run -S`, edited code) deletes the old
checkpoints and starts fresh. A run that finishes deletes its checkpoints: nothing can resume from them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from stages.lib.common import log, sha256_bytes, sha256_file, write_json

FINGERPRINT = "fingerprint.json"
PREFIX = "checkpoint-"  # transformers' folder name: checkpoint-<global step>
STATE = "trainer_state.json"  # the trainer writes it last: a checkpoint without it was cut short


def fingerprint(parts: dict[str, Any]) -> str:
    """One hash of everything that determines a run (file hashes, params): same parts, same hash."""
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def code_hashes(modules: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each module's source: a checkpoint of other code is not resumed."""
    import importlib

    return {name: sha256_file(importlib.import_module(name).__file__) for name in modules}


def complete_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints in `folder` the trainer finished writing, oldest step first."""
    found = []
    for path in folder.glob(PREFIX + "*"):
        step = path.name.removeprefix(PREFIX)
        if path.is_dir() and step.isdigit() and _readable_state(path / STATE):
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def _readable_state(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or truncated by a kill while it was written
        return False
    return True


def resume_point(folder: Path, run_fingerprint: str) -> Path | None:
    """The checkpoint this run may resume from: the newest complete one of a run with the same fingerprint."""
    try:
        stored = json.loads((folder / FINGERPRINT).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None
    if stored != run_fingerprint:
        return None
    done = complete_checkpoints(folder)
    return done[-1] if done else None


def prepare(folder: Path, run_fingerprint: str, parts: dict[str, Any]) -> Path | None:
    """Keep `folder`'s checkpoints if they belong to this run (-> the one to resume from), else empty it.

    Called by the one process that owns the folder, before any training process starts.
    """
    resume = resume_point(folder, run_fingerprint)
    if resume is not None:
        for path in folder.glob(PREFIX + "*"):
            if path not in complete_checkpoints(folder):
                shutil.rmtree(path)  # cut short by the kill: the trainer would trip over it
        log.info("train: resuming from %s (the same data, params and code)", resume)
        return resume
    if complete_checkpoints(folder):
        log.info("train: starting fresh: %s holds checkpoints of a different run (data, params or code changed); "
                 "deleting them", folder)  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_json({"fingerprint": run_fingerprint, "parts": parts}, folder / FINGERPRINT)
    return None


def no_checkpoint_at_end() -> Any:
    """A trainer callback: the adapter is written right after the last step, so a checkpoint there (which the
    trainer would save) would only be deleted unread."""
    from transformers import TrainerCallback

    class NoCheckpointAtEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= state.max_steps:
                control.should_save = False

    return NoCheckpointAtEnd()


def clear(folder: Path) -> None:
    """After a finished run: its checkpoints can never be resumed (a rerun of the same run has nothing to do)."""
    shutil.rmtree(folder, ignore_errors=True)
