"""params.yaml: the stages it configures, and typed, checked configs built from its sections.

Each stage reads the section of its own name into a frozen dataclass with `section_config`. An unknown
section or key, a wrong type or an out-of-range value raises `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from stages.lib.common import UserError

PARAMS_FILE = Path("params.yaml")

# The DAG's stages in order: each is a dvc.yaml stage, a params.yaml section, stages/<name>.py and `loradag <name>`.
STAGES = {
    "model": "Prepare the base model as an HF folder (models/base/).",
    "extract": "Articles, code or bring-your-own pairs -> data/extract/records.parquet.",
    "generate": "Records -> Q&A pairs (data/generate/pairs.parquet).",
    "validate": "Run the Great Expectations data contract on the pairs.",
    "split": "Seeded, leakage-checked train/eval split.",
    "train": "LoRA/QLoRA fine-tune of the base model (models/adapter/).",
    "evaluate": "Base vs adapter on held-out pairs, metrics and keep/discard decision.",
    "export": "Merged model + self-contained adapter bundle with model cards (models/export/).",
}
SHARED_SECTIONS = ("refusal_phrases",)  # read by more than one stage

# A field with this metadata is filled by the stage's loader, not read from params.yaml.
NOT_A_PARAM = {"param": False}

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A params.yaml key that is unknown, mistyped or out of range; the message names the key."""


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml as a dict; a missing or malformed file, or an unknown section, names itself."""
    if not path.exists():
        raise UserError(f"{path}: not found; run loradag from the project folder that holds params.yaml")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise UserError(f"{path}: top level must be a mapping of sections")
    known = (*STAGES, *SHARED_SECTIONS)
    for section in params:
        if section not in known:  # a typo'd section would otherwise leave its stage on defaults
            raise ConfigError(f"{path}: unknown section {section!r} (known: {', '.join(known)})")
    return params


def section_config(cls: type[T], params: dict[str, Any], section: str) -> T:
    """Build the typed config of one params.yaml section; a missing section takes the defaults."""
    return from_dict(cls, params.get(section) or {}, section)


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by their dotted key.

    A config with a `check(where)` method has it called, so nested sections name their full key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.metadata.get("param", True)]  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}.{key} is not a known key (known: {', '.join(known)})")
    values = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in raw.items()}
    config = cls(**values)
    if hasattr(config, "check"):
        config.check(where)
    return config


def require(ok: bool, key: str, message: str) -> None:
    """Range check for a config's __post_init__: `require(x > 0, "split.seed", "must be > 0, got -1")`."""
    if not ok:
        raise ConfigError(f"{key} {message}")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; or ".join(errors))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads `2e-4` as a string, and `dvc exp run -S` passes such values through.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")
