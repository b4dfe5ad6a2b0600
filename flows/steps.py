"""Prefect tasks: thin shells around the step functions in graftline.tasks.

Each shell opens its step's nested MLflow run (under an explicit parent id), calls the plain step
function, and logs what it returned. Inputs are in-memory objects handed from step to step, so
Prefect's input hashing is off (NO_CACHE) by default; the lifecycle flow turns on reuse of the
expensive steps with `reusable()` (cache keys from flows.reuse, results persisted) and resumable
retries of the training steps with `retrying()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from graftline.flows import reuse
from graftline.flows.params import (
    DataParams,
    DistillParams,
    ExportParams,
    FinetuneParams,
    RegistryParams,
    RunParams,
    SelectParams,
    ValidationParams,
)
from graftline.tasks.engine import backbones
from graftline.tasks.registry import tracking
from graftline.tasks.data import Splits, load_splits, read_texts
from graftline.tasks.errors import GraftlineError, ValidationFailed
from graftline.tasks.evaluate import Evaluation, evaluate_model, plot_confusion
from graftline.tasks.engine.training import TrainConfig
from graftline.tasks.validate import ValidationReport, ValidationThresholds, validate_splits

STEP = dict(cache_policy=NO_CACHE, persist_result=False)
EVALUATION_SETS = "evaluation_sets"  # artifact folder of the ingest run: <name>.parquet per evaluation set


def reusable(step, run: RunParams):
    """`step` with its result persisted under <home>/prefect-results and reused by any later run with
    the same fingerprint (flows.reuse); `run.reuse_steps` off recomputes and overwrites."""
    from prefect.cache_policies import CachePolicy

    return step.with_options(
        cache_policy=CachePolicy.from_cache_key_fn(reuse.cache_key),
        persist_result=True,
        result_storage=reuse.results_folder(),
        refresh_cache=not run.reuse_steps,  # a Path: a local folder
    )


def retrying(step, run: RunParams):
    """`step` retried after a crash (a retry resumes from the step's last checkpoint); bad input
    (GraftlineError) fails at once, because it would fail again."""
    return step.with_options(retries=run.retries, retry_condition_fn=_worth_retrying)


def _worth_retrying(task, task_run, state) -> bool:
    return not isinstance(state.data, GraftlineError)


@dataclass
class TrainedModel:
    """A fine-tuned or distilled classifier: its folder, its logged MLflow model, its scores."""

    role: str  # teacher | student
    model_dir: Path
    model_uri: str
    run_id: str
    parameters: int
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    report: dict[str, float] = field(default_factory=dict)  # role-specific numbers (retention, speedup)
    gate_failure: str | None = None  # why it may not be registered; None: it may
    export_run_id: str | None = None  # the run holding its ONNX files, when it was exported


@task(name="ingest", **STEP)
def ingest(params: DataParams, distill: DistillParams, parent_run_id: str, work_dir: Path) -> tuple[Splits, str]:
    """Read the splits, and the distillation step's unlabeled texts (so a bad path fails before
    training). The evaluation sets are kept as Parquet files in the run: promotions re-evaluate
    versions on them later. Returns the splits and the ingest run's id."""
    import mlflow

    with tracking.step_run("ingest", parent_run_id) as run:
        tracking.log_params(params.model_dump(exclude={"eval_sets"}), "data.")
        splits = load_splits(
            params.train_path,
            params.text_column,
            params.label_column,
            validation=params.validation_path,
            test=params.test_path,
            extra=params.eval_sets,
            validation_fraction=params.validation_fraction,
            test_fraction=params.test_fraction,
            seed=params.split_seed,
            fmt=params.format,
        )
        mlflow.log_params({f"data.eval_set.{name}": split.source for name, split in splits.extra.items()})
        if distill.enabled:
            splits.unlabeled = [
                t for path in distill.unlabeled_paths for t in read_texts(path, distill.unlabeled_text_column)
            ]
            mlflow.log_metric("unlabeled_rows", len(splits.unlabeled))
        mlflow.log_metrics(
            {
                f"{s.name}_rows": len(s.frame)
                for s in [splits.train, splits.validation, *splits.evaluation_sets().values()]
            }
        )
        mlflow.log_dict({"labels": splits.labels}, "labels.json")
        mlflow.set_tag("data_digest", splits.digest)
        for run_id in (run.info.run_id, parent_run_id):
            tracking.log_datasets(run_id, splits)
        for name, split in splits.evaluation_sets().items():
            path = work_dir / EVALUATION_SETS / f"{name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            split.frame[["text", "label"]].to_parquet(path, index=False)
            mlflow.log_artifact(str(path), EVALUATION_SETS)
    get_run_logger().info(
        "data: %d train / %d validation / %d test rows, labels %s, digest %s",
        len(splits.train.frame),
        len(splits.validation.frame),
        len(splits.test.frame),
        splits.labels,
        splits.digest,
    )
    return splits, run.info.run_id


