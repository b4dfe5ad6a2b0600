"""Fine-tuning a sequence-classification head on a pretrained backbone.

Strategies:
- `full`: every weight trains.
- `linear-probe`: the backbone is frozen; only the head trains. For BERT-style models the head is
  the pooler plus the classifier, because `*ForSequenceClassification` classifies the pooled
  [CLS] state and sentence-embedding checkpoints never trained that pooler.
- `lora`: low-rank adapters (peft) on the attention projections, plus the head; the adapters are
  merged into the weights before saving, so the result is an ordinary checkpoint again.
- `lp-ft`: a linear probe first, then every weight from the probed head, the backbone at
  `backbone_rate` of the learning rate (Kumar et al. 2022: fine-tuning from a trained head distorts
  the pretrained features less, which shows most out of domain). The better stage by validation
  macro-F1 is kept.

Image backbones (engine/vision.py) train through the same function: their input preparer decodes
the images once, training batches are randomly cropped and flipped (`images` settings), and
BatchNorm statistics stay fixed at small batch sizes. LoRA, DP-SGD and target-domain adaptation are
text-only.
The saved folder is a standard transformers checkpoint (safetensors) with the label names in its
config, so anything that loads transformers models can use it.

With `adapt.method: mlm` the loss of every step is the source cross-entropy plus a weighted
masked-language-modelling loss on the target texts (`splits.targets`; engine/mlm.py), after a short
warm-up of the new MLM head; the head is dropped before saving. With `self-training` (or
`mlm+self-training`) the source model is followed by rounds of confident, class-balanced
pseudo-labels on the target texts (tasks/train/self_training.py). Epochs and rounds are chosen by the
source validation split: target labels are never read.

With `privacy.enabled` the training is DP-SGD within (epsilon, delta) instead (engine/private.py),
and the result says what it spent.

With `processes` > 1 the same function runs data-parallel in that many torchrun processes (one per
GPU, or gloo CPU processes); with a checkpoint folder (`TrainingIO`) a killed run resumes where it
stopped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

from graftline.tasks.data.splits import Splits, encode_labels
from graftline.tasks.engine import backbones, distributed, mlm, private
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import TrainingIO, TrainResult, encode, resolve_device, seed_everything, train
from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import AdaptParams, FinetuneParams, ModelParams
from graftline.tasks.train.self_training import SelfTrainingResult, self_train


@dataclass
class FinetuneResult:
    model_dir: Path
    labels: list[str]
    training: TrainResult  # the source model's training (with the MLM loss when adapting by mlm)
    parameters: int
    trainable_parameters: int
    self_training: SelfTrainingResult | None = None  # the pseudo-label rounds, when adapting by self-training
    privacy: private.PrivacySpent | None = None  # the DP budget spent, when trained privately

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


def finetune(
    splits: Splits,
    params: FinetuneParams,
    model: ModelParams,
    out_dir: Path,
    io: TrainingIO = TrainingIO(),
    adapt: AdaptParams = AdaptParams(),
    source_dir: Path | None = None,
) -> FinetuneResult:
    """Fine-tune `params.backbone` on `splits.train`, early-stopping on `splits.validation`, adapting to
    the target texts as `adapt` says. With self-training and `source_dir`, the source model (before
    the rounds: what `adapt.method: none` would have trained) is saved there too, for comparison."""
    if adapt.method != "none" and params.processes > 1:
        raise GraftlineError(f"adapt.method {adapt.method!r} trains in one process; set finetune.processes=1")
    if params.processes > 1 and distributed.rank_and_size()[1] == 1:
        args = (splits, params, model, out_dir, io.unheard())
        result = distributed.launch(finetune, args, params.processes)
        if io.on_epoch:  # the processes cannot reach the caller's tracking run; replay their epochs here
            for record in result.training.history:
                io.on_epoch(record)
        return result
    labels = splits.labels
    image = backbones.kind_of(params.backbone) == "image"
    if image:
        _require_image_strategy(params, adapt)
    tokenizer = backbones.load_tokenizer(params.backbone, model.trust_remote_code, model.image_size)
    seed_everything(model.seed)  # the new classification head is initialised from this seed
    classifier = backbones.load_classifier(params.backbone, labels, model.trust_remote_code, model.image_size)
    backbones.reinitialise_top_layers(classifier, params.reinit_layers)
    classifier = apply_strategy(classifier, params)
    trainable = backbones.count_parameters(classifier, trainable_only=True)

    train_split = encode_split(tokenizer, splits.train, labels, model.max_length, io.cache_dir)
    val_split = encode_split(tokenizer, splits.validation, labels, model.max_length, io.cache_dir)
    if image:
        train_split = train_split.augmented(augmentation(params.images, model.seed))
        classifier.freeze_batchnorm(params.images.freezes_batchnorm(params.batch_size, params.processes))
    config = params.train_config(model)
    if params.privacy.enabled:
        if adapt.method != "none":
            raise GraftlineError(f"adapt.method {adapt.method!r} is not available with finetune.privacy")
        dp = params.privacy
        result, spent = private.train_private(
            classifier,
            train_split,
            val_split,
            config,
            tokenizer.pad_token_id,
            dp.epsilon,
            dp.delta or 1 / len(train_split),
            dp.max_grad_norm,
            dp.logical_batch_size,
            on_epoch=io.on_epoch,
        )
        save_model(classifier, tokenizer, out_dir)
        parameters = backbones.count_parameters(classifier)
        return FinetuneResult(out_dir, labels, result, parameters, trainable, privacy=spent)
    target = _encode_target(tokenizer, splits, adapt, model, io)
    objective = _target_mlm(classifier, tokenizer, target, adapt, model, config, io)
    if params.strategy == "lp-ft":
        result = _probe_then_tune(classifier, train_split, val_split, config, tokenizer.pad_token_id, params, io)
    else:
        result = train(
            classifier,
            train_split,
            val_split,
            config,
            tokenizer.pad_token_id,
            checkpoint_dir=io.checkpoint_dir,
            auxiliary=objective,
            **io.listeners(),
        )
    mlm.detach(classifier)  # the saved model is a plain classifier
    rounds = None
    if adapt.self_trains:
        if source_dir is not None and distributed.rank_and_size()[0] == 0:
            source = copy.deepcopy(classifier)  # saving moves a model to the CPU; the rounds go on where they are
            save_model(source.merge_and_unload() if params.strategy == "lora" else source, tokenizer, source_dir)
        rounds = self_train(
            classifier,
            train_split,
            val_split,
            target,
            labels,
            adapt.self_training(),
            config,
            tokenizer.pad_token_id,
            result.best_val_macro_f1,
            checkpoint_dir=lambda number: _round_folder(io.checkpoint_dir, number),
            on_epoch=io.on_epoch,
            epochs_before=len(result.history),
            on_progress=io.on_progress,
        )

    if params.strategy == "lora":
        classifier = classifier.merge_and_unload()  # plain weights again: exports and loads like any checkpoint
    if distributed.rank_and_size()[0] == 0:
        save_model(classifier, tokenizer, out_dir)
    distributed.barrier()
    if io.checkpoint_dir is not None and distributed.rank_and_size()[0] == 0:
        for number in range(adapt.rounds if adapt.self_trains else 0, 0, -1):
            Checkpoints(_round_folder(io.checkpoint_dir, number)).clear()
        Checkpoints(_probe_folder(io.checkpoint_dir)).clear()
        Checkpoints(io.checkpoint_dir).clear()  # the saved model supersedes them
    return FinetuneResult(
        model_dir=out_dir,
        labels=labels,
        training=result,
        parameters=backbones.count_parameters(classifier),
        trainable_parameters=trainable,
        self_training=rounds,
    )


def _encode_target(tokenizer, splits: Splits, adapt: AdaptParams, model: ModelParams, io: TrainingIO):
    """The target texts, tokenised (labels unknown: zeros); None without adaptation."""
    if adapt.method == "none":
        return None
    texts = splits.target_texts()
    if not texts:
        raise GraftlineError(
            f"adapt.method {adapt.method!r} needs target texts: data.target_sets holds none that are not blank"
        )
    return encode(tokenizer, texts, [0] * len(texts), model.max_length, io.cache_dir)


def _probe_then_tune(classifier, train_split, val_split, config, pad_id, params: FinetuneParams, io: TrainingIO):
    """lp-ft: the head alone for `probe_epochs` at `probe_learning_rate`, then every weight from there.
    Each stage checkpoints in its own folder, so a run killed in the second resumes without probing
    again. The fine-tuning stage's epochs are numbered after the probe's."""
    set_backbone_frozen(classifier, True)
    probe_config = replace(
        config, epochs=params.probe_epochs, learning_rate=params.probe_learning_rate, patience=params.probe_epochs
    )
    probe_dir = _probe_folder(io.checkpoint_dir)
    probe = train(classifier, train_split, val_split, probe_config, pad_id, checkpoint_dir=probe_dir, **io.listeners())
    probed = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    set_backbone_frozen(classifier, False)
    shift = len(probe.history)
    listeners = io.listeners() | {
        "on_epoch": (lambda record: io.on_epoch(replace(record, epoch=record.epoch + shift))) if io.on_epoch else None
    }
    tuned = train(classifier, train_split, val_split, config, pad_id, checkpoint_dir=io.checkpoint_dir, **listeners)
    history = probe.history + [replace(record, epoch=record.epoch + shift) for record in tuned.history]
    if tuned.best_val_macro_f1 < probe.best_val_macro_f1:
        classifier.load_state_dict(probed)  # fine-tuning made it worse on validation: keep the probe
        best_epoch, best_f1 = probe.best_epoch, probe.best_val_macro_f1
    else:
        best_epoch, best_f1 = tuned.best_epoch + shift, tuned.best_val_macro_f1
    return replace(
        tuned,
        history=history,
        best_epoch=best_epoch,
        best_val_macro_f1=best_f1,
        step_losses=probe.step_losses + tuned.step_losses,
        resumed_from_step=tuned.resumed_from_step if tuned.resumed_from_step is not None else probe.resumed_from_step,
    )


def _probe_folder(checkpoint_dir: Path | None) -> Path | None:
    return None if checkpoint_dir is None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-probe")


def set_backbone_frozen(classifier, frozen: bool) -> None:
    """Freeze (or unfreeze) everything but the head: for a text model the head is the pooler and the
    classifier (see `apply_strategy`)."""
    if hasattr(classifier, "freeze_backbone"):
        classifier.freeze_backbone(frozen)
        return
    prefix = classifier.base_model_prefix + "."
    for name, param in classifier.named_parameters():
        param.requires_grad = not frozen or not name.startswith(prefix) or ".pooler." in name


def augmentation(images, seed: int):
    """The training crops and flips of the `images` settings (engine/image_inputs.py)."""
    from graftline.tasks.engine.image_inputs import Augmentation

    return Augmentation(seed, images.crop_scale_min, images.flip)


def _require_image_strategy(params: FinetuneParams, adapt: AdaptParams) -> None:
    unsupported = [
        setting
        for setting, used in (
            ("strategy lora", params.strategy == "lora"),
            ("finetune.privacy", params.privacy.enabled),
            (f"adapt.method {adapt.method}", adapt.method != "none"),
        )
        if used
    ]
    if unsupported:
        raise GraftlineError(
            f"backbone {params.backbone!r} is an image backbone; {', '.join(unsupported)} train text models only"
        )


def _round_folder(checkpoint_dir: Path | None, number: int) -> Path | None:
    """Self-training round `number`'s checkpoints, beside the source training's."""
    return None if checkpoint_dir is None else checkpoint_dir.with_name(f"{checkpoint_dir.name}-round-{number}")


def _target_mlm(classifier, tokenizer, target, adapt: AdaptParams, model: ModelParams, config, io):
    """The MLM objective on the target texts, its head attached and warmed up; None without it.
    A run resuming from a checkpoint skips the warm-up: the checkpoint holds the warmed head."""
    if not adapt.uses_mlm:
        return None
    if tokenizer.mask_token_id is None:
        raise GraftlineError(
            f"backbone {tokenizer.name_or_path!r}: its tokenizer has no mask token; mlm cannot adapt it"
        )
    objective = mlm.TargetMlm(target, tokenizer, adapt.mlm_weight, adapt.mask_probability, model.seed)
    mlm.attach(classifier)
    resuming = io.checkpoint_dir is not None and Checkpoints(io.checkpoint_dir).latest() is not None
    if adapt.head_warmup_steps and not resuming:
        seed_everything(model.seed)
        device = resolve_device(model.device)
        mlm.warm_up(classifier, objective, adapt.head_warmup_steps, config.batch_size, device)
    return objective


def apply_strategy(model, params: FinetuneParams):
    """The model to train: `model` with what the strategy keeps fixed frozen, or wrapped in LoRA adapters."""
    if params.strategy in ("full", "lp-ft"):  # lp-ft freezes and unfreezes as it goes
        return model
    if params.strategy == "lora":
        return _with_lora(model, params)
    if params.strategy != "linear-probe":
        raise ValueError(f"unknown strategy {params.strategy!r}")
    set_backbone_frozen(model, True)
    return model


def _with_lora(model, params: FinetuneParams):
    """LoRA on the attention query/value projections (peft's per-architecture default). The head
    trains in full, and so does a BERT pooler (sentence-embedding checkpoints never trained it)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    heads = [
        name
        for name in ("classifier", "score", "pooler")
        if hasattr(model, name) or hasattr(getattr(model, model.base_model_prefix, None), name)
    ]
    config = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        modules_to_save=heads,
    )
    return get_peft_model(model, config)


def encode_split(tokenizer, split, labels: list[str], max_length: int, cache_dir: Path | None = None):
    ids = encode_labels(split.frame["label"], labels, split.name)
    return encode(tokenizer, split.inputs, ids, max_length, cache_dir)


def save_model(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
