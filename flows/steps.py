"""Prefect tasks: one per lifecycle step, each a thin call of one tracking shell (`tracked_step`):
the step's nested MLflow run, its parameters, the logic from tasks/, what its result says it logs
(`result.logged()`, a tracking.StepLog), and the result's lines and warnings in the run's log.
Inputs are in-memory objects handed from step to step, so Prefect's input hashing is off (NO_CACHE);
the lifecycle flow turns on reuse of the expensive steps with `reusable()` (cache keys from
flows.reuse, results persisted) and resumable retries of the training steps with `retrying()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from graftline.flows import reuse
from graftline.flows.progress import TrainingMonitor
from graftline.tasks import settings
from graftline.tasks.data.splits import Splits
from graftline.tasks.data.validate import ValidationReport
from graftline.tasks.engine.training import TrainingIO
from graftline.tasks.errors import GraftlineError
from graftline.tasks.evaluate.calibration import Calibration
from graftline.tasks.evaluate.scores import Evaluation
from graftline.tasks.records import Exported, Ingested, Registration, StepContext, TrainedModel, weights_digest
from graftline.tasks.registry import contract, tracking

STEP = dict(cache_policy=NO_CACHE, persist_result=False)


def reusable(step, run: settings.RunParams):
    """`step` with its result persisted under <home>/prefect-results and reused by any later run with
    the same fingerprint (flows.reuse); `run.reuse_steps` off recomputes and overwrites."""
    from prefect.cache_policies import CachePolicy

    return step.with_options(
        cache_policy=CachePolicy.from_cache_key_fn(reuse.cache_key),
        persist_result=True,
        result_storage=reuse.results_folder(),  # a Path: a local folder
        refresh_cache=not run.reuse_steps,
    )


def retrying(step, run: settings.RunParams):
    """`step` retried after a crash (a retry resumes from the step's last checkpoint); bad input
    (GraftlineError) fails at once, because it would fail again."""
    return step.with_options(retries=run.retries, retry_condition_fn=_worth_retrying)


def _worth_retrying(task, task_run, state) -> bool:
    return not isinstance(state.data, GraftlineError)


class TrackedStep:
    """A step while its run is open: the run's id, and `record` for each result the step logs."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def record(self, result):
        """Write what `result.logged()` says to the step's run, its lines and warnings to the run's log."""
        log, logger = result.logged(), get_run_logger()
        tracking.record(log)
        for line in log.lines:
            logger.info(line)
        for warning in log.warnings:
            logger.warning(warning)
        return result


@contextmanager
def tracked_step(name: str, context: StepContext, parameters: dict | None = None) -> Iterator[TrackedStep]:
    """The step's nested run, its `parameters` logged first (nested groups become dotted names), so
    they are recorded even when the step fails."""
    with tracking.step_run(name, context.parent_run_id) as run:
        if parameters:
            tracking.log_params(parameters)
        yield TrackedStep(run.info.run_id)


def tracked(name: str, context: StepContext, fn, *args, parameters: dict | None = None):
    """`fn(*args)` run and tracked as step `name` (tracked_step); returns its result."""
    with tracked_step(name, context, parameters) as step:
        return step.record(fn(*args))


@task(name="ingest", **STEP)
def ingest(
    params: settings.DataParams,
    unlabeled_paths: list[str],
    unlabeled_text_column: str,
    validation: settings.ValidationParams,
    kept: settings.TrackingParams,
    context: StepContext,
) -> Ingested:
    """Read the splits and the unlabeled transfer texts, apply the personal-data policy and keep the
    evaluation sets for promotions (tasks/data/ingest.py)."""
    from graftline.tasks.data.ingest import ingest as read_data

    folder = context.work_dir / contract.EVALUATION_SETS
    args = (params, unlabeled_paths, unlabeled_text_column, validation, kept.copy_data, folder, context.modality)
    with tracked_step("ingest", context, {"data": params.model_dump(exclude={"eval_sets"})}) as step:
        ingested = step.record(read_data(*args))
    return Ingested(ingested.splits, step.run_id)


@task(name="validate", **STEP)
def validate(splits: Splits, params: settings.ValidationParams, context: StepContext) -> ValidationReport:
    """The data's validation suite; a failure stops the run under `validation.mode: fail`. The report
    also becomes a Prefect artifact (the run's page in the Prefect UI), without example rows: those
    may be personal data, and they stay in the run's own report."""
    from prefect.artifacts import create_markdown_artifact

    with tracked_step("validate", context, {"validation": params.model_dump()}) as step:
        report = step.record(context.modality.validate(splits, params, context.folder("validation")))
        written = tracking.artifact_location("validation/report.md")
        docs = tracking.artifact_location("validation/data_docs/index.html") if report.docs_dir else None
    if not report.success:
        create_markdown_artifact(report.markdown(examples=False), "data-validation", description=report.summary())
        if params.mode == "fail":
            raise report.error(written, docs)
        get_run_logger().warning("%s; going on: validation.mode is 'warn'\n%s", report.summary(), report.table())
    return report


@task(name="select", **STEP)
def select(
    splits: Splits, backbone: str, student: str | None, params: settings.SelectParams, context: StepContext
) -> str:
    """The backbone to fine-tune: `backbone` as given, or chosen by transferability when it is `auto`."""
    from graftline.flows.fanout import scorer
    from graftline.tasks.train.selection import choose_backbone

    args = (splits.train, context.modality, backbone, student, params, context.model, scorer(params))
    return tracked("select", context, choose_backbone, *args, context.folder("selection")).backbone


@task(name="evaluate", **STEP)
def evaluate(
    model: TrainedModel, splits: Splits, context: StepContext
) -> tuple[dict[str, Evaluation], Calibration, str]:
    """`model` scored on every evaluation set, its temperature fitted on the validation split, and
    the digest of the weights scored."""
    from graftline.tasks.evaluate.scores import evaluate_with_pictures

    args = (model.model_dir, model.role, splits, context.model, context.folder("evaluate"), context.modality)
    evaluated = tracked("evaluate", context, evaluate_with_pictures, *args)
    return evaluated.evaluations, evaluated.calibration, weights_digest(model.model_dir)


@task(name="explain", **STEP)
def explain(model: TrainedModel, splits: Splits, params: settings.ExplainParams, teacher, context: StepContext):
    """Token attributions of `model` on a sample of every evaluation set (a student: on its teacher's
    sample, `teacher` being the teacher's report), their faithfulness, and the HTML report."""
    from graftline.tasks.evaluate.explain import explain_step

    folder = context.folder(f"explain-{model.role}")
    args = (model.model_dir, model.role, splits, params, context.model, folder, teacher)
    return tracked(f"explain_{model.role}", context, explain_step, *args, parameters={"explain": params.model_dump()})


@task(name="domain_gap", **STEP)
def domain_gap(model: TrainedModel, splits: Splits, context: StepContext) -> dict[str, float]:
    """How far each target set is from the training data: for the pretrained backbone, and for `model`."""
    from graftline.tasks.evaluate.domain_gap import report

    args = (model.model_dir, model.role, model.backbone, splits, context.model, context.folder("gap"))
    return tracked("domain_gap", context, report, *args).metrics()


@task(name="distill", **STEP)
def distill(
    teacher: TrainedModel,
    splits: Splits,
    params: settings.DistillParams,
    retention: tuple[float, list[str]],
    context: StepContext,
) -> TrainedModel:
    """Distil `teacher` into a student, evaluate it on the same sets, and decide with the one
    retention gate (`retention`: the floor and the evaluation sets it holds on) whether it may be registered."""
    from graftline.tasks.train.distill import distill as run_distill
    from graftline.tasks.train.distill import judged_student

    with tracked_step("distill", context, {"distill": params.model_dump()}) as step:
        with _training("distill", teacher=teacher, splits=splits, params=params, context=context) as (io, monitor):
            result = run_distill(teacher.model_dir, splits, params, context.model, context.work_dir / "student", io)
        _log_training(result.training, monitor)
        teacher_side = (teacher.model_dir, teacher.evaluations, teacher.privacy)
        folder = context.folder("distill")
        judged = judged_student(result, *teacher_side, splits, context.model, retention, folder, context.modality)
        step.record(judged)
        uri = context.modality.log_model(result.model_dir, contract.INPUT_EXAMPLE).model_uri
    digest = weights_digest(result.model_dir)
    return TrainedModel.student(judged, uri, step.run_id, teacher.backbone, splits.modality, digest)


@task(name="export", **STEP)
def export(
    served: TrainedModel, teacher: TrainedModel, splits: Splits, params: settings.ExportParams, context: StepContext
) -> Exported:
    """ONNX (and INT8) export of the served model, parity on the test set, CPU latency of all, and the
    form served (tasks/export/served.py)."""
    from graftline.tasks.export.served import export_served

    compared = teacher.model_dir if served is not teacher else None
    temperature = served.calibration.temperature if served.calibration else 1.0
    args = (served.model_dir, served.role, context.modality, temperature, compared, splits, params)
    with tracked_step("export", context, {"export": params.model_dump()}) as step:
        exported = step.record(export_served(*args, context.model.max_length, context.folder("export")))
    return Exported(step.run_id, exported.report.headline(), exported.servable_uri)


@task(name="register", **STEP)
def register(
    models: list[TrainedModel],
    splits: Splits,
    params: settings.RegistryParams,
    tags: dict[str, str],
    triggered_by: str,
    context: StepContext,
) -> list[Registration]:
    """Register the teacher and the student under the contract's names (all or nothing, alias
    `candidate`), then promote each to `registry.promote_to` if its gates pass."""
    from graftline.tasks.registry.promotion import register_models

    args = (models, splits, params, tags, triggered_by, context.model.max_length)
    registered = tracked("register", context, register_models, *args, parameters={"registry": params.model_dump()})
    return list(registered.registrations)


@task(name="finetune", **STEP)
def finetune(
    splits: Splits, params: settings.FinetuneParams, adapt: settings.AdaptParams, context: StepContext
) -> TrainedModel:
    """The teacher, fine-tuned by the recipe the settings choose (tasks/train/finetune.py); a search's
    trials each a nested run of the step's run as they end, on Dask when `search.runner` says so."""
    from graftline.flows.fanout import dask_launcher
    from graftline.tasks.train.finetune import finetune as run_finetune

    parameters = {"finetune": params.model_dump(), "model": context.model.model_dump(), "adapt": adapt.model_dump()}
    with tracked_step("finetune", context, parameters) as step:
        with _training("finetune", splits=splits, params=params, adapt=adapt, context=context) as (io, monitor):
            args = (splits, params, context.model, context.work_dir / "teacher", io, adapt)
            result = run_finetune(*args, on_trial=_trial_logger(step.run_id), dask_launcher=dask_launcher)
        _log_training(result.training, monitor)
        step.record(result)
        info = context.modality.log_model(result.model_dir, contract.INPUT_EXAMPLE)
    return TrainedModel(
        contract.TEACHER,
        result.model_dir,
        info.model_uri,
        step.run_id,
        result.parameters,
        params.backbone,
        report=result.adaptation_report(),
        privacy=result.privacy_tags(),
        modality=splits.modality,
        adaptation=result.self_training.decision if result.self_training else "",
        weights_digest=weights_digest(result.model_dir),
    )


def _trial_logger(run_id: str):
    """Each search trial as it ends: a finished nested run of the finetune step's run, and a log line."""
    logger = get_run_logger()

    def heard(record) -> None:
        tracking.log_trial(record, run_id)
        logger.info(record.line())

    return heard


@contextmanager
def _training(step: str, **inputs) -> Iterator[tuple[TrainingIO, TrainingMonitor]]:
    """The shared token cache, the step's checkpoint folder (named by the fingerprint of `inputs`, so
    a retry or `graftline resume` finds it again) and a monitor reporting the training's progress."""
    monitor = TrainingMonitor(step)
    io = TrainingIO(reuse.token_cache(), reuse.checkpoint_folder(step, inputs), monitor.on_epoch, monitor.on_progress)
    try:
        yield io, monitor
    finally:
        monitor.close()


def _log_training(result, monitor: TrainingMonitor) -> None:
    """The step losses the monitor did not hear (training in other processes) and where the run
    resumed, if it did."""
    tracking.log_step_losses(result.step_losses[monitor.losses_logged :], first=monitor.losses_logged + 1)
    if result.resumed_from_step is not None:
        import mlflow

        mlflow.set_tag("graftline.resumed_from_step", str(result.resumed_from_step))
        get_run_logger().info("training resumed from its checkpoint at step %d", result.resumed_from_step)
