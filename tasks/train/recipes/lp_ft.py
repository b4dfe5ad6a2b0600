"""The lp-ft recipe: a linear probe first, then every weight from the probed head."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from graftline.tasks.engine.training import Auxiliary, TrainResult
from graftline.tasks.train.recipes.base import Job
from graftline.tasks.train.recipes.common import set_backbone_frozen
from graftline.tasks.train.recipes.supervised import Supervised


class ProbeThenTune(Supervised):
    """`strategy: lp-ft`: the head alone for `probe_epochs` at `probe_learning_rate`, then every weight
    from there, the backbone at `backbone_rate` of the learning rate (Kumar et al. 2022: fine-tuning
    from a trained head distorts the pretrained features less, which shows most out of domain). The
    better stage by validation macro-F1 is kept.

    Supports: what the supervised recipe supports; each stage checkpoints in its own folder (the
    probe's is `<checkpoints>-probe`), so a run killed in the second resumes without probing again.
    The fine-tuning stage's epochs are numbered after the probe's.
    Refuses: nothing of its own. An auxiliary loss (adaptation by mlm) is not mixed into either stage:
    its head is attached and warmed up, then dropped.
    """

    @classmethod
    def applies(cls, job: Job) -> bool:
        return job.params.strategy == "lp-ft"

    def train(self, auxiliary: Auxiliary | None = None) -> TrainResult:
        probe, probed = self._probe()
        tuned = self._tune(shift=len(probe.history))
        return self._better(probe, probed, tuned)

    def checkpoint_folders(self) -> list[Path | None]:
        return [probe_folder(self.job.io.checkpoint_dir), self.job.io.checkpoint_dir]

    def _probe(self) -> tuple[TrainResult, dict]:
        """The head alone; the probed weights kept, in case tuning does worse."""
        params, io = self.job.params, self.job.io
        set_backbone_frozen(self.classifier, True)
        config = replace(
            self.config,
            epochs=params.probe_epochs,
            learning_rate=params.probe_learning_rate,
            patience=params.probe_epochs,
        )
        probe = self._fit(config, probe_folder(io.checkpoint_dir))
        return probe, {k: v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def _tune(self, shift: int) -> TrainResult:
        """Every weight, its epochs reported after the probe's."""
        set_backbone_frozen(self.classifier, False)
        return self._fit(self.config, self.job.io.checkpoint_dir, shift=shift)

    def _better(self, probe: TrainResult, probed: dict, tuned: TrainResult) -> TrainResult:
        """One training record of both stages, its best epoch the better stage's (whose weights stay)."""
        shift = len(probe.history)
        history = probe.history + [replace(record, epoch=record.epoch + shift) for record in tuned.history]
        if tuned.best_val_macro_f1 < probe.best_val_macro_f1:
            self.classifier.load_state_dict(probed)  # fine-tuning made it worse on validation: keep the probe
            best_epoch, best_f1 = probe.best_epoch, probe.best_val_macro_f1
        else:
            best_epoch, best_f1 = tuned.best_epoch + shift, tuned.best_val_macro_f1
        return replace(
            tuned,
            history=history,
            best_epoch=best_epoch,
            best_val_macro_f1=best_f1,
            step_losses=probe.step_losses + tuned.step_losses,
            resumed_from_step=tuned.resumed_from_step
            if tuned.resumed_from_step is not None
            else probe.resumed_from_step,
        )


def probe_folder(checkpoint_dir: Path | None) -> Path | None:
    return None if checkpoint_dir is None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-probe")
