"""The flows' parameters: the groups of tasks/settings.py (where every default lives), assembled.

Prefect renders these as a validated form in its UI. `TransferParams` is the lifecycle's whole
parameter set (what `graftline run --config` reads and `parameters.json` records). The flows of one
command take that command's group as it is: `promote` PromoteParams, `predict` PredictParams,
`monitor` MonitorParams (the `rollback` flow's signature is RollbackParams' fields).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from graftline.tasks import settings
from graftline.tasks.settings import MonitorParams, PredictParams, PromoteParams, RollbackParams

__all__ = ["MonitorParams", "PredictParams", "PromoteParams", "RollbackParams", "TransferParams"]


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
        parameter given explicitly is kept, even at its text default (a text backbone is then refused).
        Without a `registry.model_name`, the model is named after its data (settings.default_model_name)."""
        from graftline.tasks import modality as modalities

        modality = modalities.of_data(self.data)
        changed = modality.default_settings(self.data, given_train_path="train_path" in self.data.model_fields_set)
        groups = {}
        for name, values in changed.items():
            group = getattr(self, name)
            unset = {key: value for key, value in values.items() if key not in group.model_fields_set}
            groups[name] = group.model_copy(update=unset)
        if changed:
            data = groups.get("data", self.data)
            groups["data"] = data.model_copy(update={"modality": modality.name})
        registry = groups.get("registry", self.registry)
        if registry.model_name is None:
            named = settings.default_model_name(groups.get("data", self.data))
            groups["registry"] = registry.model_copy(update={"model_name": named})
        return self.model_copy(update=groups) if groups else self

    def groups(self) -> dict:
        """The groups by name: the keyword arguments of the `transfer` flow."""
        return {name: getattr(self, name) for name in type(self).model_fields}
