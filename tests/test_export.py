"""Stage export: merged model = base + adapter, a bundle that loads from anywhere, a card with the verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from project import QUICK_PARAMS, copy_project

from stages import export
from stages.lib import chat
from stages.lib.common import UserError

SYSTEM = chat.DEFAULT_SYSTEM_PROMPT
QUESTIONS = [f"What colour is the stage number {i}?" for i in (1, 5, 101, 102)] + ["Which stage trains?"]
EVALUATION = {
    "adapter.token_f1": 0.25,
    "base.token_f1": 0.125,
    "delta.token_f1": 0.125,
    "delta.token_f1_ci95": [0.05, 0.2],  # an interval, as evaluate may write one
    "decision.keep": True,
    "eval_questions": 14,
}


def greedy(model: Any, tokenizer: Any, max_new_tokens: int = 16) -> list[str]:
    conversations = [chat.prompt_messages(q, SYSTEM) for q in QUESTIONS]
    return [a.text for a in chat.generate(model, tokenizer, conversations, chat.Sampling(max_new_tokens), 1)]


@pytest.fixture(scope="module")
def project(tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder after evaluate (tiny base and adapter, a KEEP verdict), exported by `export.main`."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_model_dir, root / export.BASE_DIR)
    shutil.copytree(tiny_adapters["a"], root / export.ADAPTER_DIR)
    (root / export.EVALUATE_METRICS).parent.mkdir(parents=True)
    (root / export.EVALUATE_METRICS).write_text(json.dumps(EVALUATION))
    (root / "params.yaml").write_text("export:\n  allow_discarded: false\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        export.main(Path("params.yaml"))
    return root


@pytest.fixture(scope="module")
def adapter_answers(tiny_model_dir: Path, tiny_adapters: dict[str, Path]) -> list[str]:
    return greedy(*chat.load_for_generation(tiny_model_dir, tiny_adapters["a"]))


def test_the_merged_model_answers_as_base_plus_adapter(project: Path, adapter_answers: list[str]) -> None:
    merged = project / export.OUT_DIR / "merged"
    assert greedy(*chat.load_for_generation(merged)) == adapter_answers
    names = {p.name for p in merged.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "chat_template.jinja", "README.md"} <= names
    assert not any(name.startswith("adapter_") or name.endswith(".bin") for name in names)


def test_the_merged_generation_config_stops_where_the_chat_core_stops(project: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = project / export.OUT_DIR / "merged"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged)
    assert sorted(model.generation_config.eos_token_id) == chat.stop_token_ids(model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.generation_config.do_sample is False


def test_the_bundle_loads_base_and_adapter_from_another_folder(
    project: Path, adapter_answers: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    moved = tmp_path / "elsewhere" / "my-adapter"
    shutil.copytree(project / export.OUT_DIR / "adapter", moved)  # not beside any models/base
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(moved).eval()
    assert model.active_adapters() == ["default"]  # the adapter is on, from the folder itself
    tokenizer = AutoTokenizer.from_pretrained(moved, padding_side="left")
    assert greedy(model, tokenizer) == adapter_answers
    config = json.loads((moved / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "."
    index = json.loads((moved / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}  # vLLM's base loader skips the adapter file


def test_a_sharded_base_is_bundled_with_its_index_and_every_shard(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded-base"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.save_pretrained(sharded, max_shard_size="200KB")  # a big model's layout, in miniature
    for file in tiny_model_dir.iterdir():
        if file.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copyfile(file, sharded / file.name)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    bundle = tmp_path / "bundle"
    export.save_bundle(sharded, tiny_adapters["a"], chat.load_tokenizer(sharded), bundle)
    assert shards == sorted(p.name for p in bundle.glob("model-*.safetensors"))
    index = json.loads((bundle / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)  # the adapter file stays out of the base's index
    loaded = AutoModelForCausalLM.from_pretrained(bundle)
    assert loaded.active_adapters() == ["default"]


def test_the_model_cards_hold_the_verdict_metrics_hashes_and_params(project: Path) -> None:
    for kind in ("merged", "adapter"):
        card = (project / export.OUT_DIR / kind / "README.md").read_text()
        assert "**Verdict: KEEP**" in card and "on 14 held-out questions" in card
        assert "| metric | adapter | base | delta |" in card and "| token_f1 | 0.2500 | 0.1250 | 0.1250 |" in card
        assert "| token_f1_ci95 |  |  | [0.0500, 0.2000] |" in card
        assert f"base_folder: `{export.sha256_tree(project / export.BASE_DIR)}`" in card
    assert json.loads((project / "metrics/export.json").read_text()) == {"exported": True}  # dvc metrics show
    metrics = json.loads((project / "metrics/all/export.json").read_text())
    assert metrics["keep"] is True and metrics["dtype"] == "float32" and metrics["merged_mb"] > 0


def test_a_discarded_adapter_is_exported_only_when_asked(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    export.EVALUATE_METRICS.write_text(json.dumps({**EVALUATION, "decision.keep": False}))
    export.main(Path("params.yaml"))  # succeeds, so `dvc repro` stays green, and ships nothing
    assert [p.name for p in export.OUT_DIR.iterdir()] == ["README.md"]  # no earlier export passes for this one
    assert "**DISCARD**" in (export.OUT_DIR / "README.md").read_text()
    assert json.loads(Path("metrics/all/export.json").read_text()) == {
        "exported": False,
        "keep": False,
        "verdict": "discard",
    }
    Path("params.yaml").write_text("export:\n  allow_discarded: true\n")
    export.main(Path("params.yaml"))
    card = (export.OUT_DIR / "merged" / "README.md").read_text()
    assert "**Verdict: DISCARD (exported with export.allow_discarded: true)**" in card


def test_no_verdict_says_to_run_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("export: {}\n")
    with pytest.raises(UserError, match="run `loradag evaluate`"):
        export.main(Path("params.yaml"))


@pytest.mark.slow
def test_dvc_repro_export_on_smollm2_ships_folders_that_answer_as_evaluate_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_project(tmp_path / "loradag", QUICK_PARAMS)
    assert "Running stage 'export'" in project.dvc("repro", "export")
    preds = [json.loads(line) for line in project.read("data/evaluate/preds_adapter.jsonl").splitlines()]
    elsewhere = tmp_path / "elsewhere"  # the export folders, moved away from the project and its models/base
    shutil.copytree(project.root / export.OUT_DIR, elsewhere)
    shutil.rmtree(project.root / "models")
    monkeypatch.chdir(tmp_path)
    conversations = [chat.prompt_messages(p["question"], chat.DEFAULT_SYSTEM_PROMPT) for p in preds]
    sampling = chat.Sampling(QUICK_PARAMS["evaluate.max_new_tokens"])
    for kind in ("merged", "adapter"):
        model, tokenizer = chat.load_for_generation(elsewhere / kind)  # the bundle: base + adapter from the folder
        answers = chat.generate(model, tokenizer, conversations, sampling, QUICK_PARAMS["evaluate.batch_size"])
        assert [a.text for a in answers] == [p["answer"] for p in preds], kind
    card = (elsewhere / "merged" / "README.md").read_text()
    keep = json.loads(project.read("metrics/all/evaluate.json"))["decision.keep"]
    assert ("**Verdict: KEEP**" if keep else "**Verdict: DISCARD") in card and "embedded:smollm2-135m-instruct" in card
