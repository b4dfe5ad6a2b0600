"""The environment graftline runs in by default: no telemetry, no hub chatter, quiet libraries,
Arrow memory given back.

The one list of these switches. MLflow and Prefect read theirs when they are imported, so every
entry point applies them first: the command line, the test suite's conftest, the bench scripts;
`graftline up` passes them to the servers it starts. Anything already set in the environment wins.
This module imports nothing heavy, so it can run before those imports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow ignores "1": it must be the string "true"
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # else an error per run when offline
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # a first temporary server takes ~10 s on 2 cores
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per download, in the middle of a command's output
    "TOKENIZERS_PARALLELISM": "false",  # the tokenizers' thread pool would fight torch's after a fork
}
if sys.platform != "win32":  # Arrow's wheels for Windows have no jemalloc
    # Arrow's memory for tables (read when pyarrow is first imported): mimalloc, its default here, keeps
    # freed buffers; jemalloc returns them, so a million-row table read, carved and validated peaks
    # about 0.4 GB lower.
    QUIET["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"


def cache_dir() -> Path:
    """Where installed backbones live (GRAFTLINE_CACHE, default ~/.cache/graftline/backbones); graftline's
    other caches (the drawn demo images) sit beside it."""
    return Path(os.environ.get("GRAFTLINE_CACHE", Path.home() / ".cache" / "graftline" / "backbones")).expanduser()


def apply_defaults(environ: dict | None = None, **extra: str) -> dict:
    """Set every quiet default (and `extra`) that `environ` (default: this process's) lacks; returns it."""
    environ = os.environ if environ is None else environ
    for key, value in {**QUIET, **extra}.items():
        environ.setdefault(key, value)
    return environ
