"""Self-training on target-domain texts: the second half of `adapt.method: self-training`,
`mlm+self-training` and `self-distillation`.

After the source model is trained (on the source labels alone, or with the target MLM loss), each
round asks the current model for the target texts' labels and trains again *from the source model's
weights* on the source rows plus the target rows with those labels. Starting each round from the
source weights, not from the previous round's, keeps one round's mistakes from being trained into
the next twice; the next round's labels still come from the better model. Two kinds of label:

- **hard** (`self-training`): the confident predictions only, balanced across classes, each a class id;
- **soft** (`self-distillation`): every target text, with the model's whole predicted distribution
  as its target (a noisy student: the labelling model predicts without dropout, the student trains
  with it), after *distribution alignment*: each distribution is multiplied by source prior / mean
  target prediction and renormalised, so the labels' class mix is the source's and a model leaning
  towards one class on the new domain does not teach that lean (Berthelot et al., ReMixMatch, ICLR
  2020). An uncertain text keeps an uncertain label instead of being trained on as if the model's
  guess were right; the soft round changes far fewer of the source model's confident predictions
  than a hard one. Neither kind has yet lifted the Amazon review pairs on average (BENCHMARKS.md).

Which pseudo-labels a round keeps (`select_pseudo_labels`):
- at most `pseudo_label_share` of the target texts, the most confident predictions first; a portion
  rather than a fixed confidence, because how sure a fine-tuned model is depends on its task and
  training (the demo's 4-class teacher gives no target text 0.9, so a fixed 0.9 labels nothing);
- with `class_balance`, that portion is split over the classes in the source's proportions, each
  class keeping its most confident predictions (class-balanced self-training, Zou et al., ECCV 2018:
  without it the easiest class floods the set and the model drifts towards it);
- every kept prediction must also reach `confidence_threshold` (0: no absolute floor), and
  `max_per_class` caps any class.

Model selection never reads target labels. Every round's training early-stops on the source
validation split, and the guard keeps a round only if both hold, otherwise the rounds stop and the
previous model (at worst the source model) stays:
- its source validation macro-F1 stays within `max_source_drop` of the source model's (it still
  solves the task it was taught), and
- it overturns at most `max_confident_flips` of the teacher's *confident* target predictions
  (top probability >= domain_gap.CONFIDENT). Those are the teacher's most reliable labels on the
  new domain; a round that flips many of them has drifted on the target, which the source
  validation split cannot see.

**Several teachers** (`adapt.teachers`): the first round's labels can come from the mean of several
source models' distributions, the one being adapted and others trained the same way with other
seeds, instead of from the source model alone. On these small source sets the seed moves a model's
target accuracy by up to 4 points (BENCHMARKS.md); an ensemble of two is steadier and on average
better than either, and one round of distillation folds it back into one model of the same size
(Hinton et al. 2015; ensemble distillation as in Born-Again Networks, Furlanello et al., ICML 2018).
The teacher is "the source model" below when there is one.
Each round also records label-free numbers on the target texts (the share of confident predictions,
the mean prediction entropy, the flips), logged per round with the guard's decision and reason.

Written here rather than taken from a library: the maintained self-training implementations
(scikit-learn's `SelfTrainingClassifier`, skada) wrap estimators with `fit`/`predict_proba` and
retrain from scratch on each iteration; graftline's rounds must run through its own training loop
(length-grouped batches, checkpoints and exact resume, bf16, early stopping on the source split).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from graftline.tasks.engine.training import (
    UNLABELED,
    EncodedSplit,
    EpochRecord,
    TrainConfig,
    TrainResult,
    cross_entropy,
    predict_logits,
    train,
)
from graftline.tasks.evaluate.domain_gap import CONFIDENT, confident_share
from graftline.tasks.progress import TrainingProgress


@dataclass(frozen=True)
class PseudoLabels:
    """The target rows a round trains on, with the label the model gave each."""

    rows: np.ndarray  # indices into the target texts
    labels: np.ndarray  # label ids

    def __len__(self) -> int:
        return len(self.rows)

    def per_class(self, names: list[str]) -> dict[str, int]:
        return _per_class(self.labels, names)


def select_pseudo_labels(
    probabilities: np.ndarray,
    share: float,
    threshold: float = 0.0,
    prior: np.ndarray | None = None,
    max_per_class: int | None = None,
) -> PseudoLabels:
    """The rows of `probabilities` (rows x classes) a round trains on, most confident first within each class.

    A round labels up to `share` of the rows: with `prior` (the source's class distribution) class c
    keeps its `share x rows x prior[c]` most confident predictions (class-balanced: a per-class
    confidence cut-off at a fixed portion, as in Zou et al.'s CBST, so the cut-off adapts to how sure
    the model is of each class, and a class the model rarely predicts keeps its few rows without
    starving the others); without `prior`, the `share x rows` most confident predictions whatever their
    class. Every kept prediction must also reach the absolute `threshold`; `max_per_class` caps every class."""
    rows = len(probabilities)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    eligible = np.flatnonzero(confidence >= threshold)
    eligible = eligible[np.lexsort((eligible, -confidence[eligible]))]  # most confident first; ties by row
    budget = math.floor(share * rows + 1e-9)
    if prior is None:
        quotas = np.full(probabilities.shape[1], budget)
        eligible = eligible[:budget]
    else:
        prior = np.asarray(prior, dtype=np.float64) / np.sum(prior)
        quotas = np.floor(budget * prior + 1e-9).astype(np.int64)
    if max_per_class is not None:
        quotas = np.minimum(quotas, max_per_class)
    kept = [eligible[predicted[eligible] == c][: quotas[c]] for c in range(probabilities.shape[1])]
    kept = np.concatenate(kept).astype(np.int64)
    return PseudoLabels(kept, predicted[kept])


def aligned(probabilities: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """Soft labels: each row of `probabilities` times prior / (mean predicted distribution), renormalised
    (distribution alignment); unchanged without `prior`."""
    if prior is None or not len(probabilities):
        return probabilities.astype(np.float32)
    prior = np.asarray(prior, dtype=np.float64) / np.sum(prior)
    scaled = probabilities * (prior / np.clip(probabilities.mean(axis=0), 1e-12, None))
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def soft_target_loss(outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, cross-entropy with the label on a source row and with the soft label on a target row
    (label UNLABELED), averaged over the batch's rows: a target text weighs what a source text does."""
    log_p = torch.log_softmax(outputs.logits.float(), dim=-1)
    labels = batch["labels"]
    unlabeled = labels == UNLABELED
    hard = -log_p.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    soft = -(batch["soft_targets"].float() * log_p).sum(dim=-1)
    return torch.where(unlabeled, soft, hard).mean()


def confident_flips(before: np.ndarray, after: np.ndarray) -> float:
    """Of the rows `before` (probabilities) predicts with confidence >= CONFIDENT, the share whose
    predicted class `after` differs (0 when there are none)."""
    sure = before.max(axis=1) >= CONFIDENT
    if not sure.any():
        return 0.0
    return float((before[sure].argmax(axis=1) != after[sure].argmax(axis=1)).mean())


def prediction_entropy(probabilities: np.ndarray) -> float:
    """Mean entropy of the predicted distributions, in nats: lower is a surer model."""
    clipped = np.clip(probabilities, 1e-12, 1.0)
    return float(-(clipped * np.log(clipped)).sum(axis=1).mean()) if len(probabilities) else 0.0


@dataclass(frozen=True)
class SelfTrainingSettings:
    rounds: int
    share: float
    threshold: float
    class_balance: bool
    max_per_class: int | None
    round_epochs: int
    max_source_drop: float
    soft: bool = False  # every target text with its aligned predicted distribution, not hard labels
    max_confident_flips: float = 1.0  # most share of the teacher's confident target predictions a round may flip


@dataclass(frozen=True)
class RoundRecord:
    """One round: what it trained on, how sure the labelling model was, and whether the guard kept it."""

    round: int
    pseudo_labels: int  # target rows trained on (hard: the chosen ones; soft: every text)
    per_class: dict[str, int]  # by the labelling model's top class
    confident_share: float  # of all target texts: top probability at least domain_gap.CONFIDENT
    target_entropy: float  # of the model that labelled this round
    val_macro_f1: float  # of the model this round trained
    kept: bool
    confident_flips: float = 0.0  # of the teacher's confident target predictions, the share this round flipped
    reason: str = ""  # the guard's decision, in words

    def metrics(self) -> dict[str, float]:
        prefix = f"self_training_round_{self.round}_"
        return {
            prefix + "pseudo_labels": self.pseudo_labels,
            prefix + "confident_share": self.confident_share,
            prefix + "target_entropy": self.target_entropy,
            prefix + "val_macro_f1": self.val_macro_f1,
            prefix + "confident_flips": self.confident_flips,
            prefix + "kept": float(self.kept),
        }


@dataclass(frozen=True)
class SelfTrainingResult:
    rounds: tuple[RoundRecord, ...]
    final_target_entropy: float  # of the model returned
    final_confident_share: float
    training: TrainResult | None  # the kept round's training; None when no round was kept
    seconds: float  # wall time of adapting (other teachers, labelling, rounds), on top of the source training
    source_entropy: float = 0.0  # of the source model on the target texts
    source_confident_share: float = 0.0
    teacher_agreement: tuple[float, ...] = ()  # per other teacher: share of target texts it classes as the source does

    @property
    def kept_rounds(self) -> int:
        return sum(r.kept for r in self.rounds)

    @property
    def decision(self) -> str:
        """Which model the run keeps and why, in one line (the summary's and the run's tag)."""
        kept = self.kept_rounds
        teachers = len(self.teacher_agreement) + 1
        labelled = f"; round 1 labelled by {teachers} source models" if teachers > 1 else ""
        verdict = f"adapted ({kept} of {len(self.rounds)} rounds kept{labelled})" if kept else "source-only kept"
        stopped = next((r for r in self.rounds if not r.kept), None)
        return verdict + (f"; round {stopped.round}: {stopped.reason}" if stopped else "")

    def metrics(self) -> dict[str, float]:
        out = {**self.summary(), "self_training_seconds": self.seconds}
        for record in self.rounds:
            out |= record.metrics()
        return out

    def summary(self) -> dict[str, float]:
        """Source-only against adapted, on the target texts, label-free: what the lifecycle's summary shows."""
        agreement = {"teacher_agreement": min(self.teacher_agreement)} if self.teacher_agreement else {}
        return {
            "self_training_rounds_kept": self.kept_rounds,
            "target_confident_share_source_only": self.source_confident_share,
            "target_confident_share_adapted": self.final_confident_share,
            "target_entropy_source_only": self.source_entropy,
            "target_entropy_adapted": self.final_target_entropy,
            **agreement,
        }


def self_train(
    model,
    source: EncodedSplit,
    validation: EncodedSplit,
    target: EncodedSplit,
    labels: list[str],
    settings: SelfTrainingSettings,
    config: TrainConfig,
    pad_id: int,
    source_val_macro_f1: float,
    checkpoint_dir: Callable[[int], Path | None] = lambda _: None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    epochs_before: int = 0,
    on_progress: Callable[[TrainingProgress], None] | None = None,
    teachers: Sequence[np.ndarray] = (),
) -> SelfTrainingResult:
    """Run the rounds on `model` (which holds the source model's weights) and leave in it the last
    kept round's weights, or the source weights when no round was kept. `teachers`: the target
    probabilities of other source models (trained like this one with other seeds); the first round
    learns the mean of theirs and the source model's, and the guard counts flips against that mean.
    `checkpoint_dir(r)` is round r's checkpoint folder: a killed run resumes inside the round it was
    in, and finished rounds replay from their last checkpoint without training again. `on_epoch`
    hears every round's epochs, numbered on from `epochs_before` (the source training's), so they
    extend its curves; so does `on_progress` of their steps."""
    started = time.perf_counter()
    source_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kept_weights = source_weights
    prior = np.bincount(source.labels, minlength=len(labels)) if settings.class_balance else None
    round_config = replace(config, epochs=settings.round_epochs, patience=settings.round_epochs)
    records: list[RoundRecord] = []
    training = None
    own = target_probabilities(model, target, config, pad_id)
    # the first round's teacher: the source model, or the mean of its and the other source models' distributions
    teacher = np.mean([own, *teachers], axis=0) if len(teachers) else own
    agreement = [float((other.argmax(axis=1) == own.argmax(axis=1)).mean()) for other in teachers]
    probabilities = teacher
    for number in range(1, settings.rounds + 1):
        confident, entropy = confident_share(probabilities), prediction_entropy(probabilities)
        if settings.soft:
            rows, per_class = len(target), _per_class(probabilities.argmax(axis=1), labels)
            split, loss = _with_soft_labels(source, target, aligned(probabilities, prior)), soft_target_loss
        else:
            chosen = select_pseudo_labels(
                probabilities, settings.share, settings.threshold, prior, settings.max_per_class
            )
            rows, per_class = len(chosen), chosen.per_class(labels)
            split, loss = _with_pseudo_labels(source, target, chosen), cross_entropy
        if rows == 0:
            records.append(RoundRecord(number, 0, per_class, confident, entropy, 0.0, False, 0.0, "no pseudo-labels"))
            break
        model.load_state_dict(source_weights)
        result = train(
            model,
            split,
            validation,
            round_config,
            pad_id,
            loss_fn=loss,
            on_epoch=_numbered_from(on_epoch, epochs_before),
            checkpoint_dir=checkpoint_dir(number),
            on_progress=_numbered_from(on_progress, epochs_before, total=True),
        )
        epochs_before += len(result.history)
        adapted = target_probabilities(model, target, config, pad_id)
        flips = confident_flips(teacher, adapted)
        kept, reason = _guard(result.best_val_macro_f1, source_val_macro_f1, flips, settings)
        records.append(
            RoundRecord(number, rows, per_class, confident, entropy, result.best_val_macro_f1, kept, flips, reason)
        )
        if not kept:
            break
        kept_weights, training, probabilities = (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            result,
            adapted,
        )
    model.load_state_dict(kept_weights)  # `probabilities` are this model's: they change only when a round is kept
    if training is None:
        probabilities = own  # no round kept: the source model's own
    return SelfTrainingResult(
        tuple(records),
        prediction_entropy(probabilities),
        confident_share(probabilities),
        training,
        time.perf_counter() - started,
        source_entropy=prediction_entropy(own),
        source_confident_share=confident_share(own),
        teacher_agreement=tuple(agreement),
    )


def _guard(
    val_macro_f1: float, source_val_macro_f1: float, flips: float, settings: SelfTrainingSettings
) -> tuple[bool, str]:
    """Whether a round's model replaces the one before it, and why, from label-free evidence only."""
    drop = source_val_macro_f1 - val_macro_f1
    if drop > settings.max_source_drop:
        return (
            False,
            f"source validation macro-F1 fell {drop:.3f} (more than max_source_drop {settings.max_source_drop:g})",
        )
    if flips > settings.max_confident_flips:
        return False, (
            f"flipped {flips:.1%} of the teacher's confident target predictions "
            f"(more than max_confident_flips {settings.max_confident_flips:g})"
        )
    return (
        True,
        f"source validation macro-F1 within {settings.max_source_drop:g}; {flips:.1%} confident predictions flipped",
    )


def _numbered_from(listener, offset: int, total: bool = False):
    """`listener` hearing epoch numbers (and with `total`, their count) moved on by `offset`."""
    if listener is None:
        return None
    if total:
        return lambda news: listener(replace(news, epoch=offset + news.epoch, epochs=offset + news.epochs))
    return lambda news: listener(replace(news, epoch=offset + news.epoch))


def target_probabilities(model, target: EncodedSplit, config: TrainConfig, pad_id: int) -> np.ndarray:
    """`model`'s class probabilities for every row of `target`."""
    logits = predict_logits(model, target, config.eval_batch_size, pad_id, precision=config.precision)
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


def _per_class(predicted: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = np.bincount(predicted, minlength=len(names))
    return {name: int(count) for name, count in zip(names, counts, strict=True)}


def _with_soft_labels(source: EncodedSplit, target: EncodedSplit, soft: np.ndarray) -> EncodedSplit:
    """The source rows (their labels) followed by every target row (label UNLABELED, soft label `soft`)."""
    classes = soft.shape[1]
    return EncodedSplit(
        source.ids + list(target.ids),
        np.concatenate([source.labels, np.full(len(target), UNLABELED)]).astype(np.int64),
        extras={"soft_targets": np.concatenate([np.zeros((len(source), classes), np.float32), soft])},
    )


def _with_pseudo_labels(source: EncodedSplit, target: EncodedSplit, chosen: PseudoLabels) -> EncodedSplit:
    """The source rows followed by the chosen target rows, labelled as the model said."""
    return EncodedSplit(
        source.ids + [target.ids[i] for i in chosen.rows],
        np.concatenate([source.labels, chosen.labels]).astype(np.int64),
    )
