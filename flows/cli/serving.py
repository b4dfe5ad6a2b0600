"""`graftline predict`, `monitor`, `serve` and `explain`: using a registered version from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from graftline.flows.cli.errors import command
from graftline.flows.cli.options import setting
from graftline.tasks.settings import EXPERIMENT, ExplainParams, MonitorParams, PredictParams, ServeParams


def check_before_starting(model: str, input_path: str | None, text_column: str, encoding: str = "utf-8") -> None:
    """Bad input as one line before Prefect's server starts (about a second, against 13-17 s and a
    traceback from inside the flow): the model reference names a registered version, the input file
    opens, parses and holds the text column and at least one row."""
    from graftline.tasks.data.splits import peek_table
    from graftline.tasks.registry import tracking
    from graftline.tasks.serve.predict import ModelReference, resolve_version

    reference = ModelReference.parse(model)
    if input_path:
        peek_table(input_path, text_column, encoding=encoding)
    resolve_version(tracking.registry_client(), reference)


@command
def predict(
    model: str = typer.Argument(..., help="MODEL@ALIAS, MODEL/VERSION, or MODEL (its production version)."),
    input_path: str = typer.Option(..., "--input", help="Texts to score: CSV, JSONL or Parquet (path or fsspec URL)."),
    output_path: Path = typer.Option(..., "--output", help="Scored rows: .csv, .jsonl or .parquet."),
    text_column: str = setting(PredictParams, "text_column"),
    encoding: str = setting(PredictParams, "encoding"),
    batch_size: int = setting(PredictParams, "batch_size"),
    form: str = setting(
        PredictParams, "form", help="auto (fastest export that passed parity) | onnx-int8 | onnx | torch."
    ),
    explain: bool = setting(
        PredictParams, "explain", "--explain", help="Add top_words per row (Integrated Gradients; slower)."
    ),
    experiment: str = setting(PredictParams, "experiment", help="MLflow experiment of the prediction run."),
) -> None:
    """Score every row of a file with a registered version; writes label, score per class and version."""
    from graftline.tasks.serve.predict import output_format

    params = PredictParams(
        model=model,
        input_path=input_path,
        output_path=str(output_path),
        text_column=text_column,
        encoding=encoding,
        batch_size=batch_size,
        form=form,
        explain=explain,
        experiment=experiment,
    )
    output_format(output_path.expanduser().resolve())
    check_before_starting(model, input_path, text_column, encoding)
    from graftline.flows.serving import predict as predict_flow

    done = predict_flow(params)
    scored = done.predictions
    print(
        f"{scored.rows:.0f} rows scored with v{done.version} ({done.form}) in {scored.seconds:.2f} s: "
        f"{scored.rows_per_second:.0f} rows/s -> {output_path}"
    )


@command
def monitor(
    model: str = typer.Argument(..., help="MODEL@ALIAS, MODEL/VERSION, or MODEL (its production version)."),
    input_path: str | None = setting(
        MonitorParams,
        "input_path",
        "--input",
        help="New texts (CSV, JSONL, Parquet); default: the rows predict scored since the last check.",
    ),
    text_column: str = setting(MonitorParams, "text_column"),
    encoding: str = setting(MonitorParams, "encoding"),
    alpha: float = setting(MonitorParams, "alpha"),
    max_accuracy_drop: float = setting(
        MonitorParams, "max_accuracy_drop", help="Estimated accuracy drop that makes drift harmful."
    ),
    accuracy_estimate: str = setting(
        MonitorParams, "accuracy_estimate", help="confidence | atc: the label-free accuracy estimate."
    ),
    min_rows: int = setting(MonitorParams, "min_rows", help="Fewest new texts a check runs on."),
    retrain: bool = setting(
        MonitorParams,
        "retrain",
        "--retrain/--no-retrain",
        help="On harmful drift, start the retrain deployment (needs `graftline up`).",
    ),
    experiment: str = setting(MonitorParams, "experiment", help="MLflow experiment of the monitor run."),
) -> None:
    """Check new texts for drift against the version's own held-out data; prints the verdict and every statistic."""
    params = MonitorParams(
        model=model,
        input_path=input_path,
        text_column=text_column,
        encoding=encoding,
        alpha=alpha,
        max_accuracy_drop=max_accuracy_drop,
        accuracy_estimate=accuracy_estimate,
        min_rows=min_rows,
        retrain=retrain,
        experiment=experiment,
    )
    check_before_starting(model, input_path, text_column, encoding)
    from graftline.flows.serving import monitor as monitor_flow
    from graftline.tasks.serve.monitor import DETECTORS

    done = monitor_flow(params)
    report = done.report
    if report is None:
        print(f"{done.verdict}: {done.window_rows} rows scored since the last check, {min_rows} needed")
        return
    print(f"{done.verdict} ({report.window_rows:.0f} new rows, {report.reference_rows:.0f} reference rows)")
    for name in DETECTORS:
        found = report.detections[name]
        print(f"  {name:12s} statistic {found.statistic:.4f}  p-value {found.p_value:.3g}")
    print(
        f"  accuracy: {report.reference_accuracy:.3f} on the reference, estimated {report.estimated_accuracy:.3f} "
        f"on the new rows; report in MLflow run {done.run_id}"
    )
    if done.retrain_flow_run_id:
        print(f"  retraining started: flow run {done.retrain_flow_run_id}")
    elif done.retrain_error:
        print(f"  harmful drift, but {done.retrain_error}")


