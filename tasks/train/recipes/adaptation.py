"""The adaptation recipe: the source model trained with the target texts in view, then self-training."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from graftline.tasks.engine import distributed, mlm
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import EncodedSplit, TrainResult, encode, resolve_device, seed_everything
from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import AdaptParams
from graftline.tasks.train.recipes.base import Job, Recipe, Recipes
from graftline.tasks.train.recipes.common import plain_model, save_model
from graftline.tasks.train.recipes.result import FinetuneResult
from graftline.tasks.train.recipes.supervised import Supervised
from graftline.tasks.train.self_training import SelfTrainingResult, self_train, target_probabilities


class Adaptation(Recipe):
    """`adapt.method` other than none: adapt to the unlabeled target texts (`splits.targets`).

    The source model is trained by the recipe that would train it without adaptation (supervised or
    lp-ft), whose model, data and saving this recipe uses. With `mlm` every step's loss is the source
    cross-entropy plus a weighted masked-language-modelling loss on the target texts (engine/mlm.py),
    after a short warm-up of the new MLM head; the head is dropped before saving. With
    `self-training` (or `mlm+self-training`) the source model is followed by rounds of confident,
    class-balanced hard pseudo-labels on the target texts, with `self-distillation` (what `auto`
    runs) by rounds on every target text with the model's class-aligned predicted distribution as
    a soft label (tasks/train/self_training.py). With `adapt.teachers` above 1 (auto: 2) more source
    models, trained the same way with the next seeds, label the first round together with the source
    model (the mean of their distributions); the model adapted and saved is still the first one. A
    label-free guard keeps a round only while the source validation split holds and the teacher's
    confident target predictions stand; else the source model is what is saved. With
    `job.source_dir`, the source model (before the rounds) is saved there too, for comparison.
    Epochs and rounds are chosen by the source validation split: target labels are never read.

    Supports: text backbones, strategies full, linear-probe, lora and lp-ft; resumable checkpoints
    (round r's in `<checkpoints>-round-r`, the other teachers' in `<checkpoints>-teacher-n`; a
    resumed run skips the MLM head's warm-up, which the checkpoint holds).
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
        training = self._train_source(target)
        rounds = self._self_train(target, training) if self.job.adapt.self_trains else None
        return source.save(training, cleared=self._round_folders(), self_training=rounds)

    def _train_source(self, target: EncodedSplit) -> TrainResult:
        """The source model, trained (with the target MLM loss under mlm) into `source.classifier`."""
        training = self.source.train(auxiliary=self._target_mlm(target))
        mlm.detach(self.source.classifier)  # the saved model is a plain classifier
        return training

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
        started = time.perf_counter()
        teachers = self._other_teachers(target)
        teaching = time.perf_counter() - started
        rounds = self_train(
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
            teachers=teachers,
        )
        return replace(rounds, seconds=rounds.seconds + teaching)  # the other teachers are adaptation's cost too

    def _other_teachers(self, target: EncodedSplit) -> list[np.ndarray]:
        """The target probabilities of `adapt.teachers - 1` more source models (one in memory at a time;
        only their predictions on the target texts are used, the models are not saved)."""
        probabilities = []
        for number in range(1, self.job.adapt.teacher_count):
            teacher = self._train_teacher(number)
            probabilities.append(
                target_probabilities(teacher.classifier, target, teacher.config, teacher.tokenizer.pad_token_id)
            )
        return probabilities

    def _train_teacher(self, number: int) -> Supervised:
        """The `number`th other source model: trained as the source model was (without the target
        MLM loss: a teacher labels, it is not adapted), with the seed `number` after its seed, in its
        own checkpoint folder (a killed run resumes inside it; a finished one replays without
        training). Its epochs are not reported: they would interleave with the adapted model's curves."""
        job = self.job
        io = replace(job.io.unheard(), checkpoint_dir=teacher_folder(job.io.checkpoint_dir, number))
        other = replace(
            job, model=job.model.model_copy(update={"seed": job.model.seed + number}), io=io, source_dir=None
        )
        teacher = self.recipes.choose(replace(other, adapt=AdaptParams()))
        assert isinstance(teacher, Supervised), f"{type(teacher).__name__} cannot train a teacher"
        teacher.setup()
        teacher.train()
        return teacher

    def _round_folders(self) -> list[Path | None]:
        """The rounds' and the other teachers' checkpoint folders, cleared once the model is saved."""
        adapt, folder = self.job.adapt, self.job.io.checkpoint_dir
        rounds = adapt.rounds if adapt.self_trains else 0
        teachers = adapt.teacher_count if adapt.self_trains else 1
        return [round_folder(folder, number) for number in range(rounds, 0, -1)] + [
            teacher_folder(folder, number) for number in range(1, teachers)
        ]


def round_folder(checkpoint_dir: Path | None, number: int) -> Path | None:
    """Self-training round `number`'s checkpoints, beside the source training's."""
    return None if checkpoint_dir is None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-round-{number}")


def teacher_folder(checkpoint_dir: Path | None, number: int) -> Path | None:
    """The checkpoints of the `number`th other source model that labels the first round."""
    return None if checkpoint_dir is None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-teacher-{number}")
