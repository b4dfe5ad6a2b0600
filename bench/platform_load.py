"""Many people at once on one platform: N lifecycle runs submitted together, with promotions and
predictions beside them, on SQLite and on PostgreSQL.

For each store, `graftline up` starts the servers and a worker in a fresh folder (`--database` for
PostgreSQL: the URL given, or a throw-away server from the installed PostgreSQL programs), then:

1. `--runs` transfer runs are submitted through the Prefect API at the same moment, as that many
   people pressing Run in the UI (the embedded demo, one epoch, no student or export: the platform
   is measured, not the training);
2. while they run, `--promotions` promote runs (the newest candidate to staging) and `--predictions`
   `graftline predict` commands against the servers start as soon as a version exists;
3. once everything is final: every run completed; every transfer run registered exactly one
   version (its `prefect_flow_run_id` tag), no version twice; each alias has one holder and the
   history of each alias is one unbroken chain (each move starts where the previous one left it);
   nothing but models in the registry;
4. the servers' own logs are searched for errors: database locks, server errors (HTTP 5xx),
   tracebacks.

`--fault mlflow|prefect|worker` kills that process (SIGKILL, its whole process group for a server)
once the first version is registered, waits `--outage` seconds and runs `graftline up` again, which
starts it alone. Each run must then complete, or end failed or crashed and be finished by
`graftline resume`; nothing half-registered (every version's model files are there, no stage alias
without the history record of a promotion that passed its gates). The servers' logs then hold the
errors of the outage itself; the row counts them all.

Bounded: loopback only, a fixed number of runs, `--timeout` seconds per store. One row per store:
runs/hour from the first submission to the last run's end, and the server-side error counts.

    .venv/bin/python bench/platform_load.py                          # 8 runs, both stores
    .venv/bin/python bench/platform_load.py --runs 2 --stores sqlite # a rehearsal
Results are appended to bench/results/platform_load.json.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")
os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")  # the worker picks runs up within a second

MODEL = "load-demo"
# What the server logs say when they fail a request: a locked SQLite, a 5xx, a traceback.
PATTERNS = {
    "database locked": re.compile(r"database is locked", re.I),
    "server error (5xx)": re.compile(r"\" 5\d\d |HTTP/1\.\d\" 5\d\d|status[_ ]code[=: ]+5\d\d|Internal Server Error"),
    "traceback": re.compile(r"^Traceback \(most recent call last\)"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params_file(folder: Path, epochs: int, max_length: int) -> Path:
    import yaml

    path = folder / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"max_length": max_length},
                "finetune": {"epochs": epochs},
                "distill": {"enabled": False},
                "export": {"enabled": False},
                "registry": {"model_name": MODEL, "experiment": "load"},
            }
        )
    )
    return path


def submit(deployment: str, parameters: dict):
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=0)


def wait_final(ids: list, timeout: float) -> list:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(2)


def wait_for_a_version(platform, timeout: float = 1200) -> None:
    from mlflow.tracking import MlflowClient

    registry = MlflowClient(tracking_uri=platform.mlflow_url, registry_uri=platform.mlflow_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            registry.get_model_version_by_alias(MODEL, "candidate")
            return
        time.sleep(2)


def promotions(count: int, every: float, submitted: list) -> None:
    """`count` promote runs (the newest candidate to staging), one every `every` seconds."""
    for _ in range(count):
        submitted.append(submit("promote/promote", {"params": {"model_name": MODEL, "to": "staging",
                                                                 "experiment": "load"}}))  # fmt: skip
        time.sleep(every)


def predictions(platform, count: int, folder: Path, results: list) -> None:
    """`count` predict commands at once, as users would run them."""
    import pandas as pd

    texts = folder / "texts.csv"
    pd.DataFrame({"text": ["the order arrived broken", "great value, works well", "refund please"]}).to_csv(
        texts, index=False
    )
    env = {**os.environ, **platform.env()}
    graftline = str(Path(sys.executable).parent / "graftline")

    def one(i: int) -> None:
        out = folder / f"scored-{i}.csv"
        done = subprocess.run(
            [graftline, "predict", f"{MODEL}@candidate", "--input", str(texts), "--output", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        results.append((done.returncode, done.stderr.strip().splitlines()[-1:] if done.returncode else []))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def inject(fault: str, platform, outage: float, database: str | None) -> dict:
    """Kill `fault` (mlflow | prefect | worker), wait `outage` s, and start it again with `up`."""
    import signal

    from graftline.flows import servers

    pid = platform.pids[fault]
    if fault == "worker":
        os.kill(pid, signal.SIGKILL)  # the worker alone: the runs it started are its children
    else:
        os.killpg(pid, signal.SIGKILL)  # a server and its own workers
    servers._wait_gone([pid], 10.0)
    time.sleep(outage)
    started = time.monotonic()
    again = servers.up(Path(platform.home), database=database)
    restarted = sorted(name for name in again.pids if again.pids[name] != platform.pids[name])
    platform.pids.update(again.pids)
    return {"fault": fault, "outage_seconds": outage, "restarted": restarted,
            "restart_seconds": round(time.monotonic() - started, 1)}  # fmt: skip


def resume_unfinished(platform, runs: list) -> list:
    """`graftline resume <flow run>` for each run that did not complete: its exit status."""
    env = {**os.environ, **platform.env()}
    graftline = str(Path(sys.executable).parent / "graftline")
    done = []
    for run in runs:
        if run.state.is_completed():
            continue
        finished = subprocess.run([graftline, "resume", str(run.id)], env=env, capture_output=True, text=True,
                                  timeout=1800, cwd=Path(platform.home) / "flow-runs")  # fmt: skip
        done.append({"run": str(run.id), "state": run.state.type.value, "resume_exit": finished.returncode,
                     "last_line": (finished.stderr.strip().splitlines() or [""])[-1][:200]})  # fmt: skip
    return done


def check_registry(platform, transfer_runs: list, resumed: int) -> dict:
    """Every completed run registered one version, and each resumed run one more (under the flow
    run of its `graftline resume`); no flow run registered twice."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry.promotion import history

    registry = MlflowClient(tracking_uri=platform.mlflow_url, registry_uri=platform.mlflow_url)
    versions = registry.search_model_versions(f"name='{MODEL}'")
    by_run = [v.tags.get("prefect_flow_run_id") for v in versions]
    completed = {str(r.id) for r in transfer_runs if r.state.is_completed()}
    once = completed <= set(by_run) and len(set(by_run)) == len(by_run) == len(completed) + resumed
    records = history(registry, MODEL)
    chains_ok = True
    for alias in {r["alias"] for r in records}:
        moves = [r for r in records if r["alias"] == alias]
        chains_ok &= all(b["from_version"] == a["to_version"] for a, b in itertools.pairwise(moves))
        holder = registry.get_registered_model(MODEL).aliases.get(alias)
        chains_ok &= str(holder) == str(moves[-1]["to_version"])
    others = [m.name for m in registry.search_registered_models() if m.name != MODEL]
    without_files = []
    for version in versions:  # a version whose model files did not all arrive is half-registered
        with contextlib.suppress(Exception):
            if _has_model(platform.mlflow_url, version):
                continue
        without_files.append(version.version)
    moved_to = {(r["alias"], str(r["to_version"])) for r in records}
    unexplained = [f"{a}->v{v}" for a, v in registry.get_registered_model(MODEL).aliases.items()
                   if a != "candidate" and (a, str(v)) not in moved_to]  # fmt: skip
    return {
        "versions_without_model_files": without_files,
        "aliases_without_a_passed_promotion": unexplained,
        "versions": len(versions),
        "registered_exactly_once": once,
        "alias_history_consistent": chains_ok,
        "alias_moves": len(records),
        "other_registered_models": others,
    }


