"""Evaluation: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, throughput, and the
temperature that calibrates the model's confidence (calibration.py)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from graftline.tasks import plots
from graftline.tasks.data.splits import Split
from graftline.tasks.engine.training import encode, predict_logits, resolve_device
from graftline.tasks.evaluate.calibration import Calibration, calibrate, softmax
from graftline.tasks.registry.tracking import StepLog, metric_safe
from graftline.tasks.settings import ModelParams


@dataclass
class Evaluation:
    name: str
    rows: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true label, columns: predicted label (label order)
    labels: list[str]
    examples_per_second: float
    # The most confident errors, most confident first: (row in the split, true label, predicted, confidence)
    misclassified: list[tuple[int, str, str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow, prefixed by the evaluation set's name."""
        out = {
            f"{self.name}_accuracy": self.accuracy,
            f"{self.name}_macro_f1": self.macro_f1,
            f"{self.name}_examples_per_second": self.examples_per_second,
        }
        for label, scores in self.per_class.items():
            for metric in ("precision", "recall", "f1"):
                out[f"{self.name}_{metric_safe(label)}_{metric}"] = scores[metric]
        return out


def evaluate_model(
    model, tokenizer, split: Split, max_length: int = 128, batch_size: int = 64, device: str = "auto"
) -> Evaluation:
    """Score a classifier on one labeled split; rows with labels the model lacks are an error."""
    return _score(model, tokenizer, split, max_length, batch_size, device)[0]


def _score(model, tokenizer, split: Split, max_length: int, batch_size: int, device: str):
    """(Evaluation, logits, true class ids) of one labeled split."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    from graftline.tasks.data.splits import encode_labels
    from graftline.tasks.engine.backbones import labels_of

    labels = labels_of(model)
    truth = encode_labels(split.frame["label"], labels, split.name)
    encoded = encode(tokenizer, split.inputs, truth, max_length)
    model.to(resolve_device(device))
    started = time.perf_counter()
    logits = predict_logits(model, encoded, batch_size, tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    predictions = logits.argmax(-1)
    ids = list(range(len(labels)))
    confidence = softmax(logits).max(-1)
    wrong = np.flatnonzero(predictions != np.asarray(truth))
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISCLASSIFIED_KEPT]
    precision, recall, f1, support = precision_recall_fscore_support(truth, predictions, labels=ids, zero_division=0)
    evaluation = Evaluation(
        name=split.name,
        rows=len(truth),
        accuracy=float(accuracy_score(truth, predictions)),
        macro_f1=float(f1_score(truth, predictions, labels=ids, average="macro", zero_division=0)),
        per_class={
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        confusion=confusion_matrix(truth, predictions, labels=ids).tolist(),
        labels=labels,
        examples_per_second=len(truth) / seconds if seconds > 0 else float("inf"),
        misclassified=[(int(i), labels[truth[i]], labels[predictions[i]], float(confidence[i])) for i in wrong],
    )
    return evaluation, logits, truth


def evaluate_sets(model_dir: Path, splits, model: ModelParams) -> tuple[dict[str, Evaluation], Calibration]:
    """The classifier in `model_dir` scored on every evaluation set (test first, then the other domains),
    and its temperature fitted on the validation split, with each set's calibration error before and after."""
    from graftline.tasks.engine.backbones import load_classifier, load_tokenizer

    classifier, tokenizer = load_classifier(str(model_dir)), load_tokenizer(str(model_dir))
    scored = {
        name: _score(classifier, tokenizer, split, model.max_length, 64, model.device)
        for name, split in {"validation": splits.validation, **splits.evaluation_sets()}.items()
    }
    validation = scored.pop("validation")
    calibration = calibrate(validation[1:], {name: (logits, truth) for name, (_, logits, truth) in scored.items()})
    return {name: evaluation for name, (evaluation, _, _) in scored.items()}, calibration