@task(name="validate", **STEP)
def validate(splits: Splits, params: ValidationParams, parent_run_id: str, work_dir: Path) -> ValidationReport:
    import mlflow

    with tracking.step_run("validate", parent_run_id):
        tracking.log_params(params.model_dump(), "validation.")
        thresholds = ValidationThresholds(**params.model_dump(exclude={"mode"}))
        report = validate_splits(splits, thresholds, work_dir / "validation")
        mlflow.log_metrics({**report.statistics, "failed_expectations": len(report.failures)})
        mlflow.log_artifact(str(work_dir / "validation" / "gx_results.json"), "validation")
        if report.docs_dir:
            mlflow.log_artifacts(str(report.docs_dir), "validation/data_docs")
        mlflow.log_text("\n".join(report.failures) or "all expectations met\n", "validation/failures.txt")
        mlflow.set_tag("validation.success", str(report.success).lower())
    if not report.success:
        message = f"data validation failed ({len(report.failures)} expectation(s)): {report.summary()}"
        if params.mode == "fail":
            raise ValidationFailed(message)
        get_run_logger().warning("%s; continuing because validation.mode is 'warn'", message)
    return report


@task(name="select", **STEP)
def select(
    splits: Splits,
    finetune: FinetuneParams,
    distill: DistillParams,
    params: SelectParams,
    parent_run_id: str,
    work_dir: Path,
) -> str:
    """The backbone to fine-tune: fixed by the parameters, or chosen by transferability (`auto`)."""
    import mlflow

    from graftline.tasks.distill import student_layers

    with tracking.step_run("select", parent_run_id):
        if finetune.backbone == "auto":
            backbone = _select_by_score(splits, finetune, params, work_dir)
        else:
            backbone = finetune.backbone
            mlflow.set_tag("graftline.selection", f"{backbone}: fixed by the finetune.backbone parameter")
        config = backbones.load_config(backbone, finetune.trust_remote_code)
        mlflow.log_params({"backbone": backbone, **_describe(config, "backbone.")})
        if distill.enabled:
            if student_layers(distill.student, config.num_hidden_layers) is None:
                mlflow.log_params(
                    _describe(backbones.load_config(distill.student, finetune.trust_remote_code), "student.")
                )
            mlflow.log_param("student", distill.student)
    return backbone


def _select_by_score(splits: Splits, finetune: FinetuneParams, params: SelectParams, work_dir: Path) -> str:
    import mlflow

    from graftline.tasks.selection import SelectConfig, plot_leaderboard, select_backbone

    tracking.log_params(params.model_dump(exclude={"candidates"}), "select.")
    mlflow.log_param("select.candidates", ", ".join(params.candidates))
    selection = select_backbone(
        splits.train.frame,
        SelectConfig(
            candidates=tuple(params.candidates),
            method=params.method,
            sample_size=params.sample_size,
            pooling=params.pooling,
            max_length=finetune.max_length,
            max_parameters=params.max_parameters,
            max_ms_per_example=params.max_ms_per_example,
            seed=finetune.seed,
            device=finetune.device,
            trust_remote_code=finetune.trust_remote_code,
        ),
        _scorer(params),
    )
    table = selection.table()
    for report in selection.leaderboard:
        name = tracking.metric_safe(_short_name(report.backbone))
        mlflow.log_metrics(
            {
                **{f"{name}_{m}": v for m, v in report.scores.items()},
                f"{name}_cpu_ms_per_example": report.cpu_ms_per_example,
                f"{name}_parameters": report.parameters,
            }
        )
    mlflow.log_metric("selection_seconds", selection.seconds)
    mlflow.log_table(table, "selection/leaderboard.json")
    mlflow.log_text(table.to_csv(index=False), "selection/leaderboard.csv")
    mlflow.log_artifact(str(plot_leaderboard(selection, work_dir / "selection" / "leaderboard.png")), "selection")
    mlflow.set_tag("graftline.selection", f"{selection.choice}: {selection.reason}")
    get_run_logger().info("selected backbone %s: %s (%.1f s)", selection.choice, selection.reason, selection.seconds)
    return selection.choice


