"""loradag chat: both sides' answers, streamed, equal to what the chat core answers with each side's weights."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from stages.lib import chat
from stages.lib.cli import app

QUESTION = "What colour is the stage number 3?"


def core_answer(base: Path, adapter: Path | None, system_prompt: str, max_new_tokens: int) -> str:
    model, tokenizer = chat.load_for_generation(base, adapter)
    messages = [chat.prompt_messages(QUESTION, system_prompt)]
    return next(chat.generate(model, tokenizer, messages, chat.Sampling(max_new_tokens), 1)).text


def chat_command(tmp_path: Path, base: Path, adapter: Path, *options: str) -> str:
    params = tmp_path / "params.yaml"
    params.write_text('train:\n  system_prompt: "Answer in one line."\n')
    args = ["chat", "--base", str(base), "--adapter", str(adapter), "--params", str(params), "--ask", QUESTION]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "10", *options])
    assert result.exit_code == 0, result.output
    return result.stdout  # the answers; model loading reports on stderr


def test_chat_answers_with_the_base_then_the_adapter_under_the_training_system_prompt(
    tmp_path: Path, tiny_model_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    output = chat_command(tmp_path, tiny_model_dir, tiny_adapters["a"])
    base = core_answer(tiny_model_dir, None, "Answer in one line.", 10)
    adapter = core_answer(tiny_model_dir, tiny_adapters["a"], "Answer in one line.", 10)
    assert base != adapter
    assert output == f"[base] {base}\n[adapter] {adapter}\n"  # an answer may span lines


def test_chat_can_ask_one_side_only(tmp_path: Path, tiny_model_dir: Path, tiny_adapters: dict[str, Path]) -> None:
    output = chat_command(tmp_path, tiny_model_dir, tiny_adapters["a"], "--side", "adapter")
    assert output == f"[adapter] {core_answer(tiny_model_dir, tiny_adapters['a'], 'Answer in one line.', 10)}\n"


def test_chat_without_an_adapter_says_what_to_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(app, ["chat", "--base", str(tiny_model_dir), "--adapter", str(tmp_path), "--ask", "x"])
    assert result.exit_code == 1 and "no adapter there" in result.output and "loradag train" in result.output
