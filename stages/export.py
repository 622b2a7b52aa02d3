"""Stage `export`: the adapter as files to ship, each loadable without this repository.

- `models/export/merged/`: base + adapter merged (peft `merge_and_unload`) in the base's dtype, safetensors, the
  tokenizer with the chat template it was trained with (`train.chat_template`) and a generation config that
  stops where the chat core stops. Load it with
  `AutoModelForCausalLM.from_pretrained(folder)`, serve it with `vllm serve folder`, convert it to GGUF.
- `models/export/adapter/`: the adapter bundle: `adapter_config.json` + `adapter_model.safetensors` (what vLLM's
  `--lora-modules` and peft read) beside a copy of its base (config.json, model.safetensors, tokenizer, chat
  template). `AutoModelForCausalLM.from_pretrained(folder)` loads the base from the folder itself and the adapter
  on it, from any working directory (transformers' embedded-adapter rule); `base_model_name_or_path` is "."
  (peft would resolve a relative path against the working directory, and an absolute one would tie this hashed
  output to one machine), so peft's `AutoPeftModelForCausalLM` loads it from inside the folder only.

Both folders carry a model card (README.md): evaluate's verdict, its metric table as metrics/all/evaluate.json holds
it (intervals included where evaluate writes them), the data and base hashes and the training params. A
discarded (or inconclusive) adapter is exported only with `export.allow_discarded: true`; without it the stage
still succeeds, and `models/export/README.md` says why nothing was exported.

Run: `loradag export` (or `dvc repro export`). Writes `models/export/` and `metrics/{,all/}export.json`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.lib import chat, hf_folder
from stages.lib.common import UserError, atomic_dir, log, sha256_tree, write_json, write_metrics
from stages.lib.params import load_params, section_config

BASE_DIR = Path("models/base")
ADAPTER_DIR = Path("models/adapter")
EVALUATE_METRICS = Path("metrics/all/evaluate.json")
MODEL_METRICS = Path("metrics/model.json")
OUT_DIR = Path("models/export")
HEADLINE = ("exported",)  # metrics/export.json; with the verdict, dtype, sizes: metrics/all/export.json

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GENERATION_MAX_NEW_TOKENS = 256  # a default for model.generate(); callers set their own


@dataclass(frozen=True)
class ExportConfig:
    allow_discarded: bool = False  # export an adapter evaluate discarded (the card says so)


def read_verdict(evaluation: dict[str, Any]) -> tuple[bool, str]:
    """(keep, verdict) from metrics/all/evaluate.json: `decision.verdict` if evaluate wrote one, else keep/discard."""
    if "decision.keep" not in evaluation:
        raise UserError(f"{EVALUATE_METRICS}: no decision.keep; run `loradag evaluate` (dvc repro evaluate) first")
    keep = bool(evaluation["decision.keep"])
    return keep, str(evaluation.get("decision.verdict", "keep" if keep else "discard"))


def not_exported_card(verdict: str) -> str:
    """The export folder's only file when the adapter was not kept: the pipeline stays green, nothing ships."""
    return (
        f"# Not exported\n\nevaluate's verdict for this adapter is **{verdict.upper()}** (reports/decision.md), so "
        "no model was exported. Set `export.allow_discarded: true` in params.yaml to export it anyway; its model "
        "cards will then carry the verdict.\n"
    )


# ---------------------------------------------------------------- the model card


def metric_table(evaluation: dict[str, Any]) -> list[str]:
    """metrics/all/evaluate.json as a table: a row per metric, a column per prefix (base, adapter, delta, and any
    interval columns evaluate writes), read generically so new keys appear without a change here."""
    columns: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    for key, value in evaluation.items():
        prefix, dot, name = key.partition(".")
        if not dot or prefix == "decision":
            continue
        columns += [prefix] if prefix not in columns else []
        rows.setdefault(name, {})[prefix] = value
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(values.get(column)) for column in columns) + " |")
    return lines


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):  # an interval written as [low, high]
        return "[" + ", ".join(cell(v) for v in value) + "]"
    return str(value)


