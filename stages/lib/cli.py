"""The `loradag` command: one sub-command per DVC stage, each reading params.yaml.

A stage's module (stages/<stage>.py) is imported when its command runs, so `loradag --help` stays instant
and `loradag <stage>` executes only this file, the stage module and what that imports (dvc.yaml's deps).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import typer
import typer.core
import yaml

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
VERSIONED = ("loradag", "torch", "transformers", "peft", "trl", "dvc")  # what a bug report needs


def _version(value: bool) -> None:
    if value:
        for name in VERSIONED:  # metadata only: importing torch to ask its version would take seconds
            try:
                typer.echo(f"{name} {importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                typer.echo(f"{name} not installed")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print loradag's and its libraries' versions"
    ),
) -> None:
    pass


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


class StageCommand(typer.core.TyperCommand):
    """A stage's command: its --help ends with the params.yaml keys the stage reads (derived, so it cannot drift)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super().format_help(ctx, formatter)
        formatter.write(params_help(self.name or "", PARAMS_FILE, Path("dvc.yaml")))


def _register(stage: str, help_text: str) -> None:
    def command(params: Path = ParamsOption) -> None:
        _run(stage, params)

    command.__doc__ = help_text
    app.command(name=stage, cls=StageCommand)(command)


for _stage, _help in STAGES.items():
    _register(_stage, _help)


# ---------------------------------------------------------------- a stage's params, for its --help


def params_help(stage: str, params_file: Path, dvc_file: Path) -> str:
    """The keys of the stage's config dataclass (`<Stage>Config` in stages/<stage>.py) and of its params.yaml
    section, each with its value there (else the default) and the first line of its params.yaml comment."""
    module = importlib.import_module(f"stages.{stage}")  # light: stage modules import torch inside functions
    values = config_defaults(getattr(module, f"{stage.capitalize()}Config"), stage)
    text = params_file.read_text(encoding="utf-8") if params_file.is_file() else ""
    try:
        written = yaml.safe_load(text) or {}
    except yaml.YAMLError:  # help still helps; running the stage names the error
        text, written = "", {}
    section = written.get(stage) if isinstance(written, dict) else None
    values |= flatten(section, stage) if isinstance(section, dict) else {}
    comments = yaml_comments(text)
    width = max(map(len, values), default=0)
    lines = [f"params.yaml keys it reads (value in {params_file} if set there, else the default):"]
    for key, value in values.items():
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        note = f"  # {comments[key]}" if comments.get(key) else ""
        lines.append(f"  {key:<{width}}  {shown}{note}")
    others = other_params(stage, dvc_file)
    if others:
        lines.append(f"It also reads {', '.join(others)} ({dvc_file} lists them as the stage's params).")
    return "\n" + "\n".join(lines) + "\n"


def config_defaults(cls: type, where: str) -> dict[str, Any]:
    """Dotted key -> default of every field; nested configs and the chat backends' subsections expand."""
    keys: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        key = f"{where}.{spec.name}"
        if dataclasses.is_dataclass(default):
            keys |= config_defaults(type(default), key)
        elif spec.name == "backends":  # one subsection per chat backend (stages/lib/backends.py BACKENDS)
            for name, backend in importlib.import_module("stages.lib.backends").BACKENDS.items():
                keys |= config_defaults(backend.config, f"{where}.{name}")
        else:
            keys[key] = default
    return keys


def flatten(section: Any, where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        return {where: section}
    keys: dict[str, Any] = {}
    for name, value in section.items():
        keys |= flatten(value, f"{where}.{name}")
    return keys


def yaml_comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment on its line in params.yaml (block-style YAML, as params.yaml is written)."""
    comments: dict[str, str] = {}
    path: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    last = ""  # the key whose comment an indented comment-only line continues
    for line in text.splitlines():
        match = re.match(r"( *)([A-Za-z_][\w-]*):(.*)$", line)
        more = re.match(r" +# ?(.*)$", line)
        if more and last:
            comments[last] += " " + more[1].strip()
            continue
        last = ""
        if not match:
            continue
        indent = len(match[1])
        path = [(i, k) for i, k in path if i < indent] + [(indent, match[2])]
        comment = match[3].partition(" #")[2].strip()
        if comment:
            last = ".".join(k for _, k in path)
            comments[last] = comment
    return comments


def other_params(stage: str, dvc_file: Path) -> list[str]:
    """The params of other sections that dvc.yaml declares for the stage (refusal_phrases, train.system_prompt)."""
    if not dvc_file.is_file():
        return []
    declared = ((yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages") or {}).get(stage) or {}
    names = [p for p in declared.get("params") or [] if isinstance(p, str)]
    return [name for name in names if name.split(".")[0] != stage]


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
