"""Reading the registry's stages: who holds an alias, the history of moves, and what a promotion or
rollback would move. Kept apart from the gates (promotion.py), which score models, so a command
can check its input against the registry before it starts anything without importing torch.
"""

from __future__ import annotations

import json

from graftline.tasks.errors import GraftlineError
from graftline.tasks.registry.contract import (
    BELOW,
    HISTORY_PREFIX,
    LABELS,
    MODALITY,
    PROMOTABLE,
    STUDENT_SUFFIX,
    TEXT,
    labels_tag,
)


class PromotionError(GraftlineError):
    """A promotion or rollback that cannot be carried out (not a failed gate: that is an outcome)."""


def alias_holder(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def history(client, name: str) -> list[dict]:
    """The model's history records, oldest first."""
    model = _registered_model(client, name)
    records = [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith(HISTORY_PREFIX)]
    return records


def previous_holder(records: list[dict], alias: str) -> str | None:
    """Who held `alias` before its latest promotion that has not been rolled back."""
    stack: list[str | None] = []
    for record in records:
        if record.get("alias") != alias:  # monitor records move no alias
            continue
        if record["action"] == "promote":
            stack.append(record["from_version"])
        elif record["action"] == "rollback" and stack:
            stack.pop()
    return stack[-1] if stack else None


def promotion_target(client, name: str, alias: str, version: str | None = None) -> str:
    """The version a promotion of `name` to `alias` would move (`version`, else the holder of the
    stage below), or a one-line error: what `graftline promote` checks before it starts anything."""
    if alias not in PROMOTABLE:
        raise PromotionError(f"cannot promote to {alias!r}: the stages are {', '.join(PROMOTABLE)}")
    _registered_model(client, name)
    if version is None:
        version = alias_holder(client, name, BELOW[alias])
        if version is None:
            raise PromotionError(f"{name}: no version holds {BELOW[alias]!r} to promote to {alias}")
    _require_version(client, name, version)
    return version


def rollback_target(client, name: str, alias: str) -> tuple[str, str]:
    """(the version holding `alias`, the one a rollback returns it to), or a one-line error."""
    if alias not in PROMOTABLE:
        raise PromotionError(f"cannot roll back {alias!r}: the stages are {', '.join(PROMOTABLE)}")
    _registered_model(client, name)
    current = alias_holder(client, name, alias)
    if current is None:
        raise PromotionError(f"{name}: no version holds {alias}; nothing to roll back")
    target = previous_holder(history(client, name), alias)
    if target is None:
        raise PromotionError(f"{name}: {alias} v{current} has no previous holder in the history to return to")
    _require_version(client, name, target)
    return current, target


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise PromotionError(f"no registered model named {name!r}") from None


def _require_version(client, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise PromotionError(f"{name} has no version {version}") from None


def require_one_kind(client, name: str, modality: str, labels: list[str]) -> None:
    """A registered name holds one kind of model: a one-line error when `name` (or its student) has
    versions of another modality or another label set than a new version would have. Checked before
    training, so a run that could not be registered does not start."""
    for registered in (name, name + STUDENT_SUFFIX):
        versions = client.search_model_versions(
            f"name = '{registered}'", max_results=1, order_by=["version_number DESC"]
        )
        if not versions:
            continue
        latest = versions[0]
        theirs = latest.tags.get(MODALITY, TEXT)
        if theirs != modality:
            raise PromotionError(
                f"{registered} holds {theirs} models (v{latest.version}), not {modality} ones: "
                "give this model a name of its own (--model-name, registry.model_name)"
            )
        recorded = latest.tags.get(LABELS)
        if recorded is not None and recorded != labels_tag(labels):
            shown = recorded if not recorded.startswith("sha256:") else "another label set"
            raise PromotionError(
                f"{registered} v{latest.version} predicts {shown}; this run's labels are {labels_tag(labels)}: "
                "a registered name holds one label set, so give this model a name of its own "
                "(--model-name, registry.model_name)"
            )
