"""`graftline run` and `graftline resume`: the lifecycle from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from graftline.flows.cli.display import live_progress
from graftline.flows.cli.errors import assign, command, pairs
from graftline.tasks.errors import GraftlineError
from graftline.tasks.progress import activity

# The data options `run` and `check` share (typer reads each default's OptionInfo; one object serves both).
TRAIN = typer.Option(
    None,
    help="Training data: CSV, JSONL, Parquet (path or fsspec URL), or a Hugging Face dataset "
    "(hf://datasets/OWNER/NAME[@REV], a save_to_disk or Hub-layout folder; ?config=, ?split= choose).",
)
VALIDATION = typer.Option(None, help="Validation data; else --train's validation split, else carved from --train.")
TEST = typer.Option(None, help="Test data; else --train's test split, else carved from --train.")
EVAL = typer.Option([], "--eval", help="Extra evaluation set NAME=PATH (repeatable).")
TARGET = typer.Option([], "--target", help="Unlabeled texts of a domain the model will serve, NAME=PATH (repeatable).")
TEXT_COLUMN = typer.Option(None, help="Text column name.")
LABEL_COLUMN = typer.Option(None, help="Label column name.")
SET = typer.Option([], "--set", help="Any parameter as dotted.path=value (repeatable).")
MODALITY = typer.Option(None, help="text | image | auto (default: image for a folder of class folders).")


def data_overrides(train, validation, test, text_column, label_column) -> dict:
    return {
        "data.train_path": train,
        "data.validation_path": validation,
        "data.test_path": test,
        "data.text_column": text_column,
        "data.label_column": label_column,
    }


@command
def run(
    config: Path | None = typer.Option(
        None, help="YAML or JSON file of flow parameters (data/validation/finetune/distill/registry)."
    ),
    train: str | None = TRAIN,
    validation: str | None = VALIDATION,
    test: str | None = TEST,
    eval_set: list[str] = EVAL,
    target: list[str] = TARGET,
    text_column: str | None = TEXT_COLUMN,
    label_column: str | None = LABEL_COLUMN,
    backbone: str | None = typer.Option(None, help="Backbone: packaged name, local folder or hub id."),
    strategy: str | None = typer.Option(None, help="full | linear-probe | lp-ft | lora."),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs."),
    student: str | None = typer.Option(None, help="Distillation student (e.g. teacher-layers:3)."),
    no_distill: bool = typer.Option(False, "--no-distill", help="Skip distillation."),
    model_name: str | None = typer.Option(None, help="Registered model name."),
    validation_mode: str | None = typer.Option(None, help="fail | warn."),
    modality: str | None = MODALITY,
    set_: list[str] = SET,
) -> None:
    """Run the whole lifecycle; with no options, on the embedded demo data (`--modality image`: the drawn
    image demo)."""
    overrides = {
        **data_overrides(train, validation, test, text_column, label_column),
        "data.modality": modality,
        "finetune.backbone": backbone,
        "finetune.strategy": strategy,
        "finetune.epochs": epochs,
        "distill.student": student,
        "distill.enabled": False if no_distill else None,
        "registry.model_name": model_name,
        "validation.mode": validation_mode,
    }
    params = build_params(config, overrides, eval_set, set_, target).for_modality()
    checked = preflight(params)  # bad input stops here, before any server starts
    print(checked.line(), file=sys.stderr)
    require_one_kind(params, checked.splits)
    from graftline.flows.lifecycle import transfer

    with live_progress():
        summary = transfer(**params.groups())
    print_summary(summary)


@command
def check(
    config: Path | None = typer.Option(None, help="YAML or JSON file of flow parameters."),
    train: str | None = TRAIN,
    validation: str | None = VALIDATION,
    test: str | None = TEST,
    eval_set: list[str] = EVAL,
    target: list[str] = TARGET,
    text_column: str | None = TEXT_COLUMN,
    label_column: str | None = LABEL_COLUMN,
    out: Path | None = typer.Option(None, help="Folder for the report and Data Docs (default: a new temporary one)."),
    modality: str | None = MODALITY,
    set_: list[str] = SET,
) -> None:
    """Check and validate data as `graftline run` would, without training or tracking anything: the
    pre-flight checks, then the full validation suite, its table and report. Exit 2 when it fails."""
    import tempfile

    overrides = data_overrides(train, validation, test, text_column, label_column) | {"data.modality": modality}
    params = build_params(config, overrides, eval_set, set_, target).for_modality()
    folder = out or Path(tempfile.mkdtemp(prefix="graftline-check-"))
    from graftline.tasks import modality as modalities
    from graftline.tasks.data.ingest import redact, redaction_line

    modality = modalities.of_data(params.data)
    splits, line = modality.read_to_check(params.data, lambda: preflight(params))
    print(line, file=sys.stderr)
    with live_progress(), activity(f"validating {modality.described_as}"):
        splits, replaced = redact(
            splits, params.validation, modality
        )  # as the run's ingest step does, before validation
        if replaced is not None:
            print(redaction_line(replaced), file=sys.stderr)
        report = modality.validate(splits, params.validation, folder)
    docs = str(report.docs_dir / "index.html") if report.docs_dir else None
    if not report.success:
        raise report.error(str(folder / "report.md"), docs)
    print(f"data validation passed\nreport: {folder / 'report.md'}" + (f"\nData Docs: {docs}" if docs else ""))


def require_one_kind(params, splits) -> None:
    """The registered name takes this run's kind of model (modality, labels), checked in the store
    before any server starts; a store not made yet holds no name."""
    from graftline.tasks.registry import stages, tracking

    try:
        client = tracking.registry_client()
    except GraftlineError:
        return
    stages.require_one_kind(client, params.registry.model_name, splits.modality, splits.labels)


def preflight(params):
    """The checks that need no server and no model (tasks/preflight.py), on the run's parameters."""
    from graftline.tasks import preflight as checks

    return checks.check(params.data, params.finetune, params.select, params.distill)


