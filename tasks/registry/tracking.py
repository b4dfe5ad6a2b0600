"""MLflow tracking helpers: the one place that configures the store and opens runs.

Default store: `./graftline-runs/mlflow.db` (sqlite) with artifacts in `./graftline-runs/artifacts`
(GRAFTLINE_HOME moves both). MLFLOW_TRACKING_URI, when set, wins; GRAFTLINE_ARTIFACT_ROOT then sets
the artifact location of experiments graftline creates (a server store usually serves its own).
Runs are opened with explicit parent ids, never by relying on MLflow's per-thread active run,
so steps work the same whichever thread Prefect runs them on.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from graftline.tasks import progress

SECRET_WORDS = ("password", "secret", "token", "api_key", "apikey", "credential")


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment_id: str
    experiment_name: str
    artifact_root: str | None

    def ui_command(self) -> str:
        if self.uri.startswith(("http://", "https://", "databricks")):
            return f"open {self.uri}"
        root = f" --default-artifact-root {self.artifact_root}" if self.artifact_root else ""
        return f"mlflow ui --backend-store-uri {self.uri}{root} --host 127.0.0.1 --port 5000"


def local_path(uri: str) -> str:
    """A file: URI as the path a person can open; any other URI as it is."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    return url2pathname(urlparse(uri).path) if uri.startswith("file:") else uri


def artifact_location(path: str) -> str:
    """Where artifact `path` of the active run is, as a person can open it."""
    import mlflow

    return local_path(mlflow.get_artifact_uri(path))


def home() -> Path:
    """graftline's own folder: the default MLflow store, reusable step results, checkpoints, caches."""
    folder = _home_path()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _home_path() -> Path:
    return Path(os.environ.get("GRAFTLINE_HOME", "graftline-runs")).expanduser().resolve()


def default_store_uri() -> str:
    """The store graftline uses unless MLFLOW_TRACKING_URI names another: sqlite in its home."""
    return f"sqlite:///{_home_path() / 'mlflow.db'}"


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


