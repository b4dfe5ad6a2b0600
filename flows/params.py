"""The flows' parameters: the groups of tasks/settings.py (where every default lives), assembled.

Prefect renders these as a validated form in its UI. `TransferParams` is the lifecycle's whole
parameter set (what `graftline run --config` reads and `parameters.json` records); `PromoteParams`
is the `promote` flow's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from graftline.tasks import settings


class TransferParams(settings.Params):
    """All parameters of the lifecycle flow, grouped by step."""

    data: settings.DataParams = Field(default_factory=settings.DataParams)
    validation: settings.ValidationParams = Field(default_factory=settings.ValidationParams)
    model: settings.ModelParams = Field(default_factory=settings.ModelParams)
    select: settings.SelectParams = Field(default_factory=settings.SelectParams)
    finetune: settings.FinetuneParams = Field(default_factory=settings.FinetuneParams)
    adapt: settings.AdaptParams = Field(default_factory=settings.AdaptParams)
    distill: settings.DistillParams = Field(default_factory=settings.DistillParams)
    export: settings.ExportParams = Field(default_factory=settings.ExportParams)
    explain: settings.ExplainParams = Field(default_factory=settings.ExplainParams)
    registry: settings.RegistryParams = Field(default_factory=settings.RegistryParams)
    tracking: settings.TrackingParams = Field(default_factory=settings.TrackingParams)
    run: settings.RunParams = Field(default_factory=settings.RunParams)

    @model_validator(mode="after")
    def _adaptation_has_targets(self) -> TransferParams:
        if self.adapt.method != "none" and not self.data.target_sets:
            raise ValueError(
                f"adapt.method {self.adapt.method!r} needs unlabeled target texts: "
                "data.target_sets (--target NAME=PATH)"
            )
        if self.adapt.method != "none" and self.finetune.privacy.enabled:
            raise ValueError(
                f"adapt.method {self.adapt.method!r} trains on target texts outside the privacy accounting; "
                "set adapt.method=none with finetune.privacy"
            )
        if self.adapt.method != "none" and self.finetune.processes > 1:
            raise ValueError(f"adapt.method {self.adapt.method!r} trains in one process; set finetune.processes=1")
        if self.adapt.self_trains and self.finetune.search.enabled:
            raise ValueError(
                f"finetune.search with adapt.method {self.adapt.method!r}: every trial would run its own pseudo-label "
                "rounds; search with adapt.method none or mlm"
            )
        return self

    @model_validator(mode="after")
    def _retention_sets_are_evaluated(self) -> TransferParams:
        known = {"test", "*", *self.data.eval_sets}
        unknown = [name for name in self.registry.gates.retention_sets if name not in known]
        if unknown:
            sets = ", ".join(["test", *self.data.eval_sets])
            raise ValueError(f"registry.gates.retention_sets {unknown} are not evaluation sets ({sets})")
        return self

    def for_modality(self) -> TransferParams:
        """These parameters as the data needs them: for image data (`data.modality`, or what `auto` finds),
        every parameter of settings.IMAGE_DEFAULTS that was not given takes its image default, so
        `--modality image` alone runs the image demo and an image folder alone trains an image model. A
        parameter given explicitly is kept, even at its text default (a text backbone is then refused)."""
        from graftline.tasks.data.images import modality_of

        if self.data.modality == "text" or (self.data.modality == "auto" and modality_of(self.data) != "image"):
            return self
        changed = settings.IMAGE_DEFAULTS
        if "train_path" not in self.data.model_fields_set or self.data.train_path == settings.IMAGE_DEMO_TRAIN:
            changed = changed | settings.IMAGE_DEMO_DEFAULTS
        groups = {}
        for name, values in changed.items():
            group = getattr(self, name)
            unset = {key: value for key, value in values.items() if key not in group.model_fields_set}
            groups[name] = group.model_copy(update=unset)
        data = groups.get("data", self.data)
        groups["data"] = data.model_copy(update={"modality": "image"})
        return self.model_copy(update=groups)

    def groups(self) -> dict:
        """The groups by name: the keyword arguments of the `transfer` flow."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class PromoteParams(settings.Params):
    model_name: str = Field(
        "graftline-demo", min_length=1, description="Registered model to promote (students: `<name>-student`)."
    )
    to: Literal["staging", "production"] = Field("staging", description="The alias to move.")
    version: str | None = Field(
        None,
        pattern=r"^[0-9]+$",
        description="Version to promote; empty: the holder of the stage below (candidate -> staging -> production).",
    )
    gates: settings.GateParams = Field(default_factory=settings.GateParams, description="What the version must show.")
    eval_sets: dict[str, str] = Field(
        default_factory=dict,
        description="Evaluation sets name -> path (needs a `test` entry); empty: the version's own, logged at ingest.",
    )
    text_column: str = Field("text", min_length=1, description="Text column of the eval_sets files.")
    label_column: str = Field("label", min_length=1, description="Label column of the eval_sets files.")
    experiment: str = Field("graftline", min_length=1, description="MLflow experiment of the promotion runs.")


