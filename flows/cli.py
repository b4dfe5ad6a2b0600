"""`graftline` on the command line.

    graftline run                                 the embedded demo, end to end
    graftline run --train data.csv --eval other=other.csv --backbone minilm-l6
    graftline run --config params.yaml --set finetune.epochs=2
    graftline resume [RUN]                        continue a killed or failed run where it stopped
    graftline promote graftline-demo --to production
    graftline rollback graftline-demo --alias production
    graftline history graftline-demo

Errors in the input print one line (`graftline: error: ...`) and exit with status 2; a promotion
refused by its gates exits with status 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="The transfer-learning lifecycle, orchestrated and tracked.",
)


@app.callback()
def _main() -> None:
    """graftline: validate, fine-tune, evaluate, distil and register text classifiers."""


@app.command()
def run(
    config: Path | None = typer.Option(
        None, help="YAML or JSON file of flow parameters (data/validation/finetune/distill/registry)."
    ),
    train: str | None = typer.Option(None, help="Training data (CSV, JSONL, Parquet; path or fsspec URL)."),
    validation: str | None = typer.Option(None, help="Validation data; carved from --train when absent."),
    test: str | None = typer.Option(None, help="Test data; carved from --train when absent."),
    eval_set: list[str] = typer.Option([], "--eval", help="Extra evaluation set NAME=PATH (repeatable)."),
    text_column: str | None = typer.Option(None, help="Text column name."),
    label_column: str | None = typer.Option(None, help="Label column name."),
    backbone: str | None = typer.Option(None, help="Backbone: packaged name, local folder or hub id."),
    strategy: str | None = typer.Option(None, help="full | linear-probe."),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs."),
    student: str | None = typer.Option(None, help="Distillation student (e.g. teacher-layers:3)."),
    no_distill: bool = typer.Option(False, "--no-distill", help="Skip distillation."),
    model_name: str | None = typer.Option(None, help="Registered model name."),
    validation_mode: str | None = typer.Option(None, help="fail | warn."),
    set_: list[str] = typer.Option([], "--set", help="Any parameter as dotted.path=value (repeatable)."),
) -> None:
    """Run the whole lifecycle; with no options, on the embedded demo data."""
    _quiet_defaults()
    overrides = {
        "data.train_path": train,
        "data.validation_path": validation,
        "data.test_path": test,
        "data.text_column": text_column,
        "data.label_column": label_column,
        "finetune.backbone": backbone,
        "finetune.strategy": strategy,
        "finetune.epochs": epochs,
        "distill.student": student,
        "distill.enabled": False if no_distill else None,
        "registry.model_name": model_name,
        "validation.mode": validation_mode,
    }
    try:
        params = build_params(config, overrides, eval_set, set_)
        from graftline.flows.lifecycle import transfer

        summary = transfer(**{k: getattr(params, k) for k in type(params).model_fields})
    except Exception as exc:
        _exit_on_user_error(exc)
        raise
    _print_summary(summary)


@app.command()
def resume(
    run_id: str | None = typer.Argument(
        None,
        help="MLflow run id of the lifecycle (or its Prefect flow run id); "
        "default: the newest one that did not finish.",
    ),
) -> None:
    """Resume a killed or failed lifecycle with its own parameters: the steps it completed are reused and
    training continues from its last checkpoint."""
    _quiet_defaults()
    try:
        from graftline.flows.lifecycle import transfer
        from graftline.flows.resume import interrupted_run

        params, old = interrupted_run(run_id)
        print(f"resuming lifecycle run {old} with its own parameters", file=sys.stderr)
        params.run.resumed_from = old
        summary = transfer(**{k: getattr(params, k) for k in type(params).model_fields})
    except Exception as exc:
        _exit_on_user_error(exc)
        raise
    _print_summary(summary)


def build_params(config: Path | None, overrides: dict, eval_sets: list[str], assignments: list[str]):
    """Merge a config file, the named options and `--set` assignments into TransferParams."""
    import yaml

    from graftline.flows.params import TransferParams
    from graftline.tasks.errors import GraftlineError

    values: dict = {}
    if config is not None:
        if not config.is_file():
            raise GraftlineError(f"{config}: config file not found")
        values = yaml.safe_load(config.read_text()) or {}
        if not isinstance(values, dict):
            raise GraftlineError(f"{config}: expected a mapping of parameter groups")
    pairs = [a.split("=", 1) for a in assignments]
    if any(len(p) != 2 for p in pairs):
        raise GraftlineError("--set expects dotted.path=value")
    for path, value in [
        *[(k, v) for k, v in overrides.items() if v is not None],
        *((k, yaml.safe_load(v)) for k, v in pairs),
    ]:
        _assign(values, path, value)
    if eval_sets:
        pairs = [e.split("=", 1) for e in eval_sets]
        if any(len(p) != 2 or not all(p) for p in pairs):
            raise GraftlineError("--eval expects NAME=PATH")
        _assign(values, "data.eval_sets", dict(pairs))
    elif "train_path" in values.get("data", {}) and "eval_sets" not in values.get("data", {}):
        _assign(values, "data.eval_sets", {})  # the demo's second domain only goes with the demo data
    return TransferParams.model_validate(values)


def _assign(values: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _exit_on_user_error(exc: Exception) -> None:
    """Bad input ends with one line and status 2; anything else is a bug and keeps its traceback."""
    from pydantic import ValidationError

    from graftline.tasks.errors import GraftlineError

    if isinstance(exc, GraftlineError):
        message = str(exc)
    elif isinstance(exc, ValidationError):
        message = "invalid parameters: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
    else:
        return
    print(f"graftline: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _print_summary(summary: dict) -> None:
    print("\n== metrics ==")
    for role, metrics in summary["metrics"].items():
        for key, value in metrics.items():
            print(f"  {role:8s} {key:36s} {value:10.4f}")
    print("\n== registered ==")
    for r in summary["registered"]:
        print(f"  {r['name']} v{r['version']}  aliases: {', '.join(r['aliases'])}  ({r['reason']})")
    for role, reason in summary.get("not_registered", {}).items():
        print(f"  {role} not registered: {reason}")
    if summary.get("reused_steps"):
        print(f"\nreused from an identical earlier run: {', '.join(summary['reused_steps'])}")
    print(f"\nbackbone: {summary['backbone']}")
    print(f"MLflow run {summary['mlflow_run_id']} in experiment {summary['experiment']!r}")
    print(f"open the MLflow UI:  {summary['ui_command']}")


def _quiet_defaults() -> None:
    """No telemetry and no hub chatter unless the user asked for them (set before the imports)."""
    for key, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)


@app.command()
def promote(
    model_name: str = typer.Argument(..., help="Registered model (students: <name>-student)."),
    to: str = typer.Option("staging", help="staging | production."),
    version: str | None = typer.Option(None, help="Version to promote; default: the holder of the stage below."),
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
    _quiet_defaults()
    try:
        values: dict = {"model_name": model_name, "to": to, "version": version}
        if eval_set:
            values["eval_sets"] = dict(_pairs(eval_set, "--eval expects NAME=PATH"))
        params = _with_assignments(values, set_, "PromoteParams")
        from graftline.flows.operations import promote as promote_flow

        outcome = promote_flow(params, triggered_by=_cli_user("graftline promote"))
    except Exception as exc:
        _exit_on_user_error(exc)
        raise
    _print_outcome(outcome)
    raise SystemExit(0 if outcome["moved"] else 1)


@app.command()
def rollback(
    model_name: str = typer.Argument(..., help="Registered model."),
    alias: str = typer.Option("production", help="staging | production."),
    experiment: str = typer.Option("graftline", help="MLflow experiment of the rollback run."),
) -> None:
    """Return an alias to the version that held it before its last promotion (the `rollback` flow)."""
    _quiet_defaults()
    try:
        if alias not in ("staging", "production"):
            from graftline.tasks.errors import GraftlineError

            raise GraftlineError(f"cannot roll back {alias!r}: the stages are staging, production")
        from graftline.flows.operations import rollback as rollback_flow

        outcome = rollback_flow(model_name, alias, experiment, triggered_by=_cli_user("graftline rollback"))
    except Exception as exc:
        _exit_on_user_error(exc)
        raise
    _print_outcome(outcome)


@app.command()
def history(model_name: str = typer.Argument(..., help="Registered model.")) -> None:
    """Every alias move of a model, oldest first, and who holds each stage now."""
    _quiet_defaults()
    try:
        from mlflow.tracking import MlflowClient

        from graftline.tasks.registry import promotion, tracking

        tracking.configure("graftline")
        client = MlflowClient()
        records = promotion.history(client, model_name)
        holders = {a: promotion.alias_holder(client, model_name, a) for a in promotion.STAGES}
    except Exception as exc:
        _exit_on_user_error(exc)
        raise
    print(f"{model_name}: " + ", ".join(f"{a} v{v}" if v else f"{a} -" for a, v in holders.items()))
    for r in records:
        print(
            f"  {r['time']}  {r['action']:8s} {r['alias']:10s} v{r['from_version'] or '-'} -> v{r['to_version']}  "
            f"by {r['triggered_by']}  (run {r['run_id']})"
        )
        for gate, detail in r["gates"].items():
            print(f"      {gate}: {detail}")
    if not records:
        print("  no promotions or rollbacks yet")


@app.command()
def up(
    home: Path = typer.Option(
        Path("graftline-platform"), help="Folder of the servers' databases, artifacts, logs and state."
    ),
    host: str = typer.Option("127.0.0.1", help="Address the servers bind to (127.0.0.1: this machine only)."),
    prefect_port: int = typer.Option(4200, help="Prefect server (API and UI) port."),
    mlflow_port: int = typer.Option(5000, help="MLflow tracking server (and UI) port."),
    backend_store_uri: str | None = typer.Option(
        None, help="MLflow backend store; default sqlite in HOME (e.g. postgresql://user@db/mlflow)."
    ),
    artifacts_destination: str | None = typer.Option(
        None, help="MLflow artifact root; default HOME/artifacts (e.g. s3://bucket/mlflow)."
    ),
    work_pool: str = typer.Option("graftline", help="Process work pool the worker polls."),
    retrain_cron: str | None = typer.Option(None, help="Schedule of the retrain deployment (default: 0 2 * * *)."),
    params: Path | None = typer.Option(None, help="YAML of the transfer/retrain deployments' default parameters."),
) -> None:
    """Start Prefect and MLflow servers and a worker, register the deployments (idempotent)."""
    _quiet_defaults()
    try:
        from graftline.flows import servers

        platform = servers.up(
            home,
            host,
            prefect_port,
            mlflow_port,
            backend_store_uri,
            artifacts_destination,
            work_pool,
            retrain_cron,
            params,
        )
    except Exception as exc:
        _exit_on_user_error(exc)
        raise
    print(f"Prefect UI:  {platform.prefect_url}")
    print(f"MLflow UI:   {platform.mlflow_url}")
    print(f"deployments: transfer, retrain, promote, rollback on work pool {platform.work_pool!r}")
    print("point graftline and other clients at them with:")
    for key, value in platform.env().items():
        print(f"  export {key}={value}")
    print(f"stop with:   graftline down --home {home}")


@app.command()
def down(home: Path = typer.Option(Path("graftline-platform"), help="The folder given to `graftline up`.")) -> None:
    """Stop exactly what `graftline up` started."""
    from graftline.flows import servers

    platform = servers.down(home)
    print(
        "nothing was running"
        if platform is None
        else f"stopped {', '.join(f'{name} (pid {pid})' for name, pid in platform.pids.items())}"
    )


def _print_outcome(outcome: dict) -> None:
    verb = {"promote": "promoted", "rollback": "rolled back"}[outcome["action"]]
    if outcome["moved"]:
        print(
            f"{outcome['model']}: {outcome['alias']} {verb} from v{outcome['previous'] or '-'} to v{outcome['version']}"
        )
    else:
        print(f"{outcome['model']} v{outcome['version']} not promoted to {outcome['alias']}")
    for check in outcome["checks"]:
        print(f"  {'ok' if check['passed'] else 'FAILED':6s} {check['name']}: {check['detail']}")
    print(f"MLflow run {outcome['run_id']}")


def _pairs(items: list[str], message: str) -> list[tuple[str, str]]:
    from graftline.tasks.errors import GraftlineError

    pairs = [i.split("=", 1) for i in items]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise GraftlineError(message)
    return [(k, v) for k, v in pairs]


def _with_assignments(values: dict, assignments: list[str], model: str):
    import yaml

    from graftline.flows import params

    for path, value in _pairs(assignments, "--set expects dotted.path=value"):
        _assign(values, path, yaml.safe_load(value))
    return getattr(params, model).model_validate(values)


def _cli_user(command: str) -> str:
    import getpass
    import socket

    return f"{command} ({getpass.getuser()}@{socket.gethostname()})"


zoo = typer.Typer(no_args_is_help=True, help="The backbone catalog: packaged pretrained backbones that load offline.")
app.add_typer(zoo, name="zoo")


@zoo.command("list")
def zoo_list() -> None:
    """Every catalog backbone: kind, whether it is installed, size, licence."""
    from graftline.tasks.engine import catalog

    print(
        f"{'name':20s} {'kind':6s} {'installed':10s} {'params':>12s} {'layers':>6s} {'width':>6s}  {'licence':34s} summary"
    )
    for entry in catalog.CATALOG.values():
        facts = {}
        if catalog.installed(entry):
            try:
                facts = catalog.describe(entry.name)
            except Exception as exc:  # a broken install is reported, not fatal for the listing
                facts = {"summary": f"(unusable: {exc})"}
        print(
            f"{entry.name:20s} {entry.kind:6s} {'yes' if catalog.installed(entry) else 'no':10s} "
            f"{facts.get('parameters', ''):>12} {facts.get('layers') or '':>6} {facts.get('width') or '':>6}  "
            f"{entry.licence:34s} {facts.get('summary', entry.summary)}"
        )


@zoo.command("install")
def zoo_install(
    names: list[str] = typer.Argument(None, help="Catalog names; none: every entry."),
    force: bool = typer.Option(False, "--force", help="Reinstall and rebuild even when present."),
) -> None:
    """pip-install (no deps, hash-checked), materialise into the cache, verify, describe."""
    from graftline.tasks.engine import catalog

    try:
        for name in names or list(catalog.CATALOG):
            catalog.install(name, force=force)
            facts = catalog.describe(name)
            print(
                f"{name}: {facts['parameters']:,} parameters, {facts['layers']} x {facts['width']}, "
                f"tokenizer {facts['tokenizer']}, verified, in {facts['folder']}"
            )
    except Exception as exc:
        _exit_on_user_error(exc)
        raise


@zoo.command("verify")
def zoo_verify(names: list[str] = typer.Argument(None, help="Catalog names; none: every installed entry.")) -> None:
    """Re-hash materialised weights against the catalog; exit 2 on any mismatch."""
    from graftline.tasks.engine import catalog

    try:
        for name in names or [e.name for e in catalog.CATALOG.values() if catalog.installed(e)]:
            print(f"{name}: sha256 {catalog.verify(name)} ok")
    except Exception as exc:
        _exit_on_user_error(exc)
        raise


def main() -> None:
    app()


if __name__ == "__main__":
    main()
