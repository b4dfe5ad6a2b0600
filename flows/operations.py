"""The flows of daily operation: promote and roll back registry stages, and scheduled retraining.

    promote   move `staging` or `production` to a version if its gates pass
    rollback  return an alias to its previous holder
    retrain   the whole lifecycle on the current data, proposing its result for promotion

`graftline promote | rollback | history` run the same code from the command line.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from graftline.flows.params import (
    DataParams,
    DistillParams,
    ExportParams,
    FinetuneParams,
    PromoteParams,
    RegistryParams,
    RunParams,
    SelectParams,
    TransferParams,
    ValidationParams,
)
from graftline.flows.steps import EVALUATION_SETS
from graftline.tasks.registry import tracking


@flow(name="promote", log_prints=True, persist_result=False)
def promote(params: PromoteParams = PromoteParams(), triggered_by: str | None = None) -> dict:
    """Move `params.to` to a version of `params.model_name` if the gates pass; returns the outcome."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry import promotion

    tracking.configure(params.experiment)
    client = MlflowClient()
    version = params.version or promotion.alias_holder(client, params.model_name, promotion.BELOW[params.to])
    eval_sets = _eval_sets(client, params, version)
    outcome = promotion.promote(
        client,
        params.model_name,
        params.to,
        eval_sets,
        params.gates.to_gates(),
        triggered_by or _who(),
        version=version,
        experiment=params.experiment,
    )
    get_run_logger().info(
        "%s %s v%s -> %s: %s",
        "moved" if outcome.moved else "not moved",
        outcome.model,
        outcome.version,
        outcome.alias,
        outcome.reason,
    )
    return outcome.as_dict()


@flow(name="rollback", log_prints=True, persist_result=False)
def rollback(
    model_name: str = "graftline-demo",
    alias: Literal["staging", "production"] = "production",
    experiment: str = "graftline",
    triggered_by: str | None = None,
) -> dict:
    """Return `alias` of `model_name` to the version that held it before its last promotion."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry import promotion

    tracking.configure(experiment)
    outcome = promotion.rollback(MlflowClient(), model_name, alias, triggered_by or _who(), experiment=experiment)
    get_run_logger().info("%s: v%s -> v%s", alias, outcome.previous, outcome.version)
    return outcome.as_dict()


@flow(name="retrain", log_prints=True, persist_result=False)
def retrain(
    data: DataParams = DataParams(),
    validation: ValidationParams = ValidationParams(),
    select: SelectParams = SelectParams(),
    finetune: FinetuneParams = FinetuneParams(),
    distill: DistillParams = DistillParams(),
    export: ExportParams = ExportParams(),
    registry: RegistryParams = RegistryParams(promote_to="none"),
    run: RunParams = RunParams(),
    auto_promote: bool = False,
) -> dict:
    """The whole lifecycle on the data as it is now (paths are read at run time, so new data is
    picked up); new versions become `candidate`, and `staging` too when `auto_promote` is on and
    the gates pass."""
    from graftline.flows.lifecycle import transfer, with_deployment_defaults

    given = TransferParams(
        data=data,
        validation=validation,
        select=select,
        finetune=finetune,
        distill=distill,
        export=export,
        registry=registry,
        run=run,
    ).model_dump()
    params = TransferParams.model_validate(with_deployment_defaults(given))
    params.registry.promote_to = "staging" if auto_promote else "none"
    return transfer(**{group: getattr(params, group) for group in TransferParams.model_fields})


def _eval_sets(client, params: PromoteParams, version: str | None) -> dict:
    """The evaluation sets a promotion re-evaluates on: given files, or the version's own."""
    import mlflow
    import pandas as pd

    from graftline.tasks.data import Split, read_table, resolve_source
    from graftline.tasks.registry.promotion import PromotionError

    if params.eval_sets:
        if "test" not in params.eval_sets:
            raise PromotionError("eval_sets needs a 'test' entry (the thresholds and retention are measured on it)")
        return {
            name: Split(name, read_table(resolve_source(path), params.text_column, params.label_column), path)
            for name, path in params.eval_sets.items()
        }
    if version is None:
        return {}  # promotion.promote reports what is missing
    try:
        run_id = client.get_model_version(params.model_name, version).tags.get("ingest_run_id")
    except Exception:
        return {}  # no such model or version: promotion.promote says which
    if not run_id:
        raise PromotionError(f"{params.model_name} v{version} has no ingest_run_id tag; pass eval_sets")
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=EVALUATION_SETS))
    return {
        p.stem: Split(p.stem, pd.read_parquet(p), f"runs:/{run_id}/{EVALUATION_SETS}/{p.name}")
        for p in sorted(folder.glob("*.parquet"), key=lambda p: (p.stem != "test", p.stem))
    }


def _who() -> str:
    """Who or what triggered an operation: the Prefect flow run (and deployment), else the user."""
    from prefect.runtime import deployment, flow_run

    if flow_run.id:
        via = f" of deployment {deployment.name}" if deployment.id else ""
        return f"{flow_run.flow_name} flow run {flow_run.name} ({flow_run.id}){via}"
    return f"{getpass.getuser()}@{socket.gethostname()}"
