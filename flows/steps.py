"""Prefect tasks: one shell per lifecycle step, and the shells only track.

A shell opens its step's nested MLflow run (under the context's explicit parent id), calls one
function from tasks/, logs what the result says about itself (parameters, `metrics()`, pictures,
files, tags) and returns a new typed value (tasks/records.py). Inputs are in-memory objects handed
from step to step, so Prefect's input hashing is off (NO_CACHE) by default; the lifecycle flow
turns on reuse of the expensive steps with `reusable()` (cache keys from flows.reuse, results
persisted) and resumable retries of the training steps with `retrying()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from graftline.flows import reuse
from graftline.flows.progress import TrainingMonitor
from graftline.tasks.data import images, pii
from graftline.tasks.data.splits import Splits, read_texts
from graftline.tasks.data.validate import ValidationReport, validate_splits
from graftline.tasks.engine import backbones
from graftline.tasks.engine.training import TrainingIO
from graftline.tasks.errors import GraftlineError
from graftline.tasks.evaluate.calibration import Calibration, plot_reliability
from graftline.tasks.evaluate.scores import (
    Evaluation,
    cross_domain_gaps,
    evaluate_sets,
    plot_confusion,
    plot_misclassified,
)
from graftline.tasks.records import Exported, Ingested, Registration, StepContext, TrainedModel
from graftline.tasks.registry import contract, evaluation_sets, tracking
from graftline.tasks.settings import (
    AdaptParams,
    DataParams,
    DistillParams,
    ExplainParams,
    ExportParams,
    FinetuneParams,
    RegistryParams,
    RunParams,
    SelectParams,
    TrackingParams,
    ValidationParams,
)

STEP = dict(cache_policy=NO_CACHE, persist_result=False)


def reusable(step, run: RunParams):
    """`step` with its result persisted under <home>/prefect-results and reused by any later run with
    the same fingerprint (flows.reuse); `run.reuse_steps` off recomputes and overwrites."""
    from prefect.cache_policies import CachePolicy

    return step.with_options(
        cache_policy=CachePolicy.from_cache_key_fn(reuse.cache_key),
        persist_result=True,
        result_storage=reuse.results_folder(),  # a Path: a local folder
        refresh_cache=not run.reuse_steps,
    )


def retrying(step, run: RunParams):
    """`step` retried after a crash (a retry resumes from the step's last checkpoint); bad input
    (GraftlineError) fails at once, because it would fail again."""
    return step.with_options(retries=run.retries, retry_condition_fn=_worth_retrying)


def _worth_retrying(task, task_run, state) -> bool:
    return not isinstance(state.data, GraftlineError)


@task(name="ingest", **STEP)
def ingest(
    params: DataParams,
    unlabeled_paths: list[str],
    unlabeled_text_column: str,
    validation: ValidationParams,
    kept: TrackingParams,
    context: StepContext,
) -> Ingested:
    """Read the splits and the unlabeled transfer texts (so a bad path fails before training). With
    `validation.pii: redact`, personal data is replaced by placeholders here, before anything is
    logged, hashed or trained on. The evaluation sets are kept in the run (copied, or referenced by
    URI and digest: `kept.copy_data`) for promotions to re-evaluate versions on."""
    import mlflow

    with tracking.step_run("ingest", context.parent_run_id) as run:
        tracking.log_params(params.model_dump(exclude={"eval_sets"}), "data.")
        unlabeled = [text for path in unlabeled_paths for text in read_texts(path, unlabeled_text_column)]
        splits = images.load_any(params, unlabeled)
        mlflow.set_tag(contract.MODALITY, splits.modality)
        if validation.pii == "redact" and splits.modality == "text":  # images hold no text to scan
            splits, replaced = pii.redact_splits(splits, pii.Scanner(validation.pii_patterns))
            mlflow.log_metrics({f"pii_redacted_{kind}": n for kind, n in replaced.items()} or {"pii_redacted": 0})
            get_run_logger().info(
                "personal data redacted: %s",
                ", ".join(f"{n} {kind}" for kind, n in replaced.most_common()) or "none found",
            )
        mlflow.log_params({f"data.eval_set.{name}": split.source for name, split in splits.extra.items()})
        if unlabeled_paths:
            mlflow.log_metric("unlabeled_rows", len(splits.unlabeled))
        mlflow.log_metrics(splits.row_counts())
        mlflow.log_dict({"labels": splits.labels}, "labels.json")
        mlflow.set_tag(contract.DATA_DIGEST, splits.digest)
        for run_id in (run.info.run_id, context.parent_run_id):
            tracking.log_datasets(run_id, splits)
        if validation.pii == "fail" and _holds_personal_data(splits, validation):
            # validation will stop the run and say where; the raw rows must not reach the store first
            get_run_logger().warning("evaluation sets not stored: they hold personal data (see validation)")
        else:
            folder = context.folder(contract.EVALUATION_SETS)
            evaluation_sets.keep(splits, params, validation, kept.copy_data, folder)
            mlflow.log_artifacts(str(folder), contract.EVALUATION_SETS)
    get_run_logger().info(
        "data: %d train / %d validation / %d test rows, labels %s, digest %s",
        len(splits.train.frame),
        len(splits.validation.frame),
        len(splits.test.frame),
        splits.labels,
        splits.digest,
    )
    return Ingested(splits, run.info.run_id)


def _holds_personal_data(splits: Splits, validation: ValidationParams) -> bool:
    if splits.modality != "text":
        return False
    scanner = pii.Scanner(validation.pii_patterns)
    return any(scanner.find(text) for split in splits.evaluation_sets().values() for text in split.texts)


@task(name="validate", **STEP)
def validate(splits: Splits, params: ValidationParams, context: StepContext) -> ValidationReport:
    import mlflow

    with tracking.step_run("validate", context.parent_run_id):
        tracking.log_params(params.model_dump(), "validation.")
        folder = context.folder("validation")
        if splits.modality == "image":
            from graftline.tasks.data.image_validation import validate_images

            frames = {s.name: s.frame for s in (splits.train, splits.validation, *splits.evaluation_sets().values())}
            report = validate_images(frames, params, folder)
        else:
            report = validate_splits(splits, params, folder)
        mlflow.log_metrics({**report.statistics, "failed_expectations": len(report.findings)})
        for name in ("gx_results.json", "report.md"):
            mlflow.log_artifact(str(folder / name), "validation")
        mlflow.log_text("\n".join(report.failures) or "all expectations met\n", "validation/failures.txt")
        mlflow.set_tag("validation.success", str(report.success).lower())
        written, docs = mlflow.get_artifact_uri("validation/report.md"), None
        if report.docs_dir:
            mlflow.log_artifacts(str(report.docs_dir), "validation/data_docs")
            docs = tracking.local_path(mlflow.get_artifact_uri("validation/data_docs/index.html"))
    for notice in report.notices:
        get_run_logger().warning("%s; kept: validation.pii is 'warn'", notice.line())
    if not report.success:
        _publish_report(report)
        if params.mode == "fail":
            raise report.error(tracking.local_path(written), docs)
        get_run_logger().warning("%s; going on: validation.mode is 'warn'\n%s", report.summary(), report.table())
    return report


def _publish_report(report: ValidationReport) -> None:
    """The report as a Prefect artifact: what the run's page in the Prefect UI shows."""
    from prefect.artifacts import create_markdown_artifact

    # Without example rows: those may be personal data, and they stay in the run's own report.
    create_markdown_artifact(
        key="data-validation", markdown=report.markdown(examples=False), description=report.summary()
    )


@task(name="select", **STEP)
def select(splits: Splits, backbone: str, student: str | None, params: SelectParams, context: StepContext) -> str:
    """The backbone to fine-tune: `backbone` as given, or chosen by transferability when it is `auto`.
    `student` (the distillation student, when there is one) is checked against it here, before training."""
    import mlflow

    from graftline.tasks.train.distill import student_layers

    with tracking.step_run("select", context.parent_run_id):
        if backbone == "auto":
            backbone = _select_by_score(splits, params, context)
        else:
            mlflow.set_tag("graftline.selection", f"{backbone}: fixed by the finetune.backbone parameter")
        trust = context.model.trust_remote_code
        backbones.require_kind(backbone, splits.modality)
        config = backbones.load_config(backbone, trust)
        mlflow.log_params({"backbone": backbone, **_describe(config, "backbone.")})
        if student is not None:
            backbones.require_student_kind(student, splits.modality)
            if student_layers(student, config.num_hidden_layers) is None:
                mlflow.log_params(_describe(backbones.load_config(student, trust), "student."))
            mlflow.log_param("student", student)
    return backbone


def _select_by_score(splits: Splits, params: SelectParams, context: StepContext) -> str:
    import mlflow

    from graftline.tasks.train.selection import plot_leaderboard, select_backbone

    tracking.log_params(params.model_dump(exclude={"candidates"}), "select.")
    mlflow.log_param("select.candidates", ", ".join(params.candidates))
    selection = select_backbone(splits.train.frame, params, context.model, _scorer(params))
    table = selection.table()
    mlflow.log_metrics(selection.metrics())
    mlflow.log_table(table, "selection/leaderboard.json")
    mlflow.log_text(table.to_csv(index=False), "selection/leaderboard.csv")
    mlflow.log_artifact(str(plot_leaderboard(selection, context.folder("selection") / "leaderboard.png")), "selection")
    mlflow.set_tag("graftline.selection", f"{selection.choice}: {selection.reason}")
    get_run_logger().info("selected backbone %s: %s (%.1f s)", selection.choice, selection.reason, selection.seconds)
    return selection.choice


def _scorer(params: SelectParams):
    """Where the candidates are scored: one after the other here, or each as a task on Dask."""
    from graftline.tasks.train.selection import score_candidates

    if params.runner == "local":
        return score_candidates
    from graftline.flows.fanout import dask_scorer

    return dask_scorer(params.dask_address)


@task(name="finetune", **STEP)
def finetune(splits: Splits, params: FinetuneParams, adapt: AdaptParams, context: StepContext) -> TrainedModel:
    import mlflow

    from graftline.tasks.registry.versions import log_classifier
    from graftline.tasks.train.finetune import finetune as run_finetune

    with tracking.step_run("finetune", context.parent_run_id) as run:
        tracking.log_params(params.model_dump(), "finetune.")
        tracking.log_params(context.model.model_dump(), "model.")
        tracking.log_params(adapt.model_dump(), "adapt.")
        with _training("finetune", splits=splits, params=params, adapt=adapt, context=context) as (io, monitor):
            if params.search.enabled:
                result = _search(splits, params, adapt, context, io, run).finetune
                for record in result.training.history:  # the best trial's epochs: the teacher's curve
                    tracking.log_epoch(record)
            else:
                result = run_finetune(splits, params, context.model, context.work_dir / "teacher", io, adapt)
        _log_training(result.training, monitor)
        mlflow.log_metrics(result.metrics())
        mlflow.set_tags({"device": result.training.device, "stopped_early": str(result.training.stopped_early)})
        mlflow.set_tags(_privacy_tags(result.privacy))
        if result.self_training:
            mlflow.log_dict([asdict(r) for r in result.self_training.rounds], "self_training/rounds.json")
        info = log_classifier(result.model_dir, contract.INPUT_EXAMPLE)
    logger = get_run_logger()
    logger.info(
        "teacher: best validation macro-F1 %.4f at epoch %d on %s",
        result.training.best_val_macro_f1,
        result.training.best_epoch,
        result.training.device,
    )
    for r in result.self_training.rounds if result.self_training else ():
        logger.info(
            "self-training round %d: %d pseudo-labels %s (%.0f%% of target texts confident, entropy %.3f), "
            "validation macro-F1 %.4f: %s",
            r.round,
            r.pseudo_labels,
            r.per_class,
            100 * r.confident_share,
            r.target_entropy,
            r.val_macro_f1,
            "kept" if r.kept else "discarded, rounds stop",
        )
    if result.privacy:
        logger.info(
            "differential privacy: epsilon %.3g spent (budget %.3g) at delta %.3g, %d private steps, noise x%.3f",
            result.privacy.epsilon,
            result.privacy.target_epsilon,
            result.privacy.delta,
            result.privacy.steps,
            result.privacy.noise_multiplier,
        )
    return TrainedModel(
        contract.TEACHER,
        result.model_dir,
        info.model_uri,
        run.info.run_id,
        result.parameters,
        params.backbone,
        report=result.self_training.summary() if result.self_training else {},
        privacy=_privacy_tags(result.privacy),
        modality=splits.modality,
    )


def _search(splits: Splits, params: FinetuneParams, adapt: AdaptParams, context: StepContext, io: TrainingIO, run):
    """The hyper-parameter search (tasks/train/search.py) in the finetune step's run: each trial a nested run
    as it ends, then the leaderboard, the optimisation-history picture and the best settings. The
    study is named by the step's fingerprint (as its checkpoint folder is): the same search, run
    again after a crash or by `graftline resume`, continues that study."""
    import mlflow

    from graftline.tasks.train.search import Study, plot_search, search

    settings, logger = params.search, get_run_logger()
    name = io.checkpoint_dir.name
    study = Study(settings.storage, name) if settings.storage else Study.beside(tracking.home(), name)
    launch = None
    if settings.runner == "dask":
        from graftline.flows.fanout import dask_launcher

        launch = dask_launcher(settings.dask_address)

    def on_trial(record) -> None:
        tracking.log_trial(record, run.info.run_id, run.info.experiment_id)
        logger.info(
            "search trial %d %s: validation macro-F1 %s after %d reports, %.0f s (%s)",
            record.number,
            record.state + (f" by the {record.stopped_by}" if record.stopped_by else ""),
            "-" if record.value is None else f"{record.value:.4f}",
            len(record.reports),
            record.seconds,
            ", ".join(f"{k}={v:.3g}" for k, v in record.settings.items()),
        )

    trials = io.checkpoint_dir.with_name(f"{name}-trials")  # beside the checkpoints: found again on resume
    teacher = context.work_dir / "teacher"
    result = search(splits, params, context.model, teacher, study, io.cache_dir, adapt, on_trial, launch, trials)
    best = result.best
    mlflow.log_metrics(result.metrics())
    mlflow.log_params({f"search.best.{k}": v for k, v in best.settings.items()})
    table = result.table()
    mlflow.log_table(table, "search/leaderboard.json")
    mlflow.log_text(table.to_csv(index=False), "search/leaderboard.csv")
    mlflow.log_artifact(str(plot_search(result, context.folder("search") / "search.png")), "search")
    chosen = ", ".join(f"{k}={v:.4g}" for k, v in best.settings.items())
    mlflow.set_tag("graftline.search", f"trial {best.number} of {len(result.trials)}: {chosen}")
    metrics = result.metrics()
    logger.info(
        "search: trial %d is the teacher (validation macro-F1 %.4f; %s); %d trials, %d pruned (%.0f%% of %.0f s)%s",
        best.number,
        best.value,
        chosen,
        metrics["search_trials"],
        metrics["search_pruned"],
        100 * metrics["search_pruned_share_of_seconds"],
        metrics["search_seconds"],
        "; its folder was out of reach, so its settings were trained again" if result.retrained else "",
    )
    return result


def _privacy_tags(spent) -> dict[str, str]:
    if spent is None:
        return {}
    return {contract.PRIVACY_EPSILON: f"{spent.epsilon:.4g}", contract.PRIVACY_DELTA: f"{spent.delta:.4g}"}


@task(name="evaluate", **STEP)
def evaluate(model: TrainedModel, splits: Splits, context: StepContext) -> tuple[dict[str, Evaluation], Calibration]:
    """`model` scored on every evaluation set, and its temperature fitted on the validation split."""
    with tracking.step_run("evaluate", context.parent_run_id):
        evaluations, calibration = evaluate_sets(model.model_dir, splits, context.model)
        _log_evaluations(model.role, evaluations, calibration, context.folder("evaluate"), splits)
    return evaluations, calibration


@task(name="explain", **STEP)
def explain(model: TrainedModel, splits: Splits, params: ExplainParams, teacher, context: StepContext):
    """Token attributions of `model` on a sample of every evaluation set (a student: on its teacher's
    sample, `teacher` being the teacher's report), their faithfulness, and the HTML report."""
    import json

    import mlflow

    from graftline.tasks.evaluate.explain import explain_sets, write_html

    with tracking.step_run(f"explain_{model.role}", context.parent_run_id):
        tracking.log_params(params.model_dump(), "explain.")
        report = explain_sets(model.model_dir, splits, params, context.model, teacher)
        mlflow.log_metrics(report.metrics())
        folder = context.folder(f"explain-{model.role}")
        page = write_html(folder / "explanations.html", report.sets, f"{model.role}: explanations", report.cues)
        mlflow.log_artifact(str(page), "explain")
        mlflow.log_dict(json.loads(json.dumps(report.cues)), "explain/class_cues.json")
    metrics = report.metrics()
    get_run_logger().info(
        "%s explanations: %d texts, %.2f s each; comprehensiveness IG %.3f vs random %.3f%s",
        model.role,
        metrics["explained_texts"],
        metrics["explain_seconds_per_example"],
        metrics["ig_comprehensiveness"],
        metrics["random_comprehensiveness"],
        f"; agreement with the teacher: Kendall tau {report.agreement.kendall_tau:.3f}" if report.agreement else "",
    )
    return report


@task(name="domain_gap", **STEP)
def domain_gap(model: TrainedModel, splits: Splits, context: StepContext) -> dict[str, float]:
    """How far each target set is from the training data: for the pretrained backbone, and for `model`."""
    import mlflow

    from graftline.tasks.evaluate.domain_gap import report

    with tracking.step_run("domain_gap", context.parent_run_id):
        metrics, picture = report(model.model_dir, model.backbone, splits, context.model, context.folder("gap"))
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(picture), "domain_gap")
    for name in splits.targets:
        get_run_logger().info(
            "domain gap %s: proxy A-distance %.3f -> %.3f (backbone -> %s), confident %.0f%%, label shift %.3f",
            name,
            metrics[f"gap_before_{name}_proxy_a_distance"],
            metrics[f"gap_{name}_proxy_a_distance"],
            model.role,
            100 * metrics[f"gap_{name}_confident_share"],
            metrics[f"gap_{name}_label_shift"],
        )
    return metrics


