"""The adaptation recipe: the source model trained with the target texts in view, then self-training."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

from graftline.tasks.engine import distributed, mlm
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import EncodedSplit, TrainResult, encode, resolve_device, seed_everything
from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import AdaptParams
from graftline.tasks.train.recipes.base import Job, Recipe, Recipes
from graftline.tasks.train.recipes.common import plain_model, save_model
from graftline.tasks.train.recipes.result import FinetuneResult
from graftline.tasks.train.recipes.supervised import Supervised
from graftline.tasks.train.self_training import SelfTrainingResult, self_train


class Adaptation(Recipe):
    """`adapt.method` other than none: adapt to the unlabeled target texts (`splits.targets`).

    The source model is trained by the recipe that would train it without adaptation (supervised or
    lp-ft), whose model, data and saving this recipe uses. With `mlm` every step's loss is the source
    cross-entropy plus a weighted masked-language-modelling loss on the target texts (engine/mlm.py),
    after a short warm-up of the new MLM head; the head is dropped before saving. With
    `self-training` (or `mlm+self-training`) the source model is followed by rounds of confident,
    class-balanced hard pseudo-labels on the target texts, with `self-distillation` (what `auto`
    runs) by rounds on every target text with the model's class-aligned predicted distribution as
    a soft label (tasks/train/self_training.py). A label-free guard keeps a round only while the
    source validation split holds and the source model's confident target predictions stand; else
    the source model is what is saved. With `job.source_dir`, the source model (before the rounds)
    is saved there too, for comparison. Epochs and rounds are chosen by the source validation
    split: target labels are never read.

    Supports: text backbones, strategies full, linear-probe, lora and lp-ft; resumable checkpoints
    (round r's in `<checkpoints>-round-r`; a resumed run skips the MLM head's warm-up, which the
    checkpoint holds).
    Refuses: an image backbone; a backbone whose tokenizer has no mask token (mlm); data without target
    texts; and (the private and distributed recipes refuse it) privacy and several processes.
    """

    def __init__(self, job: Job, recipes: Recipes) -> None:
        super().__init__(job, recipes)
        source = recipes.choose(replace(job, adapt=AdaptParams()))  # trains the source model
        assert isinstance(source, Supervised), f"{type(source).__name__} cannot train an adapted source model"
        self.source = source

    @classmethod
    def applies(cls, job: Job) -> bool:
        return job.adapt.method != "none"

    def run(self) -> FinetuneResult:
        source = self.source
        source.setup()
        target = self._encode_target()
        training = source.train(auxiliary=self._target_mlm(target))
        mlm.detach(source.classifier)  # the saved model is a plain classifier
        rounds = self._self_train(target, training) if self.job.adapt.self_trains else None
        return source.save(training, cleared=self._round_folders(), self_training=rounds)

    def _encode_target(self) -> EncodedSplit:
        """The target texts, tokenised (labels unknown: zeros)."""
        job = self.job
        texts = job.splits.target_texts()
        if not texts:
            raise GraftlineError(
                f"adapt.method {job.adapt.method!r} needs target texts: data.target_sets holds none that are not blank"
            )
        return encode(self.source.tokenizer, texts, [0] * len(texts), job.model.max_length, job.io.cache_dir)

    def _target_mlm(self, target: EncodedSplit) -> mlm.TargetMlm | None:
        """The MLM objective on the target texts, its head attached and warmed up; None without it.
        A run resuming from a checkpoint skips the warm-up: the checkpoint holds the warmed head."""
        adapt, model, io, source = self.job.adapt, self.job.model, self.job.io, self.source
        if not adapt.uses_mlm:
            return None
        tokenizer = source.tokenizer
        if tokenizer.mask_token_id is None:
            raise GraftlineError(
                f"backbone {tokenizer.name_or_path!r}: its tokenizer has no mask token; mlm cannot adapt it"
            )
        objective = mlm.TargetMlm(target, tokenizer, adapt.mlm_weight, adapt.mask_probability, model.seed)
        mlm.attach(source.classifier)
        resuming = io.checkpoint_dir is not None and Checkpoints(io.checkpoint_dir).latest() is not None
        if adapt.head_warmup_steps and not resuming:
            seed_everything(model.seed)
            device = resolve_device(model.device)
            mlm.warm_up(source.classifier, objective, adapt.head_warmup_steps, source.config.batch_size, device)
        return objective

    def _self_train(self, target: EncodedSplit, training: TrainResult) -> SelfTrainingResult:
        """The pseudo-label rounds on the source model (the source saved first, when asked)."""
        job, source = self.job, self.source
        if job.source_dir is not None and distributed.rank_and_size()[0] == 0:
            # saving moves a model to the CPU; the rounds go on where they are
            save_model(plain_model(copy.deepcopy(source.classifier), job.params), source.tokenizer, job.source_dir)
        return self_train(
            source.classifier,
            source.train_split,
            source.val_split,
            target,
            job.splits.labels,
            job.adapt.self_training(),
            source.config,
            source.tokenizer.pad_token_id,
            training.best_val_macro_f1,
            checkpoint_dir=lambda number: round_folder(job.io.checkpoint_dir, number),
            on_epoch=job.io.on_epoch,
            epochs_before=len(training.history),
            on_progress=job.io.on_progress,
        )

    def _round_folders(self) -> list[Path | None]:
        """The rounds' checkpoint folders, last round first."""
        rounds = self.job.adapt.rounds if self.job.adapt.self_trains else 0
        return [round_folder(self.job.io.checkpoint_dir, number) for number in range(rounds, 0, -1)]


def round_folder(checkpoint_dir: Path | None, number: int) -> Path | None:
    """Self-training round `number`'s checkpoints, beside the source training's."""
    return None if checkpoint_dir is None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-round-{number}")
