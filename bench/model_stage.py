"""Benchmark: the `model` stage and DVC on a ~1.5B-parameter local folder (Qwen2.5-1.5B's shape, random bf16).

Builds the folder under /tmp shard by shard (never a whole model in memory), then, in throwaway copies of
the project (tests/project.py):
- peak RSS and wall time of `loradag model` for `model.dtype: auto` (a copy) and `float16` (a conversion,
  one shard at a time), against the old way (load the whole model in float32 and save it, as the stage did);
- per DVC cache link type (CACHE_TYPES): `dvc repro model`, its no-op rerun, `dvc status`, a forced rerun,
  and the disk used by the workspace and the cache together;
- how long an uncached Hub id takes to fail with no network (now, and the old way: a tokenizer load).

Run: `nice -n 10 python bench/model_stage.py [--tokenizer DIR]` (DIR: an HF folder whose tokenizer to ship,
default models/base). Writes bench/results/model_stage.json. Needs ~16 GB free under /tmp and ~8 GB of RAM
for the old way. Timings are recorded here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from project import Project, copy_project  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "model_stage.json"
# Qwen2.5-1.5B's config.json (the shape; the weights here are random)
QWEN25_15B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
    "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06, "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643,
    "dtype": "bfloat16",
}  # fmt: skip
SHARD_BYTES = 1 << 30
RUNS = 3
# DVC's default (reflink,copy: a copy on ext4), the lead's candidate, and the one that links after `dvc repro`
CACHE_TYPES = ("reflink,copy", "reflink,hardlink,symlink,copy", "hardlink,symlink,copy")
# The stage before `model.dtype: auto`: the whole model loaded in float32 (the old default), then saved.
OLD_WAY = """import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model.save_pretrained(sys.argv[2], safe_serialization=True)
tokenizer.save_pretrained(sys.argv[2])
"""
# Peak RSS of a command and its descendants: RUSAGE_CHILDREN's ru_maxrss is the largest of them (KiB on Linux).
MEASURE = """import json, resource, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[2], "w") as log:
    rc = subprocess.run(sys.argv[3:], stdout=log, stderr=subprocess.STDOUT).returncode
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
open(sys.argv[1], "w").write(json.dumps({"rc": rc, "wall_s": round(wall, 2), "peak_rss_mib": round(peak)}))
"""


def build_folder(folder: Path, tokenizer_dir: Path | None) -> dict[str, Any]:
    """Random bf16 weights of Qwen2.5-1.5B's shape, written shard by shard (meta-device init: no memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen2ForCausalLM(Qwen2Config(**QWEN25_15B)).state_dict().items()}
    shapes.pop("lm_head.weight")  # tied to the embedding, not stored (as in the Hub's checkpoint)
    generator = torch.Generator().manual_seed(0)
    groups: list[list[str]] = [[]]
    for name, shape in shapes.items():
        if groups[-1] and sum(shapes[n].numel() * 2 for n in groups[-1]) + shape.numel() * 2 > SHARD_BYTES:
            groups.append([])
        groups[-1].append(name)
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        shard = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.randn(shapes[n], generator=generator) * 0.02).to(torch.bfloat16) for n in group}
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})  # one shard in memory at a time
        weight_map |= dict.fromkeys(group, shard)
    total = sum(s.numel() * 2 for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(QWEN25_15B, indent=2))
    _write_tokenizer(folder, tokenizer_dir)
    return {"parameters": sum(s.numel() for s in shapes.values()), "weights_bytes": total, "shards": len(groups)}


def _write_tokenizer(folder: Path, tokenizer_dir: Path | None) -> None:
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, folder / name)
        return
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)