@command
def serve(
    model: str = typer.Argument(..., help="MODEL@ALIAS, MODEL/VERSION, or MODEL (its production version)."),
    form: str = setting(ServeParams, "form"),
    host: str = setting(ServeParams, "host"),
    port: int = setting(ServeParams, "port"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the mlflow command instead of running it."),
) -> None:
    """Serve a registered version with MLflow's scoring server (POST /invocations)."""
    settings = ServeParams(model=model, form=form, host=host, port=port)  # the group's bounds, before any import
    import os
    import shutil
    import sys

    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry import contract, tracking
    from graftline.tasks.serve.predict import ModelReference, PredictionError, resolve_version

    reference = ModelReference.parse(settings.model)
    tracking.configure(EXPERIMENT)
    client = MlflowClient()
    version = resolve_version(client, reference)
    uri = f"models:/{reference.name}/{version}"
    if settings.form == "onnx":
        uri = client.get_model_version(reference.name, version).tags.get(contract.SERVABLE)
        if not uri:
            raise PredictionError(f"{reference.name} v{version} has no servable ONNX export; use --form torch")
    beside = Path(sys.executable).with_name("mlflow")  # the mlflow of this installation
    executable = str(beside) if beside.is_file() else shutil.which("mlflow") or "mlflow"
    argv = [executable, "models", "serve", "-m", uri, "--env-manager", "local", "-h", settings.host]
    argv += ["-p", str(settings.port)]
    print(" ".join(argv), flush=True)
    if not dry_run:
        import mlflow

        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()  # where models:/ and runs:/ resolve
        os.environ["MLFLOW_REGISTRY_URI"] = mlflow.get_registry_uri()
        # MLflow starts its server as `uvicorn` from PATH: this installation's, even when it is not activated
        os.environ["PATH"] = f"{Path(executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        os.execv(executable, argv)  # the server replaces this process: its signals and exit status are the user's


@command
def explain(
    model: str = typer.Argument(..., help="MODEL@ALIAS, MODEL/VERSION, or MODEL (its production version)."),
    text: str = typer.Argument(..., help="The text to explain."),
    html: Path | None = typer.Option(None, "--html", help="Also write the explanation as an HTML page."),
    steps: int = setting(ExplainParams, "n_steps", "--steps"),
) -> None:
    """Predict one text and shade each word by how much it pushed towards the prediction."""
    steps = ExplainParams(n_steps=steps).n_steps  # the group's bounds, before any import
    from rich.console import Console
    from rich.text import Text

    from graftline.tasks.evaluate.explain import ExplainError, explain, write_html
    from graftline.tasks.registry import tracking
    from graftline.tasks.serve.predict import ModelReference, fetch_version

    if not text.strip():
        raise ExplainError("nothing to explain: the text is empty")
    reference = ModelReference.parse(model)
    tracking.configure(EXPERIMENT)
    from mlflow.tracking import MlflowClient

    version = fetch_version(MlflowClient(), reference)
    [explained] = explain(version.classifier(), version.tokenizer(), [text], version.max_length, n_steps=steps)
    words = explained.words()
    scale = max((abs(s) for _, s in words), default=0.0) or 1.0
    shaded = Text()
    for word, score in words:
        strength = int(40 + 200 * min(1.0, abs(score) / scale))
        colour = f"rgb({strength},60,60)" if score > 0 else f"rgb(60,60,{strength})"
        shaded.append(word, style=f"on {colour}" if abs(score) / scale > 0.1 else "")
        shaded.append(" ")
    console = Console()
    console.print(f"{version.name} v{version.version}: [bold]{explained.label}[/bold] ({explained.probability:.3f})")
    console.print(shaded)
    console.print("towards it: " + ", ".join(explained.top_words(5)) + "   (red: towards, blue: away)")
    if html:
        write_html(html, {"explanation": [explained]}, f"{version.name} v{version.version}")
        console.print(f"written to {html}")
