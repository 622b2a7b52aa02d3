"""The whole DAG through real `dvc repro` on the real embedded SmolLM2, in a throwaway copy of the project."""

import json
from pathlib import Path

import pytest
from dag import stage_modules
from project import QUICK_PARAMS, copy_project

from stages.lib.params import STAGES
from stages.lib.report import HEADLINES


def ran(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


@pytest.mark.slow
def test_full_dag_on_smollm2_then_only_what_changed_reruns(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "loradag", QUICK_PARAMS)
    assert ran(project.dvc("repro")) == list(STAGES)

    adapter = sorted(p.name for p in (project.root / "models/adapter").iterdir())
    assert adapter == ["adapter_config.json", "adapter_model.safetensors", "evidence.json"]
    metrics = json.loads(project.read("metrics/all/evaluate.json"))
    for key in ("token_f1", "refusal_rate", "degenerate_rate"):
        assert {f"base.{key}", f"adapter.{key}", f"delta.{key}"} <= metrics.keys()
    for key in ("token_f1.ci_low", "token_f1.ci_high", "base+rag.token_f1.ci_low", "adapter+rag.token_f1.ci_high"):
        assert f"delta.{key}" in metrics, key
    assert {metrics[f"gate.{gate}.result"] for gate in ("general", "safety", "latency")} <= {"pass", "fail", "unclear"}
    assert metrics["decision.keep"] is (metrics["decision.verdict"] == "keep")
    assert (
        project.read("reports/decision.md")
        .splitlines()[2]
        .startswith(f"**Verdict: {HEADLINES[metrics['decision.verdict']]}.**")
    )
    assert json.loads(project.read("metrics/model.json"))["parameters"] == 134_515_008

    assert ran(project.dvc("repro")) == []  # nothing changed: a no-op
    project.commit("run the pipeline")

    for module in ("stages/lib/backends.py", "stages/lib/pairs.py", "stages/lib/cli.py"):
        path = project.root / module
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        stale = set(json.loads(project.dvc("status", "--json")))
        assert stale == {stage for stage in STAGES if module in stage_modules(stage)}, module
        path.write_text(original)
    assert "up to date" in project.dvc("status")

    article = project.root / "data/raw/articles/reading-the-metrics.md"
    article.write_text(article.read_text() + "\nThe report lives in `reports/decision.md` after every run.\n")
    assert ran(project.dvc("repro", "extract")) == ["extract"]  # nothing upstream (model) reran
    out = project.dvc("repro")
    assert "Stage 'model' didn't change, skipping" in out and "Running stage 'generate'" in out
    project.commit("edit one article")

    project.set_params({"evaluate.max_new_tokens": 16})
    assert ran(project.dvc("repro")) == ["evaluate", "export"]  # an evaluate param reruns evaluate and its export
    project.commit("shorter answers")

    project.run("git", "checkout", "-q", "-b", "rank-8")
    project.set_params({"train.lora.r": 8})
    assert ran(project.dvc("repro")) == ["train", "evaluate", "export"]
    project.commit("rank 8")
    diff = project.dvc("metrics", "diff", "main", "--all")
    for key in ("decision.verdict", "delta.token_f1", "delta.token_f1.ci_low", "eval_loss", "train_loss"):
        assert key in diff
    assert "train.lora.r" in project.dvc("params", "diff", "main")
