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


def command(function):
    """A `graftline` subcommand: the quiet environment set before anything heavy is imported, and
    bad input (GraftlineError, invalid parameters) printed as `graftline: error: ...`, exit 2."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        environment.apply_defaults()
        try:
            return function(*args, **kwargs)
        except (GraftlineError, ValidationError) as error:
            print(f"graftline: error: {one_line(error)}", file=sys.stderr)
            if getattr(error, "details", ""):
                print(error.details, file=sys.stderr)
            raise SystemExit(2) from None

    return run


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