def measured(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run `cmd` under a small wrapper that reports its wall time and the peak RSS of its process tree."""
    out = log.with_suffix(".json")
    subprocess.run([sys.executable, "-c", MEASURE, str(out), str(log), *cmd], cwd=cwd, env=env, check=True)
    result = json.loads(out.read_text())
    if result["rc"] != 0:
        sys.exit(f"bench/model_stage.py: {' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    return result


def timed(project: Project, *args: str) -> float:
    start = time.perf_counter()
    project.dvc(*args)
    return time.perf_counter() - start


def disk_bytes(*paths: Path) -> int:
    """Bytes on disk of the paths together; a file hardlinked twice counts once (one `du` call)."""
    out = subprocess.run(["du", "-scb", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0])


def filesystem(path: Path) -> str:
    return subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True).stdout.split()[-1]


def new_project(work: Path, name: str, source: Path, dtype: str) -> Project:
    (work / name).mkdir()
    project = copy_project(work / name, {"model.base": str(source), "model.dtype": dtype})
    project.env["PYTHONPATH"] = str(project.root)  # this copy's stages/, not the editable install's
    return project


def stage_runs(work: Path, source: Path) -> dict[str, Any]:
    """`loradag model` for auto (copy) and float16 (convert), and the old load-and-save way, one at a time."""
    project = new_project(work, "stage", source, "auto")
    runs = {"auto_copy": measured(["loradag", "model"], project.root, project.env, work / "auto.log")}
    runs["auto_copy"]["metrics"] = json.loads(project.read("metrics/model.json"))
    shutil.rmtree(project.root / "models")
    project.set_params({"model.dtype": "float16"})
    runs["float16_convert"] = measured(["loradag", "model"], project.root, project.env, work / "convert.log")
    runs["float16_convert"]["metrics"] = json.loads(project.read("metrics/model.json"))
    shutil.rmtree(project.root / "models")
    old = [sys.executable, "-c", OLD_WAY, str(source), str(project.root / "old")]
    runs["old_load_save_float32"] = measured(old, project.root, project.env, work / "old.log")
    runs["old_load_save_float32"]["written_bytes"] = disk_bytes(project.root / "old")
    shutil.rmtree(project.root)
    old_peak = runs["old_load_save_float32"]["peak_rss_mib"]
    for name in ("auto_copy", "float16_convert"):
        runs[name]["old_over_this_peak_rss"] = round(old_peak / runs[name]["peak_rss_mib"], 2)
    return runs


def dvc_runs(work: Path, source: Path, cache_type: str) -> dict[str, Any]:
    """`dvc repro model` with one cache link type: first run, no-op rerun, status, forced rerun, disk used."""
    project = new_project(work, "dvc", source, "auto")
    project.dvc("config", "cache.type", cache_type)
    result = {"first_repro": measured([sys.executable, "-m", "dvc", "repro", "model"], project.root, project.env,
                                      work / "repro.log")}  # fmt: skip
    noop = [timed(project, "repro", "model") for _ in range(RUNS)]
    status = [timed(project, "status") for _ in range(RUNS)]
    result["noop_repro_model_s"] = {"median": round(statistics.median(noop), 2), "max": round(max(noop), 2)}
    result["dvc_status_s"] = {"median": round(statistics.median(status), 2), "max": round(max(status), 2)}
    workspace, cache = project.root / "models" / "base", project.root / ".dvc" / "cache"
    result["disk_bytes"] = {"workspace_and_cache": disk_bytes(workspace, cache), "workspace": disk_bytes(workspace)}
    weights = next(workspace.glob("model-00001-*.safetensors"))
    result["workspace_file_links"] = os.stat(weights).st_nlink
    result["workspace_file_mode"] = oct(os.stat(weights).st_mode & 0o777)
    result["forced_repro"] = measured([sys.executable, "-m", "dvc", "repro", "-f", "model"], project.root,
                                      project.env, work / "forced.log")  # fmt: skip
    result["disk_bytes"]["after_forced_repro"] = disk_bytes(workspace, cache)
    shutil.rmtree(project.root)
    return result


def hub_failures(work: Path) -> dict[str, Any]:
    """Seconds until an uncached Hub id fails here (no network): the stage now, and the old tokenizer load."""
    project = new_project(work, "hub", Path("x"), "auto")
    project.set_params({"model.base": "Qwen/Qwen2.5-1.5B"})
    env = {k: v for k, v in project.env.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HUB_CACHE"] = str(work / "hf-cache")
    result = {}
    for name, cmd in {
        "stage_now": ["loradag", "model"],
        "old_tokenizer_load": [sys.executable, "-c", "import transformers as t; t.AutoTokenizer.from_pretrained("
                               "'Qwen/Qwen2.5-1.5B')"],
    }.items():  # fmt: skip
        start = time.perf_counter()
        run = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=300)
        lines = [line for line in run.stderr.splitlines() if "model.base" in line or "Error" in line]
        result[name] = {"seconds": round(time.perf_counter() - start, 2), "rc": run.returncode,
                        "message": (lines or [""])[-1][:400]}  # fmt: skip
    shutil.rmtree(project.root)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models" / "base")
    args = parser.parse_args()
    tokenizer_dir = args.tokenizer if (args.tokenizer / "tokenizer.json").is_file() else None
    work = Path(tempfile.mkdtemp(prefix="loradag-bench-model-"))
    try:
        source = work / "qwen2.5-1.5b-random"
        start = time.perf_counter()
        results: dict[str, Any] = {"folder": build_folder(source, tokenizer_dir)}
        results["folder"]["build_s"] = round(time.perf_counter() - start, 1)
        results["folder"]["tokenizer"] = str(tokenizer_dir) if tokenizer_dir else "tiny word-level"
        results["hub_offline"] = hub_failures(work)
        results["stage"] = stage_runs(work, source)
        results["dvc"] = {t: dvc_runs(work, source, t) for t in CACHE_TYPES}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"] = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "filesystem": filesystem(Path(tempfile.gettempdir())),
        "note": "shared, loaded 2-core machine (other helpers running); run under nice -n 10",
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
