"""Knowledge distillation of a fine-tuned teacher into a smaller student.

Loss: alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))
(Hinton et al. 2015; the T^2 keeps soft-target gradients on the scale of the hard ones), plus, when
`hidden_weight` > 0, hidden_weight * MSE between the student's and the teacher's mean-pooled layer
states (student layer j matched to teacher layer (j+1)*Lt/Ls - 1, as TinyBERT's uniform mapping),
through a learned linear projection when their widths differ. Pooled states, not token states, so
a student with its own tokenizer can be matched too.

Students:
- `teacher-layers:N`  a copy of the teacher keeping N of its layers, evenly spaced from the first
  (6 -> 3 keeps 0, 2, 4, as DistilBERT did), including the teacher's fine-tuned head;
- `teacher-layers:0,2,4`  the same with the layers named;
- any backbone name (catalog, folder or hub id) with a new head; its own tokenizer is fine, because
  teacher targets are computed once, on the teacher's tokenisation, before the student trains.

Transfer data: unlabeled texts (e.g. from the target domain) and augmented copies of the training
texts are added to the training rows with soft labels only (their cross-entropy term is masked out).

Images: the student is another image backbone (EfficientNet-Lite2 -> Lite0, say) with its own input
size, or `teacher-layers:N`: the teacher keeping N of its blocks (every stage's first block, which
changes the shape, and evenly spaced residual ones; engine/vision.py). The teacher's targets are
computed once on centre crops while the student trains on random crops and flips of the same images
(offline distillation: the teacher does not see the student's crop). Hidden-state matching is for
transformers.
`judge_student` evaluates the student on every evaluation set, compares it with its teacher
(`distillation_report`: size, retention on every evaluation set, CPU speed) and asks the one
retention gate (evaluate.py) whether it keeps enough to be registered.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from graftline.tasks import modality as modalities
from graftline.tasks.data.splits import Splits, encode_labels
from graftline.tasks.engine import backbones
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import (
    UNLABELED,
    TrainingIO,
    TrainResult,
    autocast,
    batches,
    encode,
    model_inputs,
    resolve_device,
    seed_everything,
    train,
)
from graftline.tasks.evaluate.calibration import Calibration
from graftline.tasks.evaluate.scores import (
    Evaluated,
    Evaluation,
    evaluate_sets,
    headline_scores,
    retention,
    retention_gate,
)
from graftline.tasks.modality.base import TRANSFER_ROWS, Modality
from graftline.tasks.registry import contract
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.settings import DistillParams, ModelParams
from graftline.tasks.train.finetune import encode_split, save_model

TEACHER_BATCH = 64  # rows per forward pass when computing teacher targets


@dataclass
class DistillResult:
    model_dir: Path
    training: TrainResult
    student_parameters: int
    teacher_parameters: int
    kept_layers: list[int] | None
    transfer_rows: int = 0  # unlabeled + augmented rows trained on soft labels only
    layer_map: list[tuple[int, int]] = field(default_factory=list)  # (student layer, teacher layer) of the hidden loss

    def params(self) -> dict[str, str]:
        """What the step decided about the student's shape, for the run's parameters."""
        out = {}
        if self.kept_layers is not None:
            out["distill.kept_layers"] = ",".join(map(str, self.kept_layers))
        if self.layer_map:
            out["distill.layer_map"] = ", ".join(f"{s}->{t}" for s, t in self.layer_map)
        return out

    @property
    def parameter_ratio(self) -> float:
        return self.student_parameters / self.teacher_parameters


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Rows labelled UNLABELED contribute only to the soft term."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    labeled = (labels != UNLABELED).sum().clamp(min=1)  # stays on the device: no host sync
    hard = F.cross_entropy(student_logits, labels, ignore_index=UNLABELED, reduction="sum") / labeled
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * hard + (1 - alpha) * temperature**2 * soft


def distill(
    teacher_dir: Path,
    splits: Splits,
    params: DistillParams,
    model: ModelParams,
    out_dir: Path,
    io: TrainingIO = TrainingIO(),
    modality: Modality | None = None,
) -> DistillResult:
    """Distil the classifier in `teacher_dir` into `params.student`, trained on `splits.train` plus
    the transfer rows (`splits.unlabeled`, augmented copies) where the modality has them; `modality`
    builds the student and prepares its training (default: the one the splits were read as)."""
    teacher = backbones.load_classifier(str(teacher_dir))
    teacher_tokenizer = backbones.load_tokenizer(str(teacher_dir))
    labels = backbones.labels_of(teacher)
    modality = modality or modalities.of_splits(splits)

    seed_everything(model.seed)  # a catalog student's new head is initialised from this seed
    student, tokenizer, kept = modality.build_student(teacher, teacher_tokenizer, params, model, labels)

    # Training rows: the labeled split, then transfer rows that only the teacher labels: the
    # unlabeled files, the target sets' texts (the student adapts too), augmented training texts.
    transfer = []
    if modality.supports(TRANSFER_ROWS):
        transfer = list(splits.unlabeled) + splits.target_texts()
        transfer += augment(splits.train.texts, params.augment_copies, model.seed)
    texts = splits.train.inputs + transfer
    ids = encode_labels(splits.train.frame["label"], labels, "train") + [UNLABELED] * len(transfer)
    layer_map = (
        uniform_layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
        if params.hidden_weight > 0
        else []
    )

    # Teacher targets once, in eval mode (no dropout), on the teacher's own tokenisation.
    teacher.to(resolve_device(model.device))
    soft, pooled = teacher_targets(
        teacher,
        encode(teacher_tokenizer, texts, ids, model.max_length, io.cache_dir),
        TEACHER_BATCH,
        teacher_tokenizer.pad_token_id,
        [t for _, t in layer_map],
    )
    teacher.to("cpu")

    train_split = encode(tokenizer, texts, ids, model.max_length, io.cache_dir)
    train_split.extras["teacher_logits"] = soft
    val_split = encode_split(tokenizer, splits.validation, labels, model.max_length, io.cache_dir)
    train_split = modality.prepare_training(student, train_split, params, model.seed)
    trained = student
    if layer_map:
        train_split.extras["teacher_hidden"] = pooled
        trained = HiddenStateStudent(student, [s for s, _ in layer_map], teacher.config.hidden_size)

    def loss(outputs, batch):
        value = distillation_loss(
            outputs.logits, batch["teacher_logits"], batch["labels"], params.alpha, params.temperature
        )
        if layer_map:
            value = value + params.hidden_weight * F.mse_loss(outputs.pooled_hidden.float(), batch["teacher_hidden"])
        return value

    result = train(
        trained,
        train_split,
        val_split,
        params.train_config(model),
        tokenizer.pad_token_id,
        loss,
        checkpoint_dir=io.checkpoint_dir,
        **io.listeners(),
    )
    save_model(student, tokenizer, out_dir)  # the projections were for training only
    if io.checkpoint_dir is not None:
        Checkpoints(io.checkpoint_dir).clear()
    return DistillResult(
        model_dir=out_dir,
        training=result,
        student_parameters=backbones.count_parameters(student),
        teacher_parameters=backbones.count_parameters(teacher),
        kept_layers=kept,
        transfer_rows=len(transfer),
        layer_map=layer_map,
    )


@dataclass
class StudentOutput:
    logits: torch.Tensor
    pooled_hidden: torch.Tensor  # (batch, matched layers, teacher width)


class HiddenStateStudent(torch.nn.Module):
    """A student that also returns its matched layers' mean-pooled states, projected to the
    teacher's width (a learned linear map when the widths differ). Only `student` is kept."""

    def __init__(self, student, layers: list[int], teacher_width: int):
        super().__init__()
        self.student, self.layers = student, layers
        width = student.config.hidden_size
        self.projections = torch.nn.ModuleList(
            torch.nn.Identity() if width == teacher_width else torch.nn.Linear(width, teacher_width) for _ in layers
        )

    @property
    def config(self):
        return self.student.config

    def forward(self, **inputs) -> StudentOutput:
        out = self.student(**inputs, output_hidden_states=True)
        mask = inputs["attention_mask"]
        # hidden_states[0] is the embedding output, so layer i's output is hidden_states[i + 1]
        pooled = [
            project(mean_pool(out.hidden_states[i + 1], mask))
            for project, i in zip(self.projections, self.layers, strict=True)
        ]
        return StudentOutput(out.logits, torch.stack(pooled, dim=1))


