"""The registry lock: one writer moving a registered model's aliases at a time, kept where people
do not browse.

Two kinds, chosen by where the platform's state lives:

- **A Prefect global concurrency limit** of one slot, `graftline-registry:<model>`, when a Prefect
  server is configured (`PREFECT_API_URL`, as `graftline up` sets for its worker and prints for its
  users). Every process that promotes, on any machine, asks that one server, whose slot count is a
  single conditional SQL update, so two holders cannot both get it. The slot is leased: a holder
  killed outright gives it back when its lease (60 s, renewed while it works) runs out and the
  server's lease service reclaims it, about a minute later.
- **An operating-system file lock** (`filelock`, fcntl on Linux) in the store's folder otherwise,
  for one person's platform on one machine: with no Prefect server, each command starts Prefect's
  temporary server, whose leases live in that process's memory, so a killed holder's slot would
  never be reclaimed; a file lock is released by the kernel the moment its holder dies. It guards
  processes on this machine only; a team sharing a remote MLflow server runs `graftline up`.

Neither leaves anything in the MLflow registry: every registered model there is a model. A lock
that an earlier graftline kept as a registered model `<name>.graftline-lock` is deleted when the
model is next locked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graftline.tasks.registry.contract import LEGACY_LOCK_SUFFIX

LEASE_SECONDS = 60  # Prefect's lease bounds: 60 s to a day
RETRY_SECONDS = 2.0  # between asks of a Prefect server that did not answer
PREFIX = "graftline-registry:"


class LockBusy(Exception):
    """Another process held the lock for longer than the caller would wait."""


def prefect_server() -> str | None:
    """The configured Prefect server's API URL, or None (each command starts a temporary one).
    Reads settings only: starts nothing."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def limit_name(model: str) -> str:
    """The concurrency limit's name: Prefect refuses / % & > < in names, so those become _XX (hex)
    after every _ of the name is doubled, so two model names never share a limit."""
    return PREFIX + re.sub(r"[/%&><]", lambda m: f"_{ord(m.group()):02x}", model.replace("_", "__"))


def lock_file(model: str) -> Path:
    """Where the file lock of `model` lives: beside a local MLflow store, else in graftline's home."""
    import mlflow

    from graftline.tasks.registry import tracking

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    elif uri.startswith("file:") or "://" not in uri:
        folder = Path(tracking.local_path(uri))
    else:
        folder = tracking.home()
    safe = re.sub(r"[^A-Za-z0-9._-]", lambda m: f"%{ord(m.group()):02x}", model)
    return folder / ".graftline-locks" / f"{safe}.lock"


@contextmanager
def hold(client, model: str, wait: float) -> Iterator[None]:
    """Hold `model`'s registry lock for the block; `LockBusy` after `wait` seconds of waiting."""
    _drop_legacy_lock(client, model)
    if prefect_server():
        with _concurrency_slot(limit_name(model), wait):
            yield
    else:
        with _file_lock(lock_file(model), wait):
            yield


@contextmanager
def _file_lock(path: Path, wait: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(path, timeout=wait):
            yield
    except Timeout:
        raise LockBusy(f"held by another process (lock file {path})") from None


@contextmanager
def _concurrency_slot(name: str, wait: float) -> Iterator[None]:
    """The slot of limit `name`, waited for up to `wait` seconds. A Prefect server that does not
    answer (restarting) is asked again until then, so a short outage delays a promotion instead
    of failing the run that promotes."""
    from prefect.concurrency.sync import concurrency

    deadline = time.monotonic() + wait
    while True:
        entered = False
        try:
            _ensure_limit(name)
            with concurrency(
                name,
                occupy=1,
                timeout_seconds=max(1.0, deadline - time.monotonic()),
                lease_duration=LEASE_SECONDS,
                strict=True,  # a missing limit is an error, never a block run unlocked
                raise_on_lease_renewal_failure=False,  # never cancel an alias move halfway
            ):
                entered = True
                yield
            return
        except TimeoutError:
            if entered:
                raise
            raise LockBusy(
                f"held by another process (Prefect concurrency limit {name!r}; a holder that was killed "
                f"frees it within about {LEASE_SECONDS + 15} s)"
            ) from None
        except Exception as exc:  # the server unreachable or erring while the slot is asked for
            if entered:
                raise
            if time.monotonic() > deadline:
                reason = f"{type(exc).__name__}: {exc}"
                raise LockBusy(f"unreachable: the Prefect server did not answer ({reason})") from None
            time.sleep(RETRY_SECONDS)


def _ensure_limit(name: str) -> None:
    """The one-slot limit `name`, created on first use; an inactive one (which locks nothing) revived."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # created by another process meanwhile
            return
        if limit.limit != 1 or not limit.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


def _drop_legacy_lock(client, model: str) -> None:
    """Delete the registered model an earlier graftline used as this model's lock, if any."""
    from mlflow.exceptions import MlflowException

    name = model + LEGACY_LOCK_SUFFIX
    try:
        client.get_registered_model(name)
    except MlflowException:
        return
    try:
        client.delete_registered_model(name)
    except MlflowException:
        pass  # deleted by another process meanwhile
