"""The live progress display of the long commands (`graftline run`, `resume`, `check`).

While the block runs, every activity reported through tasks/progress.py (the lifecycle's steps, each
training's epochs and steps, predictions over a set) is a line at the bottom of the terminal, and
log lines scroll above it: Prefect's console handlers are pointed at the display's console for the
duration, so the two never draw over each other. Nothing is drawn when standard error is not a
terminal (a pipe, a CI log) or `GRAFTLINE_PROGRESS=off`: the log lines alone then tell the story.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from graftline.tasks import progress


class TerminalDisplay:
    """A tasks.progress listener drawing each activity as a rich progress line."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<16}"),
            BarColumn(bar_width=12),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # finished lines go; the log keeps the story
            refresh_per_second=4,  # a redraw takes the GIL from training: a few per second suffice
        )
        self.tasks: dict[int, object] = {}

    def begin(self, key: int, label: str, total: float | None) -> None:
        self.tasks[key] = self.bars.add_task(label, total=total, detail="")

    def update(self, key: int, completed: float, total: float | None, detail: str) -> None:
        if key in self.tasks:
            self.bars.update(self.tasks[key], completed=completed, total=total, detail=detail)

    def end(self, key: int) -> None:
        if key in self.tasks:
            self.bars.remove_task(self.tasks.pop(key))


def wanted(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return os.environ.get("GRAFTLINE_PROGRESS", "auto").lower() not in ("off", "0", "false") and stream.isatty()


@contextmanager
def live_progress(console=None) -> Iterator[TerminalDisplay | None]:
    """Draw the progress of everything the block does on `console` (default: standard error, when it
    is a terminal)."""
    if console is None and not wanted():
        yield None
        return
    import prefect  # noqa: F401  (configures Prefect's logging, whose console handlers are redirected below)
    from rich.console import Console

    console = console or Console(stderr=True)
    display = TerminalDisplay(console)
    handlers = [h for h in _all_handlers() if hasattr(h, "console")]  # Prefect's rich console handlers
    saved = [h.console for h in handlers]
    for handler in handlers:
        handler.console = console
    try:
        with display.bars, progress.listening(display):
            yield display
    finally:
        for handler, original in zip(handlers, saved, strict=True):
            handler.console = original


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return list({id(h): h for logger in loggers for h in logger.handlers}.values())