def _has_model(uri: str, version) -> bool:
    """The registered version's model files arrived: its MLmodel and its weights or pyfunc code."""
    import mlflow

    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve through the registry, not the call's tracking_uri
    mlflow.set_registry_uri(uri)
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}", dst_path=folder)
        files = {p.name for p in Path(path).rglob("*") if p.is_file()}
    return "MLmodel" in files and len(files) > 2


def server_errors(home: Path) -> dict:
    counts = {name: 0 for name in PATTERNS}
    examples = []
    for log in ("prefect.log", "mlflow.log"):
        path = home / "logs" / log
        for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
            for name, pattern in PATTERNS.items():
                if pattern.search(line):
                    counts[name] += 1
                    if len(examples) < 5:
                        examples.append(f"{log}: {line.strip()[:200]}")
    return {"counts": counts, "examples": examples}


def one_store(store: str, args, database: str | None) -> dict:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from graftline.flows import servers

    folder = Path(tempfile.mkdtemp(prefix=f"graftline-load-{store}-"))
    home = folder / "platform"
    started = time.monotonic()
    platform = servers.up(
        home,
        prefect_port=free_port(),
        mlflow_port=free_port(),
        params_file=params_file(folder, args.epochs, args.max_length),
        database=database,
    )
    up_seconds = time.monotonic() - started
    try:
        with temporary_settings({PREFECT_API_URL: platform.prefect_api_url}):
            t0 = time.monotonic()
            transfer = [submit("transfer/transfer", {}) for _ in range(args.runs)]
            wait_for_a_version(platform)  # then promotions and predictions join the runs still going
            fault = inject(args.fault, platform, args.outage, database) if args.fault else None
            predicted: list = []
            promote: list = []
            sides = [
                threading.Thread(target=predictions, args=(platform, args.predictions, folder, predicted)),
                # Prefect's settings live in a context variable, which a new thread does not inherit
                threading.Thread(
                    target=contextvars.copy_context().run,
                    args=(promotions, args.promotions, args.promotion_every, promote),
                ),
            ]
            for side in sides:
                side.start()
            runs = wait_final([r.id for r in transfer], args.timeout)
            wall = time.monotonic() - t0
            for side in sides:
                side.join(timeout=args.timeout)
            promoted = wait_final([r.id for r in promote], 300)
            resumed = resume_unfinished(platform, runs)
            ok = sum(r["resume_exit"] == 0 for r in resumed)
            registry = check_registry(platform, runs, ok)
    finally:
        servers.down(home)
    errors = server_errors(home)
    completed = sum(r.state.is_completed() for r in runs)
    return {
        "store": store,
        "runs": args.runs,
        "completed": completed,
        "states": sorted(r.state.type.value for r in runs),
        "promotions_completed": sum(r.state.is_completed() for r in promoted),
        "promotions": len(promoted),
        "predictions_ok": sum(code == 0 for code, _ in predicted),
        "predictions": len(predicted),
        "prediction_errors": [tail for code, tail in predicted if code][:3],
        "wall_seconds": round(wall, 1),
        "up_seconds": round(up_seconds, 1),
        "runs_per_hour": round(completed / wall * 3600, 1),
        "fault": fault,
        "resumed": resumed,
        **registry,
        "server_errors": errors["counts"],
        "server_error_examples": errors["examples"],
        "home": str(home),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="transfer runs submitted at once")
    parser.add_argument("--promotions", type=int, default=4)
    parser.add_argument("--predictions", type=int, default=4)
    parser.add_argument("--promotion-every", type=float, default=20.0, help="seconds between promote submissions")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--stores", nargs="*", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--database", default=None, help="postgresql://... (default: a throw-away local server)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per store before giving up")
    parser.add_argument("--fault", choices=["mlflow", "prefect", "worker"], default=None)
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the killed process stays down")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "platform_load.json")
    args = parser.parse_args()
    if not 1 <= args.runs <= 32:
        parser.error("--runs must be 1 to 32 (this is a bounded load test)")

    from graftline.flows import database

    rows = []
    for store in args.stores:
        if store == "sqlite":
            rows.append(one_store(store, args, None))
        elif args.database:
            rows.append(one_store(store, args, args.database))
        elif database.server_programs() is None:
            print("postgresql: skipped, no --database and no PostgreSQL programs installed", file=sys.stderr)
        else:
            with database.scratch_server() as url:
                rows.append(one_store(store, args, url))
        print(json.dumps(rows[-1], indent=1), flush=True)
        saved = json.loads(args.results.read_text()) if args.results.is_file() else []
        stamp = {"date": datetime.now(UTC).date().isoformat(), "cpus": os.cpu_count()}
        args.results.write_text(json.dumps(saved + [{**stamp, **rows[-1]}], indent=1))

    print()
    print("| store | runs completed | runs/hour | promotions | predictions | versions (each once) | "
          "alias history | database locked | 5xx | tracebacks |")  # fmt: skip
    print("|:--|--:|--:|--:|--:|:--|:--|--:|--:|--:|")
    for r in rows:
        e = r["server_errors"]
        print(f"| {r['store']} | {r['completed']}/{r['runs']} | {r['runs_per_hour']} | "
              f"{r['promotions_completed']}/{r['promotions']} | {r['predictions_ok']}/{r['predictions']} | "
              f"{r['versions']} ({'yes' if r['registered_exactly_once'] else 'NO'}) | "
              f"{'consistent' if r['alias_history_consistent'] else 'BROKEN'} | {e['database locked']} | "
              f"{e['server error (5xx)']} | {e['traceback']} |")  # fmt: skip


if __name__ == "__main__":
    main()