@command
def resume(
    run_id: str | None = typer.Argument(
        None,
        help="MLflow run id of the lifecycle (or its Prefect flow run id); "
        "default: the newest one that did not finish.",
    ),
) -> None:
    """Resume a killed or failed lifecycle with its own parameters: the steps it completed are reused and
    training continues from its last checkpoint."""
    from graftline.flows.lifecycle import transfer
    from graftline.flows.resume import interrupted_run

    params, old = interrupted_run(run_id)
    print(f"resuming lifecycle run {old} with its own parameters", file=sys.stderr)
    params = params.model_copy(update={"run": params.run.model_copy(update={"resumed_from": old})})
    with live_progress():
        summary = transfer(**params.groups())
    print_summary(summary)


def build_params(
    config: Path | None, overrides: dict, eval_sets: list[str], assignments: list[str], targets: list[str] = ()
):
    """Merge a config file, the named options and `--set` assignments into TransferParams."""
    from graftline.flows.params import TransferParams
    from graftline.tasks.settings import load_yaml

    values: dict = {}
    if config is not None:
        if not config.is_file():
            raise GraftlineError(f"{config}: config file not found")
        values = load_yaml(config.read_text(), str(config)) or {}
        if not isinstance(values, dict):
            raise GraftlineError(f"{config}: expected a mapping of parameter groups")
    given = [(k, v) for k, v in overrides.items() if v is not None]
    given += [(k, load_yaml(v, f"--set {k}")) for k, v in pairs(assignments, "--set expects dotted.path=value")]
    for path, value in given:
        assign(values, path, value)
    if eval_sets:
        assign(values, "data.eval_sets", dict(pairs(eval_sets, "--eval expects NAME=PATH")))
    elif "train_path" in values.get("data", {}) and "eval_sets" not in values.get("data", {}):
        assign(values, "data.eval_sets", {})  # the demo's second domain only goes with the demo data
    if targets:
        assign(values, "data.target_sets", dict(pairs(list(targets), "--target expects NAME=PATH")))
    return TransferParams.model_validate(values)


def print_summary(summary) -> None:
    print("\n== metrics ==")
    for role, metrics in summary.metrics.items():
        for key, value in metrics.items():
            print(f"  {role:8s} {key:36s} {value:10.4f}")
    print("\n== registered ==")
    for r in summary.registered:
        print(f"  {r.name} v{r.version}  aliases: {', '.join(r.aliases)}  ({r.reason})")
    for role, reason in summary.not_registered.items():
        print(f"  {role} not registered: {reason}")
    if summary.reused_steps:
        print(f"\nreused from an identical earlier run: {', '.join(summary.reused_steps)}")
    print(f"\nbackbone: {summary.backbone}")
    if summary.adaptation:
        print(f"adaptation: {summary.adaptation}")
    print(f"MLflow run {summary.mlflow_run_id} in experiment {summary.experiment!r}")
    print(f"open the MLflow UI:  {summary.ui_command}")
