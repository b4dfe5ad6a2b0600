"""The transfer lifecycle as one Prefect flow:

    ingest -> validate (GX) -> select backbone (fixed, or `auto` by transferability score)
           -> fine-tune -> evaluate -> distill (retention gate) -> export (ONNX, INT8, parity, latency)
           -> register (alias `candidate`) and promote (to `registry.promote_to`, behind the gates)

One parent MLflow run per flow run, one nested run per step. Models are written to a temporary
work folder, logged to MLflow by their step, and registered only after every step succeeded.

Re-running a finished lifecycle reuses the expensive steps (select, finetune, evaluate, distill)
whose data digest, parameters and code are unchanged, and says which (log line, parent-run tag
`graftline.reused_steps`, summary). A crashed training step is retried and resumes from its last
checkpoint; a killed run is resumed with `graftline resume <run>` (see flows.reuse).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from graftline.flows import reuse, steps
from graftline.flows.params import (
    DataParams,
    DistillParams,
    ExportParams,
    FinetuneParams,
    RegistryParams,
    RunParams,
    SelectParams,
    TransferParams,
    ValidationParams,
)
from graftline.tasks.registry import tracking
from graftline.tasks.errors import GraftlineError


class _BadInputWithoutTraceback(logging.Filter):
    """Prefect logs a failed run's exception with its traceback. For bad input (GraftlineError)
    the message already says everything, and a 60-line traceback would bury it; bugs keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], GraftlineError):
            record.exc_info, record.exc_text = None, None
        return True


for _logger in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_logger).addFilter(_BadInputWithoutTraceback())


@flow(name="transfer", log_prints=True, persist_result=False)
def transfer(
    data: DataParams = DataParams(),
    validation: ValidationParams = ValidationParams(),
    select: SelectParams = SelectParams(),
    finetune: FinetuneParams = FinetuneParams(),
    distill: DistillParams = DistillParams(),
    export: ExportParams = ExportParams(),
    registry: RegistryParams = RegistryParams(),
    run: RunParams = RunParams(),
) -> dict:
    """Validate, fine-tune, evaluate, distil, export and register one text classifier; returns a summary."""
    from prefect.runtime import flow_run

    params = TransferParams.model_validate(
        with_deployment_defaults(
            TransferParams(
                data=data,
                validation=validation,
                select=select,
                finetune=finetune,
                distill=distill,
                export=export,
                registry=registry,
                run=run,
            ).model_dump()
        )
    )
    data, validation, select, finetune, distill, export, registry, run = (
        params.data,
        params.validation,
        params.select,
        params.finetune,
        params.distill,
        params.export,
        params.registry,
        params.run,
    )
    store = tracking.configure(registry.experiment)
    flow_run_id = str(flow_run.id or "")
    run_tags = {
        "prefect_flow_run_id": flow_run_id,
        "git_commit": tracking.git_commit(),
        "graftline.flow": "transfer",
        **({"graftline.resumed_from": run.resumed_from} if run.resumed_from else {}),
    }
    reused: list[str] = []

    def call(step, *args, reusable=True, retried=False):
        """Run a step, reusing an identical earlier result when allowed; note what was reused."""
        if reusable:
            step = steps.reusable(step, run)
        if retried:
            step = steps.retrying(step, run)
        state = step(*args, return_state=True)
        if state.name == "Cached":
            reused.append(step.name)
            get_run_logger().info(
                "%s: reused the result of an identical earlier run (same data, parameters and code)", step.name
            )
        return state.result()

    with (
        tempfile.TemporaryDirectory(prefix="graftline-") as tmp,
        tracking.lifecycle_run(f"transfer-{flow_run.name or 'local'}", run_tags) as parent,
    ):
        work_dir, parent_id = Path(tmp), parent.info.run_id
        get_run_logger().info("MLflow run %s (if this run is interrupted: graftline resume %s)", parent_id, parent_id)
        tracking.log_params(params.model_dump(exclude={"data": {"eval_sets"}}))
        tracking.log_parameters_file(params)

        splits, ingest_run_id = steps.ingest(data, distill, parent_id, work_dir)
        report = steps.validate(splits, validation, parent_id, work_dir)
        backbone = call(
            steps.select, splits, finetune, distill, select, parent_id, work_dir, reusable=finetune.backbone == "auto"
        )
        finetune = finetune.model_copy(update={"backbone": backbone})
        teacher = call(steps.finetune, splits, finetune, parent_id, work_dir, retried=True)
        reuse.materialize(teacher, work_dir / "teacher")
        teacher.evaluations = call(steps.evaluate, teacher, splits, finetune, parent_id, work_dir)
        models = [teacher]
        if distill.enabled:
            student = call(steps.distill, teacher, splits, distill, finetune, parent_id, work_dir, retried=True)
            reuse.materialize(student, work_dir / "student")
            models.append(student)
        gated = [m for m in models if m.gate_failure is None]
        exported = {}
        if export.enabled and gated:
            exported = steps.export(gated[-1], teacher, splits, export, finetune.max_length, parent_id, work_dir)
        version_tags = {
            **run_tags,
            "data_digest": splits.digest,
            "ingest_run_id": ingest_run_id,
            "validation_success": str(report.success).lower(),
        }
        triggered_by = f"transfer flow run {flow_run.name or 'local'} ({flow_run_id or 'no id'})"
        registrations = steps.register(gated, splits, registry, parent_id, version_tags, triggered_by)

        summary = _summary(models, registrations, store, parent_id, splits.digest)
        summary["backbone"] = backbone
        if exported:
            summary["metrics"]["export"] = exported
        summary["not_registered"] = {m.role: m.gate_failure for m in models if m.gate_failure}
        summary["reused_steps"] = reused
        _log_summary(summary)
    get_run_logger().info(
        "registered: %s", ", ".join(f"{r['name']} v{r['version']} {r['aliases']}" for r in registrations)
    )
    return summary


