"""Serving flows: `predict` scores a file with a registered version; `monitor` checks new texts for drift.

`graftline predict` and `graftline monitor` run the same flows from the command line.

The prediction run (MLflow, run name `predict`) holds the version it used (tags `graftline.model`,
`graftline.model_version`, `graftline.form`), where it wrote (parameter `output_path`), the row
count, throughput, predicted-label counts and mean confidence as metrics, and a histogram of the
confidences; the scored rows themselves go to the output file only.

The monitor run (run name `monitor`) holds every detector's statistic and p-value, the reference
and estimated accuracy, the verdict (tag `graftline.verdict`) and the drift report (HTML and PNG).
Each check is also a history record on the registered model. On harmful drift (and `retrain`), the
retrain deployment starts with the new texts as a target set of its adaptation step (and, when
they carry labels, as an evaluation set); its gates decide what gets promoted. The new texts are
written for it under `<GRAFTLINE_HOME>/monitor/windows/`, never into the tracking store.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from graftline.flows.identity import triggered_by as who
from graftline.flows.params import MonitorParams, PredictParams
from graftline.tasks.registry import tracking
from graftline.tasks.serve.monitor import HARMFUL, MonitorOutcome
from graftline.tasks.serve.predict import PredictionRun

WAITING = "waiting for new rows"


@flow(name="predict", log_prints=True, persist_result=False)
def predict(params: PredictParams) -> PredictionRun:
    """Score `params.input_path` with `params.model`; returns what the prediction run did."""
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    from graftline.tasks.serve.predict import (
        HISTOGRAM_MIN_ROWS,
        ModelReference,
        load_scorer,
        output_format,
        plot_confidence,
        predict_frame,
        read_input,
    )

    reference = ModelReference.parse(params.model)
    output = Path(params.output_path).expanduser().resolve()
    output_format(output)  # bad input fails before the model is loaded
    frame = read_input(params.input_path, params.text_column, params.encoding)
    tracking.configure(params.experiment)
    scorer = load_scorer(MlflowClient(), reference, params.form)
    with mlflow.start_run(run_name="predict", tags={"graftline.flow": "predict"}) as run:
        mlflow.set_tags(
            {
                "graftline.model": scorer.name,
                "graftline.model_version": scorer.version,
                "graftline.form": scorer.form,
            }
        )
        mlflow.log_params(
            {
                "model": str(reference),
                "input_path": params.input_path,
                "output_path": str(output),
                "text_column": params.text_column,
                "batch_size": params.batch_size,
            }
        )
        explainer = _explainer(scorer.source) if params.explain else None
        predictions = predict_frame(scorer, frame, params.text_column, output, params.batch_size, explainer)
        metrics = predictions.metrics()
        mlflow.log_metrics(metrics)
        if predictions.rows >= HISTOGRAM_MIN_ROWS:
            with tempfile.TemporaryDirectory() as folder:
                picture = plot_confidence(predictions.confidences, Path(folder) / "confidence.png")
                mlflow.log_artifact(str(picture), "predict")
    get_run_logger().info(
        "%s v%s (%s): %d rows in %.2f s, %.0f rows/s; predicted %s; written to %s",
        scorer.name,
        scorer.version,
        scorer.form,
        predictions.rows,
        predictions.seconds,
        predictions.rows_per_second,
        ", ".join(f"{label} {n}" for label, n in predictions.label_counts.items()),
        output,
    )
    return PredictionRun(predictions, scorer.version, scorer.form, run.info.run_id)


def _explainer(version):
    """texts -> the words that pushed each towards its prediction (IG on the version's torch model)."""
    from graftline.tasks.evaluate.explain import explain

    model, tokenizer = version.classifier(), version.tokenizer()

    def top_words(texts: list[str]) -> list[list[str]]:
        explained = {}
        present = [t for t in dict.fromkeys(texts) if t.strip()]
        if present:
            explained = {e.text: e.top_words(5) for e in explain(model, tokenizer, present, version.max_length)}
        return [explained.get(t, []) for t in texts]

    return top_words


@flow(name="monitor", log_prints=True, persist_result=False)
def monitor(params: MonitorParams) -> MonitorOutcome:
    """Check new texts against `params.model`'s own held-out data; on harmful drift, start retraining."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry.promotion import append_record
    from graftline.tasks.serve.monitor import MonitorError, check, plot_report, write_html
    from graftline.tasks.serve.predict import ModelReference, read_input

    reference = ModelReference.parse(params.model)
    window = read_input(params.input_path, params.text_column, params.encoding) if params.input_path else None
    tracking.configure(params.experiment)
    client = MlflowClient()
    if window is None:
        window = _scored_since_last_check(client, params.experiment, reference.name)
        if len(window) < params.min_rows:  # a scheduled check waits for more: these rows stay "since the last check"
            get_run_logger().info(
                "%d new rows scored since the last check: waiting for %d", len(window), params.min_rows
            )
            return MonitorOutcome(WAITING, len(window))
    if len(window) < params.min_rows:
        raise MonitorError(f"{len(window)} new texts: a check needs at least {params.min_rows} (min_rows)")
    texts = window[params.text_column if params.input_path else "text"].fillna("").astype(str).tolist()
    checked = check(client, texts, params)
    report, version = checked.report, checked.version
    title = f"{version.name} v{version.version}: {report.verdict}"
    with mlflow.start_run(run_name="monitor", tags={"graftline.flow": "monitor"}) as run:
        mlflow.set_tags(
            {
                "graftline.model": version.name,
                "graftline.model_version": version.version,
                "graftline.verdict": report.verdict,
                "graftline.form": checked.form,  # what computed the profiles: torch or the INT8 export
            }
        )
        mlflow.log_params({"model": str(reference), "input_path": params.input_path or "predictions since last check"})
        mlflow.log_params(params.thresholds())
        mlflow.log_metrics(report.metrics())
        folder = tracking.home() / "monitor" / "reports" / run.info.run_id
        picture = plot_report(report, checked.reference, checked.window, folder / "drift.png", title)
        mlflow.log_artifact(str(picture), "drift")
        mlflow.log_artifact(str(write_html(report, picture, folder / "drift.html", title)), "drift")
    logger = get_run_logger()
    logger.info("%s: %s", title, report.summary())
    retrain_run, retrain_error = None, None
    if report.verdict == HARMFUL and params.retrain:
        try:
            retrain_run = _start_retraining(params, window, version)
            logger.warning("harmful drift: retraining started (flow run %s)", retrain_run)
        except Exception as error:  # the check stands; say why nothing was started (no server, no deployment)
            retrain_error = f"{params.retrain_deployment} not started: {type(error).__name__}: {error}".splitlines()[0]
            logger.error("harmful drift, but %s", retrain_error)
    append_record(
        client,
        version.name,
        {
            "action": "monitor",
            "version": version.version,
            "verdict": report.verdict,
            "detail": report.summary(),
            "run_id": run.info.run_id,
            "retrain_flow_run_id": retrain_run,
            **({"retrain_error": retrain_error} if retrain_error else {}),
            "triggered_by": who(),
        },
    )
    return MonitorOutcome(report.verdict, report.window_rows, report, run.info.run_id, retrain_run, retrain_error)


def _scored_since_last_check(client, experiment: str, model_name: str):
    """Every row `predict` scored with `model_name` since the last monitor run of it (column `text`)."""
    import mlflow
    import pandas as pd

    from graftline.tasks.serve.predict import read_input

    model = f"tags.`graftline.model` = '{model_name}'"
    last = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`graftline.flow` = 'monitor' and {model}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    since = last[0].info.start_time if last else 0
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`graftline.flow` = 'predict' and {model} and attributes.start_time > {since}",
        output_format="list",
    )
    frames = []
    for run in runs:
        output, column = run.data.params.get("output_path"), run.data.params.get("text_column", "text")
        if output and Path(output).is_file():
            frames.append(read_input(output, column)[[column]].rename(columns={column: "text"}))
        elif output:
            get_run_logger().warning("prediction run %s: its output %s is gone; skipped", run.info.run_id, output)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"text": []})


def _start_retraining(params: MonitorParams, window, version) -> str:
    """Start `params.retrain_deployment` with the window as a target set (and an evaluation set when it has
    labels); the deployment's other parameters stay as they are. Returns the new flow run's id."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        base = client.read_deployment_by_name(params.retrain_deployment).parameters
    data, adapt = dict(base.get("data") or {}), dict(base.get("adapt") or {})
    text_column, label_column = data.get("text_column", "text"), data.get("label_column", "label")
    source_text = params.text_column if params.input_path else "text"
    name = f"drift_{time.strftime('%Y%m%d_%H%M%S')}"
    path = tracking.home() / "monitor" / "windows" / f"{version.name}-v{version.version}-{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {source_text: text_column}
    labeled = params.input_path is not None and label_column in window.columns
    if labeled:
        columns[label_column] = label_column
    window[list(columns)].rename(columns=columns).to_parquet(path, index=False)
    data["target_sets"] = {**(data.get("target_sets") or {}), name: str(path)}
    if labeled:
        data["eval_sets"] = {**(data.get("eval_sets") or {}), name: str(path)}
    if adapt.get("method", "none") == "none":
        adapt["method"] = params.adapt_method
    run = run_deployment(
        params.retrain_deployment, parameters={"data": data, "adapt": adapt}, timeout=0, tags=["graftline", "drift"]
    )
    return str(run.id)
