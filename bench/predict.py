"""Batch prediction throughput: `graftline predict` in each form against MLflow's pyfunc on the same version.

The demo lifecycle (MiniLM-L6 teacher, 3-layer student, ONNX and INT8 exports; defaults) runs once
into a temporary MLflow store, unless --model names a registered version in the store
MLFLOW_TRACKING_URI points at. Its student is then timed on the same texts (--rows of the demo's
home and electronics messages, repeated) at --batch-size:

    graftline predict, form torch       the registered fp32 model
    graftline predict, form onnx        the export run's fp32 ONNX file
    graftline predict, form onnx-int8   the export run's INT8 file (what `auto` picks when it passed parity)
    mlflow.pyfunc (transformers)        mlflow.pyfunc.load_model("models:/<student>/<v>").predict: the peer
    mlflow.pyfunc (servable)            the version's servable ONNX pyfunc (what `graftline serve` serves)

Each is timed from texts to predictions (tokenisation included), after one warm-up call, as the
best of --repeats; loading the model is not timed. Every ratio is against the transformers pyfunc.

    .venv/bin/python bench/predict.py                 # ~5 min on 2 cores, most of it the demo lifecycle
Results also go to bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

import pandas as pd  # noqa: E402


def demo_student(tmp: Path) -> str:
    """Run the demo lifecycle into a store under `tmp`; returns its student as MODEL/VERSION."""
    os.environ["GRAFTLINE_HOME"] = str(tmp / "home")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["GRAFTLINE_ARTIFACT_ROOT"] = (tmp / "artifacts").as_uri()
    from graftline.flows.lifecycle import transfer
    from graftline.flows.params import TransferParams

    params = TransferParams()
    params.registry.model_name = "bench-predict"
    summary = transfer(**params.groups())
    [student] = [r for r in summary.registered if r.name.endswith("-student")]
    return f"{student.name}/{student.version}"


def texts(rows: int) -> list[str]:
    from graftline.tasks.data.splits import read_table, resolve_source

    pool = [
        t for name in ("demo:home", "demo:electronics") for t in read_table(resolve_source(name), "text", None)["text"]
    ]
    return (pool * (rows // len(pool) + 1))[:rows]


def best_of(repeats: int, work) -> float:
    work()  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="MODEL@ALIAS or MODEL/VERSION in MLFLOW_TRACKING_URI's store (default: demo)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graftline-predict-") as tmp:
        model = args.model or demo_student(Path(tmp))
        import mlflow.pyfunc
        from mlflow.tracking import MlflowClient

        from graftline.tasks.registry import contract, tracking
        from graftline.tasks.serve.predict import ModelReference, load_scorer

        tracking.configure("graftline")
        client = MlflowClient()
        reference = ModelReference.parse(model)
        batch = texts(args.rows)
        frame = pd.DataFrame({"text": batch})
        seconds = {}
        for form in ("torch", "onnx", "onnx-int8"):
            scorer = load_scorer(client, reference, form)
            seconds[f"graftline predict ({form})"] = best_of(
                args.repeats, lambda scorer=scorer: scorer.probabilities(batch, args.batch_size)
            )
        version = load_scorer(client, reference, "torch").version
        peer = mlflow.pyfunc.load_model(f"models:/{reference.name}/{version}")
        seconds["mlflow.pyfunc (transformers)"] = best_of(
            args.repeats, lambda: peer.predict(frame["text"].tolist(), params={"batch_size": args.batch_size})
        )
        servable = client.get_model_version(reference.name, version).tags.get(contract.SERVABLE)
        if servable:
            onnx = mlflow.pyfunc.load_model(servable)
            seconds["mlflow.pyfunc (servable)"] = best_of(
                args.repeats, lambda: onnx.predict(frame, params={"batch_size": args.batch_size})
            )
    peer_rate = args.rows / seconds["mlflow.pyfunc (transformers)"]
    print(f"\n{model}: {args.rows} texts at batch {args.batch_size}, best of {args.repeats}")
    print("| scorer | rows/s | vs mlflow.pyfunc (transformers) |")
    print("|:--|--:|--:|")
    for name, s in seconds.items():
        print(f"| {name} | {args.rows / s:.0f} | {args.rows / s / peer_rate:.2f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rates = {n: args.rows / s for n, s in seconds.items()}
    result = {"model": model, "rows": args.rows, "batch_size": args.batch_size, "rows_per_second": rates}
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