def model_card(kind: str, keep: bool, evaluation: dict[str, Any], provenance: dict[str, Any]) -> str:
    """README.md of an export folder: what it is, the verdict and its evidence, how to load it."""
    how = {
        "merged": "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/merged")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/merged")',
        "adapter": "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "# the base is in the folder too: this loads it, then the adapter on it, from any working directory\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/adapter")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/adapter")',
    }[kind]
    what = {
        "merged": "The base model with the LoRA adapter merged into its weights (peft `merge_and_unload`).",
        "adapter": "The LoRA adapter (adapter_config.json, adapter_model.safetensors) beside a copy of its base.",
    }[kind]
    evidence = provenance.get("evidence") or {}
    hashes = {**evidence.get("sha256", {}), "base_folder": provenance["base_sha256"],
              "adapter_folder": provenance["adapter_sha256"]}  # fmt: skip
    lines = [
        f"# loradag export: {kind}",
        "",
        what,
        f"Base: {provenance['base']}. Asked with the system prompt it was trained with: "
        f"{evidence.get('params', {}).get('system_prompt', chat.DEFAULT_SYSTEM_PROMPT)!r}.",
        "",
        f"**Verdict: {'KEEP' if keep else 'DISCARD (exported with export.allow_discarded: true)'}** "
        f"on {evaluation.get('eval_questions', '?')} held-out questions (loradag evaluate; greedy answers).",
        "",
        *metric_table(evaluation),
        "",
        "## Load",
        "",
        "```python",
        how,
        "```",
        "",
        "## Provenance (sha256)",
        "",
        *(f"- {name}: `{digest}`" for name, digest in hashes.items()),
        "",
        "## Training params",
        "",
        "```json",
        json.dumps(evidence.get("params", {}), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the two folders


def base_dtype(base_dir: Path) -> str:
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    return config.get("dtype") or config.get("torch_dtype") or "float32"


def merge(base_dir: Path, adapter_dir: Path) -> Any:
    """base + adapter merged into plain weights: merged in float32, then cast to the base's dtype."""
    import torch
    from peft import PeftModel

    fp32 = chat.pick_precision(cuda_available=False, bf16_supported=False)
    model = PeftModel.from_pretrained(chat.load_model(base_dir, fp32), adapter_dir)
    return model.merge_and_unload().to(getattr(torch, base_dtype(base_dir))).eval()


def save_merged(model: Any, tokenizer: Any, folder: Path) -> None:
    """safetensors weights, the tokenizer with its chat template, and the chat core's stop tokens as defaults."""
    model.generation_config = chat.generation_config(model, tokenizer, chat.Sampling(GENERATION_MAX_NEW_TOKENS))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_bundle(base_dir: Path, adapter_dir: Path, tokenizer: Any, folder: Path) -> None:
    """The adapter files beside a copy of its base's weights and tokenizer; its base is the folder itself."""
    folder.mkdir()
    weights = hf_folder.weight_files(base_dir)  # one model.safetensors, or an index and its shards
    for name in ("config.json", *weights):
        hf_folder.copy_file(base_dir / name, folder / name)  # new files, new permissions: readable by a server's user
    tokenizer.save_pretrained(folder)
    shutil.copyfile(adapter_dir / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = "."
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # vLLM reads every *.safetensors of a base folder unless an index names the base's: keep the adapter out
    if hf_folder.INDEX not in weights:
        write_json(weight_index(folder / "model.safetensors"), folder / hf_folder.INDEX)


def weight_index(weights: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        names = sorted(f.keys())
    return {"metadata": {"total_size": weights.stat().st_size}, "weight_map": dict.fromkeys(names, weights.name)}


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 2)


def main(params_path: Path) -> None:
    params = load_params(params_path)
    cfg = section_config(ExportConfig, params, "export")
    evaluation = json.loads(EVALUATE_METRICS.read_text(encoding="utf-8")) if EVALUATE_METRICS.is_file() else {}
    keep, verdict = read_verdict(evaluation)
    if not keep and not cfg.allow_discarded:
        with atomic_dir(OUT_DIR) as out:  # an export of an earlier adapter must not pass for this one
            (out / "README.md").write_text(not_exported_card(verdict), encoding="utf-8")
        write_metrics({"exported": False, "keep": False, "verdict": verdict}, "export", HEADLINE)
        log.info("export: verdict %s, not exported (export.allow_discarded: false); see %s/README.md", verdict, OUT_DIR)
        return
    provenance = provenance_of(BASE_DIR, ADAPTER_DIR)
    tokenizer = chat.load_tokenizer(BASE_DIR, chat_template=chat.chat_template(params))  # the template trained with
    model = merge(BASE_DIR, ADAPTER_DIR)
    with atomic_dir(OUT_DIR) as out:
        save_merged(model, tokenizer, out / "merged")
        save_bundle(BASE_DIR, ADAPTER_DIR, tokenizer, out / "adapter")
        for kind in ("merged", "adapter"):
            (out / kind / "README.md").write_text(model_card(kind, keep, evaluation, provenance), encoding="utf-8")
        for file in out.rglob("*"):
            if file.is_file():  # writers that make 0600 files (safetensors): vLLM or Ollama may run as another user
                file.chmod(0o644)
        metrics = {
            "exported": True, "keep": keep, "verdict": verdict, "dtype": base_dtype(BASE_DIR),
            "merged_mb": folder_mb(out / "merged"), "adapter_mb": folder_mb(out / "adapter"),
        }  # fmt: skip
    write_metrics(metrics, "export", HEADLINE)
    log.info("export: %s -> %s/merged (%.0f MB), %s/adapter", "KEEP" if keep else "DISCARD", OUT_DIR,
             metrics["merged_mb"], OUT_DIR)  # fmt: skip


def provenance_of(base_dir: Path, adapter_dir: Path) -> dict[str, Any]:
    evidence_file = adapter_dir / "evidence.json"
    model = json.loads(MODEL_METRICS.read_text(encoding="utf-8")) if MODEL_METRICS.is_file() else {}
    return {
        "base": model.get("base", str(base_dir)),
        "base_sha256": sha256_tree(base_dir),
        "adapter_sha256": sha256_tree(adapter_dir),
        "evidence": json.loads(evidence_file.read_text(encoding="utf-8")) if evidence_file.is_file() else None,
    }