def version_field(purpose: str):
    """The one form field naming a registered version (tasks/predict.ModelReference reads it)."""
    return Field(
        "graftline-demo-student@production",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_-]+|/[0-9]+)?$",
        description=f"Registered version {purpose}: MODEL@ALIAS, MODEL/VERSION, or MODEL (its production version).",
    )


class PredictParams(settings.Params):
    model: str = version_field("to score with")
    input_path: str = Field(
        ..., min_length=1, description="Texts to score: CSV, JSONL or Parquet (path or fsspec URL)."
    )
    output_path: str = Field(
        ..., min_length=1, description="Where the scored rows go (.csv, .jsonl or .parquet): every input column "
        "plus predicted_label, score_<label> and model_version.",
    )  # fmt: skip
    text_column: str = Field("text", min_length=1, description="Text column of the input.")
    batch_size: int = Field(32, ge=1, le=4096, description="Texts scored per call.")
    form: Literal["auto", "onnx-int8", "onnx", "torch"] = Field(
        "auto", description="Which form of the version scores: auto is the fastest whose export passed parity."
    )
    explain: bool = Field(
        False, description="Add `top_words`: the words that pushed each row to its label (IG; ~0.3 s a row on a CPU)."
    )
    experiment: str = Field("graftline", min_length=1, description="MLflow experiment of the prediction runs.")


class MonitorParams(settings.Params):
    """A drift check of a registered version on new texts, and what happens when it finds harmful drift."""

    model: str = version_field("to check")
    input_path: str | None = Field(
        None,
        min_length=1,
        description="New texts (CSV, JSONL or Parquet; path or fsspec URL); empty: every row `predict` scored with "
        "this model since its last check.",
    )
    text_column: str = Field("text", min_length=1, description="Text column of the input.")
    alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm rate of the verdict, shared by the four detectors.")
    max_accuracy_drop: float = Field(
        0.05, ge=0, le=1, description="Drift whose estimated accuracy falls this far below the reference's is harmful."
    )
    accuracy_estimate: Literal["confidence", "atc"] = Field(
        "confidence",
        description="Label-free accuracy estimate: mean calibrated confidence, or ATC (thresholded confidence).",
    )
    min_rows: int = Field(50, ge=10, description="Fewest new texts a check runs on (fewer: too little power).")
    reference_rows: int = Field(1000, ge=50, description="Most held-out rows of the version used as the reference.")
    permutations: int = Field(300, ge=50, le=10000, description="Permutations of the MMD test.")
    retrain: bool = Field(True, description="On harmful drift, start the retrain deployment with the new texts.")
    retrain_deployment: str = Field("transfer/retrain", min_length=3, description="FLOW/DEPLOYMENT to start.")
    adapt_method: Literal["mlm", "self-training", "mlm+self-training"] = Field(
        "self-training",
        description="Adaptation the retraining uses on the new texts when its deployment has none.",
    )
    experiment: str = Field("graftline", min_length=1, description="MLflow experiment of the monitor runs.")
