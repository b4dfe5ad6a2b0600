"""Knowledge distillation of a fine-tuned teacher into a smaller student.

Loss: alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))
(Hinton et al. 2015; the T^2 keeps soft-target gradients on the scale of the hard ones).

Students:
- `teacher-layers:N`  a copy of the teacher keeping N of its layers, evenly spaced from the first
  (6 -> 3 keeps 0, 2, 4, as DistilBERT did), including the teacher's fine-tuned head;
- `teacher-layers:0,2,4`  the same with the layers named;
- any backbone name (catalog, folder or hub id) with a new head; its own tokenizer is fine, because
  teacher logits are computed once, on the teacher's tokenisation, before the student trains.
A student registers only when it keeps `retention_floor` of the teacher's test accuracy and
macro-F1 (`retention_gate`). Not supported yet: hidden-state distillation, unlabeled transfer data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from graftline.tasks import backbones
from graftline.tasks.data import Splits
from graftline.tasks.errors import BackboneError
from graftline.tasks.finetune import encode_split, save_model
from graftline.tasks.training import EpochRecord, TrainConfig, TrainResult, predict_logits, seed_everything, train

LAYER_PREFIX = "teacher-layers:"


@dataclass(frozen=True)
class DistillConfig:
    student: str = "teacher-layers:3"
    alpha: float = 0.5  # weight of the hard-label cross-entropy
    temperature: float = 2.0
    max_length: int = 128
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4))
    trust_remote_code: bool = False


@dataclass
class DistillResult:
    model_dir: Path
    training: TrainResult
    student_parameters: int
    teacher_parameters: int
    kept_layers: list[int] | None

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
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    hard = F.cross_entropy(student_logits, labels)
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
    config: DistillConfig,
    out_dir: Path,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> DistillResult:
    teacher = backbones.load_classifier(str(teacher_dir))
    teacher_tokenizer = backbones.load_tokenizer(str(teacher_dir))
    labels = backbones.labels_of(teacher)

    # Soft targets once, in eval mode (no dropout), on the teacher's own tokenisation.
    teacher_train = encode_split(teacher_tokenizer, splits.train, labels, config.max_length)
    device = "cuda" if config.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    teacher.to(device)
    soft_targets = predict_logits(teacher, teacher_train, config.train.eval_batch_size, teacher_tokenizer.pad_token_id)
    teacher.to("cpu")

    kept = student_layers(config.student, teacher.config.num_hidden_layers)
    seed_everything(config.train.seed)  # a catalog student's new head is initialised from this seed
    if kept is not None:
        student, tokenizer = make_layer_student(teacher, kept), teacher_tokenizer
    else:
        tokenizer = backbones.load_tokenizer(config.student, config.trust_remote_code)
        student = backbones.load_classifier(config.student, labels, config.trust_remote_code)

    train_split = encode_split(tokenizer, splits.train, labels, config.max_length)
    train_split.extras["teacher_logits"] = soft_targets
    val_split = encode_split(tokenizer, splits.validation, labels, config.max_length)

    def loss(logits, batch):
        return distillation_loss(logits, batch["teacher_logits"], batch["labels"], config.alpha, config.temperature)

    result = train(student, train_split, val_split, config.train, tokenizer.pad_token_id, loss, on_epoch)
    save_model(student, tokenizer, out_dir)
    return DistillResult(
        model_dir=out_dir,
        training=result,
        student_parameters=backbones.count_parameters(student),
        teacher_parameters=backbones.count_parameters(teacher),
        kept_layers=kept,
    )


def retention_gate(report: dict[str, float], floor: float) -> str | None:
    """None when the student keeps at least `floor` of the teacher's test accuracy and macro-F1,
    else the reason it failed (which is logged, and keeps the student out of the registry)."""
    short = [f"{metric} retention {report[f'test_{metric}_retention']:.4f}" for metric in ("accuracy", "macro_f1")
             if report[f"test_{metric}_retention"] < floor]
    return f"{' and '.join(short)} below the floor {floor}" if short else None


def student_layers(spec: str, teacher_layers: int) -> list[int] | None:
    """The teacher layers a `teacher-layers:` student keeps, or None for a separate backbone."""
    if not spec.startswith(LAYER_PREFIX):
        return None
    value = spec.removeprefix(LAYER_PREFIX)
    try:
        if "," in value:
            kept = sorted({int(v) for v in value.split(",")})
        else:
            count = int(value)
            if not 1 <= count <= teacher_layers:
                raise ValueError
            step = teacher_layers / count
            kept = [int(i * step) for i in range(count)]
    except ValueError:
        raise BackboneError(
            f"student {spec!r}: expected {LAYER_PREFIX}N with 1 <= N <= {teacher_layers}, or a list of layer indices"
        ) from None
    if kept[0] < 0 or kept[-1] >= teacher_layers:
        raise BackboneError(f"student {spec!r}: the teacher has layers 0..{teacher_layers - 1}")
    return kept


def make_layer_student(teacher, kept: list[int]):
    """A copy of `teacher` with only the `kept` encoder layers (weights copied, head included)."""
    student = copy.deepcopy(teacher)
    path, layers = _encoder_layers(student)
    parent_name, _, attribute = path.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    setattr(parent, attribute, torch.nn.ModuleList([layers[i] for i in kept]))
    student.config.num_hidden_layers = len(kept)
    return student


def _encoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise BackboneError(f"cannot find the {count} encoder layers of {type(model).__name__} to copy")
