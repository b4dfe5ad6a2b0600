"""The supervised recipe: one training of a classification head on a pretrained backbone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from graftline.tasks import modality as modalities
from graftline.tasks.engine import backbones, distributed
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import Auxiliary, TrainResult, seed_everything, train
from graftline.tasks.train.recipes.base import Job, Recipe
from graftline.tasks.train.recipes.common import (
    apply_strategy,
    encode_split,
    plain_model,
    save_model,
)
from graftline.tasks.train.recipes.result import FinetuneResult


class Supervised(Recipe):
    """Fine-tune `params.backbone` on the training split, early-stopping on validation macro-F1.

    The strategy only changes the model's wrapping (common.apply_strategy): `full` trains every
    weight, `linear-probe` the head alone, `lora` low-rank adapters plus the head, merged before saving.
    The saved folder is a standard transformers checkpoint (safetensors) with the label names in its
    config.

    Supports: text and image backbones; a resumable checkpoint folder (`io.checkpoint_dir`: a killed
    run resumes where it stopped); reports for a search's pruner (`io.on_report`); running as one of
    several torchrun processes (the distributed recipe launches it; rank 0 saves); an auxiliary loss
    added to every step (the adaptation recipe's target MLM), and its steps for recipes built on it
    (lp_ft.py, private.py, adaptation.py).
    Refuses: what the backbone's modality cannot train with (LoRA on an image backbone).
    """

    @classmethod
    def applies(cls, job: Job) -> bool:
        return True

    def run(self) -> FinetuneResult:
        self.setup()
        return self.save(self.train())

    def setup(self) -> None:
        """The tokenizer, the classifier (its new head drawn from the run's seed), the encoded splits."""
        self._setup_model()
        self._setup_data()

    def train(self, auxiliary: Auxiliary | None = None) -> TrainResult:
        return self._fit(self.config, self.job.io.checkpoint_dir, auxiliary=auxiliary)

    def _fit(self, config, checkpoint_dir: Path | None, shift: int = 0, auxiliary: Auxiliary | None = None):
        """One training of the classifier on the encoded splits with `config`, checkpointing in
        `checkpoint_dir`; its epochs reported `shift` after an earlier stage's (lp_ft.py)."""
        io = self.job.io
        listeners = io.listeners()
        if shift and io.on_epoch:
            listeners["on_epoch"] = lambda record: io.on_epoch(replace(record, epoch=record.epoch + shift))
        pad_id = self.tokenizer.pad_token_id
        return train(
            self.classifier,
            self.train_split,
            self.val_split,
            config,
            pad_id,
            checkpoint_dir=checkpoint_dir,
            auxiliary=auxiliary,
            **listeners,
        )

    def save(self, training: TrainResult, cleared: Iterable[Path | None] = (), **more) -> FinetuneResult:
        """Save the model (rank 0 of several processes), then clear the checkpoints it supersedes:
        `cleared` (a recipe built on this one adds its own folders) and this recipe's. `more`: the
        result's other fields (self-training rounds, privacy spent)."""
        job, first = self.job, distributed.rank_and_size()[0] == 0
        classifier = plain_model(self.classifier, job.params)
        if first:
            save_model(classifier, self.tokenizer, job.out_dir)
        distributed.barrier()
        if job.io.checkpoint_dir is not None and first:
            for folder in [*cleared, *self.checkpoint_folders()]:
                Checkpoints(folder).clear()
        return FinetuneResult(
            model_dir=job.out_dir,
            labels=job.splits.labels,
            training=training,
            parameters=backbones.count_parameters(classifier),
            trainable_parameters=self.trainable,
            **more,
        )

    def checkpoint_folders(self) -> list[Path | None]:
        """The folders this recipe checkpoints in."""
        return [self.job.io.checkpoint_dir]

    def _setup_model(self) -> None:
        params, model = self.job.params, self.job.model
        self.tokenizer = backbones.load_tokenizer(params.backbone, model.trust_remote_code, model.image_size)
        seed_everything(model.seed)  # the new classification head is initialised from this seed
        labels = self.job.splits.labels
        classifier = backbones.load_classifier(params.backbone, labels, model.trust_remote_code, model.image_size)
        backbones.reinitialise_top_layers(classifier, params.reinit_layers)
        self.classifier = apply_strategy(classifier, params)
        self.trainable = backbones.count_parameters(self.classifier, trainable_only=True)

    def _setup_data(self) -> None:
        job = self.job
        labels, length, cache = job.splits.labels, job.model.max_length, job.io.cache_dir
        train_split = encode_split(self.tokenizer, job.splits.train, labels, length, cache)
        self.val_split = encode_split(self.tokenizer, job.splits.validation, labels, length, cache)
        modality = modalities.of_backbone(job.params.backbone)  # an image backbone's crops, flips and BatchNorm
        self.train_split = modality.prepare_training(
            self.classifier, train_split, job.params, job.model.seed, job.params.processes
        )
        self.config = job.params.train_config(job.model)
