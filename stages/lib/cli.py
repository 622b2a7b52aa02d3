"""The `loradag` command: one sub-command per DVC stage, each reading params.yaml.

A stage's module (stages/<stage>.py) is imported when its command runs, so `loradag --help` stays instant
and `loradag <stage>` executes only this file, the stage module and what that imports (dvc.yaml's deps).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from stages.lib.common import UserError, setup_logging
from stages.lib.params import PARAMS_FILE, STAGES

app = typer.Typer(
    help="loradag: articles or code -> Q&A pairs -> LoRA adapter -> keep/discard verdict. "
    "Run the whole DAG with `dvc repro`; each command here is one stage of dvc.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