@task(name="distill", **STEP)
def distill(
    teacher: TrainedModel,
    splits: Splits,
    params: DistillParams,
    retention: tuple[float, list[str]],
    context: StepContext,
) -> TrainedModel:
    """Distil `teacher` into a student, evaluate it on the same sets, and decide with the one
    retention gate (`retention`: the floor and the evaluation sets it holds on) whether it may be registered."""
    import mlflow

    from graftline.tasks.registry.versions import log_classifier
    from graftline.tasks.train.distill import distill as run_distill
    from graftline.tasks.train.distill import judge_student

    with tracking.step_run("distill", context.parent_run_id) as run:
        tracking.log_params(params.model_dump(), "distill.")
        with _training("distill", teacher=teacher, splits=splits, params=params, context=context) as (io, monitor):
            result = run_distill(teacher.model_dir, splits, params, context.model, context.work_dir / "student", io)
        _log_training(result.training, monitor)
        mlflow.log_params(result.params())
        mlflow.log_metric("transfer_rows", result.transfer_rows)
        judged = judge_student(
            result.model_dir, teacher.model_dir, teacher.evaluations, splits, context.model, *retention
        )
        _log_evaluations(contract.STUDENT, judged.evaluations, judged.calibration, context.folder("distill"), splits)
        mlflow.log_metrics(
            {
                **judged.report,
                "best_val_macro_f1": result.training.best_val_macro_f1,
                "retention_gate_passed": float(judged.gate_failure is None),
            }
        )
        mlflow.set_tag("graftline.gate", judged.gate(*retention))
        uri = log_classifier(result.model_dir, contract.INPUT_EXAMPLE).model_uri
    logger = get_run_logger()
    logger.info(
        "student: %s parameters (%.2fx the teacher), test accuracy retention %.3f, CPU speedup %.2fx",
        f"{result.student_parameters:,}",
        judged.report["parameter_ratio"],
        judged.report["test_accuracy_retention"],
        judged.report["cpu_speedup"],
    )
    if judged.gate_failure:
        logger.warning("student will not be registered: %s", judged.gate_failure)
    privacy = {}
    if contract.PRIVACY_EPSILON in teacher.privacy:
        privacy = {contract.PRIVACY_NOTE: PRIVATE_TEACHER_NOTE}
        logger.warning("student: %s", PRIVATE_TEACHER_NOTE)
    return TrainedModel(
        contract.STUDENT,
        result.model_dir,
        uri,
        run.info.run_id,
        result.student_parameters,
        teacher.backbone,
        evaluations=judged.evaluations,
        calibration=judged.calibration,
        report=judged.report,
        gate_failure=judged.gate_failure,
        privacy=privacy,
        modality=splits.modality,
    )


