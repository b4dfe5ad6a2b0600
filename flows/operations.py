"""The flows of daily operation on the registry:

    promote   move `staging` or `production` to a version if its gates pass
    rollback  return an alias to its previous holder

`graftline promote | rollback | history` run the same code from the command line. Scheduled
retraining is not a flow of its own: it is a second deployment of `transfer` (flows/deploy.py).
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from graftline.flows.identity import triggered_by as who
from graftline.flows.params import PromoteParams, RollbackParams
from graftline.tasks.registry import contract, evaluation_sets, tracking
from graftline.tasks.registry.promotion import Outcome


@flow(name="promote", log_prints=True, persist_result=False)
def promote(params: PromoteParams = PromoteParams(), triggered_by: str | None = None) -> Outcome:
    """Move `params.to` to a version of `params.model_name` if the gates pass; returns the outcome."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry import promotion

    tracking.configure(params.experiment)
    client = MlflowClient()
    version = params.version or promotion.alias_holder(client, params.model_name, contract.BELOW[params.to])
    eval_sets = _eval_sets(client, params, version)
    outcome = promotion.promote(
        client,
        params.model_name,
        params.to,
        eval_sets,
        params.gates,
        triggered_by or who(),
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
    return outcome


ROLLBACK = RollbackParams()  # the form's defaults (its fields are the flow's parameters, flat as before)


@flow(name="rollback", log_prints=True, persist_result=False)
def rollback(
    model_name: str = ROLLBACK.model_name,
    alias: Literal["staging", "production"] = ROLLBACK.alias,
    experiment: str = ROLLBACK.experiment,
    triggered_by: str | None = None,
) -> Outcome:
    """Return `alias` of `model_name` to the version that held it before its last promotion."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry import promotion

    tracking.configure(experiment)
    outcome = promotion.rollback(MlflowClient(), model_name, alias, triggered_by or who(), experiment=experiment)
    get_run_logger().info("%s: v%s -> v%s", alias, outcome.previous, outcome.version)
    return outcome


def _eval_sets(client, params: PromoteParams, version: str | None) -> dict:
    """The evaluation sets a promotion re-evaluates on: given files, or the version's own."""

    from graftline.tasks.data.splits import Split, read_table, resolve_source
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
        run_id = client.get_model_version(params.model_name, version).tags.get(contract.INGEST_RUN)
    except Exception:
        return {}  # no such model or version: promotion.promote says which
    if not run_id:
        raise PromotionError(f"{params.model_name} v{version} has no ingest_run_id tag; pass eval_sets")
    return evaluation_sets.of_version(client, params.model_name, version)
