"""Registry stages as aliases, moved only behind gates, with a history and a way back.

Stages (MLflow's own stages are deprecated): every registered version gets `candidate`; `promote`
moves `staging` or `production` to a version when its gates pass:

1. validation   the version's data validation passed (version tag `validation_success`);
2. thresholds   its test accuracy and macro-F1 meet the absolute minimums;
3. regression   on every evaluation set, its score minus that of the version now holding the alias
                is at least `min_improvement` (0: must not regress) -- both re-evaluated here on the
                same sets, never trusted from tags;
4. retention    for a student: at least `retention_floor` of its teacher's accuracy and
                macro-F1 on each of `retention_sets` (test by default), the teacher re-evaluated too.

Every move (promotion or rollback) runs under a registry lock, so two racing promotions of one
model leave one consistent state. The lock is held for the move alone: a promotion scores its gates
first, then under the lock moves the alias only if the holder it was compared with still holds it
(else it checks again against the new holder), so a queue of promotions waits milliseconds for each
other, not the minutes their scoring takes. Each move appends a history record (who or what
triggered it, from which version to which, the gate numbers) to the registered model as a tag, and
every attempt is an MLflow run. `rollback` returns an alias to the version that held it before the
last promotion that has not been rolled back.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

from graftline.tasks.records import Registered, Registration
from graftline.tasks.registry.contract import (
    CLASSIFIER,
    HISTORY_PREFIX,
    PRIVACY_EPSILON,
    ROLE,
    STUDENT,
    TEACHER_VERSION,
    VALIDATION,
    recorded_max_length,
    teacher_name,
)
from graftline.tasks.registry.stages import (
    PromotionError,
    alias_holder,
    history,
    promotion_target,
    rollback_target,
)
from graftline.tasks.settings import EXPERIMENT, GateParams, RegistryParams


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Outcome:
    model: str
    alias: str
    version: str
    previous: str | None  # the version that held the alias before
    moved: bool
    action: str  # promote | rollback
    checks: list[Check] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # "v3" -> {"test_macro_f1": ...}
    run_id: str | None = None

    @property
    def reason(self) -> str:
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]
        if failed:
            return "refused: " + "; ".join(failed)
        return "; ".join(c.detail for c in self.checks) or self.action

    def as_dict(self) -> dict:
        return {**asdict(self), "reason": self.reason}


# -- gates --------------------------------------------------------------------------------------


CURRENT = object()  # check_gates compares with whichever version holds the alias when it looks


def check_gates(
    client,
    name: str,
    version: str,
    alias: str,
    eval_sets: dict,
    gates: GateParams,
    measured: dict[str, float] | None = None,
    holder: str | None | object = CURRENT,
) -> tuple[list[Check], dict[str, dict[str, float]]]:
    """The gates of a promotion of `name` v`version` to `alias`, with every score they used.
    `measured`: the version's scores on `eval_sets` as its run's evaluate step measured them on the
    same weights (registration); None: score the registry's copy (every later promotion).
    `holder`: the version the regression gate compares with (default: the alias's holder now)."""
    from graftline.tasks.errors import DataError
    from graftline.tasks.evaluate.scores import retention, retention_gate

    tags = client.get_model_version(name, version).tags
    checks, scores = [], {}
    if gates.require_validation:
        state = tags.get(VALIDATION)
        checks.append(
            Check(
                "validation",
                state == "true",
                "data validation passed"
                if state == "true"
                else f"data validation {'failed' if state else 'not recorded'}",
            )
        )
    if gates.max_epsilon is not None:
        checks.append(privacy_check(tags, gates.max_epsilon))
    scores[f"v{version}"] = mine = measured if measured is not None else _scores(client, name, version, eval_sets)
    source = " (the evaluate step's scores of these weights)" if measured is not None else ""
    low = [
        f"test {m} {mine[f'test_{m}']:.4f} < {floor}"
        for m, floor in (("accuracy", gates.min_accuracy), ("macro_f1", gates.min_macro_f1))
        if mine[f"test_{m}"] < floor
    ]
    checks.append(
        Check(
            "thresholds",
            not low,
            (
                "; ".join(low)
                or f"test accuracy {mine['test_accuracy']:.4f} >= {gates.min_accuracy}, "
                f"macro-F1 {mine['test_macro_f1']:.4f} >= {gates.min_macro_f1}"
            )
            + source,
        )
    )

    holder = alias_holder(client, name, alias) if holder is CURRENT else holder
    if holder is None:
        checks.append(Check("regression", True, f"no version holds {alias} yet"))
    else:
        try:
            theirs = scores[f"v{holder}"] = _scores(client, name, holder, eval_sets)
        except DataError as exc:
            checks.append(Check("regression", False, f"v{holder} cannot be scored on these sets ({exc})"))
        else:
            short = [
                f"{s} {gates.metric} {mine[f'{s}_{gates.metric}']:.4f} vs v{holder} {theirs[f'{s}_{gates.metric}']:.4f}"
                for s in eval_sets
                if mine[f"{s}_{gates.metric}"] - theirs[f"{s}_{gates.metric}"] < gates.min_improvement
            ]
            checks.append(
                Check(
                    "regression",
                    not short,
                    "; ".join(short) + f" (min improvement {gates.min_improvement})"
                    if short
                    else f"{gates.metric} >= v{holder} + {gates.min_improvement} on {', '.join(eval_sets)}",
                )
            )

    if tags.get(ROLE) == STUDENT:
        teacher, teacher_version = teacher_name(name), tags.get(TEACHER_VERSION)
        if not teacher_version:
            checks.append(Check("retention", False, "no teacher_version tag to measure retention against"))
        else:
            held_on = (
                eval_sets
                if "*" in gates.retention_sets
                else {n: eval_sets[n] for n in gates.retention_sets if n in eval_sets}
            )
            theirs = scores[f"teacher v{teacher_version}"] = _scores(client, teacher, teacher_version, held_on)
            kept = retention({k: v for k, v in mine.items() if k in theirs}, theirs)
            failure = retention_gate(kept, gates.retention_floor, gates.retention_sets)
            detail = f"keeps {min(kept.values()):.4f} of {teacher} v{teacher_version} (floor {gates.retention_floor})"
            checks.append(Check("retention", failure is None, failure or detail))
    return checks, scores


def privacy_check(tags: dict[str, str], max_epsilon: float) -> Check:
    """A version passes when its training spent at most `max_epsilon` of differential privacy."""
    spent = tags.get(PRIVACY_EPSILON)
    if spent is None:
        return Check("privacy", False, f"trained without differential privacy (max epsilon {max_epsilon})")
    passed = float(spent) <= max_epsilon
    return Check("privacy", passed, f"epsilon {float(spent):.3g} {'<=' if passed else '>'} {max_epsilon}")


def _scores(client, name: str, version: str, eval_sets: dict) -> dict[str, float]:
    """`name` v`version` scored on `eval_sets` as it was evaluated when registered (its own max length)."""
    from graftline.tasks.evaluate.scores import evaluate_model, headline_scores
    from graftline.tasks.registry.versions import load_version

    max_length = recorded_max_length(client.get_model_version(name, version).tags)
    model, tokenizer = load_version(name, version)
    return headline_scores({s: evaluate_model(model, tokenizer, split, max_length) for s, split in eval_sets.items()})


# -- moving aliases -----------------------------------------------------------------------------


def promote(
    client,
    name: str,
    alias: str,
    eval_sets: dict,
    gates: GateParams,
    triggered_by: str,
    version: str | None = None,
    experiment: str = EXPERIMENT,
    lock_wait: float = 60.0,
    measured: dict[str, float] | None = None,
) -> Outcome:
    """Move `alias` to `version` (default: the holder of the stage below) if its gates pass
    (`measured`: check_gates)."""
    version = promotion_target(client, name, alias, version)
    while True:
        # The gates score models (seconds to minutes): outside the lock, against the holder read
        # now. Under the lock the alias moves only if that holder still holds it; otherwise the
        # gates run again against the new one (this version's own scores are kept).
        previous = alias_holder(client, name, alias)
        outcome = Outcome(name, alias, version, previous, moved=False, action="promote")
        if previous == version:
            outcome.checks = [Check("already", False, f"v{version} already holds {alias}")]
        else:
            outcome.checks, outcome.scores = check_gates(
                client, name, version, alias, eval_sets, gates, measured, holder=previous
            )
            measured = outcome.scores[f"v{version}"]
        with registry_lock(client, name, triggered_by, lock_wait):
            if alias_holder(client, name, alias) != previous:
                continue  # moved meanwhile by another promotion or rollback
            if previous != version and all(c.passed for c in outcome.checks):
                client.set_registered_model_alias(name, alias, version)
                outcome.moved = True
            outcome.run_id = _log_run(outcome, triggered_by, experiment)
            if outcome.moved:
                _append_history(client, outcome, triggered_by)
        return outcome


def rollback(
    client, name: str, alias: str, triggered_by: str, experiment: str = EXPERIMENT, lock_wait: float = 60.0
) -> Outcome:
    """Return `alias` to the version that held it before its last (not rolled back) promotion."""
    rollback_target(client, name, alias)  # bad input before the lock is taken
    with registry_lock(client, name, triggered_by, lock_wait):
        current, target = rollback_target(client, name, alias)  # again: another promotion may have run meanwhile
        client.set_registered_model_alias(name, alias, target)
        outcome = Outcome(
            name,
            alias,
            target,
            current,
            moved=True,
            action="rollback",
            checks=[Check("rollback", True, f"{alias} returned from v{current} to v{target}")],
        )
        outcome.run_id = _log_run(outcome, triggered_by, experiment)
        _append_history(client, outcome, triggered_by)
    return outcome


def register_models(
    models: list, splits, params: RegistryParams, tags: dict[str, str], triggered_by: str, max_length: int
) -> Registered:
    """The register step: `models` (TrainedModel, teacher first) registered under `params.model_name`
    with `tags`, then each promoted if its gates pass on the evaluation sets of `splits`."""
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry.versions import candidates

    entries, sets = candidates(models, params.model_name, tags, max_length), splits.evaluation_sets()
    entries = [registered_form(entry, m, max_length) for entry, m in zip(entries, models, strict=True)]
    settings = (params.promote_to, sets, params.gates, triggered_by, params.experiment)
    # the evaluate step scored these very weights on these sets: the gates read its scores
    measured = {entry.name: m.scores_of_logged_weights() for m, entry in zip(models, entries, strict=True)}
    done = register_and_promote(MlflowClient(), entries, *settings, measured=measured)
    return Registered(tuple(m.role for m in models), tuple(done))


def registered_form(entry, model, max_length: int):
    """`entry` registering what its modality registers for `model`: for text, a pyfunc applying the
    version's temperature to the trained model, which the `classifier_uri` tag names."""
    from graftline.tasks import modality as modalities

    temperature = model.calibration.temperature if model.calibration else 1.0
    uri = modalities.by_name(model.modality).log_registered(model.model_uri, model.model_dir, temperature, max_length)
    if uri == model.model_uri:
        return entry
    return replace(entry, model_uri=uri, tags={**entry.tags, CLASSIFIER: model.model_uri})


def register_and_promote(
    client,
    candidates: list,
    promote_to: str,
    eval_sets: dict,
    gates: GateParams,
    triggered_by: str,
    experiment: str = EXPERIMENT,
    measured: dict[str, dict[str, float] | None] | None = None,
) -> list[Registration]:
    """Register `candidates` (all or nothing, alias `candidate`), then promote each new version to
    `promote_to` ("none": leave them candidates) if its gates pass; `measured`: registered name ->
    its scores already measured on these weights (check_gates)."""
    from graftline.tasks.registry.versions import register_all

    registrations = register_all(client, candidates)
    if promote_to == "none":
        return registrations
    decided = []
    for registration in registrations:
        try:
            outcome = promote(
                client,
                registration.name,
                promote_to,
                eval_sets,
                gates,
                triggered_by,
                version=registration.version,
                experiment=experiment,
                measured=(measured or {}).get(registration.name),
            )
        except PromotionError as exc:
            decided.append(replace(registration, reason=f"not promoted: {exc}"))
            continue
        decided.append(
            replace(
                registration,
                aliases=registration.aliases + ((promote_to,) if outcome.moved else ()),
                promoted=outcome.moved,
                reason=outcome.reason,
                promotion_run_id=outcome.run_id,
            )
        )
    return decided


@contextmanager
def registry_lock(client, name: str, owner: str, wait: float = 60.0):
    """One writer moving `name`'s aliases at a time (registry/locks.py: a Prefect concurrency limit
    with a Prefect server, a file lock without one); `PromotionError` after `wait` seconds."""
    from graftline.tasks.registry import locks

    try:
        with locks.hold(client, name, wait):
            yield
    except locks.LockBusy as exc:
        raise PromotionError(f"{name}: the registry lock is {exc}; {owner} waited {wait:g} s, try again") from None


def append_record(client, name: str, record: dict) -> None:
    """Add `record` (with the time) as the next history record of registered model `name`."""
    number = len(history(client, name)) + 1
    record = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **record}
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{number:05d}", json.dumps(record))


