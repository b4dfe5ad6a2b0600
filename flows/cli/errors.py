"""The one error mapping of the command line: bad input is one line and status 2, a bug keeps its traceback."""

from __future__ import annotations

import functools
import sys

from pydantic import ValidationError

from graftline.tasks import environment
from graftline.tasks.errors import GraftlineError


def one_line(error: Exception) -> str | None:
    """The user-facing message of `error`, or None when it is not the user's to fix."""
    if isinstance(error, GraftlineError):
        return str(error)
    if isinstance(error, ValidationError):
        return "invalid parameters: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return None


RESUMABLE = {"run", "resume"}  # commands whose interrupted work `graftline resume` continues


def command(function):
    """A `graftline` subcommand: the quiet environment set before anything heavy is imported, and
    bad input (GraftlineError, invalid parameters) printed as `graftline: error: ...`, exit 2.
    SIGTERM stops it as Ctrl-C does (interrupt_on_sigterm), exit 130."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        environment.apply_defaults()
        interrupt_on_sigterm()
        try:
            return function(*args, **kwargs)
        except (GraftlineError, ValidationError) as error:
            print(f"graftline: error: {one_line(error)}", file=sys.stderr)
            if getattr(error, "details", ""):
                print(error.details, file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            resumable = function.__name__ in RESUMABLE
            hint = "; `graftline resume` continues it from its last checkpoint" if resumable else ""
            print(f"graftline: interrupted{hint}", file=sys.stderr)
            raise SystemExit(130) from None

    return run


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (what a scheduler, systemd or Kubernetes sends to stop a process) raise
    KeyboardInterrupt, as Ctrl-C does, so the same cleanup runs: Prefect stops its temporary server
    and marks the flow run crashed, MLflow ends the run, temporary folders go. Left at its default,
    SIGTERM ends Python at once and the temporary server lives on as an orphan."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pairs(items: list[str], message: str) -> list[tuple[str, str]]:
    """NAME=VALUE options as pairs; anything else is bad input named by `message`."""
    split = [item.split("=", 1) for item in items]
    if any(len(p) != 2 or not all(p) for p in split):
        raise GraftlineError(message)
    return [(k, v) for k, v in split]


def assign(values: dict, dotted: str, value) -> None:
    """values[a][b][c] = value for dotted = "a.b.c", creating the groups on the way."""
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
