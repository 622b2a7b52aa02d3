"""Progress of the long loops (evaluate's answers, generate's LLM pairs), on stderr.

On a terminal (`loradag evaluate`, or `dvc repro`, which hands the stage its terminal) a tqdm bar with done /
total, rate and time left. When stderr is a pipe or a file (CI, `dvc repro 2>&1 | tee log`) a redrawn bar
would fill the log with carriage returns, so a log line is written instead, each 10 % or 30 s, and at the end
(a loop done within its first 5 s writes none):

    with progress("evaluate base", total=62, unit="answers") as done:
        for batch in batches:
            ...
            done.update(len(batch))
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from stages.lib.common import log

LINE_EVERY_S = 30.0
QUIET_FIRST_S = 5.0


class LogLines:
    """The pipe form: `evaluate base: 31/62 answers (50%), 1.9 answers/s, ~16 s left`."""

    def __init__(self, desc: str, total: int, unit: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.unit, self.clock = desc, total, unit, clock
        self.done, self.began = 0, clock()
        self.last_line_at, self.last_tenth = self.began, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now, tenth = self.clock(), 10 * self.done // max(self.total, 1)  # integers: no float drift at 30 %
        if now - self.began < QUIET_FIRST_S:
            return
        if tenth > self.last_tenth or now - self.last_line_at >= LINE_EVERY_S:
            self.last_line_at, self.last_tenth = now, tenth
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.began, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done // max(self.total, 1)}%)"
        if self.done >= self.total:
            return f"{text} in {elapsed:.0f} s"
        left = f", ~{(self.total - self.done) / rate:.0f} s left" if rate > 0 else ""
        return f"{text}, {rate:.2g} {self.unit}/s{left}"

    def close(self) -> None:
        pass


@contextlib.contextmanager
def progress(desc: str, total: int, unit: str, stream: TextIO | None = None) -> Iterator[Any]:
    """A tqdm bar when `stream` (default: stderr) is a terminal, else LogLines; both have update(n)."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        # disable=False: on a terminal ours shows even where TQDM_DISABLE (common.setup_logging) hides the libraries'
        bar: Any = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, disable=False)
    else:
        bar = LogLines(desc, total, unit)
    try:
        yield bar
    finally:
        bar.close()