@torch.no_grad()
def teacher_targets(
    teacher, split, batch_size: int, pad_id: int, layers: list[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The teacher's logits for every row and, for `layers`, its mean-pooled layer outputs."""
    device = next(teacher.parameters()).device
    teacher.eval()
    logits, pooled = [], []
    for batch in batches(split, batch_size, pad_id):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device):
            out = teacher(**model_inputs(batch), output_hidden_states=bool(layers))
        logits.append(out.logits.float().cpu())
        if layers:
            pooled.append(
                torch.stack([mean_pool(out.hidden_states[i + 1], batch["attention_mask"]) for i in layers], 1)
                .float()
                .cpu()
            )
    return torch.cat(logits).numpy(), torch.cat(pooled).numpy() if layers else None


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer j learns from teacher layer (j+1)*Lt/Ls - 1: the last from the last."""
    return [(j, round((j + 1) * teacher_layers / student_layers) - 1) for j in range(student_layers)]


def augment(texts: list[str], copies: int, seed: int) -> list[str]:
    """`copies` noisy variants of every text: each word dropped with probability 0.1 and one
    neighbouring pair swapped. Inputs for the teacher to label, never labels themselves."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        for _ in range(copies):
            kept = [w for w in words if rng.random() > 0.1] or words[:1]
            if len(kept) > 2:
                i = rng.randrange(len(kept) - 1)
                kept[i], kept[i + 1] = kept[i + 1], kept[i]
            out.append(" ".join(kept))
    return out


@dataclass(frozen=True)
class Judgement:
    """A distilled student's scores, its comparison with the teacher, and the retention gate's verdict."""

    evaluations: dict[str, Evaluation]
    calibration: Calibration
    report: dict[str, float]
    gate_failure: str | None  # None: it may be registered

    def gate(self, floor: float, sets: list[str]) -> str:
        return self.gate_failure or f"passed (floor {floor} on {', '.join(sets)})"


def judge_student(
    student_dir: Path,
    teacher_dir: Path,
    teacher_scores: dict[str, Evaluation],
    splits: Splits,
    model: ModelParams,
    floor: float,
    sets: list[str],
) -> Judgement:
    """Score the student on every evaluation set, compare it with its teacher, and ask the retention gate."""
    evaluations, calibration = evaluate_sets(student_dir, splits, model)
    report = distillation_report(
        teacher_dir, student_dir, teacher_scores, evaluations, splits.test.inputs, model.max_length
    )
    return Judgement(evaluations, calibration, report, retention_gate(report, floor, sets))


def distillation_report(
    teacher_dir: Path,
    student_dir: Path,
    teacher_scores: dict[str, Evaluation],
    student_scores: dict[str, Evaluation],
    texts: list[str],
    max_length: int,
) -> dict[str, float]:
    """Size, retention on every evaluation set, and CPU throughput of the student against its teacher."""
    from graftline.tasks.export.onnx import latency
    from graftline.tasks.export.predictors import torch_predictor

    classifiers = {
        role: backbones.load_classifier(str(folder)).eval()
        for role, folder in (("teacher", teacher_dir), ("student", student_dir))
    }
    report = {
        "parameter_ratio": backbones.count_parameters(classifiers["student"])
        / backbones.count_parameters(classifiers["teacher"])
    }
    report.update(retention(headline_scores(student_scores), headline_scores(teacher_scores)))
    speeds = {}
    for role, folder in (("teacher", teacher_dir), ("student", student_dir)):
        predict = torch_predictor(classifiers[role], backbones.load_tokenizer(str(folder)), max_length)
        speeds[role] = latency(predict, texts)[32]
    report["teacher_cpu_examples_per_second"] = speeds["teacher"]
    report["student_cpu_examples_per_second"] = speeds["student"]
    report["cpu_speedup"] = speeds["student"] / speeds["teacher"]
    return report


# -- what the distill step decides and logs -------------------------------------------------------

# The student learns the private teacher's outputs on the training texts themselves: nothing bounds
# what it reveals of them. Distilling on public transfer data only would carry the teacher's bound over.
PRIVATE_TEACHER_NOTE = (
    "no differential-privacy guarantee: distilled from a private teacher on its training data, so it inherits "
    "none of the teacher's bound on those rows"
)


def student_privacy(teacher_privacy: dict[str, str]) -> dict[str, str]:
    """The privacy tags of a student of a teacher with `teacher_privacy`: a private teacher's student
    carries the note that it has no guarantee; any other carries none."""
    return {contract.PRIVACY_NOTE: PRIVATE_TEACHER_NOTE} if contract.PRIVACY_EPSILON in teacher_privacy else {}


@dataclass(frozen=True)
class Distilled:
    """A distilled student, judged: what the distill step hands on and logs."""

    result: DistillResult
    judged: Judgement
    evaluated: Evaluated  # the student's scores, calibration and pictures
    retention: tuple[float, list[str]]  # the gate's floor and the sets it holds on
    privacy: dict[str, str]  # the student's privacy tags (student_privacy)

    def logged(self) -> StepLog:
        report = self.judged.report
        log = StepLog(params=self.result.params(), metrics={"transfer_rows": self.result.transfer_rows})
        log += self.evaluated.logged()
        log.metrics |= {
            **report,
            "best_val_macro_f1": self.result.training.best_val_macro_f1,
            "retention_gate_passed": float(self.judged.gate_failure is None),
        }
        log.tags["graftline.gate"] = self.judged.gate(*self.retention)
        log.lines.append(
            f"student: {self.result.student_parameters:,} parameters ({report['parameter_ratio']:.2f}x the teacher), "
            f"test accuracy retention {report['test_accuracy_retention']:.3f}, CPU speedup {report['cpu_speedup']:.2f}x"
        )
        if self.judged.gate_failure:
            log.warnings.append(f"student will not be registered: {self.judged.gate_failure}")
        if contract.PRIVACY_NOTE in self.privacy:
            log.warnings.append(f"student: {self.privacy[contract.PRIVACY_NOTE]}")
        return log


def judged_student(
    result: DistillResult,
    teacher_dir: Path,
    teacher_scores: dict[str, Evaluation],
    teacher_privacy: dict[str, str],
    splits: Splits,
    model: ModelParams,
    retention: tuple[float, list[str]],
    folder: Path,
    modality: Modality,
) -> Distilled:
    """The student of `result` scored, compared with its teacher and judged by the retention gate
    (`retention`: its floor and sets), its pictures drawn into `folder` (`modality`'s examples too)."""
    from graftline.tasks.evaluate.scores import evaluated

    judged = judge_student(result.model_dir, teacher_dir, teacher_scores, splits, model, *retention)
    shown = evaluated(contract.STUDENT, judged.evaluations, judged.calibration, splits, folder, modality)
    return Distilled(result, judged, shown, retention, student_privacy(teacher_privacy))