# The student learns the private teacher's outputs on the training texts themselves: nothing bounds
# what it reveals of them. Distilling on public transfer data only would carry the teacher's bound over.
PRIVATE_TEACHER_NOTE = (
    "no differential-privacy guarantee: distilled from a private teacher on its training data, so it inherits "
    "none of the teacher's bound on those rows"
)


@task(name="export", **STEP)
def export(
    served: TrainedModel, teacher: TrainedModel, splits: Splits, params: ExportParams, context: StepContext
) -> Exported:
    """ONNX (and INT8) export of the served model, parity on the test set, CPU latency of all."""
    import mlflow
    import pandas as pd

    from graftline.tasks.export.onnx import export_and_measure, plot_tradeoff

    folder = context.folder("export")
    with tracking.step_run("export", context.parent_run_id) as run:
        tracking.log_params(params.model_dump(), "export.")
        compared = teacher.model_dir if served is not teacher else None
        report = export_and_measure(
            served.model_dir,
            compared,
            splits.test,
            params,
            context.model.max_length,
            folder,
            calibration=splits.train.inputs if splits.modality == "image" else None,
        )
        mlflow.log_metrics(report.metrics())
        mlflow.log_table(pd.DataFrame(report.table()), "export/latency.json")
        title = f"{served.role} export: accuracy against CPU latency"
        mlflow.log_artifact(str(plot_tradeoff(report, folder / "tradeoff.png", title)), "export")
        for row in report.rows:
            if row.file and row.passed:
                mlflow.log_artifact(row.file, "export")
        failures = report.failures()
        mlflow.set_tag("graftline.export", "; ".join(failures) + " (not logged)" if failures else "parity passed")
        servable = _log_servable(served, report, context)
    logger = get_run_logger()
    for row in report.rows:
        logger.info(
            "%-18s accuracy %.4f  batch 1: %.2f ms  batch 32: %.0f examples/s  %.1f MB%s",
            row.name,
            row.accuracy,
            row.ms_batch_1,
            row.examples_per_second_batch_32,
            row.size_mb,
            "" if row.passed else "  PARITY FAILED",
        )
    for failure in failures:
        logger.warning("export parity failed: %s; the file is not logged", failure)
    return Exported(run.info.run_id, report.headline(), servable)


