"""The `loradag` command: one sub-command per DVC stage, each reading params.yaml.

Stage modules are imported inside each command so `loradag --help` stays instant.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from stages.common import PARAMS_FILE, UserError, setup_logging

app = typer.Typer(
    help="loradag: articles or code -> Q&A pairs -> LoRA adapter -> keep/discard verdict. "
    "Run the whole DAG with `dvc repro`; each command here is one stage of dvc.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STAGES = {
    "model": "Prepare the base model as an HF folder (models/base/).",
    "extract": "Articles, code or bring-your-own pairs -> data/extract/records.parquet.",
    "generate": "Records -> Q&A pairs (data/generate/pairs.parquet).",
    "validate": "Run the Great Expectations data contract on the pairs.",
    "split": "Seeded, leakage-checked train/eval split.",
    "train": "LoRA/QLoRA fine-tune of the base model (models/adapter/).",
    "evaluate": "Base vs adapter on held-out pairs, metrics and keep/discard decision.",
}

ParamsOption = typer.Option(PARAMS_FILE, "--params", help="params file to read")


def _run(stage: str, params: Path) -> None:
    setup_logging()
    module = importlib.import_module(f"stages.{stage}")
    try:
        module.main(params)
    except UserError as err:
        typer.echo(f"loradag {stage}: error: {err}", err=True)
        raise typer.Exit(1) from None


def _register(stage: str, help_text: str) -> None:
    def command(params: Path = ParamsOption) -> None:
        _run(stage, params)

    command.__doc__ = help_text
    app.command(name=stage)(command)


for _stage, _help in STAGES.items():
    _register(_stage, _help)
