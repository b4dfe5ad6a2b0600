"""The MLflow Model Registry side of the lifecycle: log, register, alias, decide, undo.

Vocabulary (aliases; MLflow stages are deprecated): every new version gets `challenger`; it also
gets `champion` when the model has no champion yet, or when it beats the champion on the *same*
test set (the champion is re-evaluated on the current data, never trusted from its tags) by more
than the configured margin. Registration is all-or-nothing: on any error the versions created so
far are deleted and the aliases restored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    challenger_score: float
    champion_score: float | None = None
    champion_version: str | None = None


@dataclass
class Registration:
    name: str
    version: str
    aliases: list[str]
    decision: Decision


@dataclass
class Candidate:
    """A logged model waiting to be registered, with its score on the current test set."""

    name: str
    model_uri: str
    score: float
    tags: dict[str, str] = field(default_factory=dict)
    champion_score: float | None = None  # the current champion's score on the same test set
    champion_version: str | None = None
    champion_note: str | None = None  # why the champion could not be scored, if it could not


def decide(candidate: Candidate, metric: str, margin: float) -> Decision:
    """Champion or not: pure rule, logged with both scores."""
    common = dict(metric=metric, challenger_score=candidate.score, champion_version=candidate.champion_version)
    if candidate.champion_version is None:
        return Decision(True, "no champion yet", **common)
    if candidate.champion_score is None:
        return Decision(False, f"champion v{candidate.champion_version} kept: {candidate.champion_note}", **common)
    gain = candidate.score - candidate.champion_score
    verdict = (
        f"{metric} {candidate.score:.4f} vs champion v{candidate.champion_version} "
        f"{candidate.champion_score:.4f} on the same test set (margin {margin})"
    )
    promote = gain > margin
    return Decision(promote, ("beats " if promote else "does not beat ") + verdict, champion_score=candidate.champion_score, **common)


def champion_version(client, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None  # no such model, or no champion alias


def load_version(name: str, version: str):
    """(model, tokenizer) of a registered transformers version, for re-evaluation."""
    import mlflow.transformers

    components = mlflow.transformers.load_model(f"models:/{name}/{version}", return_type="components")
    return components["model"], components["tokenizer"]


def register_all(client, candidates: list[Candidate], metric: str, margin: float) -> list[Registration]:
    """Register every candidate and move aliases, or change nothing at all."""
    import mlflow
    from mlflow.exceptions import MlflowException

    existing = {c.name for c in candidates if _model_exists(client, c.name)}
    previous = {c.name: _aliases(client, c.name) for c in candidates if c.name in existing}
    created: list[tuple[str, str]] = []
    try:
        registrations = []
        for candidate in candidates:
            version = str(mlflow.register_model(candidate.model_uri, candidate.name, tags=candidate.tags).version)
            created.append((candidate.name, version))
            decision = decide(candidate, metric, margin)
            registrations.append(Registration(candidate.name, version, [], decision))
        for registration in registrations:
            aliases = [CHALLENGER] + ([CHAMPION] if registration.decision.promote else [])
            for alias in aliases:
                client.set_registered_model_alias(registration.name, alias, registration.version)
            client.set_model_version_tag(registration.name, registration.version, "graftline.decision", registration.decision.reason)
            registration.aliases = aliases
        return registrations
    except (Exception, KeyboardInterrupt):
        new_models = {c.name for c in candidates} - existing  # register_model may create the model, then fail
        _undo(client, created, new_models, previous, MlflowException)
        raise


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


def pip_requirements() -> list[str]:
    """Exact versions of what a served model needs (explicit: inference of them is slow and wrong)."""
    from importlib.metadata import version

    packages = ["torch", "transformers", "tokenizers", "safetensors", "numpy"]
    return [f"{p}=={version(p).split('+')[0]}" for p in packages]


def log_classifier(model_dir: Path, input_example: list[str]):
    """Log a saved classifier folder with the transformers flavor (safetensors, signature, example)."""
    import logging

    import mlflow.transformers
    from transformers import pipeline

    from graftline.tasks.backbones import load_classifier, load_tokenizer

    # A local folder has no hub model card or licence to fetch; MLflow warns about both.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)

    classifier = pipeline(
        "text-classification", model=load_classifier(str(model_dir)), tokenizer=load_tokenizer(str(model_dir))
    )
    return mlflow.transformers.log_model(
        classifier,
        name="model",
        task="text-classification",
        pip_requirements=pip_requirements(),
        input_example=input_example,
    )
