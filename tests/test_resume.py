"""A lifecycle killed in the middle of fine-tuning (SIGKILL, no chance to clean up) is resumed by
`graftline resume` and ends where an uninterrupted run ends: same loss trajectory, same scores.

Real processes: `graftline run` in its own process group, killed once a checkpoint exists; then
`graftline resume` in a new process; an uninterrupted run in a separate graftline home (its own
MLflow store, so nothing is reused) is the reference. All three talk to the suite's Prefect server,
as commands do where a team's server is configured (PREFECT_API_URL): a temporary server of their
own would cost each of them its start-up, which the command-line tests measure elsewhere."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import toy_frame

pytestmark = pytest.mark.slow
GRAFTLINE = str(Path(sys.executable).parent / "graftline")


def test_a_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_result(tiny_backbone, prefect_harness, tmp_path):
    train = tmp_path / "train.csv"
    toy_frame(90, 3).to_csv(train, index=False)
    config = tmp_path / "params.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"train_path": str(train), "eval_sets": {}},
                "model": {"max_length": 32},
                "finetune": {
                    "backbone": str(tiny_backbone),
                    "epochs": 3,
                    "patience": 3,
                    "batch_size": 4,
                    "learning_rate": 3e-3,
                    "checkpoint_every": 1,
                    "checkpoint_seconds": 0,
                },
                "distill": {"enabled": False},
                "export": {"enabled": False},
                "registry": {"model_name": "resumed", "promote_to": "none"},
            }
        )
    )

    killed_home = tmp_path / "killed"
    run = _start(["run", "--config", str(config)], killed_home)
    checkpoint = _wait_for_checkpoint(killed_home, run, min_step=20)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    step = int(checkpoint.read_text().split("-")[1])

    resumed = _start(["resume"], killed_home)
    reference = _start(["run", "--config", str(config)], tmp_path / "reference")  # alongside, in its own home
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resuming lifecycle run" in err
    _, reference_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, reference_err[-3000:]

    killed, fresh = _lifecycle(killed_home, resumed=True), _lifecycle(tmp_path / "reference", resumed=False)
    assert killed["old_status"] == "KILLED"
    assert int(killed["finetune"].data.tags["graftline.resumed_from_step"]) >= step
    assert killed["losses"] == fresh["losses"] and len(fresh["losses"]) > 80  # every step of all 3 epochs
    assert killed["finetune"].data.metrics["best_val_macro_f1"] == fresh["finetune"].data.metrics["best_val_macro_f1"]
    assert (
        killed["parent"].data.metrics["teacher_test_accuracy"] == fresh["parent"].data.metrics["teacher_test_accuracy"]
    )
    assert not list((killed_home / "checkpoints").glob("*/step-*"))  # the saved model superseded them


def _start(args: list[str], home: Path) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GRAFTLINE_ARTIFACT_ROOT")}
    env["GRAFTLINE_HOME"] = str(home)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the suite's server (prefect_harness)
    return subprocess.Popen(
        [GRAFTLINE, *args],
        env=env,
        cwd=home.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_checkpoint(home: Path, run: subprocess.Popen, min_step: int, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pointer in (home / "checkpoints").glob("finetune-*/latest"):
            try:
                if int(pointer.read_text().split("-")[1]) >= min_step:
                    return pointer
            except (OSError, ValueError, IndexError):
                pass  # being replaced right now
        if run.poll() is not None:
            pytest.fail(f"the run ended before a checkpoint at step {min_step}: {run.stderr.read()[-3000:]}")
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


def _lifecycle(home: Path, resumed: bool) -> dict:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("graftline").experiment_id
    parents = client.search_runs(
        [experiment], "tags.`graftline.flow` = 'transfer'", order_by=["attributes.start_time ASC"]
    )
    parent = parents[-1]
    assert parent.info.status == "FINISHED"
    if resumed:
        assert len(parents) == 2 and parent.data.tags["graftline.resumed_from"] == parents[0].info.run_id
    finetune = client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.run_name = 'finetune'"
    )[0]
    losses = [
        m.value
        for m in sorted(client.get_metric_history(finetune.info.run_id, "train_step_loss"), key=lambda m: m.step)
    ]
    return {"parent": parent, "finetune": finetune, "losses": losses, "old_status": parents[0].info.status}
