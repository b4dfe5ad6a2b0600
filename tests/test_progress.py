"""Progress while long work runs: the numbers a training loop reports, what a training step tells
Prefect and MLflow from them, and the terminal display (a rich console writing to a buffer stands in
for a terminal)."""

import io
import logging

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from graftline.flows.cli.display import live_progress, wanted
from graftline.flows.progress import TrainingMonitor
from graftline.tasks.engine.training import EpochRecord
from graftline.tasks.progress import TrainingProgress, activity, duration, watched


def news(step: int, losses=(), epoch: int = 1, steps: int = 5, before: int = 0) -> TrainingProgress:
    return TrainingProgress(epoch, 2, step, steps, seconds=float(step - before), rows=8 * (step - before),
                            losses=losses, steps_done_before=before)  # fmt: skip


def test_time_left_counts_this_epochs_remaining_steps_and_later_epochs_at_this_pace():
    assert news(2).eta_seconds == pytest.approx(3 + 5)  # 1 s a step: 3 left in epoch 1, 5 in epoch 2
    assert news(5, epoch=2).eta_seconds == 0
    assert news(3, before=3).eta_seconds is None  # resumed at step 3: no pace measured yet
    assert news(4, before=3).eta_seconds == pytest.approx(1 + 5)
    assert news(2).examples_per_second == 8
    assert (duration(None), duration(75.4), duration(3 * 3600 + 62)) == ("?", "1:15", "3:01:02")


def test_a_training_step_streams_losses_logs_each_epoch_and_publishes_its_progress(
    prefect_harness, mlflow_store, unique_name, caplog
):
    from prefect import flow
    from prefect.artifacts import Artifact

    logger = logging.getLogger("graftline-test-monitor")  # the step's run logger, where caplog hears it
    mlflow.set_experiment(unique_name)

    @flow
    def training_step():
        with mlflow.start_run():
            monitor = TrainingMonitor(unique_name, logger)
            for step in range(1, 6):
                monitor.on_progress(news(step, (0.5 + step, 0.6 + step) if step in (2, 5) else ()))
            monitor.in_flight.result()
            assert monitor.artifact is not None  # created at the first step, then at most every ARTIFACT_EVERY s
            monitor.on_epoch(EpochRecord(1, 0.25, 0.8, 0.75, 1e-4, 5.0, 8.0, 80.0, 0.1))
            monitor.close()
            return monitor, mlflow.active_run()

    with caplog.at_level(logging.INFO, logger.name):
        monitor, run = training_step()
    assert monitor.losses_logged == 4
    history = MlflowClient().get_metric_history(run.info.run_id, "train_step_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.5), (2, 2.6), (3, 5.5), (4, 5.6)]
    assert MlflowClient().get_metric_history(run.info.run_id, "val_macro_f1")[0].value == 0.75
    [line] = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert line == (
        f"{unique_name} epoch 1/2: train loss 0.2500, validation macro-F1 0.7500, 8 examples/s, 0:05 left at this pace"
    )
    artifact = Artifact.get(f"{unique_name}-progress")
    assert artifact.type == "progress" and float(artifact.data) == 100.0 and artifact.description.endswith("done")


def test_the_terminal_display_draws_activities_and_keeps_log_lines_above_them():
    assert not wanted(io.StringIO())  # not a terminal: nothing is drawn
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    assert not watched()
    with live_progress(console) as display:
        assert watched()
        with activity("step finetune"), activity("finetune", total=10) as training:
            training.update(4, detail="epoch 1/2 step 4/10 loss 0.6931")
            display.bars.refresh()
            logging.getLogger("prefect.graftline-test").warning("a log line while the bars are drawn")
        assert display.tasks == {}  # finished activities leave the display
    assert not watched()
    drawn = out.getvalue()
    assert "step finetune" in drawn and "epoch 1/2 step 4/10 loss 0.6931" in drawn
    assert "a log line while the bars are drawn" in drawn  # Prefect's handler wrote through the display
