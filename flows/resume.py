"""Finding a lifecycle that did not finish, and the parameters it ran with (`graftline resume`).

A lifecycle killed mid-run leaves its MLflow parent run RUNNING (nobody closed it), a failed one
FAILED. Its parameters are the run's `parameters.json`; running the lifecycle again with them reuses
the steps it completed (same fingerprints) and resumes its training step from the last checkpoint.
The old run is marked KILLED so the runs table tells the story; the new run is tagged
`graftline.resumed_from` with the old one's id.
"""

from __future__ import annotations

import json

from graftline.tasks.errors import GraftlineError
from graftline.tasks.registry import tracking

UNFINISHED = ("RUNNING", "FAILED", "KILLED")


def interrupted_run(run_id: str | None):
    """(TransferParams, MLflow run id) of the lifecycle to resume: `run_id` (an MLflow run id or a
    Prefect flow run id), or the newest transfer run that did not finish."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from graftline.flows.params import TransferParams

    tracking.connect()
    client = MlflowClient()
    run = _find(client, run_id)
    if run.info.status == "FINISHED":
        raise GraftlineError(
            f"run {run.info.run_id} finished; there is nothing to resume (run it again to reuse its steps)"
        )
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=tracking.PARAMETERS_FILE)
    except Exception as exc:
        raise GraftlineError(f"run {run.info.run_id} has no {tracking.PARAMETERS_FILE}; it cannot be resumed") from exc
    with open(path) as handle:
        params = TransferParams.model_validate(json.load(handle))
    _close(client, run)
    return params, run.info.run_id


def _find(client, run_id: str | None):
    experiments = [e.experiment_id for e in client.search_experiments()]
    where = "tags.`graftline.flow` = 'transfer'"
    if run_id is None:
        runs = client.search_runs(experiments, where, order_by=["attributes.start_time DESC"], max_results=50)
        unfinished = [r for r in runs if r.info.status in UNFINISHED]
        if not unfinished:
            raise GraftlineError("no unfinished lifecycle run to resume")
        return unfinished[0]
    try:
        return client.get_run(run_id)
    except Exception:
        runs = client.search_runs(experiments, f"{where} and tags.prefect_flow_run_id = '{run_id}'", max_results=1)
        if not runs:
            raise GraftlineError(
                f"no lifecycle run {run_id!r} (neither an MLflow run id nor a Prefect flow run id)"
            ) from None
        return runs[0]


def _close(client, run) -> None:
    """Mark the interrupted run, and its steps still shown as running, KILLED."""
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    for stale in [run, *children]:
        if stale.info.status == "RUNNING":
            client.set_terminated(stale.info.run_id, "KILLED")
