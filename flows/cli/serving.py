"""`graftline predict`: score a file with a registered version (the `predict` flow)."""

from __future__ import annotations

from pathlib import Path

import typer

from graftline.flows.cli.errors import command


@command
def predict(
    model: str = typer.Argument(..., help="MODEL@ALIAS, MODEL/VERSION, or MODEL (its production version)."),
    input_path: str = typer.Option(..., "--input", help="Texts to score: CSV, JSONL or Parquet (path or fsspec URL)."),
    output_path: Path = typer.Option(..., "--output", help="Scored rows: .csv, .jsonl or .parquet."),
    text_column: str = typer.Option("text", help="Text column of the input."),
    batch_size: int = typer.Option(32, help="Texts scored per call."),
    form: str = typer.Option("auto", help="auto (fastest export that passed parity) | onnx-int8 | onnx | torch."),
    experiment: str = typer.Option("graftline", help="MLflow experiment of the prediction run."),
) -> None:
    """Score every row of a file with a registered version; writes label, score per class and version."""
    from graftline.flows.params import PredictParams
    from graftline.flows.serving import predict as predict_flow

    params = PredictParams(
        model=model,
        input_path=input_path,
        output_path=str(output_path),
        text_column=text_column,
        batch_size=batch_size,
        form=form,
        experiment=experiment,
    )
    done = predict_flow(params)
    print(
        f"{done['rows']:.0f} rows scored with v{done['version']} ({done['form']}) in {done['seconds']:.2f} s: "
        f"{done['rows_per_second']:.0f} rows/s -> {output_path}"
    )
