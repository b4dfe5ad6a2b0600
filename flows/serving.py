"""The `predict` flow: score a file with a registered version and track it as a prediction run.

`graftline predict` runs the same flow from the command line. The prediction run (MLflow, run name
`predict`) holds the version it used (tags `graftline.model`, `graftline.model_version`,
`graftline.form`), the row count, throughput, predicted-label counts and mean confidence as metrics,
and a histogram of the confidences; the scored rows themselves go to the output file only.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from graftline.flows.params import PredictParams
from graftline.tasks.registry import tracking


@flow(name="predict", log_prints=True, persist_result=False)
def predict(params: PredictParams) -> dict:
    """Score `params.input_path` with `params.model`; returns the prediction run's numbers."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from graftline.tasks.predict import ModelReference, load_scorer, output_format, predict_frame, read_input

    reference = ModelReference.parse(params.model)
    output = Path(params.output_path).expanduser().resolve()
    output_format(output)  # bad input fails before the model is loaded
    frame = read_input(params.input_path, params.text_column)
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
        mlflow.log_params({"model": str(reference), "input_path": params.input_path, "batch_size": params.batch_size})
        predictions = predict_frame(scorer, frame, params.text_column, output, params.batch_size)
        metrics = predictions.metrics()
        mlflow.log_metrics(metrics)
        mlflow.log_figure(_confidence_histogram(predictions.confidences), "predict/confidence.png")
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
    return {**metrics, "version": scorer.version, "form": scorer.form, "run_id": run.info.run_id}


def _confidence_histogram(confidences):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3))
    axes.hist(confidences, bins=20, range=(0, 1))
    axes.set_xlabel("confidence (top class probability)")
    axes.set_ylabel("rows")
    figure.tight_layout()
    plt.close(figure)
    return figure
