"""`loradag chat`: ask the base and the adapter in the terminal, their answers streamed side by side.

    loradag chat                      # base | adapter, one question at a time (an empty line or Ctrl-D quits)
    loradag chat --side adapter       # the adapter alone
    loradag chat --ask "What is X?"   # one question, then exit

Each question is asked as training asked it (the training system prompt, the chat core's prompt and decoding:
greedy unless --temperature), one turn at a time, as the adapter was trained. Both sides share one loaded base:
the base answers with the adapter switched off, then the adapter answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.lib import chat
from stages.lib.params import load_params

SIDES = ("base", "adapter")


def side_answers(model: Any, tokenizer: Any, messages: chat.Conversation, sides: list[str],
                 sampling: chat.Sampling) -> Iterator[tuple[str, str]]:  # fmt: skip
    """(side, text piece) as each side's answer is generated, the sides one after the other."""
    for side in sides:
        off = model.disable_adapter() if side == "base" and hasattr(model, "disable_adapter") else None
        with off or contextlib.nullcontext():
            for piece in chat.stream(model, tokenizer, messages, sampling):
                yield side, piece


def columns(texts: dict[str, str]) -> Any:
    from rich.table import Table

    table = Table(expand=True, show_lines=False)
    for side in texts:
        table.add_column(side, ratio=1, overflow="fold")
    table.add_row(*(text.strip() for text in texts.values()))
    return table


def ask(model: Any, tokenizer: Any, question: str, sides: list[str], system_prompt: str, sampling: chat.Sampling,
        console: Any) -> dict[str, str]:  # fmt: skip
    """Stream one question's answers into the terminal (live columns, or plain lines where output is not a TTY)."""
    from rich.live import Live

    messages = chat.prompt_messages(question, system_prompt)
    texts = dict.fromkeys(sides, "")
    if not console.is_terminal:
        for side, piece in side_answers(model, tokenizer, messages, sides, sampling):
            texts[side] += piece
        for side in sides:
            console.print(f"[{side}] {texts[side].strip()}", markup=False, highlight=False, soft_wrap=True)
        return {side: text.strip() for side, text in texts.items()}
    with Live(columns(texts), console=console, refresh_per_second=12) as live:
        for side, piece in side_answers(model, tokenizer, messages, sides, sampling):
            texts[side] += piece
            live.update(columns(texts))
    return {side: text.strip() for side, text in texts.items()}


def main(
    base: Path, adapter: Path, side: str, params: Path, max_new_tokens: int, temperature: float, question: str | None
) -> None:
    from rich.console import Console

    settings = load_params(params)
    system_prompt = chat.system_prompt(settings)  # as train asked
    sampling = chat.Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    sides = list(SIDES) if side == "both" else [side]
    model, tokenizer = chat.load_for_generation(
        base, adapter if "adapter" in sides else None, chat.chat_template(settings)
    )
    console = Console()
    if question is not None:
        ask(model, tokenizer, question, sides, system_prompt, sampling, console)
        return
    console.print(f"loradag chat: {' | '.join(sides)}; system prompt: {system_prompt!r}. Empty line or Ctrl-D quits.")
    while True:
        try:
            question = console.input("[bold]you>[/bold] ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if not question:
            return
        ask(model, tokenizer, question, sides, system_prompt, sampling, console)
