"""The MLflow Model Registry side of the lifecycle: log, register, undo.

Every version registers with alias `candidate`; moving `staging` and `production` is the job of
`promotion` (gates, lock, history). Registration is all-or-nothing: on any error the versions
created so far are deleted and the aliases restored.

A resumed lifecycle registers nothing twice: when the run it finishes had already registered a
model (it failed after registering, e.g. while promoting), the version with the same weights that
run registered is adopted, not registered again, and the promotion goes on from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graftline.tasks import modality as modalities
from graftline.tasks.records import Registration, TrainedModel
from graftline.tasks.registry import contract
from graftline.tasks.registry.contract import CANDIDATE


@dataclass
class Candidate:
    """A logged model waiting to be registered."""

    name: str
    model_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    teacher: str | None = None  # the candidate (by name) whose new version is this one's teacher


def candidates(models: list[TrainedModel], model_name: str, tags: dict[str, str], max_length: int) -> list[Candidate]:
    """The registry entries of a lifecycle's models under the contract's names and tags; `tags` are
    the ones every version of the run shares (data digest, validation, what ran it)."""
    teacher = contract.registered_name(model_name, contract.TEACHER)
    return [
        Candidate(
            name=contract.registered_name(model_name, m.role),
            model_uri=m.model_uri,
            teacher=teacher if m.role == contract.STUDENT else None,
            tags={
                **tags,
                contract.ROLE: m.role,
                contract.BACKBONE: m.backbone,
                contract.MAX_LENGTH: str(max_length),
                contract.MODALITY: m.modality,
                contract.TRAINING_RUN: m.run_id,
                **({contract.EXPORT_RUN: m.export_run_id} if m.export_run_id else {}),
                **({contract.SERVABLE: m.servable_uri} if m.servable_uri else {}),
                **m.privacy,
                **({contract.TEMPERATURE: f"{m.calibration.temperature:.6g}"} if m.calibration else {}),
                **({contract.WEIGHTS_DIGEST: m.weights_digest} if m.weights_digest else {}),
                contract.TEST_ACCURACY: f"{m.evaluations['test'].accuracy:.4f}",
                contract.TEST_MACRO_F1: f"{m.evaluations['test'].macro_f1:.4f}",
            },
        )
        for m in models
    ]


def load_version(name: str, version: str):
    """(model, tokenizer) of a registered version, for re-evaluation, as its modality logged it (a
    transformers model; an image classifier from the safetensors folder beside its ONNX graph)."""
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_model_version(name, version).tags
    return modalities.of_version(tags).load_version(contract.trained_model_uri(name, version, tags))


def register_all(client, candidates: list[Candidate]) -> list[Registration]:
    """Register every candidate with alias `candidate`, or change nothing at all."""
    import mlflow
    from mlflow.exceptions import MlflowException

    existing = {c.name for c in candidates if _model_exists(client, c.name)}
    previous = {c.name: _aliases(client, c.name) for c in candidates if c.name in existing}
    created: list[tuple[str, str]] = []
    try:
        versions = {}
        for candidate in candidates:
            adopted = _registered_before(client, candidate) if candidate.name in existing else None
            if adopted is not None:
                versions[candidate.name] = adopted
                continue
            versions[candidate.name] = str(
                mlflow.register_model(candidate.model_uri, candidate.name, tags=candidate.tags).version
            )
            created.append((candidate.name, versions[candidate.name]))
        for candidate in candidates:
            if candidate.teacher:
                client.set_model_version_tag(
                    candidate.name, versions[candidate.name], contract.TEACHER_VERSION, versions[candidate.teacher]
                )
            client.set_registered_model_alias(candidate.name, CANDIDATE, versions[candidate.name])
        return [Registration(c.name, versions[c.name], (CANDIDATE,)) for c in candidates]
    except (Exception, KeyboardInterrupt):
        new_models = {c.name for c in candidates} - existing  # register_model may create the model, then fail
        _undo(client, created, new_models, previous, MlflowException)
        raise


def _registered_before(client, candidate: Candidate) -> str | None:
    """The version of `candidate` the run this one resumes registered (same weights), if any."""
    resumed = candidate.tags.get(contract.RESUMED_FROM)
    weights = candidate.tags.get(contract.WEIGHTS_DIGEST)
    if not resumed or not weights:
        return None
    for version in client.search_model_versions(f"name='{candidate.name}'"):
        if version.tags.get(contract.LIFECYCLE_RUN) == resumed and version.tags.get(contract.WEIGHTS_DIGEST) == weights:
            return str(version.version)
    return None


def _undo(client, created, new_models, previous, error_type) -> None:
    for name, version in reversed(created):
        try:
            client.delete_model_version(name, version)
        except error_type:
            pass
    for name in new_models:
        try:
            client.delete_registered_model(name)
        except error_type:
            pass
    for name, aliases in previous.items():
        for alias, version in aliases.items():
            client.set_registered_model_alias(name, alias, version)


def _model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def _aliases(client, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def log_classifier(model_dir: Path, input_example: list[str]):
    """Log a saved classifier folder as its modality logs a model (tasks/modality/): a text model with
    the transformers flavor (safetensors, signature, example), an image classifier as the ONNX pyfunc
    of image_servable.py, its safetensors folder beside it."""
    return modalities.of_backbone(str(model_dir)).log_model(model_dir, input_example)
