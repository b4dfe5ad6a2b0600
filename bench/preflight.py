"""Seconds until a bad input is reported: each command (checks before any server starts) against
the same input handed straight to its flow (what the command line did before it checked first:
Prefect's temporary server starts, the flow begins, a step fails).

`graftline run` with bad training data or backbone; `predict`, `monitor`, `promote` and `rollback`
with bad files, unknown models and aliases, against a store this script writes (one registered
model with a `production` version and nothing to roll back; no training). Each fault runs in a fresh
process, as a user meets it: imports, and for the flow the server start-up, are part of the time.
Prints a table and the ratio (flow / command line).

    python bench/preflight.py [--repeat 1] [--only run|serving]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOW = """
import sys
from graftline.flows.cli.lifecycle import build_params
from graftline.flows.lifecycle import transfer
from graftline.tasks import environment
environment.apply_defaults()
params = build_params(None, {"data.train_path": sys.argv[1], "finetune.backbone": sys.argv[2]}, [], [])
try:
    transfer(**params.groups())
except Exception as error:
    print(type(error).__name__, error, file=sys.stderr)
    sys.exit(2)
"""


def write_bad_files(folder: Path) -> None:
    """good.csv, and one file per bad input: empty.csv, columns.csv (no `text`), corrupt.parquet."""
    (folder / "good.csv").write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    (folder / "empty.csv").write_text("text,label\n")
    (folder / "columns.csv").write_text("body,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    (folder / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")


def faults(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (training file, backbone): one bad input each."""
    good = folder / "good.csv"
    write_bad_files(folder)
    return {
        "missing file": (str(folder / "missing.csv"), "minilm-l6"),
        "empty file": (str(folder / "empty.csv"), "minilm-l6"),
        "missing column": (str(folder / "columns.csv"), "minilm-l6"),
        "corrupt Parquet": (str(folder / "corrupt.parquet"), "minilm-l6"),
        "unknown backbone": (str(good), "no-such-org/no-such-model"),
    }


SERVING_FLOW = """
import sys
from graftline.tasks import environment
environment.apply_defaults()
from graftline.flows.cli.registry import triggered_by
from graftline.flows.operations import promote, rollback
from graftline.flows.serving import monitor, predict
from graftline.tasks.settings import MonitorParams, PredictParams, PromoteParams
command, model, *rest = sys.argv[1:]
try:
    if command == "predict":
        predict(PredictParams(model=model, input_path=rest[0], output_path=rest[1]))
    elif command == "monitor":
        monitor(MonitorParams(model=model, input_path=rest[0]))
    elif command == "promote":
        promote(PromoteParams(model_name=model, to="production"), triggered_by=triggered_by("bench"))
    else:
        rollback(model, "staging", triggered_by=triggered_by("bench"))
except Exception as error:
    print(type(error).__name__, error, file=sys.stderr)
    sys.exit(2)
"""

REGISTER = """
import sys, mlflow
from mlflow.tracking import MlflowClient
from graftline.tasks.registry import tracking

class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input

tracking.configure("preflight")
with mlflow.start_run():
    mlflow.pyfunc.log_model(name="model", python_model=Constant(), registered_model_name=sys.argv[1])
MlflowClient().set_registered_model_alias(sys.argv[1], "production", "1")
"""


def serving_faults(folder: Path) -> dict[str, list[str]]:
    """name -> the command's arguments after `graftline`: one bad input each, for the store's model `known`."""
    write_bad_files(folder)
    good, out = str(folder / "good.csv"), str(folder / "out.csv")
    columns, empty, corrupt = (str(folder / n) for n in ("columns.csv", "empty.csv", "corrupt.parquet"))
    return {
        "predict: missing column": ["predict", "known@production", "--input", columns, "--output", out],
        "predict: empty file": ["predict", "known@production", "--input", empty, "--output", out],
        "predict: corrupt Parquet": ["predict", "known@production", "--input", corrupt, "--output", out],
        "predict: unknown model": ["predict", "unknown@production", "--input", good, "--output", out],
        "predict: unknown alias": ["predict", "known@nightly", "--input", good, "--output", out],
        "monitor: missing column": ["monitor", "known@production", "--input", columns],
        "promote: unknown model": ["promote", "unknown", "--to", "production"],
        "rollback: nothing to roll back": ["rollback", "known", "--alias", "staging"],
    }


def flow_arguments(args: list[str]) -> list[str]:
    """The same fault as the serving flow's own arguments (SERVING_FLOW)."""
    command, model = args[0], args[1]
    files = [args[i + 1] for i, a in enumerate(args) if a in ("--input", "--output")]
    return [command, model, *files]


def timed(command: list[str], home: Path) -> tuple[float, int, str]:
    env = {**os.environ, "GRAFTLINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - started, done.returncode, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per fault and path (median reported)")
    parser.add_argument("--only", choices=["run", "serving"], help="one family of faults (default: both)")
    args = parser.parse_args()
    rows = []

    def measure(name: str, cli: list[str], flow: list[str], home: Path) -> None:
        cli_runs = [timed(cli, home) for _ in range(args.repeat)]
        flow_runs = [timed(flow, home) for _ in range(args.repeat)]
        cli_s, flow_s = (statistics.median(r[0] for r in runs) for runs in (cli_runs, flow_runs))
        rows.append((name, cli_s, cli_runs[0][1], flow_s, flow_runs[0][1], cli_runs[0][2]))

    app = [sys.executable, "-m", "graftline.flows.cli.app"]
    with tempfile.TemporaryDirectory(prefix="graftline-preflight-") as tmp:
        folder = Path(tmp)
        if args.only != "serving":
            for name, (train, backbone) in faults(folder).items():
                run = [*app, "run", "--train", train, "--backbone", backbone]
                measure(f"run: {name}", run, [sys.executable, "-c", FLOW, train, backbone], folder / "home")
        if args.only != "run":
            store = folder / "store"
            subprocess.run([sys.executable, "-c", REGISTER, "known"], check=True, capture_output=True,
                           env={**os.environ, "GRAFTLINE_HOME": str(store)})  # fmt: skip
            for name, command in serving_faults(folder).items():
                flow = [sys.executable, "-c", SERVING_FLOW, *flow_arguments(command)]
                measure(name, [*app, *command], flow, store)
    print("| fault | the command (s) | exit | flow first (s) | exit | flow / command | message |")
    print("|---|---|---|---|---|---|---|")
    for name, cli_s, cli_code, flow_s, flow_code, message in rows:
        print(
            f"| {name} | {cli_s:.2f} | {cli_code} | {flow_s:.1f} | {flow_code} | {flow_s / cli_s:.1f}x | `{message}` |"
        )


if __name__ == "__main__":
    main()