def predictions_on(model_dir: Path, split: Split, model: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class ids, true class ids) of the classifier in `model_dir` on one labeled split."""
    from graftline.tasks.engine.backbones import load_classifier, load_tokenizer

    classifier, tokenizer = load_classifier(str(model_dir)), load_tokenizer(str(model_dir))
    _, logits, truth = _score(classifier, tokenizer, split, model.max_length, 64, model.device)
    return logits.argmax(-1), np.asarray(truth)


def paired_bootstrap(
    first: np.ndarray,
    second: np.ndarray,
    truth: np.ndarray,
    metric: str = "macro_f1",
    resamples: int = 2_000,
    seed: int = 0,
) -> np.ndarray:
    """`metric` of the predictions `first` minus that of `second`, on `resamples` bootstrap resamples of
    the rows (the same rows for both: a paired comparison). Macro-F1 averages the classes present in a
    resample's truth or predictions, as scikit-learn does.

    Each resample is a row of multinomial counts, so a chunk of resamples is a few matrix products
    instead of thousands of metric calls."""
    rng = np.random.default_rng(seed)
    rows, classes = len(truth), int(max(first.max(), second.max(), truth.max())) + 1
    differences = []
    for start in range(0, resamples, 250):
        counts = rng.multinomial(rows, np.full(rows, 1 / rows), size=min(250, resamples - start)).astype(np.float32)
        differences.append(
            _weighted(metric, counts, first, truth, classes) - _weighted(metric, counts, second, truth, classes)
        )
    return np.concatenate(differences)


def _weighted(metric: str, counts: np.ndarray, predictions: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """`metric` of `predictions` on each resample (a row of `counts`, how often each row was drawn)."""
    if metric == "accuracy":
        return counts @ (predictions == truth).astype(np.float32) / counts.sum(1)
    if metric != "macro_f1":
        raise ValueError(f"unknown metric {metric!r}: accuracy or macro_f1")
    scores = []
    for c in range(classes):
        hit, said, was = (predictions == c) & (truth == c), predictions == c, truth == c
        tp, said_n, was_n = (counts @ m.astype(np.float32) for m in (hit, said, was))
        present = (said_n + was_n) > 0
        scores.append(np.where(present, 2 * tp / np.maximum(said_n + was_n, 1), np.nan))
    return np.nanmean(np.stack(scores), axis=0)


MISCLASSIFIED_KEPT = 32


def plot_misclassified(evaluation: Evaluation, images: list[str], path: Path, columns: int = 8) -> Path | None:
    """A grid of an image set's most confident errors (`images`: the split's paths, in row order), each
    captioned true -> predicted and the confidence; None when there is no error to show."""
    if not evaluation.misclassified:
        return None
    from PIL import Image

    shown = evaluation.misclassified
    rows = -(-len(shown) // columns)
    size = (1.6 * columns, 1.9 * rows)
    caption = f"{evaluation.name}: the {len(shown)} most confident errors of {evaluation.rows} images"
    with plots.figure(path, dpi=100, nrows=rows, ncols=columns, figsize=size, squeeze=False) as (fig, axes):
        for ax in axes.flat:
            ax.axis("off")
        for ax, (row, truth, predicted, confidence) in zip(axes.flat, shown, strict=False):
            try:
                with Image.open(images[row]) as picture:
                    picture.thumbnail((160, 160))
                    ax.imshow(picture.convert("RGB"))
            except OSError:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            ax.set_title(f"{truth} -> {predicted}\n{confidence:.2f}", fontsize=7)
        fig.suptitle(caption, fontsize=9)
    return path


def plot_confusion(evaluation: Evaluation, path: Path, title: str | None = None) -> Path:
    """Confusion-matrix picture: counts in each cell, rows normalised for the colour."""
    counts = np.asarray(evaluation.confusion)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(evaluation.labels)
    title = title or f"{evaluation.name}: accuracy {evaluation.accuracy:.3f}, macro-F1 {evaluation.macro_f1:.3f}"
    with plots.figure(path, dpi=120, figsize=(size + 1.5, size)) as (fig, ax):
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(evaluation.labels))
        ax.set_xticks(ticks, evaluation.labels, rotation=45, ha="right")
        ax.set_yticks(ticks, evaluation.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of true label")
    return path


def cross_domain_gaps(evaluations: dict[str, Evaluation]) -> dict[str, float]:
    """How much accuracy is lost moving from the test set (the training domain) to each other set."""
    test = evaluations["test"].accuracy
    return {f"{name}_accuracy_gap_vs_test": test - e.accuracy for name, e in evaluations.items() if name != "test"}


def headline_scores(evaluations: dict[str, Evaluation]) -> dict[str, float]:
    """`<set>_accuracy` and `<set>_macro_f1` of every evaluation set: the numbers gates and summaries compare."""
    return {f"{name}_{m}": getattr(e, m) for name, e in evaluations.items() for m in ("accuracy", "macro_f1")}


def retention(student: dict[str, float], teacher: dict[str, float]) -> dict[str, float]:
    """`<score>_retention`: the share of each of its teacher's headline scores a student keeps."""
    return {f"{key}_retention": student[key] / value if value else 0.0 for key, value in teacher.items()}


