"""The flows' parameters: the groups of tasks/settings.py (where every default lives), assembled.

Prefect renders these as a validated form in its UI. `TransferParams` is the lifecycle's whole
parameter set (what `graftline run --config` reads and `parameters.json` records); `PromoteParams`
is the `promote` flow's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from graftline.tasks.settings import (
    DataParams,
    DistillParams,
    ExportParams,
    FinetuneParams,
    GateParams,
    ModelParams,
    Params,
    RegistryParams,
    RunParams,
    SelectParams,
    ValidationParams,
)


class TransferParams(Params):
    """All parameters of the lifecycle flow, grouped by step."""

    data: DataParams = Field(default_factory=DataParams)
    validation: ValidationParams = Field(default_factory=ValidationParams)
    model: ModelParams = Field(default_factory=ModelParams)
    select: SelectParams = Field(default_factory=SelectParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    distill: DistillParams = Field(default_factory=DistillParams)
    export: ExportParams = Field(default_factory=ExportParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)
    run: RunParams = Field(default_factory=RunParams)

    def groups(self) -> dict:
        """The groups by name: the keyword arguments of the `transfer` flow."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class PromoteParams(Params):
    model_name: str = Field(
        "graftline-demo", min_length=1, description="Registered model to promote (students: `<name>-student`)."
    )
    to: Literal["staging", "production"] = Field("staging", description="The alias to move.")
    version: str | None = Field(
        None,
        pattern=r"^[0-9]+$",
        description="Version to promote; empty: the holder of the stage below (candidate -> staging -> production).",
    )
    gates: GateParams = Field(default_factory=GateParams, description="What the version must show.")
    eval_sets: dict[str, str] = Field(
        default_factory=dict,
        description="Evaluation sets name -> path (needs a `test` entry); empty: the version's own, logged at ingest.",
    )
    text_column: str = Field("text", min_length=1, description="Text column of the eval_sets files.")
    label_column: str = Field("label", min_length=1, description="Label column of the eval_sets files.")
    experiment: str = Field("graftline", min_length=1, description="MLflow experiment of the promotion runs.")