def _scorer(params: SelectParams):
    """Where the candidates are scored: one after the other here, or each as a task on Dask."""
    from graftline.tasks.selection import score_candidates

    if params.runner == "local":
        return score_candidates
    from graftline.flows.fanout import dask_scorer

    return dask_scorer(params.dask_address)


@task(name="finetune", **STEP)
def finetune(splits: Splits, params: FinetuneParams, parent_run_id: str, work_dir: Path) -> TrainedModel:
    import mlflow

    from graftline.tasks.finetune import FinetuneConfig, LoraConfig
    from graftline.tasks.finetune import finetune as run_finetune
    from graftline.tasks.registry.versions import log_classifier

    with tracking.step_run("finetune", parent_run_id) as run:
        tracking.log_params(params.model_dump(), "finetune.")
        config = FinetuneConfig(
            backbone=params.backbone,
            strategy=params.strategy,
            max_length=params.max_length,
            train=_train_config(params, params.epochs, params.batch_size, params.learning_rate),
            trust_remote_code=params.trust_remote_code,
            processes=params.processes,
            lora=LoraConfig(rank=params.lora_rank, alpha=params.lora_alpha, dropout=params.lora_dropout),
            cache_dir=reuse.token_cache(),
            checkpoint_dir=reuse.checkpoint_folder("finetune", dict(splits=splits, params=params)),
        )
        result = run_finetune(splits, config, work_dir / "teacher", on_epoch=tracking.log_epoch)
        _log_training(result.training)
        mlflow.log_metrics(
            {
                "best_epoch": result.training.best_epoch,
                "best_val_macro_f1": result.training.best_val_macro_f1,
                "parameters": result.parameters,
                "trainable_parameters": result.trainable_parameters,
            }
        )
        mlflow.set_tags({"device": result.training.device, "stopped_early": str(result.training.stopped_early)})
        info = log_classifier(result.model_dir, _input_example(splits))
    get_run_logger().info(
        "teacher: best validation macro-F1 %.4f at epoch %d on %s",
        result.training.best_val_macro_f1,
        result.training.best_epoch,
        result.training.device,
    )
    return TrainedModel("teacher", result.model_dir, info.model_uri, run.info.run_id, result.parameters)


@task(name="evaluate", **STEP)
def evaluate(
    model: TrainedModel, splits: Splits, params: FinetuneParams, parent_run_id: str, work_dir: Path
) -> dict[str, Evaluation]:
    with tracking.step_run("evaluate", parent_run_id):
        return _evaluate_and_log(model, splits, params, work_dir / "evaluate")


@task(name="distill", **STEP)
def distill(
    teacher: TrainedModel,
    splits: Splits,
    params: DistillParams,
    finetune_params: FinetuneParams,
    parent_run_id: str,
    work_dir: Path,
) -> TrainedModel:
    import mlflow

    from graftline.tasks.distill import DistillConfig, retention_gate
    from graftline.tasks.distill import distill as run_distill
    from graftline.tasks.registry.versions import log_classifier

    with tracking.step_run("distill", parent_run_id) as run:
        tracking.log_params(params.model_dump(), "distill.")
        config = DistillConfig(
            student=params.student,
            alpha=params.alpha,
            temperature=params.temperature,
            hidden_weight=params.hidden_weight,
            augment_copies=params.augment_copies,
            max_length=finetune_params.max_length,
            train=_train_config(finetune_params, params.epochs, params.batch_size, params.learning_rate),
            trust_remote_code=finetune_params.trust_remote_code,
            cache_dir=reuse.token_cache(),
            checkpoint_dir=reuse.checkpoint_folder(
                "distill", dict(teacher=teacher, splits=splits, params=params, finetune_params=finetune_params)
            ),
        )
        result = run_distill(teacher.model_dir, splits, config, work_dir / "student", on_epoch=tracking.log_epoch)
        _log_training(result.training)
        if result.kept_layers is not None:
            mlflow.log_param("distill.kept_layers", ",".join(map(str, result.kept_layers)))
        if result.layer_map:
            mlflow.log_param("distill.layer_map", ", ".join(f"{s}->{t}" for s, t in result.layer_map))
        mlflow.log_metric("transfer_rows", result.transfer_rows)
        student = TrainedModel("student", result.model_dir, "", run.info.run_id, result.student_parameters)
        student.evaluations = _evaluate_and_log(student, splits, finetune_params, work_dir / "distill")
        student.report = _distillation_report(teacher, student, splits, finetune_params.max_length)
        student.gate_failure = retention_gate(student.report, params.retention_floor)
        mlflow.log_metrics(
            {
                **student.report,
                "best_val_macro_f1": result.training.best_val_macro_f1,
                "retention_gate_passed": float(student.gate_failure is None),
            }
        )
        mlflow.set_tag("graftline.gate", student.gate_failure or f"passed (floor {params.retention_floor})")
        student.model_uri = log_classifier(result.model_dir, _input_example(splits)).model_uri
    logger = get_run_logger()
    logger.info(
        "student: %s parameters (%.2fx the teacher), test accuracy retention %.3f, CPU speedup %.2fx",
        f"{result.student_parameters:,}",
        student.report["parameter_ratio"],
        student.report["test_accuracy_retention"],
        student.report["cpu_speedup"],
    )
    if student.gate_failure:
        logger.warning("student will not be registered: %s", student.gate_failure)
    return student


