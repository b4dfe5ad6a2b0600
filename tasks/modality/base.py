"""What varies by modality, as one interface: a `Modality` is chosen once per run (tasks/modality/
__init__.py resolves it from the data, a backbone or a registered version) and every step asks it,
instead of comparing modality names.

This module is light on purpose (no torch, no pandas, nothing of graftline above the foundation, not
even for type hints): the engine and the export import `InputPreparer` from here, and the lower
layers type the object they are handed with `Modality`. The implementations are text.py and image.py.

The capabilities a modality may refuse are the names below; a modality lists what it refuses in
`refused` (capability -> the one-line reason), the one table every refusal is read from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from graftline.tasks.errors import GraftlineError

# Capabilities a modality may refuse (keys of `Modality.refused`).
LORA = "lora"  # finetune.strategy lora
PRIVACY = "privacy"  # finetune.privacy (DP-SGD)
ADAPTATION = "adaptation"  # adapt.method other than none
REINIT = "reinit_layers"  # re-initialising the top transformer layers
EXPLAIN = "explain"  # token attributions
HIDDEN_MATCHING = "hidden_matching"  # distill.hidden_weight: matching transformer layer states
TRANSFER_ROWS = "transfer_rows"  # unlabeled distillation files, target sets, augmented copies
TEXT_SCORING = "text_scoring"  # predict, monitor and explain on a registered version (they read texts)
CAPABILITIES = (LORA, PRIVACY, ADAPTATION, REINIT, EXPLAIN, HIDDEN_MATCHING, TRANSFER_ROWS, TEXT_SCORING)


class InputPreparer(ABC):
    """The input preparer of a modality whose models do not read token ids (an image classifier's
    ImageProcessor, engine/image_inputs.py). It has a tokenizer's role: the engine encodes training rows
    and the export makes model inputs through it. Code below the modality asks whether a preparer
    brings its own encoding (`isinstance(preparer, InputPreparer)`), never which modality it is;
    anything else is a transformers tokenizer."""

    pad_token_id: int = 0  # no padding: the engine asks every input preparer for one

    @abstractmethod
    def encode(self, inputs: list, labels, cache_dir: Path | None = None):
        """Training rows (engine/training.py's `encode` contract: a split the engine batches)."""

    @abstractmethod
    def model_inputs(self, inputs: list, tensors: str = "pt") -> dict:
        """What the model reads for `inputs`, by input name: torch tensors (`pt`) or numpy arrays (`np`)."""


class Modality(ABC):
    """One modality: how its data is read and validated, how its models train, what is logged and
    served, its default settings, and what it does not support (`refused`)."""

    name: ClassVar[str]  # the registry tag's value (registry/contract.py MODALITY) and `data.modality`
    described_as: ClassVar[str]  # what `graftline check` says it validates ("the data", "the images")
    scans_personal_data: ClassVar[bool]  # whether its rows may hold personal data to scan and redact
    refused: ClassVar[Mapping[str, str]] = {}  # capability -> why not, one line

    def __repr__(self) -> str:
        return f"<{self.name} modality>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Modality) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    # -- capabilities: the one table of refusals -------------------------------------------------

    def supports(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}: expected one of {', '.join(CAPABILITIES)}")
        return capability not in self.refused

    def refusal(self, capability: str, **fields: Any) -> str | None:
        """Why `capability` is refused (its `{fields}` filled in), or None when it is supported."""
        return None if self.supports(capability) else self.refused[capability].format(**fields)

    def refuse_unsupported(self, finetune, adapt) -> None:
        """Refuse, in one line naming every setting at fault, the training settings this modality
        cannot train with (checked before anything loads)."""
        used = (
            (LORA, "strategy lora", finetune.strategy == "lora"),
            (PRIVACY, "finetune.privacy", finetune.privacy.enabled),
            (ADAPTATION, f"adapt.method {adapt.method}", adapt.method != "none"),
        )
        by_reason: dict[str, list[str]] = {}
        for capability, setting, on in used:
            if on and not self.supports(capability):
                by_reason.setdefault(self.refused[capability], []).append(setting)
        if by_reason:
            faults = "; ".join(f"{', '.join(settings)} {reason}" for reason, settings in by_reason.items())
            raise GraftlineError(f"backbone {finetune.backbone!r} is {article(self.name)} backbone; {faults}")

    # -- resolution ---------------------------------------------------------------------------------

    @abstractmethod
    def claims(self, data) -> bool:
        """Whether `data.modality: auto` data is of this modality (read from its layout, cheaply)."""

    # -- data ---------------------------------------------------------------------------------------

    @abstractmethod
    def read_splits(self, data, unlabeled: list[str] | tuple[str, ...] = ()):
        """The run's splits (train, validation, test, evaluation sets, targets, unlabeled rows)."""

    @abstractmethod
    def read_to_check(self, data, preflight) -> tuple[Any, str]:
        """What `graftline check` validates, and the line it prints about it; `preflight` runs the
        run's pre-flight checks (tasks/preflight.py) and returns what they read."""

    @abstractmethod
    def validate(self, splits, params, folder: Path):
        """This modality's validation suite over `splits`, its report written to `folder`."""

    @abstractmethod
    def kept_split(self, name: str, frame, source: str):
        """A split read back from the evaluation sets a run kept (registry/evaluation_sets.py)."""

    # -- settings -----------------------------------------------------------------------------------

    @abstractmethod
    def default_settings(self, data, given_train_path: bool) -> dict[str, dict[str, Any]]:
        """Parameter group -> values this modality uses where the caller gave none (tasks/settings.py
        holds the values); `given_train_path`: whether the caller named the training data."""

    # -- backbones, training, students ------------------------------------------------------------

    @abstractmethod
    def require_backbone(self, spec: str, role: str = "backbone") -> None:
        """Refuse a backbone of another modality, naming the catalog's that fit."""

    @abstractmethod
    def require_student(self, spec: str) -> None:
        """Refuse a distillation student unfit for this data (a `teacher-layers:` student always fits)."""

    @abstractmethod
    def prepare_training(self, model, train_split, params, seed: int, processes: int = 1):
        """The training rows as this modality trains on them (and `model` set up for it), before the loop."""

    @abstractmethod
    def build_student(self, teacher, teacher_tokenizer, params, model, labels: list[str]):
        """(student, its input preparer, the teacher layers it keeps or None) for distillation."""

    # -- evaluation, export, serving --------------------------------------------------------------

    @abstractmethod
    def example_plots(self, evaluation, split, folder: Path, name: str) -> list[Path]:
        """Pictures of examples beside a set's scores (images: the most confident errors)."""

    @abstractmethod
    def export_calibration(self, splits) -> list | None:
        """Inputs to calibrate a static INT8 export on; None: dynamic quantisation."""

    @abstractmethod
    def log_servable(
        self, model_dir: Path, onnx: Path, labels: list[str], temperature: float, max_length: int, folder: Path
    ) -> str:
        """Log the exported ONNX file as the servable pyfunc in the active run; its model URI."""

    @abstractmethod
    def log_model(self, model_dir: Path, input_example: list[str]):
        """Log a trained classifier folder as the run's `model` (what the registry registers)."""

    @abstractmethod
    def load_version(self, model_uri: str):
        """(classifier, input preparer) of a logged model, for re-evaluation."""

    def log_registered(self, model_uri: str, model_dir: Path, temperature: float, max_length: int) -> str:
        """Log what the registry registers for the model logged as `model_uri` (its folder: `model_dir`)
        in the active run, and return its URI: by default that model itself (its own pyfunc applies
        the temperature it was logged with)."""
        return model_uri


def article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"
