"""The typed values the lifecycle's steps hand each other, and the summary it returns.

Every record is frozen: a step returns a new value (`dataclasses.replace`) instead of patching
its input, so what a later step sees does not depend on whether an earlier one ran in this
process, on a remote task runner, or was reused from a persisted result. Dicts appear only at
the MLflow boundary (`metrics()`, `as_dict()`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from graftline.tasks import modality as modalities
from graftline.tasks.data.splits import Splits
from graftline.tasks.evaluate.calibration import Calibration
from graftline.tasks.evaluate.scores import Evaluation, headline_scores
from graftline.tasks.modality.base import Modality
from graftline.tasks.registry.contract import STUDENT
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.settings import ModelParams


@dataclass(frozen=True)
class StepContext:
    """What every step of one lifecycle run shares: where it tracks, where it writes, the
    model-wide settings (max length, device, precision, seed, remote code) every step reads, and the
    modality of its data (tasks/modality/), resolved once where the context is made."""

    parent_run_id: str
    work_dir: Path
    model: ModelParams = field(default_factory=ModelParams)
    modality: Modality = field(default_factory=modalities.default)

    def folder(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Ingested:
    splits: Splits
    run_id: str  # the ingest run, which holds the evaluation sets for later promotions


@dataclass(frozen=True)
class TrainedModel:
    """A fine-tuned or distilled classifier: its folder, its logged MLflow model, its scores."""

    role: str  # teacher | student
    model_dir: Path
    model_uri: str
    run_id: str
    parameters: int
    backbone: str  # what the teacher was fine-tuned from
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    report: dict[str, float] = field(default_factory=dict)  # role-specific numbers (retention, speedup)
    gate_failure: str | None = None  # why it may not be registered; None: it may
    export_run_id: str | None = None  # the run holding its ONNX files, when it was exported
    servable_uri: str | None = None  # its ONNX pyfunc, when an export passed parity
    privacy: dict[str, str] = field(default_factory=dict)  # version tags: the DP budget spent, or why none
    calibration: Calibration | None = None  # its temperature, fitted when it was evaluated
    modality: str = "text"  # text | image: what it classifies
    adaptation: str = ""  # what adapting to the target texts decided and why; empty when not adapting
    weights_digest: str = ""  # of the weights logged as `model_uri` (weights_digest below)
    evaluated_digest: str = ""  # of the weights `evaluations` scored: equal, the registry may reuse them

    def scores_of_logged_weights(self) -> dict[str, float] | None:
        """The headline scores, when the weights they were measured on are the ones logged (and so the
        ones registered); None when that is not known."""
        if self.evaluations and self.weights_digest and self.weights_digest == self.evaluated_digest:
            return headline_scores(self.evaluations)
        return None

    def but(self, **changes) -> TrainedModel:
        """A copy with `changes`: the one way a later step adds to a model's record."""
        return replace(self, **changes)

    def metrics(self) -> dict[str, float]:
        """The headline numbers: accuracy and macro-F1 on every evaluation set, then its report."""
        return {**headline_scores(self.evaluations), **self.report}

    @classmethod
    def student(
        cls, distilled, model_uri: str, run_id: str, backbone: str, modality: str, digest: str = ""
    ) -> TrainedModel:
        """The record of a student (`distilled`: train/distill.py's Distilled) logged as `model_uri`;
        `digest`: of its weights, both scored and logged from the one folder the distill step wrote."""
        judged = distilled.judged
        return cls(
            STUDENT,
            distilled.result.model_dir,
            model_uri,
            run_id,
            distilled.result.student_parameters,
            backbone,
            evaluations=judged.evaluations,
            calibration=judged.calibration,
            report=judged.report,
            gate_failure=judged.gate_failure,
            privacy=distilled.privacy,
            modality=modality,
            weights_digest=digest,
            evaluated_digest=digest,
        )


def weights_digest(folder: Path) -> str:
    """sha256 over the weight files (safetensors) in `folder` and below, in name order: which weights
    these are, wherever a store put the files (a logged model keeps them one folder down)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors"), key=lambda p: (p.name, p.as_posix())):
        with path.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Exported:
    run_id: str
    metrics: dict[str, float]  # the speed-ups and parity numbers the summary shows
    servable_uri: str | None = None  # the ONNX pyfunc (servable.py), when an export passed parity


@dataclass(frozen=True)
class Registration:
    """One registered version and what its promotion decided (registry/versions.py, promotion.py)."""

    name: str
    version: str
    aliases: tuple[str, ...]
    promoted: bool = False
    reason: str = "registered as candidate"
    promotion_run_id: str | None = None


@dataclass(frozen=True)
class Registered:
    """What the register step did for each model (`roles`, in the order of `registrations`)."""

    roles: tuple[str, ...]
    registrations: tuple[Registration, ...]

    def logged(self) -> StepLog:
        """Per role: the version, whether it was promoted and why (tags); a line per registration."""
        log = StepLog()
        for role, r in zip(self.roles, self.registrations, strict=True):
            log.tags |= {
                f"{role}.version": r.version,
                f"{role}.promoted": str(r.promoted).lower(),
                f"{role}.decision": r.reason[:5000],
            }
            log.lines.append(f"{r.name} v{r.version} -> {', '.join(r.aliases)} ({r.reason})")
        return log


@dataclass(frozen=True)
class LifecycleSummary:
    """What one lifecycle run did: the flow's return value and the parent run's `summary.json`."""

    mlflow_run_id: str
    experiment: str
    tracking_uri: str
    ui_command: str
    data_digest: str
    backbone: str
    metrics: dict[str, dict[str, float]]  # role (and "export") -> headline numbers
    registered: tuple[Registration, ...]
    not_registered: dict[str, str]  # role -> why it was kept out
    reused_steps: tuple[str, ...]
    adaptation: str = ""  # the teacher's adaptation decision, when it adapted to target texts

    def headline_metrics(self) -> dict[str, float]:
        return {f"{role}_{key}": value for role, values in self.metrics.items() for key, value in values.items()}

    def as_dict(self) -> dict:
        return asdict(self)