@task(name="export", **STEP)
def export(
    served: TrainedModel,
    teacher: TrainedModel,
    splits: Splits,
    params: ExportParams,
    max_length: int,
    parent_run_id: str,
    work_dir: Path,
) -> dict[str, float]:
    """ONNX (and INT8) export of the served model, parity on the test set, CPU latency of all."""
    import mlflow
    import pandas as pd

    from graftline.tasks.export import ExportConfig, export_and_measure, plot_tradeoff

    with tracking.step_run("export", parent_run_id) as run:
        tracking.log_params(params.model_dump(), "export.")
        config = ExportConfig(
            quantize=params.quantize,
            min_agreement=params.min_agreement,
            max_accuracy_drop=params.max_accuracy_drop,
            max_length=max_length,
        )
        compared = teacher.model_dir if served is not teacher else None
        report = export_and_measure(served.model_dir, compared, splits.test, config, work_dir / "export")
        metrics = report.metrics()
        mlflow.log_metrics(metrics)
        mlflow.log_table(pd.DataFrame(report.table()), "export/latency.json")
        mlflow.log_artifact(
            str(
                plot_tradeoff(
                    report, work_dir / "export" / "tradeoff.png", f"{served.role} export: accuracy against CPU latency"
                )
            ),
            "export",
        )
        for row in report.rows:
            if row.file and row.passed:
                mlflow.log_artifact(row.file, "export")
        failures = report.failures()
        mlflow.set_tag("graftline.export", "; ".join(failures) + " (not logged)" if failures else "parity passed")
    served.export_run_id = run.info.run_id
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
    return {
        k: v
        for k, v in metrics.items()
        if k.endswith(("speedup_batch_32", "speedup_batch_1", "_agreement", "accuracy_drop"))
    }


