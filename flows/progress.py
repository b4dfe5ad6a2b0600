"""What a training step shows while it trains, wherever someone may be watching.

`TrainingMonitor` hears the training loop (tasks/engine/training.py: every optimizer step, with the
step losses every few steps, and every finished epoch) and tells:

- the step's Prefect log: one line per epoch (epoch k/n, train loss, validation macro-F1,
  examples/s, time left);
- the Prefect UI: a progress artifact of the task run (`<step>-progress`), updated from a background
  thread at most every `ARTIFACT_EVERY` seconds and when training ends, so a deployment run shows
  how far it is;
- MLflow: the loss of every optimizer step, sent from the same background thread as it is read
  (every `PROGRESS_EVERY` steps), so the MLflow UI's charts move during an epoch; the epoch metrics.
  Not through MLflow's own asynchronous logging: its writer thread polls its queue once a second,
  and ending a run that used it waited for that poll (about 0.5 s per training step measured);
- the terminal, when `graftline` draws a live display (tasks/progress.py's listeners).

No report adds a host sync per step: the loop reads its losses off the device every few steps only.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from prefect import get_run_logger

from graftline.tasks import progress
from graftline.tasks.engine.training import EpochRecord
from graftline.tasks.progress import TrainingProgress, duration
from graftline.tasks.registry import tracking

ARTIFACT_EVERY = 10.0  # seconds between progress artifact updates: each is a call to the Prefect API


class TrainingMonitor:
    """The listeners of one training step (`finetune`, `distill`), for `TrainingIO`; close it when the
    step's training is over."""

    def __init__(self, step: str, logger=None) -> None:
        self.step, self.logger = step, logger or get_run_logger()
        self.latest: TrainingProgress | None = None
        self.loss: float | None = None  # the mean loss of the steps last read
        self.losses_logged = 0
        self.artifact, self.artifact_at, self.in_flight = None, 0.0, None
        self.publisher = ThreadPoolExecutor(1, thread_name_prefix=f"{step}-progress")  # API calls off the loop
        self.run_id: str | None = None  # the step's MLflow run, read on the training thread
        self.shown: progress.Activity | None = None
        self.closing = ExitStack()

    def on_progress(self, news: TrainingProgress) -> None:
        self.latest = news
        if news.losses:
            self.loss = sum(news.losses) / len(news.losses)
            self._send_losses(news.losses, self.losses_logged + 1)
            self.losses_logged += len(news.losses)
        if progress.watched():
            if self.shown is None:
                self.shown = self.closing.enter_context(progress.activity(self.step, news.steps))
            self.shown.update(news.step, news.steps, self.describe(news))
        if time.monotonic() - self.artifact_at >= ARTIFACT_EVERY:
            self._publish(news)

    def on_epoch(self, record: EpochRecord) -> None:
        tracking.log_epoch(record)
        news = self.latest
        left = f", {duration(news.eta_seconds)} left at this pace" if news and news.epoch < news.epochs else ""
        of = f"/{news.epochs}" if news else ""
        self.logger.info(
            "%s epoch %d%s: train loss %.4f, validation macro-F1 %.4f, %.0f examples/s%s",
            self.step,
            record.epoch,
            of,
            record.train_loss,
            record.val_macro_f1,
            record.examples_per_second,
            left,
        )

    def describe(self, news: TrainingProgress) -> str:
        loss = f" loss {self.loss:.4f}" if self.loss is not None else ""
        return (
            f"epoch {news.epoch}/{news.epochs} step {news.step}/{news.steps}{loss} "
            f"{news.examples_per_second:.0f} ex/s ETA {duration(news.eta_seconds)}"
        )

    def close(self) -> None:
        """The last word in the UI, and every step loss written before the step's run ends."""
        if self.latest is not None:
            self._publish(self.latest, done=True)
        self.publisher.shutdown(wait=True)
        self.closing.close()

    def _send_losses(self, losses: tuple[float, ...], first: int) -> None:
        """Queue the step losses for the publisher thread; every one is sent, in order."""
        import mlflow

        if self.run_id is None:
            active = mlflow.active_run()
            if active is None:
                return  # training outside a tracked step: nothing to stream to
            self.run_id = active.info.run_id
        self.publisher.submit(self._log_losses, losses, first, self.run_id)

    def _log_losses(self, losses: tuple[float, ...], first: int, run_id: str) -> None:
        try:
            tracking.log_step_losses(losses, first=first, run_id=run_id)
        except Exception as error:  # noqa: BLE001  -- a chart is never worth failing the training for
            self.logger.warning("step losses %d-%d not logged to MLflow: %s", first, first + len(losses) - 1, error)

    def _publish(self, news: TrainingProgress, done: bool = False) -> None:
        """Create or update the task run's progress artifact (0-100 over all epochs' steps), in the
        background; while one call is in flight, later news waits for the next turn (the last is sent)."""
        if not done and self.in_flight is not None and not self.in_flight.done():
            return
        total = news.epochs * news.steps
        share = 100.0 if done else 100.0 * ((news.epoch - 1) * news.steps + news.step) / total if total else 0.0
        description = f"{self.step}: " + ("done" if done else self.describe(news))
        self.artifact_at = time.monotonic()
        # the task run's context travels with the call, so the artifact belongs to the task run
        self.in_flight = self.publisher.submit(contextvars.copy_context().run, self._send, share, description)

    def _send(self, share: float, description: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact is None:
                self.artifact = create_progress_artifact(share, key=f"{self.step}-progress", description=description)
            else:
                update_progress_artifact(self.artifact, share, description=description)
        except Exception as error:  # noqa: BLE001  -- a progress bar is never worth failing the training for
            self.logger.warning("progress artifact not updated: %s", error)