def _log_servable(served: TrainedModel, report, context: StepContext) -> str | None:
    """The fastest ONNX file that passed parity (INT8 first) as an MLflow pyfunc; its URI, or None."""
    from graftline.tasks.export.onnx import log_servable

    rows = [report.row(f"{report.served}-onnx-int8"), report.row(f"{report.served}-onnx")]
    chosen = next((r for r in rows if r and r.file and r.passed), None)
    if chosen is None:
        return None
    labels = backbones.labels_of(backbones.load_classifier(str(served.model_dir)))
    temperature = served.calibration.temperature if served.calibration else 1.0
    folder = context.folder("servable")
    if served.modality == "image":
        from graftline.tasks.export.onnx import log_image_model

        processor = backbones.load_tokenizer(str(served.model_dir))
        return log_image_model(Path(chosen.file), None, labels, processor, temperature, folder, "servable").model_uri
    tokenizer = folder / "tokenizer"  # the tokenizer's files only: the torch weights stay out of the servable
    backbones.load_tokenizer(str(served.model_dir)).save_pretrained(str(tokenizer))
    info = log_servable(Path(chosen.file), tokenizer, labels, context.model.max_length, temperature, folder)
    return info.model_uri


@task(name="register", **STEP)
def register(
    models: list[TrainedModel],
    splits: Splits,
    params: RegistryParams,
    tags: dict[str, str],
    triggered_by: str,
    context: StepContext,
) -> list[Registration]:
    """Register the teacher and the student under the contract's names (all or nothing, alias
    `candidate`), then promote each to `registry.promote_to` if its gates pass."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry.promotion import register_and_promote
    from graftline.tasks.registry.versions import candidates

    logger = get_run_logger()
    with tracking.step_run("register", context.parent_run_id):
        tracking.log_params(params.model_dump(), "registry.")
        entries = candidates(models, params.model_name, tags, context.model.max_length)
        registrations = register_and_promote(
            MlflowClient(),
            entries,
            params.promote_to,
            splits.evaluation_sets(),
            params.gates,
            triggered_by,
            params.experiment,
        )
        for model, registration in zip(models, registrations, strict=True):
            mlflow.set_tags(
                {
                    f"{model.role}.version": registration.version,
                    f"{model.role}.promoted": str(registration.promoted).lower(),
                    f"{model.role}.decision": registration.reason[:5000],
                }
            )
            logger.info(
                "%s v%s -> %s (%s)",
                registration.name,
                registration.version,
                ", ".join(registration.aliases),
                registration.reason,
            )
    return registrations


def _log_evaluations(
    role: str, evaluations: dict[str, Evaluation], calibration: Calibration, folder, splits: Splits
) -> None:
    """Every evaluation set's metrics, confusion matrix and report (for images, a grid of the most
    confident errors), the cross-domain gaps, and the calibration: temperature, ECE before/after per
    set, reliability diagram."""
    import mlflow

    mlflow.log_metrics(calibration.metrics())
    picture = plot_reliability(
        calibration, folder / "reliability.png", f"{role}: temperature {calibration.temperature:.2f}"
    )
    mlflow.log_artifact(str(picture), "evaluation")
    get_run_logger().info(
        "%s calibration: temperature %.3f; ECE %s",
        role,
        calibration.temperature,
        ", ".join(
            f"{n} {calibration.ece_before[n]:.3f} -> {calibration.ece_after[n]:.3f}" for n in calibration.ece_before
        ),
    )

    for name, result in evaluations.items():
        mlflow.log_metrics(result.metrics())
        title = f"{role} on {name}: accuracy {result.accuracy:.3f}"
        mlflow.log_artifact(str(plot_confusion(result, folder / f"{name}_confusion.png", title)), "evaluation")
        mlflow.log_dict(asdict(result), f"evaluation/{name}_report.json")
        if splits.modality == "image":
            inputs = splits.evaluation_sets()[name].inputs
            grid = plot_misclassified(result, inputs, folder / f"{name}_misclassified.png")
            if grid is not None:
                mlflow.log_artifact(str(grid), "evaluation")
    mlflow.log_metrics(cross_domain_gaps(evaluations))


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


def _describe(config, prefix: str) -> dict[str, object]:
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings")
    keys += ("architecture", "image_size")  # an image classifier's config
    return {prefix + k: getattr(config, k) for k in keys if hasattr(config, k)}