@task(name="register", **STEP)
def register(
    models: list[TrainedModel],
    splits: Splits,
    params: RegistryParams,
    parent_run_id: str,
    tags: dict[str, str],
    triggered_by: str,
) -> list[dict]:
    """Register teacher as `<name>` and student as `<name>-student` (all or nothing, alias
    `candidate`), then promote each to `registry.promote_to` if its gates pass."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry.promotion import PromotionError, promote
    from graftline.tasks.registry.versions import Candidate, register_all

    client = MlflowClient()
    logger = get_run_logger()
    with tracking.step_run("register", parent_run_id):
        tracking.log_params(params.model_dump(), "registry.")
        names = {m.role: params.model_name if m.role == "teacher" else f"{params.model_name}-{m.role}" for m in models}
        candidates = [
            Candidate(
                name=names[m.role],
                model_uri=m.model_uri,
                teacher=names["teacher"] if m.role == "student" else None,
                tags={
                    **tags,
                    "graftline.role": m.role,
                    "training_run_id": m.run_id,
                    **({"export_run_id": m.export_run_id} if m.export_run_id else {}),
                    "test_accuracy": f"{m.evaluations['test'].accuracy:.4f}",
                    "test_macro_f1": f"{m.evaluations['test'].macro_f1:.4f}",
                },
            )
            for m in models
        ]
        registrations = register_all(client, candidates)
        results = []
        for model, reg in zip(models, registrations, strict=True):
            result = dict(
                name=reg.name,
                version=reg.version,
                aliases=list(reg.aliases),
                promoted=False,
                reason="registered as candidate",
            )
            if params.promote_to != "none":
                gates = params.gates.to_gates()
                try:
                    outcome = promote(
                        client,
                        reg.name,
                        params.promote_to,
                        splits.evaluation_sets(),
                        gates,
                        triggered_by,
                        version=reg.version,
                        experiment=params.experiment,
                    )
                except PromotionError as exc:
                    result["reason"] = f"not promoted: {exc}"
                else:
                    result.update(promoted=outcome.moved, reason=outcome.reason, promotion_run_id=outcome.run_id)
                    if outcome.moved:
                        result["aliases"].append(params.promote_to)
            mlflow.set_tags(
                {
                    f"{model.role}.version": reg.version,
                    f"{model.role}.promoted": str(result["promoted"]).lower(),
                    f"{model.role}.decision": result["reason"][:5000],
                }
            )
            logger.info("%s v%s -> %s (%s)", reg.name, reg.version, ", ".join(result["aliases"]), result["reason"])
            results.append(result)
        return results


def _evaluate_and_log(
    model: TrainedModel, splits: Splits, params: FinetuneParams, out_dir: Path
) -> dict[str, Evaluation]:
    import mlflow

    classifier = backbones.load_classifier(str(model.model_dir))
    tokenizer = backbones.load_tokenizer(str(model.model_dir))
    evaluations = {}
    for name, split in splits.evaluation_sets().items():
        result = evaluate_model(classifier, tokenizer, split, params.max_length, device=params.device)
        evaluations[name] = result
        mlflow.log_metrics(result.metrics())
        mlflow.log_artifact(
            str(
                plot_confusion(
                    result, out_dir / f"{name}_confusion.png", f"{model.role} on {name}: accuracy {result.accuracy:.3f}"
                )
            ),
            "evaluation",
        )
        mlflow.log_dict(asdict(result), f"evaluation/{name}_report.json")
        if name != "test":  # cross-domain: how much is lost moving away from the training domain
            mlflow.log_metric(f"{name}_accuracy_gap_vs_test", evaluations["test"].accuracy - result.accuracy)
    return evaluations


def _distillation_report(
    teacher: TrainedModel, student: TrainedModel, splits: Splits, max_length: int
) -> dict[str, float]:
    report = {"parameter_ratio": student.parameters / teacher.parameters}
    for name, s in student.evaluations.items():
        t = teacher.evaluations[name]
        report[f"{name}_accuracy_retention"] = s.accuracy / t.accuracy if t.accuracy else 0.0
        report[f"{name}_macro_f1_retention"] = s.macro_f1 / t.macro_f1 if t.macro_f1 else 0.0
    from graftline.tasks.export import latency, torch_predictor

    texts = splits.test.frame["text"].tolist()
    speeds = {}
    for model in (teacher, student):
        classifier = backbones.load_classifier(str(model.model_dir)).eval()
        predict = torch_predictor(classifier, backbones.load_tokenizer(str(model.model_dir)), max_length)
        speeds[model.role] = latency(predict, texts)[32]
    report["teacher_cpu_examples_per_second"] = speeds["teacher"]
    report["student_cpu_examples_per_second"] = speeds["student"]
    report["cpu_speedup"] = speeds["student"] / speeds["teacher"]
    return report


def _train_config(params: FinetuneParams, epochs: int, batch_size: int, learning_rate: float) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=params.weight_decay,
        warmup_ratio=params.warmup_ratio,
        patience=params.patience,
        seed=params.seed,
        device=params.device,
        grad_accumulation=params.grad_accumulation,
        precision=params.precision,
        compile=params.compile,
        group_by_length={"auto": None, "on": True, "off": False}[params.group_by_length],
        layer_decay=params.layer_decay,
        checkpoint_every=params.checkpoint_every,
    )


def _log_training(result) -> None:
    """The loss of every optimizer step (a curve in MLflow) and where the run resumed, if it did."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    run_id, now = mlflow.active_run().info.run_id, tracking.now_ms()
    losses = [Metric("train_step_loss", loss, now, step) for step, loss in enumerate(result.step_losses, start=1)]
    for start in range(0, len(losses), 1000):
        MlflowClient().log_batch(run_id, metrics=losses[start : start + 1000])
    if result.resumed_from_step is not None:
        mlflow.set_tag("graftline.resumed_from_step", str(result.resumed_from_step))
        get_run_logger().info("training resumed from its checkpoint at step %d", result.resumed_from_step)


def _input_example(splits: Splits) -> list[str]:
    return splits.train.frame["text"].head(2).tolist()


def _short_name(spec: str) -> str:
    """A candidate's name for metric keys: a folder's own name rather than its whole path."""
    path = Path(spec)
    return path.name if path.is_dir() else spec


def _describe(config, prefix: str) -> dict[str, object]:
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings")
    return {prefix + k: getattr(config, k) for k in keys if hasattr(config, k)}
