"""The transfer lifecycle as one Prefect flow:

    ingest -> validate (GX) -> select backbone (fixed, or `auto` by transferability score)
           -> fine-tune (adapted to data.target_sets by adapt.method) -> evaluate (-> domain gap)
           (-> explain) -> distill (retention gate) (-> explain) -> export (ONNX, INT8, parity, latency)
           -> register (alias `candidate`) and promote (to `registry.promote_to`, behind the gates)

Where each step lives (its Prefect task in flows/steps.py only tracks, through one shell; the work
is in tasks/, and every default is in tasks/settings.py under the group named here). What varies by
the kind of data is asked of the run's Modality (tasks/modality/, resolved once from the data and
carried in StepContext); what varies by training method is one recipe of tasks/train/recipes/:

    step        parameters              logic (tasks/)                                  below it
    ingest      data                    data/ingest.py, data/splits.py, data/pii.py     registry/evaluation_sets.py
    validate    validation              modality/text.py, modality/image.py (suites)   Great Expectations
    select      select, model           train/selection.py                              engine/backbones.py, catalog.py
    finetune    finetune, adapt, model  train/finetune.py, train/recipes/               engine/training.py, mlm.py
    evaluate    model                   evaluate/scores.py, evaluate/calibration.py     engine/training.py
    domain_gap  model (with targets)    evaluate/domain_gap.py                          scikit-learn
    explain     explain, model          evaluate/explain.py                             captum
    distill     distill, model          train/distill.py, evaluate/scores.py            engine/training.py
    export      export, model           export/served.py, export/onnx.py                onnxruntime
    register    registry (gates)        registry/versions.py, registry/promotion.py     registry/contract.py

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
from graftline.flows.identity import triggered_by
from graftline.flows.params import TransferParams
from graftline.tasks import modality as modalities
from graftline.tasks.errors import GraftlineError
from graftline.tasks.modality.base import EXPLAIN
from graftline.tasks.records import LifecycleSummary, StepContext, TrainedModel
from graftline.tasks.registry import contract, stages, tracking
from graftline.tasks.settings import (
    AdaptParams,
    DataParams,
    DistillParams,
    ExplainParams,
    ExportParams,
    FinetuneParams,
    ModelParams,
    RegistryParams,
    RunParams,
    SelectParams,
    TrackingParams,
    ValidationParams,
)


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
    model: ModelParams = ModelParams(),
    select: SelectParams = SelectParams(),
    finetune: FinetuneParams = FinetuneParams(),
    adapt: AdaptParams = AdaptParams(),
    distill: DistillParams = DistillParams(),
    export: ExportParams = ExportParams(),
    explain: ExplainParams = ExplainParams(),
    registry: RegistryParams = RegistryParams(),
    tracking: TrackingParams = TrackingParams(),  # shadows the module here only: _lifecycle uses the module
    run: RunParams = RunParams(),
) -> LifecycleSummary:
    """Validate, fine-tune, evaluate, distil, export and register one text or image classifier; returns a
    summary."""
    given = TransferParams(
        data=data,
        validation=validation,
        model=model,
        select=select,
        finetune=finetune,
        adapt=adapt,
        distill=distill,
        export=export,
        explain=explain,
        registry=registry,
        tracking=tracking,
        run=run,
    )
    # The image defaults go only where the caller gave nothing: decided before the dump marks every field set.
    given = given.for_modality()
    return _lifecycle(TransferParams.model_validate(with_deployment_defaults(given.model_dump())))


def _lifecycle(params: TransferParams) -> LifecycleSummary:
    from mlflow.tracking import MlflowClient
    from prefect.runtime import flow_run

    store = tracking.configure(params.registry.experiment)
    run_tags = {
        contract.FLOW_RUN: str(flow_run.id or ""),
        contract.GIT_COMMIT: tracking.git_commit(),
        "graftline.flow": "transfer",
        **({contract.RESUMED_FROM: params.run.resumed_from} if params.run.resumed_from else {}),
    }
    reused: list[str] = []

    def call(step, *args, reusable=True, retried=False):
        """Run a step, reusing an identical earlier result when allowed; note what was reused."""
        if reusable:
            step = steps.reusable(step, params.run)
        if retried:
            step = steps.retrying(step, params.run)
        state = step(*args, return_state=True)
        if state.name == "Cached":
            reused.append(step.name)
            get_run_logger().info(
                "%s: reused the result of an identical earlier run (same data, parameters and code)", step.name
            )
        return state.result()

    distill, gates = params.distill, params.registry.gates
    with (
        tempfile.TemporaryDirectory(prefix="graftline-") as tmp,
        tracking.lifecycle_run(f"transfer-{flow_run.name or 'local'}", run_tags) as parent,
    ):
        context = StepContext(parent.info.run_id, Path(tmp), params.model, modalities.of_data(params.data))
        get_run_logger().info(
            "MLflow run %s (if this run is interrupted: graftline resume %s)", parent.info.run_id, parent.info.run_id
        )
        tracking.log_params(params.model_dump(exclude={"data": {"eval_sets"}}))
        tracking.log_parameters_file(params)

        unlabeled = distill.unlabeled_paths if distill.enabled else []
        ingested = steps.ingest(
            params.data, unlabeled, distill.unlabeled_text_column, params.validation, params.tracking, context
        )
        splits = ingested.splits
        # one kind of model per registered name: refused before anything trains (the command line checked too)
        stages.require_one_kind(MlflowClient(), params.registry.model_name, splits.modality, splits.labels)
        report = steps.validate(splits, params.validation, context)
        student_spec = distill.student if distill.enabled else None
        backbone = call(
            steps.select,
            splits,
            params.finetune.backbone,
            student_spec,
            params.select,
            context,
            reusable=params.finetune.backbone == "auto",
        )
        finetune = params.finetune.model_copy(update={"backbone": backbone})
        teacher = call(steps.finetune, splits, finetune, params.adapt, context, retried=True)
        teacher = reuse.materialize(teacher, context.work_dir / "teacher")
        evaluations, calibration, evaluated = call(steps.evaluate, teacher, splits, context)
        teacher = teacher.but(evaluations=evaluations, calibration=calibration, evaluated_digest=evaluated)
        if splits.targets:
            teacher = teacher.but(report={**teacher.report, **call(steps.domain_gap, teacher, splits, context)})
        models: list[TrainedModel] = [teacher]
        explaining = params.explain.enabled and context.modality.supports(EXPLAIN)
        if params.explain.enabled and not explaining:
            refused = context.modality.refusal(EXPLAIN)
            get_run_logger().warning("explain: %s; not run on %s data", refused, context.modality.name)
        explained = steps.explain(teacher, splits, params.explain, None, context) if explaining else None
        if distill.enabled:
            retention = (gates.retention_floor, gates.retention_sets)
            student = call(steps.distill, teacher, splits, distill, retention, context, retried=True)
            models.append(reuse.materialize(student, context.work_dir / "student"))
            if explained is not None:
                steps.explain(models[-1], splits, params.explain, explained, context)
        admitted = [m for m in models if m.gate_failure is None]
        exported = None
        if params.export.enabled and admitted:
            exported = steps.export(admitted[-1], teacher, splits, params.export, context)
            admitted[-1] = admitted[-1].but(export_run_id=exported.run_id, servable_uri=exported.servable_uri)
        version_tags = {
            **run_tags,
            contract.LIFECYCLE_RUN: parent.info.run_id,
            contract.DATA_DIGEST: splits.digest,
            contract.LABELS: contract.labels_tag(splits.labels),
            contract.INGEST_RUN: ingested.run_id,
            contract.VALIDATION: str(report.success).lower(),
        }
        registrations = steps.register(admitted, splits, params.registry, version_tags, triggered_by(), context)

        summary = LifecycleSummary(
            mlflow_run_id=parent.info.run_id,
            experiment=store.experiment_name,
            tracking_uri=store.uri,
            ui_command=store.ui_command(),
            data_digest=splits.digest,
            backbone=backbone,
            metrics={m.role: m.metrics() for m in models} | ({"export": exported.metrics} if exported else {}),
            registered=tuple(registrations),
            not_registered={m.role: m.gate_failure for m in models if m.gate_failure},
            reused_steps=tuple(reused),
            adaptation=teacher.adaptation,
        )
        tracking.log_summary(summary)
    get_run_logger().info(
        "registered: %s", ", ".join(f"{r.name} v{r.version} {list(r.aliases)}" for r in registrations)
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
