"""Seconds until a bad input is reported: `graftline run` (pre-flight checks before any server
starts) against the same input handed straight to the lifecycle flow (what the command line did
before it checked first: Prefect's temporary server starts, the flow begins, its ingest step fails).

Each fault runs in a fresh process, as a user meets it: imports, and for the flow the server
start-up, are part of the time. Prints a table and the ratio (flow / command line).

    python bench/preflight.py [--repeat 1]
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


def faults(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (training file, backbone): one bad input each."""
    good = folder / "good.csv"
    good.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    (folder / "empty.csv").write_text("text,label\n")
    (folder / "columns.csv").write_text("body,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    (folder / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")
    return {
        "missing file": (str(folder / "missing.csv"), "minilm-l6"),
        "empty file": (str(folder / "empty.csv"), "minilm-l6"),
        "missing column": (str(folder / "columns.csv"), "minilm-l6"),
        "corrupt Parquet": (str(folder / "corrupt.parquet"), "minilm-l6"),
        "unknown backbone": (str(good), "no-such-org/no-such-model"),
    }


def timed(command: list[str], home: Path) -> tuple[float, int, str]:
    env = {**os.environ, "GRAFTLINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - started, done.returncode, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per fault and path (median reported)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="graftline-preflight-") as tmp:
        folder = Path(tmp)
        for name, (train, backbone) in faults(folder).items():
            cli = [sys.executable, "-m", "graftline.flows.cli.app", "run", "--train", train, "--backbone", backbone]
            flow = [sys.executable, "-c", FLOW, train, backbone]
            cli_runs = [timed(cli, folder / "home") for _ in range(args.repeat)]
            flow_runs = [timed(flow, folder / "home") for _ in range(args.repeat)]
            cli_s, flow_s = (statistics.median(r[0] for r in runs) for runs in (cli_runs, flow_runs))
            rows.append((name, cli_s, cli_runs[0][1], flow_s, flow_runs[0][1], cli_runs[0][2]))
    print("| fault | graftline run (s) | exit | flow first (s) | exit | flow / run | message |")
    print("|---|---|---|---|---|---|---|")
    for name, cli_s, cli_code, flow_s, flow_code, message in rows:
        print(
            f"| {name} | {cli_s:.2f} | {cli_code} | {flow_s:.1f} | {flow_code} | {flow_s / cli_s:.1f}x | `{message}` |"
        )


if __name__ == "__main__":
    main()