def connect() -> tuple[str, str | None]:
    """Point MLflow at the store; returns its URI and the artifact root graftline gives new experiments."""
    import mlflow

    # Recognised by value: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so after a first
    # connect() the default store is also "named" by the environment.
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_store_uri()
    artifact_root = os.environ.get("GRAFTLINE_ARTIFACT_ROOT")
    if uri == default_store_uri():
        artifact_root = artifact_root or (home() / "artifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri, artifact_root


def registry_client():
    """A client of the store for the checks a command makes before it starts anything: nothing is
    created, so a missing default store is an error rather than a new empty one."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.errors import GraftlineError

    uri, default = os.environ.get("MLFLOW_TRACKING_URI") or default_store_uri(), _home_path() / "mlflow.db"
    if uri == default_store_uri() and not default.is_file():  # checked before connect(), which makes the folder
        raise GraftlineError(
            f"no model store at {default} yet: `graftline run` creates it (or set MLFLOW_TRACKING_URI to the store)"
        )
    connect()
    return MlflowClient()


def configure(experiment_name: str) -> Tracking:
    """Point MLflow at the store (default: local sqlite + artifact folder) and the experiment."""
    import mlflow

    uri, artifact_root = connect()
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = f"{artifact_root.rstrip('/')}/{experiment_name}" if artifact_root else None
        experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return Tracking(uri, experiment_id, experiment_name, artifact_root)


@contextmanager
def lifecycle_run(name: str, tags: dict[str, str] | None = None):
    """The parent run of one lifecycle; nested under a run the caller already has open."""
    import mlflow

    with mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None, tags=tags) as run:
        yield run


@contextmanager
def step_run(name: str, parent_run_id: str):
    """A nested run for one lifecycle step under an explicit parent (and an activity for whoever
    watches progress: tasks/progress.py)."""
    import mlflow

    with (
        progress.activity(f"step {name}"),
        mlflow.start_run(run_name=name, parent_run_id=parent_run_id, nested=True, tags={"graftline.step": name}) as run,
    ):
        yield run


@dataclass
class StepLog:
    """What a step's result says it logs, in the one shape the tracking shell writes (`record`).

    A step's logic (in tasks/) returns a result whose `logged()` builds one of these; the Prefect
    shell (flows/steps.py) opens the step's run, writes it with `record` and prints `lines` and
    `warnings` to the run's log. Nothing here imports MLflow, so a result can say what it logs in a
    unit test without a store. `a + b` merges two (a step that logs several results).
    """

    params: dict[str, object] = field(default_factory=dict)  # nested dicts become dotted names
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    files: list[tuple[Path, str | None]] = field(default_factory=list)  # (file or folder, artifact folder)
    dicts: dict[str, object] = field(default_factory=dict)  # artifact file -> JSON-able value
    texts: dict[str, str] = field(default_factory=dict)  # artifact file -> text
    tables: dict[str, object] = field(default_factory=dict)  # artifact file -> DataFrame (MLflow's table view)
    lines: list[str] = field(default_factory=list)  # what the run's log says about the step (info)
    warnings: list[str] = field(default_factory=list)
    datasets: object | None = None  # Splits: recorded as dataset inputs of the step's run and of its parent
    epochs: list[object] = field(default_factory=list)  # EpochRecords no listener heard: curves stepped by epoch

    def __add__(self, other: StepLog) -> StepLog:
        return StepLog(
            {**self.params, **other.params},
            {**self.metrics, **other.metrics},
            {**self.tags, **other.tags},
            [*self.files, *other.files],
            {**self.dicts, **other.dicts},
            {**self.texts, **other.texts},
            {**self.tables, **other.tables},
            [*self.lines, *other.lines],
            [*self.warnings, *other.warnings],
            other.datasets if other.datasets is not None else self.datasets,
            [*self.epochs, *other.epochs],
        )


def record(log: StepLog) -> None:
    """Write `log` to the active run: parameters (secrets left out), metrics, tags, then artifacts."""
    import mlflow

    if log.params:
        log_params(log.params)
    if log.metrics:
        mlflow.log_metrics(log.metrics)
    if log.tags:
        mlflow.set_tags(log.tags)
    for epoch in log.epochs:
        log_epoch(epoch)
    for path, folder in log.files:
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), folder)
        else:
            mlflow.log_artifact(str(path), folder)
    for name, value in log.dicts.items():
        mlflow.log_dict(value, name)
    for name, text in log.texts.items():
        mlflow.log_text(text, name)
    for name, table in log.tables.items():
        mlflow.log_table(table, name)
    if log.datasets is not None:
        from mlflow.tracking import MlflowClient

        run_id = mlflow.active_run().info.run_id
        parent = MlflowClient().get_run(run_id).data.tags.get("mlflow.parentRunId")
        for each in (run_id, parent) if parent else (run_id,):
            log_datasets(each, log.datasets)


def log_params(params: dict, prefix: str = "") -> None:
    """Log flat parameters; nested dicts become dotted names; secrets are never logged."""
    import mlflow

    mlflow.log_params({k: v for k, v in _flatten(params, prefix).items() if not _is_secret(k)})


DATASET_FINGERPRINT = "graftline.dataset_fingerprint"  # dataset input tag: a Hugging Face dataset's fingerprint
PARAMETERS_FILE = "parameters.json"  # a lifecycle's whole parameters, for `graftline resume`


def log_parameters_file(params) -> None:
    """The flow's parameters as one JSON artifact of the active run, secrets left out."""
    import mlflow

    mlflow.log_dict(_without_secrets(params.model_dump(mode="json")), PARAMETERS_FILE)


def _without_secrets(values):
    if isinstance(values, dict):
        return {k: _without_secrets(v) for k, v in values.items() if not _is_secret(k)}
    return values


def log_epoch(record, prefix: str = "") -> None:
    """Per-epoch training metrics, stepped by epoch so MLflow draws curves."""
    import mlflow

    values = {k: v for k, v in vars(record).items() if k != "epoch" and v is not None}
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in values.items()}, step=record.epoch)


