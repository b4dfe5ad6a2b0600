"""How far long work has come, told to whoever watches.

Long work (a lifecycle step, a training loop, predictions over a large set) opens an activity here
and reports on it; listeners decide what to show. The command line registers a live terminal
display while its output is a terminal (flows/cli/display.py); nothing is registered otherwise, and
an activity nobody listens to costs a function call per report.

A training loop reports richer news (`TrainingProgress`) to the callback its caller gives it; the
lifecycle's steps turn that into Prefect log lines and progress artifacts, MLflow metrics, and this
module's activities (flows/progress.py).

Written here rather than with a progress library: tqdm and rich each draw one kind of display,
while the same reports must also reach Prefect and MLflow, and the engine must not import either.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TrainingProgress:
    """Where a training loop is, after one of its optimizer steps."""

    epoch: int
    epochs: int
    step: int  # optimizer steps done in this epoch
    steps: int  # optimizer steps in this epoch
    seconds: float  # since this epoch (or its resumed part) started
    rows: int  # training rows processed in those seconds
    losses: tuple[float, ...] = ()  # the step losses read since the last report (read every few steps only)
    steps_done_before: int = 0  # steps of this epoch done before a resume (not in `seconds`)

    @property
    def examples_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at this epoch's pace for its remaining steps and every later epoch's (early
        stopping may end sooner; validation adds a little per epoch); None before the pace is known."""
        timed = self.step - self.steps_done_before
        if timed <= 0 or self.seconds <= 0:
            return None
        remaining = (self.steps - self.step) + (self.epochs - self.epoch) * self.steps
        return remaining * self.seconds / timed


class Listener(Protocol):
    def begin(self, key: int, label: str, total: float | None) -> None: ...

    def update(self, key: int, completed: float, total: float | None, detail: str) -> None: ...

    def end(self, key: int) -> None: ...


_listeners: list[Listener] = []
_keys = itertools.count(1)
_lock = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """Tell `listener` about every activity while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _lock:
            _listeners.remove(listener)


def watched() -> bool:
    """Whether anyone listens (work that costs something to describe can skip it when not)."""
    return bool(_listeners)


class Activity:
    """One piece of long work being reported: `update(completed, total=None, detail="")`."""

    def __init__(self, label: str, total: float | None) -> None:
        self.key, self.label, self.total = next(_keys), label, total

    def update(self, completed: float, total: float | None = None, detail: str = "") -> None:
        if total is not None:
            self.total = total
        for listener in tuple(_listeners):
            listener.update(self.key, completed, self.total, detail)


@contextmanager
def activity(label: str, total: float | None = None) -> Iterator[Activity]:
    """Report a piece of long work for as long as the block runs (`total` None: of unknown length)."""
    current = Activity(label, total)
    for listener in tuple(_listeners):
        listener.begin(current.key, label, total)
    try:
        yield current
    finally:
        for listener in tuple(_listeners):
            listener.end(current.key)


def duration(seconds: float | None) -> str:
    """`1:02:03` / `2:03`; `?` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
