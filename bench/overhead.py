"""What orchestration (Prefect) and tracking (MLflow) cost: the lifecycle flow against the same steps
called as plain functions, on the default demo data and parameters.

- flow: `transfer` with a warm Prefect API (the ephemeral server started by a trivial flow first;
  its start-up is reported apart), step reuse off, registration on, promotion off (the plain path
  has no registry to promote in);
- plain: load, validate (GX), fine-tune, evaluate both domains with confusion plots, distil,
  evaluate the student and time it against the teacher (retention gate), export to ONNX + INT8 with
  parity and latency: the same work, from the very parameter objects the flow gets (the groups of
  `TransferParams()`, model-wide settings from its `model` group), with no Prefect and no MLflow.
One untimed run of each first (the first run in a process pays imports and warm-ups, about 10 s
for the flow), then timed runs alternate (flow, plain, flow, plain, ...) so slow drifts of the
machine hit both. Per step: the flow's step-run durations from MLflow against the plain stages.

    .venv/bin/python bench/overhead.py              # warm-up + 2 rounds, ~7 min on 2 cores
    .venv/bin/python bench/overhead.py --rounds 4   # more rounds: the machine's noise is several seconds
Results also go to bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1", PREFECT_LOGGING_LEVEL="WARNING")


def plain(params, work: Path) -> dict[str, float]:
    """The lifecycle's work without Prefect or MLflow, from the same parameter groups as the flow;
    seconds per step, named as the flow's steps."""
    from graftline.tasks.data.splits import load_splits, read_texts
    from graftline.tasks.data.validate import validate_splits
    from graftline.tasks.evaluate.calibration import plot_reliability
    from graftline.tasks.evaluate.scores import evaluate_sets, plot_confusion, retention_gate
    from graftline.tasks.export.onnx import export_and_measure, plot_tradeoff
    from graftline.tasks.train.distill import distill, distillation_report
    from graftline.tasks.train.finetune import finetune

    model = params.model
    seconds, clock = {}, time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        seconds[step], clock = time.perf_counter() - clock, time.perf_counter()

    def evaluate(role: str, folder: Path, out: Path) -> dict:
        evaluations, calibration = evaluate_sets(folder, splits, model)
        plot_reliability(calibration, out / "reliability.png")
        for name, result in evaluations.items():
            plot_confusion(result, out / f"{name}_confusion.png", f"{role} on {name}: accuracy {result.accuracy:.3f}")
        return evaluations

    unlabeled = params.distill.unlabeled_paths if params.distill.enabled else []
    texts = [t for path in unlabeled for t in read_texts(path, params.distill.unlabeled_text_column)]
    splits = load_splits(params.data, texts)
    lap("ingest")
    validate_splits(splits, params.validation, work / "validation")
    lap("validate")
    teacher = finetune(splits, params.finetune, model, work / "teacher")
    lap("finetune")
    teacher_scores = evaluate("teacher", teacher.model_dir, work / "evaluate")
    lap("evaluate")
    student = distill(teacher.model_dir, splits, params.distill, model, work / "student")
    student_scores = evaluate("student", student.model_dir, work / "distill")
    texts = splits.test.frame["text"].tolist()  # the distill step's report: retention and CPU speed-up
    report = distillation_report(
        teacher.model_dir, student.model_dir, teacher_scores, student_scores, texts, model.max_length
    )
    failure = retention_gate(report, params.registry.gates.retention_floor)
    lap("distill")
    # The flow exports the student when it passed the gate, else the teacher on its own.
    served, role, compared = (
        (student.model_dir, "student", teacher.model_dir) if failure is None else (teacher.model_dir, "teacher", None)
    )
    measured = export_and_measure(served, compared, splits.test, params.export, model.max_length, work / "export")
    plot_tradeoff(measured, work / "export" / "tradeoff.png", f"{role} export: accuracy against CPU latency")
    lap("export")
    return seconds