def log_trial(record, parent_run_id: str, experiment_id: str | None = None) -> str:
    """A search trial (tasks/train/search.py's TrialRecord) as a finished nested run of `parent_run_id`
    (in its experiment unless `experiment_id` says otherwise): its settings as parameters, its reports
    as the `val_macro_f1_report` curve, its state as tags (FINISHED when complete, KILLED when pruned,
    FAILED). Thread-safe: it names its runs."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = experiment_id or client.get_run(parent_run_id).info.experiment_id
    started, ended = int(record.started * 1000), int((record.started + record.seconds) * 1000)
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "mlflow.runName": f"trial-{record.number}",
        "graftline.step": "search-trial",
        "graftline.trial": str(record.number),
        "graftline.trial_state": record.state,
    }
    if record.stopped_by:
        tags["graftline.trial_stopped_by"] = record.stopped_by
    if record.worker:
        tags["graftline.trial_worker"] = record.worker
    run_id = client.create_run(experiment_id, start_time=started, tags=tags).info.run_id
    metrics = [Metric("val_macro_f1_report", value, ended, step) for step, value in enumerate(record.reports, 1)]
    metrics.append(Metric("seconds", record.seconds, ended, 0))
    if record.value is not None:
        metrics.append(Metric("val_macro_f1", record.value, ended, 0))
    params = [Param(name, str(value)) for name, value in record.settings.items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    status = {"complete": "FINISHED", "pruned": "KILLED"}.get(record.state, "FAILED")
    client.set_terminated(run_id, status, end_time=ended)
    return run_id


def log_step_losses(losses, first: int = 1, run_id: str | None = None) -> None:
    """Optimizer steps' losses (`first` is the number of losses[0]) on the `train_step_loss` curve of
    `run_id` (default: the active run), in batches of 1000. Safe to call from another thread with the
    run's id (MLflow's active run is per thread)."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    run_id, now = run_id or mlflow.active_run().info.run_id, now_ms()
    metrics = [Metric("train_step_loss", loss, now, step) for step, loss in enumerate(losses, start=first)]
    for start in range(0, len(metrics), 1000):
        MlflowClient().log_batch(run_id, metrics=metrics[start : start + 1000])


def metric_safe(name: str) -> str:
    """MLflow names allow letters, digits, _ - . / and spaces; anything else becomes _."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def git_commit() -> str:
    """The commit of the code that ran (with `-dirty` when it has uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GRAFTLINE_GIT_COMMIT", "unknown")
    return commit + ("-dirty" if dirty else "")


def _flatten(params: dict, prefix: str) -> dict[str, object]:
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def log_summary(summary) -> None:
    """A lifecycle's headline numbers on its parent run, so the runs table compares lifecycles at a
    glance, and the whole summary as `summary.json`."""
    import mlflow

    mlflow.log_metrics(summary.headline_metrics())
    mlflow.log_dict(summary.as_dict(), "summary.json")
    if summary.reused_steps:
        mlflow.set_tag("graftline.reused_steps", ", ".join(summary.reused_steps))


def log_datasets(run_id: str, splits) -> None:
    """Record every split as an MLflow dataset input (name, source, digest, schema) of `run_id`."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    inputs = []
    labeled = [
        (s, s.name, [s.input_column, "label"])
        for s in [splits.train, splits.validation, *splits.evaluation_sets().values()]
    ]
    targets = [(s, f"target_{name}", ["text"]) for name, s in splits.targets.items()]  # unlabeled: no targets
    for split, name, columns in labeled + targets:
        with warnings.catch_warnings():  # MLflow registers its local source twice and warns about it
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            warnings.filterwarnings("ignore", message="Starting with pandas version 4.0")  # MLflow's digest code
            target = "label" if "label" in columns else None
            dataset = mlflow.data.from_pandas(
                split.frame[columns], source=split.recorded_source, name=name, targets=target
            )
        tags = [InputTag("mlflow.data.context", name)]
        if split.fingerprint:  # a Hugging Face dataset: which version of it was read
            tags.append(InputTag(DATASET_FINGERPRINT, split.fingerprint))
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
    MlflowClient().log_inputs(run_id, datasets=inputs)
