"""A throwaway copy of this project in its own git repo, for tests that drive real DVC end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough for CI's 2 CPU cores, big enough that every stage does real work.
QUICK_PARAMS = {
    "train.max_steps": 3,
    "train.batch_size": 4,
    "train.max_length": 256,
    "evaluate.max_questions": 6,
    "evaluate.max_new_tokens": 24,
    "evaluate.batch_size": 6,
    "export.allow_discarded": True,  # 3 steps may not beat the base; the whole DAG still runs
    "evaluate.gates.general.max_items": 6,
    "evaluate.gates.safety.max_items": 6,
}


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        bin_dir = str(Path(sys.executable).parent)  # where `loradag` and `dvc` live
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args: str, check: bool = True) -> str:
        result = self.run(sys.executable, "-m", "dvc", *args, check=check)
        return result.stdout + result.stderr

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)

    def set_params(self, values: dict[str, Any]) -> None:
        """Set dotted keys (`train.lora.r`) in params.yaml."""
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for dotted, value in values.items():
            *parents, leaf = dotted.split(".")
            node = params
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def read(self, relative: str) -> str:
        return (self.root / relative).read_text()


def copy_project(dest: Path, params: dict[str, Any] | None = None) -> Project:
    """Copy the project's files (tracked, and new ones git does not ignore) into a fresh git repo at dest."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not name.startswith(("metrics/", "bench/results/")) and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    project = Project(dest)
    project.run("git", "init", "-q", "-b", "main")
    if params:
        project.set_params(params)
    project.commit("copy of loradag")
    return project


def run_generate_stage(root: Path, monkeypatch: Any, openai: dict[str, Any], texts: list[str], **generate: Any) -> dict:
    """Run the real generate stage in `root` with the openai backend on one article chunk per text; its metrics."""
    import json

    import polars as pl

    from stages.generate import main

    monkeypatch.chdir(root)
    params = {"generate": {"backend": "openai", "openai": openai, **generate}}
    (root / "params.yaml").write_text(json.dumps(params), encoding="utf-8")  # JSON is YAML
    chunk = {"kind": "article", "source": "a.md", "source_sha256": "0" * 64, "char_start": 0}
    rows = [chunk | {"id": f"id{i}", "chunk_index": i, "char_end": len(t), "n_words": len(t.split()), "text": t}
            for i, t in enumerate(texts)]  # fmt: skip
    (root / "data" / "extract").mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(root / "data" / "extract" / "records.parquet")
    main(root / "params.yaml")
    return json.loads((root / "metrics" / "all" / "generate.json").read_text())  # every number, not just pairs
