"""Checks that need no server and no model, run before the lifecycle starts.

A missing file, an unreadable table, a missing column, unusable labels or an unknown backbone is
reported in about a second, instead of after Prefect's server has started and the flow has begun
(25-55 s). Checked: every data file exists, parses and has its columns; the labels are usable (none
missing, at least two classes, every evaluated label one that training has, the carved splits
possible); the unlabeled files hold texts; every backbone named (the fine-tuning backbone or the
`auto` candidates, a separate student) resolves without loading weights, and a `teacher-layers:`
student and the re-initialised layers (`reinit_layers`, or the most a search may try) fit the backbone.
The flow still validates the data fully (Great Expectations) as a step.

Nothing here imports torch, transformers or Prefect: that is what keeps it fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from graftline.tasks import modality as modalities
from graftline.tasks.data.splits import Splits, read_texts
from graftline.tasks.engine import backbones
from graftline.tasks.errors import BackboneError
from graftline.tasks.modality.base import REINIT, Modality
from graftline.tasks.settings import DataParams, DistillParams, FinetuneParams, SelectParams


@dataclass(frozen=True)
class Checked:
    """What the checks read: the splits, the backbones they resolved, and how long it took."""

    splits: Splits
    backbones: tuple[str, ...]
    seconds: float

    def line(self) -> str:
        s = self.splits
        rows = " / ".join(f"{len(x.frame)} {x.name}" for x in (s.train, s.validation, *s.evaluation_sets().values()))
        rows += "".join(f" / {len(x.frame)} target {name}" for name, x in s.targets.items())
        return (
            f"checked in {self.seconds:.1f} s: {rows} rows, {len(s.labels)} labels, "
            f"backbone {' | '.join(self.backbones)}"
        )


def check(data: DataParams, finetune: FinetuneParams, select: SelectParams, distill: DistillParams) -> Checked:
    """Raise the first fault found (DataError, BackboneError), most basic first; else what was read."""
    started = time.perf_counter()
    modality = modalities.of_data(data)
    specs = list(select.candidates) if finetune.backbone == "auto" else [finetune.backbone]
    configs = {spec: backbones.check(spec) for spec in specs}
    for spec in specs:
        modality.require_backbone(spec)
    _check_reinit(finetune, configs, modality)
    unlabeled = []
    if distill.enabled:
        _check_student(distill.student, configs, modality)
        column, encoding = distill.unlabeled_text_column, data.encoding  # one encoding for every file of the run
        unlabeled = [t for path in distill.unlabeled_paths for t in read_texts(path, column, encoding=encoding)]
    splits = modality.read_splits(data, unlabeled)
    return Checked(splits, tuple(specs), time.perf_counter() - started)


def _check_reinit(finetune: FinetuneParams, configs: dict[str, dict | None], modality: Modality) -> None:
    """Re-initialised layers (given, or the most a search may try) that the backbone has."""
    reinit = finetune.reinit_layers
    space = finetune.search.space.get("reinit_layers") if finetune.search.enabled else None
    if space is not None:
        reinit = max(reinit, int(max(space.values())))
    if not modality.supports(REINIT):  # a search leaves re-initialising out of its space (tasks/train/search.py)
        if finetune.reinit_layers:
            raise BackboneError(f"finetune.reinit_layers {modality.refusal(REINIT)}")
        return
    for spec, config in configs.items():
        layers = (config or {}).get("num_hidden_layers")
        if isinstance(layers, int) and reinit > layers:
            raise BackboneError(f"reinit_layers {reinit}: backbone {spec!r} has only {layers} layers")


def _check_student(student: str, teachers: dict[str, dict | None], modality: Modality) -> None:
    if not student.startswith(backbones.LAYER_PREFIX):
        backbones.check(student)
        modality.require_student(student)
        return
    for config in teachers.values():  # a layer count the teacher's config says it cannot give
        layers = (config or {}).get("num_hidden_layers")
        if isinstance(layers, int):
            backbones.student_layers(student, layers)