def flow(params, name: str) -> dict[str, float]:
    """The lifecycle flow; seconds per step, from its MLflow step runs."""
    from mlflow.tracking import MlflowClient

    from graftline.flows.lifecycle import transfer

    params = params.model_copy(deep=True)
    params.registry.model_name, params.registry.promote_to, params.run.reuse_steps = name, "none", False
    parent = transfer(**params.groups()).mlflow_run_id
    client = MlflowClient()
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return {run.info.run_name: (run.info.end_time - run.info.start_time) / 1000 for run in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graftline-overhead-") as tmp:
        os.environ["GRAFTLINE_HOME"] = str(Path(tmp) / "home")
        from prefect import flow as prefect_flow

        from graftline.flows.params import TransferParams

        started = time.perf_counter()
        prefect_flow(lambda: None, name="warm-up")()
        cold_start = time.perf_counter() - started
        params = TransferParams()
        flow(params, "overhead-warm-up")
        plain(params, Path(tmp) / "plain-warm-up")
        walls: dict[str, list[float]] = {"flow": [], "plain": []}
        steps: dict[str, list[dict]] = {"flow": [], "plain": []}
        for round_ in range(args.rounds):
            for kind in ("flow", "plain"):
                started = time.perf_counter()
                steps[kind].append(
                    flow(params, f"overhead-{round_}")
                    if kind == "flow"
                    else plain(params, Path(tmp) / f"plain-{round_}")
                )
                walls[kind].append(time.perf_counter() - started)
                print(f"round {round_ + 1} {kind}: {walls[kind][-1]:.1f} s", file=sys.stderr, flush=True)
    # The median of per-round ratios: one disturbed run (this kind of machine has them) moves a mean.
    ratios = [f / p for f, p in zip(walls["flow"], walls["plain"], strict=True)]
    flow_s, plain_s = statistics.median(walls["flow"]), statistics.median(walls["plain"])
    names = list(dict.fromkeys([*steps["plain"][0], *steps["flow"][0]]))
    per_step = {
        name: {kind: statistics.mean(r.get(name, 0.0) for r in steps[kind]) for kind in steps} for name in names
    }
    # The training steps' differences are within run-to-run noise; what the flow adds around them is
    # not: its wall time outside its step runs, and the other steps' differences.
    training = ("finetune", "distill")
    outside = statistics.median(
        wall - sum(r.values()) for wall, r in zip(walls["flow"], steps["flow"], strict=True)
    ) + sum(v["flow"] - v["plain"] for name, v in per_step.items() if name not in training)
    report = {
        "rounds": args.rounds,
        "flow_seconds": walls["flow"],
        "plain_seconds": walls["plain"],
        "per_step": per_step,
        "overhead": statistics.median(ratios) - 1,
        "round_ratios": ratios,
        "outside_training_seconds": outside,
        "prefect_cold_start_seconds": cold_start,
    }
    out = Path(__file__).parent / "results" / "overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("| step | flow s (step run) | plain s | difference s |\n|:--|--:|--:|--:|")
    for name, values in per_step.items():
        print(f"| {name} | {values['flow']:.2f} | {values['plain']:.2f} | {values['flow'] - values['plain']:+.2f} |")
    print(
        f"| **whole run (wall, median)** | {flow_s:.1f} ({', '.join(f'{t:.1f}' for t in walls['flow'])}) | "
        f"{plain_s:.1f} ({', '.join(f'{t:.1f}' for t in walls['plain'])}) | {flow_s - plain_s:+.1f} |"
    )
    print(
        f"overhead of orchestration and tracking: {report['overhead']:+.1%} (median of the rounds' ratios "
        f"{', '.join(f'{r:.3f}' for r in ratios)}), plus {cold_start:.1f} s once per process to start Prefect's "
        f"ephemeral API\noutside the training steps the flow adds {outside:.1f} s "
        f"({outside / plain_s:.1%} of the plain run): its time outside step runs and the other steps' differences"
    )


if __name__ == "__main__":
    main()