def _append_history(client, outcome: Outcome, triggered_by: str) -> None:
    record = {
        "action": outcome.action,
        "alias": outcome.alias,
        "from_version": outcome.previous,
        "to_version": outcome.version,
        "triggered_by": triggered_by,
        "run_id": outcome.run_id,
        "gates": {c.name: c.detail for c in outcome.checks},
        "scores": {v: {k: round(x, 4) for k, x in s.items()} for v, s in outcome.scores.items()},
    }
    append_record(client, outcome.model, record)


def _log_run(outcome: Outcome, triggered_by: str, experiment: str) -> str:
    """Every attempt is an MLflow run: the gate numbers, the decision, who asked."""
    import mlflow

    from graftline.tasks.registry import tracking

    tracking.configure(experiment)
    title = f"{outcome.action} {outcome.model} v{outcome.version} -> {outcome.alias}"
    with mlflow.start_run(
        run_name=title,
        nested=mlflow.active_run() is not None,
        tags={"graftline.step": outcome.action, "graftline.model": outcome.model},
    ) as run:
        mlflow.log_params(
            {
                "model": outcome.model,
                "alias": outcome.alias,
                "version": outcome.version,
                "previous_version": outcome.previous,
                "triggered_by": triggered_by,
            }
        )
        mlflow.log_metrics({f"{v.replace(' ', '_')}_{k}": x for v, s in outcome.scores.items() for k, x in s.items()})
        mlflow.log_metric("moved", float(outcome.moved))
        mlflow.set_tag("graftline.decision", outcome.reason)
        mlflow.log_dict(outcome.as_dict(), "promotion.json")
        return run.info.run_id
