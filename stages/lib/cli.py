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
        fail(stage, str(err))
    except OSError as err:  # a full disk, a read-only folder, a file-size limit: the machine, not the code
        where = f"{err.filename}: " if err.filename else ""
        fail(stage, f"{where}{err.strerror or err}. Outputs are replaced only when a stage succeeds, so the last "
                    "good ones are still in place; free space or fix the folder's permissions and rerun")  # fmt: skip


def fail(stage: str, message: str) -> None:
    typer.echo(f"loradag {stage}: error: {message}", err=True)
    raise typer.Exit(1)


def _register(stage: str, help_text: str) -> None:
    def command(params: Path = ParamsOption) -> None:
        _run(stage, params)

    command.__doc__ = help_text
    app.command(name=stage)(command)


for _stage, _help in STAGES.items():
    _register(_stage, _help)