def with_deployment_defaults(values: dict) -> dict:
    """`values` with the deployment's defaults merged in at every depth.

    Prefect merges a run's parameters into its deployment's at the top level only: a run started
    with `{"finetune": {"epochs": 1}}` would get a `finetune` of model defaults, silently losing the
    deployment's backbone. Here the run's parameters as sent (the raw values stored with the run)
    are merged into the deployment's, recursively, and take precedence over `values` (the same
    parameters after pydantic filled the gaps with model defaults). Outside a deployment run,
    `values` are returned as they are."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.deployment_id is None or run.parent_task_run_id is not None:
        return values  # not a deployment run, or a subflow (its parent merged already)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployed = client.read_deployment(run.deployment_id).parameters or {}
    sent = {k: v for k, v in (run.parameters or {}).items() if k in values}
    return _deep_merge(values, _deep_merge({k: v for k, v in deployed.items() if k in values}, sent))


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _summary(models, registrations, store, parent_id: str, digest: str) -> dict:
    return {
        "mlflow_run_id": parent_id,
        "experiment": store.experiment_name,
        "tracking_uri": store.uri,
        "ui_command": store.ui_command(),
        "data_digest": digest,
        "metrics": {
            model.role: {
                **{
                    f"{name}_{m}": getattr(e, m)
                    for name, e in model.evaluations.items()
                    for m in ("accuracy", "macro_f1")
                },
                **model.report,
            }
            for model in models
        },
        "registered": registrations,
    }


def _log_summary(summary: dict) -> None:
    """Headline numbers on the parent run, so the runs table compares lifecycles at a glance."""
    import mlflow

    flat = {f"{role}_{k}": v for role, values in summary["metrics"].items() for k, v in values.items()}
    mlflow.log_metrics(flat)
    mlflow.log_dict(summary, "summary.json")
    if summary["reused_steps"]:
        mlflow.set_tag("graftline.reused_steps", ", ".join(summary["reused_steps"]))
