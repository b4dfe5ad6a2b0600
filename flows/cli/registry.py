"""`graftline promote | rollback | history`: the registry stages from the command line."""

from __future__ import annotations

import sys

import typer

from graftline.flows.cli.errors import assign, command, pairs
from graftline.flows.cli.options import setting
from graftline.flows.identity import triggered_by
from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import EXPERIMENT, PromoteParams, RollbackParams, load_yaml


@command
def promote(
    model_name: str = typer.Argument(..., help="Registered model (students: <name>-student)."),
    to: str = setting(PromoteParams, "to", help="staging | production."),
    version: str | None = setting(
        PromoteParams, "version", help="Version to promote; default: the holder of the stage below."
    ),
    eval_set: list[str] = typer.Option(
        [],
        "--eval",
        help="Evaluation set NAME=PATH (repeatable, needs test=...); default: the version's own, logged at ingest.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Gate or other parameter as dotted.path=value, e.g. gates.min_accuracy=0.9."
    ),
) -> None:
    """Move an alias to a version if its gates pass (the `promote` flow); exit 1 when refused."""
    from graftline.tasks.data.splits import peek_table
    from graftline.tasks.registry import stages, tracking

    values: dict = {"model_name": model_name, "to": to, "version": version}
    if eval_set:
        values["eval_sets"] = dict(pairs(eval_set, "--eval expects NAME=PATH"))
    for path, value in pairs(set_, "--set expects dotted.path=value"):
        assign(values, path, load_yaml(value, f"--set {path}"))
    params = PromoteParams.model_validate(values)
    for path in params.eval_sets.values():  # bad input before Prefect's server starts
        peek_table(path, params.text_column, params.label_column)
    stages.promotion_target(tracking.registry_client(), params.model_name, params.to, params.version)
    from graftline.flows.operations import promote as promote_flow

    outcome = promote_flow(params, triggered_by=triggered_by("graftline promote"))
    print_outcome(outcome)
    raise SystemExit(0 if outcome.moved else 1)


@command
def rollback(
    model_name: str = typer.Argument(..., help="Registered model."),
    alias: str = setting(RollbackParams, "alias", help="staging | production."),
    experiment: str = setting(RollbackParams, "experiment"),
) -> None:
    """Return an alias to the version that held it before its last promotion (the `rollback` flow)."""
    from graftline.tasks.registry.contract import PROMOTABLE

    if alias not in PROMOTABLE:
        raise GraftlineError(f"cannot roll back {alias!r}: the stages are {', '.join(PROMOTABLE)}")
    from graftline.tasks.registry import stages, tracking

    stages.rollback_target(tracking.registry_client(), model_name, alias)  # before Prefect's server starts
    from graftline.flows.operations import rollback as rollback_flow

    print_outcome(rollback_flow(model_name, alias, experiment, triggered_by=triggered_by("graftline rollback")))


@command
def history(model_name: str = typer.Argument(..., help="Registered model.")) -> None:
    """Every alias move and drift check of a model, oldest first, and what holds each stage now."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry import contract, stages, tracking

    tracking.configure(EXPERIMENT)
    client = MlflowClient()
    records = stages.history(client, model_name)
    holders = {a: stages.alias_holder(client, model_name, a) for a in contract.STAGES}
    print(f"{model_name}: " + ", ".join(f"{a} v{v}" if v else f"{a} -" for a, v in holders.items()))
    for alias, version in holders.items():
        if version:
            tags = client.get_model_version(model_name, version).tags
            facts = {
                key: tags.get(key, "?")
                for key in (
                    contract.ROLE,
                    contract.BACKBONE,
                    contract.MAX_LENGTH,
                    contract.TEST_ACCURACY,
                    contract.TRAINING_RUN,
                )
            }
            print(
                f"  {alias:10s} v{version}: {facts[contract.ROLE]} of backbone {facts[contract.BACKBONE]}, "
                f"max_length {facts[contract.MAX_LENGTH]}, test accuracy {facts[contract.TEST_ACCURACY]}, "
                f"trained in run {facts[contract.TRAINING_RUN]}"
            )
    for r in records:
        if r["action"] == "monitor":
            print(f"  {r['time']}  monitor  v{r['version']}: {r['detail']}  (run {r['run_id']})")
            if r.get("retrain_flow_run_id"):
                print(f"      retraining started: flow run {r['retrain_flow_run_id']}")
            elif r.get("retrain_error"):
                print(f"      {r['retrain_error']}")
            continue
        print(
            f"  {r['time']}  {r['action']:8s} {r['alias']:10s} v{r['from_version'] or '-'} -> v{r['to_version']}  "
            f"by {r['triggered_by']}  (run {r['run_id']})"
        )
        for gate, detail in r["gates"].items():
            print(f"      {gate}: {detail}")
    if not records:
        print("  no promotions or rollbacks yet")


def print_outcome(outcome) -> None:
    verb = {"promote": "promoted", "rollback": "rolled back"}[outcome.action]
    if outcome.moved:
        print(f"{outcome.model}: {outcome.alias} {verb} from v{outcome.previous or '-'} to v{outcome.version}")
    else:
        print(f"{outcome.model} v{outcome.version} not promoted to {outcome.alias}")
    for check in outcome.checks:
        print(f"  {'ok' if check.passed else 'FAILED':6s} {check.name}: {check.detail}")
    print(f"MLflow run {outcome.run_id}", file=sys.stdout)
