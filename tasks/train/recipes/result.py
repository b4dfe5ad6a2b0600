"""What a fine-tuning returns, whichever recipe trained it, and what the finetune step logs of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from graftline.tasks.engine.private import PrivacySpent
from graftline.tasks.engine.training import TrainResult
from graftline.tasks.registry import contract
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.train.self_training import SelfTrainingResult


@dataclass
class FinetuneResult:
    model_dir: Path
    labels: list[str]
    training: TrainResult  # the source model's training (with the MLM loss when adapting by mlm)
    parameters: int
    trainable_parameters: int
    self_training: SelfTrainingResult | None = None  # the rounds on the target texts (self-training, self-distillation)
    privacy: PrivacySpent | None = None  # the DP budget spent, when trained privately

    @property
    def final_training(self) -> TrainResult:
        """The training that produced the saved weights: the last kept self-training round, else the source's."""
        kept = self.self_training.training if self.self_training else None
        return kept or self.training

    def metrics(self) -> dict[str, float]:
        return {
            "best_epoch": self.training.best_epoch,
            "best_val_macro_f1": self.final_training.best_val_macro_f1,
            "source_val_macro_f1": self.training.best_val_macro_f1,
            "parameters": self.parameters,
            "trainable_parameters": self.trainable_parameters,
            **(self.self_training.metrics() if self.self_training else {}),
            **(self.privacy.metrics() if self.privacy else {}),
        }

    def privacy_tags(self) -> dict[str, str]:
        """The differential-privacy guarantee the model carries (the registry's tags), or none."""
        if self.privacy is None:
            return {}
        spent = self.privacy
        return {contract.PRIVACY_EPSILON: f"{spent.epsilon:.4g}", contract.PRIVACY_DELTA: f"{spent.delta:.4g}"}

    def adaptation_report(self) -> dict[str, float]:
        """Source-only against adapted on the target texts (self-training), for the lifecycle's summary."""
        return self.self_training.summary() if self.self_training else {}

    def logged(self) -> StepLog:
        """The finetune step's metrics, tags and files, and its summary lines: the teacher, each
        self-training round, the privacy spent."""
        training = self.training
        log = StepLog(
            metrics=self.metrics(),
            tags={"device": training.device, "stopped_early": str(training.stopped_early), **self.privacy_tags()},
            lines=[
                f"teacher: best validation macro-F1 {training.best_val_macro_f1:.4f} at epoch {training.best_epoch} "
                f"on {training.device}"
            ],
        )
        if self.self_training:
            log.dicts["self_training/rounds.json"] = [asdict(r) for r in self.self_training.rounds]
            log.tags["adaptation_decision"] = self.self_training.decision
            log.lines += [_round_line(r) for r in self.self_training.rounds]
            log.lines.append(f"adaptation: {self.self_training.decision}")
        if self.privacy:
            log.lines.append(_privacy_line(self.privacy))
        return log


def _round_line(r) -> str:
    return (
        f"self-training round {r.round}: {r.pseudo_labels} pseudo-labels {r.per_class} "
        f"({100 * r.confident_share:.0f}% of target texts confident, entropy {r.target_entropy:.3f}), "
        f"validation macro-F1 {r.val_macro_f1:.4f}, {100 * r.confident_flips:.1f}% confident target predictions "
        f"flipped: {'kept' if r.kept else 'discarded, rounds stop'}"
    )


def _privacy_line(spent: PrivacySpent) -> str:
    return (
        f"differential privacy: epsilon {spent.epsilon:.3g} spent (budget {spent.target_epsilon:.3g}) at delta "
        f"{spent.delta:.3g}, {spent.steps} private steps, noise x{spent.noise_multiplier:.3f}"
    )
