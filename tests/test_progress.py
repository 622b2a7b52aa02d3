"""Progress on stderr: a bar on a terminal, a log line each 10 % or 30 s in a pipe (what `dvc repro` logs show)."""

import io
import logging
from pathlib import Path

import pytest

from stages.lib import progress as progress_module
from stages.lib.progress import LogLines, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_a_bar_with_done_total_and_rate() -> None:
    stream = Terminal()
    with progress("evaluate base", total=4, unit="answers", stream=stream) as done:
        for _ in range(4):
            done.update(1)
    out = stream.getvalue()
    assert "evaluate base" in out and "4/4" in out and "answers/s" in out and "\r" in out


def test_a_pipe_gets_a_line_every_tenth_then_the_total(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    lines = LogLines("evaluate base", total=20, unit="answers", clock=clock)
    with caplog.at_level(logging.INFO, logger="loradag"):
        for _ in range(20):
            clock.now += 1.0  # 1 answer/s: the first 5 s stay quiet
            lines.update(1)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "evaluate base: 5/20 answers (25%), 1 answers/s, ~15 s left"
    done = [m.split(" answers")[0].split(": ")[1] for m in messages]
    assert done == ["5/20", "6/20", "8/20", "10/20", "12/20", "14/20", "16/20", "18/20", "20/20"]
    assert messages[-1] == "evaluate base: 20/20 answers (100%) in 20 s"


def test_a_slow_loop_in_a_pipe_still_logs_every_30_s(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    lines = LogLines("generate", total=1000, unit="chunks", clock=clock)
    with caplog.at_level(logging.INFO, logger="loradag"):
        for _ in range(4):
            clock.now += 31.0
            lines.update(1)
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == [
        "generate: 1/1000 chunks",
        "generate: 2/1000 chunks",
        "generate: 3/1000 chunks",
        "generate: 4/1000 chunks",
    ]


def test_a_fast_loop_in_a_pipe_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()  # not a terminal
    with caplog.at_level(logging.INFO, logger="loradag"), progress("generate", 16, "chunks", stream=stream) as done:
        assert isinstance(done, LogLines)
        done.update(16)
    assert caplog.records == [] and stream.getvalue() == ""
    assert progress_module.QUIET_FIRST_S == 5.0


def test_evaluate_counts_answers_once_per_batch(tiny_model_dir: Path) -> None:
    from stages import evaluate
    from stages.lib import chat

    model, tokenizer = chat.load_for_generation(tiny_model_dir)
    items = [{"id": str(i), "question": f"What is stage {i}?", "reference": "x"} for i in range(5)]
    updates: list[int] = []

    class Done:
        def update(self, n: int) -> None:
            updates.append(n)

    rows = evaluate.generate_answers(model, tokenizer, items, "Answer.", 2, batch_size=2, done=Done())
    assert updates == [2, 2, 1] and [row["id"] for row in rows] == ["0", "1", "2", "3", "4"]