def retention_gate(report: dict[str, float], floor: float, sets: list[str] | tuple[str, ...] = ("test",)) -> str | None:
    """The one retention gate: None when the student keeps at least `floor` of its teacher's accuracy
    and macro-F1 on every set of `sets` (`*`: every set the report has), else why not. The lifecycle
    keeps a failing student out of the registry; a promotion of a student re-scores both and asks
    the same."""
    scored = sorted({key.removesuffix("_accuracy_retention") for key in report if key.endswith("_accuracy_retention")})
    names = scored if "*" in sets else list(sets)
    missing = [name for name in names if f"{name}_accuracy_retention" not in report]
    if missing:
        return f"retention on {', '.join(map(repr, missing))} cannot be checked: not evaluated (sets: {scored})"
    short = [
        f"{name} {metric} retention {report[f'{name}_{metric}_retention']:.4f}"
        for name in names
        for metric in ("accuracy", "macro_f1")
        if report[f"{name}_{metric}_retention"] < floor
    ]
    return f"{' and '.join(short)} below the floor {floor}" if short else None


# -- what the evaluate step (and the distill step, for its student) logs ---------------------------


@dataclass(frozen=True)
class Evaluated:
    """A model's scores on every evaluation set and its calibration, with the pictures drawn of them."""

    role: str
    evaluations: dict[str, Evaluation]
    calibration: Calibration
    pictures: tuple[Path, ...]  # reliability diagram, confusion matrices, (images) misclassified grids

    def logged(self) -> StepLog:
        """Calibration (temperature, ECE before/after per set), every set's metrics and report, the
        cross-domain gaps, the pictures."""
        c = self.calibration
        metrics = dict(c.metrics())
        for result in self.evaluations.values():
            metrics |= result.metrics()
        ece = ", ".join(f"{n} {c.ece_before[n]:.3f} -> {c.ece_after[n]:.3f}" for n in c.ece_before)
        return StepLog(
            metrics=metrics | cross_domain_gaps(self.evaluations),
            files=[(picture, "evaluation") for picture in self.pictures],
            dicts={f"evaluation/{name}_report.json": asdict(e) for name, e in self.evaluations.items()},
            lines=[f"{self.role} calibration: temperature {c.temperature:.3f}; ECE {ece}"]
            + ([f"{self.role} calibration: {c.reason}"] if c.reason else []),
        )


def evaluated(
    role: str, evaluations: dict[str, Evaluation], calibration: Calibration, splits, folder: Path, modality
) -> Evaluated:
    """`evaluations` and `calibration` of the `role` model with their pictures drawn into `folder`; the
    data's `modality` (tasks/modality/) adds its example pictures (images: the most confident errors)."""
    from graftline.tasks.evaluate.calibration import plot_reliability

    title = f"{role}: temperature {calibration.temperature:.2f}"
    pictures = [plot_reliability(calibration, folder / "reliability.png", title)]
    sets = splits.evaluation_sets()
    for name, result in evaluations.items():
        title = f"{role} on {name}: accuracy {result.accuracy:.3f}"
        pictures.append(plot_confusion(result, folder / f"{name}_confusion.png", title))
        pictures += modality.example_plots(result, sets[name], folder, name)
    return Evaluated(role, evaluations, calibration, tuple(pictures))


def evaluate_with_pictures(model_dir: Path, role: str, splits, model: ModelParams, folder: Path, modality) -> Evaluated:
    """The evaluate step: the model in `model_dir` scored on every evaluation set and calibrated."""
    return evaluated(role, *evaluate_sets(model_dir, splits, model), splits, folder, modality)
