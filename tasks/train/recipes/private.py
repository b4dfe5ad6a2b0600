"""The private recipe: DP-SGD fine-tuning within a privacy budget (engine/private.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from graftline.tasks.engine import private
from graftline.tasks.errors import GraftlineError
from graftline.tasks.train.recipes.base import Job
from graftline.tasks.train.recipes.result import FinetuneResult
from graftline.tasks.train.recipes.supervised import Supervised


class Private(Supervised):
    """`finetune.privacy.enabled`: the supervised recipe's model and data, trained by DP-SGD within
    (epsilon, delta) instead of by the engine's loop; the result says what it spent
    (`FinetuneResult.privacy`). The guarantee covers the training split (engine/private.py says what
    it does not cover).

    Trains with the private settings (`privacy.learning_rate`, `privacy.epochs`: the large-batch
    recipe) in place of the ordinary ones, which suit non-private steps.

    Supports: text backbones, strategies full and linear-probe (lp-ft trains every weight at once);
    the linear probe trains on frozen features computed once (engine/private.py), the fast option.
    Refuses: adaptation to target texts (here); an image backbone; and, in the settings already,
    LoRA, several processes, `torch.compile` and a search. It keeps no checkpoints: a crashed private
    training starts again (the accountant's history would have to be in them).
    """

    @classmethod
    def applies(cls, job: Job) -> bool:
        return job.params.privacy.enabled

    @classmethod
    def refuse(cls, job: Job) -> None:
        super().refuse(job)
        if job.adapt.method != "none":
            raise GraftlineError(f"adapt.method {job.adapt.method!r} is not available with finetune.privacy")

    def run(self) -> FinetuneResult:
        self.setup()
        dp = self.job.params.privacy
        rate, epochs = dp.recipe(self.job.params.strategy)
        config = replace(self.config, learning_rate=rate, epochs=epochs)
        training, spent = private.train_private(
            self.classifier,
            self.train_split,
            self.val_split,
            config,
            self.tokenizer.pad_token_id,
            dp.epsilon,
            dp.delta or 1 / len(self.train_split),
            dp.max_grad_norm,
            dp.logical_batch_size,
            on_epoch=self.job.io.on_epoch,
        )
        return self.save(training, privacy=spent)

    def checkpoint_folders(self) -> list[Path | None]:
        return []
