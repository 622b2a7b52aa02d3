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


# ---------------------------------------------------------------- try and serve the adapter (not stages)

ADAPTER_DIR, BASE_DIR = Path("models/adapter"), Path("models/base")
AdapterOption = typer.Option(ADAPTER_DIR, help="adapter folder")
BaseOption = typer.Option(BASE_DIR, help="base model folder")
AdapterSpecsOption = typer.Option(
    [], "--adapter", help="name=path, repeatable (vLLM's --lora-modules); default: adapter=models/adapter if it exists"
)


def _tool(name: str):  # noqa: ANN202 (a module)
    # chat and serve are not stages: imported by name, so no stage run imports them, tests/test_dag.py (which
    # reads this file's import statements) does not make them deps of every stage, and --help stays instant.
    setup_logging()
    return importlib.import_module(f"stages.lib.{name}")


@app.command()
def chat(
    side: str = typer.Option("both", help="both | base | adapter"),
    ask: str = typer.Option(None, "--ask", help="ask one question and exit"),
    adapter: Path = AdapterOption,
    base: Path = BaseOption,
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 = greedy, as evaluate answers"),
    params: Path = ParamsOption,
) -> None:
    """Chat in the terminal: the base's and the adapter's answers streamed side by side."""
    if side not in ("both", "base", "adapter"):
        fail("chat", f"--side must be both, base or adapter, got {side!r}")
    try:
        _tool("chat_cli").main(base, adapter, side, params, max_new_tokens, temperature, ask)
    except UserError as err:
        fail("chat", str(err))


@app.command()
def serve(
    adapter: list[str] = AdapterSpecsOption,
    base: Path = BaseOption,
    base_name: str = typer.Option("base", help="the base's model name in requests"),
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)"),
    port: int = typer.Option(8000),
    api_key_env: str = typer.Option("LORADAG_API_KEY", help="env variable holding the key clients must send"),
    max_tokens_limit: int = typer.Option(1024, min=1, help="larger max_tokens requests get a 400"),
    params: Path = ParamsOption,
) -> None:
    """OpenAI-compatible server (/v1/models, /v1/chat/completions) for the base and adapters."""
    module = _tool("serve")
    try:
        specs = adapter or ([f"adapter={ADAPTER_DIR}"] if (ADAPTER_DIR / "adapter_config.json").is_file() else [])
        adapters = module.parse_adapters(specs, base_name)
        engine = module.load_engine(base, adapters, base_name, max_tokens_limit, module.training_chat_template(params))
        module.run(engine, module.training_system_prompt(params), module.api_key_from(api_key_env), host, port)
    except UserError as err:
        fail("serve", str(err))


if __name__ == "__main__":  # `python -m stages.lib.cli`: how accelerate launch starts each training process
    app()
