"""Reusing finished steps, and the folders a resumed run finds its work in.

A step's *fingerprint* is a digest of everything its result depends on: the step, graftline's own
source code, the MLflow store, the data (by digest, not by value), its parameters and the models it
starts from (by their logged URI). Two uses:

- Prefect's cache key for the expensive steps (select, finetune, evaluate, distill), with results
  persisted under `<home>/prefect-results`: re-running a finished lifecycle with the same data
  digest, parameters and code returns the earlier results (Prefect state `Cached`) instead of
  training again, and the flow says which steps it reused.
- The checkpoint folder of a training step, `<home>/checkpoints/<step>-<fingerprint>`: a Prefect
  retry, or `graftline resume` re-running a killed lifecycle, computes the same fingerprint and
  continues from the newest checkpoint there.

A reused model lives in MLflow (its run's logged model); `materialize` downloads it into the new
run's work folder when a later step needs the files.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel

from graftline.tasks.data.splits import Splits
from graftline.tasks.records import StepContext, TrainedModel
from graftline.tasks.registry import tracking

# Parameters that decide where or how often work happens, not what it computes.
EXECUTION_ONLY = {"runner", "dask_address", "workers", "storage", "checkpoint_every", "checkpoint_seconds"}


def fingerprint(step: str, parameters: dict) -> str:
    import mlflow

    digest = hashlib.sha256()
    for part in (
        step,
        code_version(),
        mlflow.get_tracking_uri(),
        *(f"{name}={_describe(value)}" for name, value in sorted(parameters.items())),
    ):
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


def cache_key(context, parameters: dict) -> str:
    """Prefect `cache_key_fn` of the reusable steps."""
    return fingerprint(context.task.name, parameters)


def _describe(value) -> str:
    if isinstance(value, StepContext):  # its run id and work folder differ on every run and decide nothing
        return _describe(value.model)
    if isinstance(value, Splits):
        unlabeled = hashlib.sha256("\x1f".join(value.unlabeled).encode()).hexdigest()
        targets = hashlib.sha256("\x1f".join(f"{n}:{s.digest_of_texts}" for n, s in value.targets.items()).encode())
        return f"splits:{value.digest}:{unlabeled}:{targets.hexdigest()}"
    if isinstance(value, TrainedModel):
        return f"model:{value.model_uri}"
    if isinstance(value, BaseModel):
        return json.dumps(_decisive(value), sort_keys=True)
    return json.dumps(value, sort_keys=True, default=str)


def _decisive(group: BaseModel) -> dict:
    """What of a parameter group decides a result: every setting but the execution-only ones, at any
    depth, and a nested group that is switched off (`enabled: false`, e.g. finetune.search) as just that."""
    decisive = {}
    for name in type(group).model_fields:
        value = getattr(group, name)
        if name in EXECUTION_ONLY:
            continue
        if isinstance(value, BaseModel):
            decisive[name] = {"enabled": False} if getattr(value, "enabled", True) is False else _decisive(value)
        else:
            decisive[name] = group.model_dump(mode="json", include={name})[name]
    return decisive


@lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of graftline's own Python source: a code change invalidates every reuse."""
    import graftline.flows
    import graftline.tasks

    digest = hashlib.sha256()
    for package in (graftline.flows, graftline.tasks):
        root = Path(package.__path__[0])
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def results_folder() -> Path:
    return tracking.home() / "prefect-results"


def checkpoint_folder(step: str, parameters: dict) -> Path:
    return tracking.home() / "checkpoints" / f"{step}-{fingerprint(step, parameters)}"


def token_cache() -> Path:
    return tracking.home() / "cache" / "tokens"


def materialize(model: TrainedModel, folder: Path) -> TrainedModel:
    """`model` with its files in `model.model_dir`: a reused step's folder belonged to an earlier
    run and is gone, its logged MLflow model is not; then a copy pointing at `folder` is returned."""
    if (Path(model.model_dir) / "config.json").is_file():
        return model
    import mlflow.transformers

    from graftline.tasks.train.finetune import save_model

    components = mlflow.transformers.load_model(model.model_uri, return_type="components")
    save_model(components["model"], components["tokenizer"], folder)
    return model.but(model_dir=folder)
