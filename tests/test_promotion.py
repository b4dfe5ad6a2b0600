"""Promotion gates, history, rollback and the registry lock, on a real (sqlite) MLflow store with
tiny registered models: a `good` one fine-tuned on the toy task and a `random` one that was not."""

import json
import re
import threading

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from graftline.tasks.data.splits import Split
from graftline.tasks.registry import tracking
from graftline.tasks.registry.contract import CANDIDATE, PRODUCTION, STAGING
from graftline.tasks.registry.promotion import PromotionError, history, promote, registry_lock, rollback
from graftline.tasks.registry.stages import previous_holder
from graftline.tasks.registry.versions import Candidate, log_classifier, register_all
from graftline.tasks.settings import FinetuneParams, GateParams
from graftline.tasks.train.finetune import finetune
from tests.conftest import short_texts, toy_frame


@pytest.fixture(scope="module")
def model_uris(mlflow_store, tiny_backbone, tmp_path_factory):
    """Logged MLflow models: `good` (learned the toy task) and `random` (untrained head)."""
    from graftline.tasks.data.splits import Splits
    from tests.conftest import toy_frame as frame

    tracking.configure("promotion-tests")
    root = tmp_path_factory.mktemp("promotion")
    splits = Splits(
        Split("train", frame(40, 0), "toy"),
        Split("validation", frame(10, 1), "toy"),
        Split("test", frame(10, 2), "toy"),
    )
    uris = {}
    for name, epochs, lr in (("good", 6, 3e-3), ("random", 1, 1e-12)):
        result = finetune(
            splits,
            FinetuneParams(backbone=str(tiny_backbone), epochs=epochs, learning_rate=lr, patience=6),
            short_texts(),
            root / name,
        )
        with mlflow.start_run(run_name=name):
            uris[name] = log_classifier(result.model_dir, ["hello"]).model_uri
    return uris


@pytest.fixture
def eval_sets():
    return {"test": Split("test", toy_frame(15, 5), "toy"), "other": Split("other", toy_frame(10, 6), "toy")}


@pytest.fixture
def register(model_uris, unique_name):
    client = MlflowClient()

    def register_(kind: str, name: str = unique_name, validation: str = "true", **tags) -> str:
        candidate = Candidate(name, model_uris[kind], {"validation_success": validation, "max_length": "32", **tags})
        return register_all(client, [candidate])[0].version

    return register_


def holder(client, name, alias):
    return str(client.get_model_version_by_alias(name, alias).version)


def test_a_first_promotion_passes_and_is_recorded(register, unique_name, eval_sets):
    client = MlflowClient()
    version = register("good")
    outcome = promote(
        client, unique_name, STAGING, eval_sets, GateParams(min_accuracy=0.8), "test-suite", experiment=unique_name
    )
    assert outcome.moved and outcome.version == version and outcome.previous is None
    assert holder(client, unique_name, STAGING) == version
    assert {c.name for c in outcome.checks} == {"validation", "thresholds", "regression"}
    [record] = history(client, unique_name)
    assert record["action"] == "promote" and record["to_version"] == version and record["from_version"] is None
    assert record["triggered_by"] == "test-suite" and record["scores"][f"v{version}"]["test_accuracy"] >= 0.8
    run = client.get_run(outcome.run_id)
    assert run.data.params["triggered_by"] == "test-suite" and run.data.metrics["moved"] == 1.0


def test_a_regression_on_the_same_evaluation_sets_is_refused(register, unique_name, eval_sets):
    client = MlflowClient()
    good = register("good")
    promote(client, unique_name, PRODUCTION, eval_sets, GateParams(), "t", version=good, experiment=unique_name)
    worse = register("random")
    outcome = promote(
        client, unique_name, PRODUCTION, eval_sets, GateParams(), "t", version=worse, experiment=unique_name
    )
    assert not outcome.moved and holder(client, unique_name, PRODUCTION) == good
    assert outcome.reason.startswith("refused: regression: test macro_f1")
    # both versions were re-evaluated here, on the same sets
    assert set(outcome.scores) == {f"v{worse}", f"v{good}"} and "other_macro_f1" in outcome.scores[f"v{good}"]
    assert len(history(client, unique_name)) == 1  # a refused attempt moves nothing, so no record...
    assert client.get_run(outcome.run_id).data.metrics["moved"] == 0.0  # ...but it is a run


def test_thresholds_and_failed_validation_are_refused(register, unique_name, eval_sets):
    client = MlflowClient()
    unvalidated = register("good", validation="false")
    outcome = promote(
        client,
        unique_name,
        STAGING,
        eval_sets,
        GateParams().model_copy(update={"min_macro_f1": 1.01}),
        "t",
        experiment=unique_name,
    )
    assert not outcome.moved
    failed = {c.name for c in outcome.checks if not c.passed}
    assert failed == {"validation", "thresholds"} and outcome.version == unvalidated


def test_a_student_must_keep_its_teachers_score(register, unique_name, eval_sets):
    client = MlflowClient()
    teacher = register("good")
    student_name = f"{unique_name}-student"
    weak = register("random", name=student_name, **{"graftline.role": "student", "teacher_version": teacher})
    outcome = promote(client, student_name, STAGING, eval_sets, GateParams(), "t", experiment=unique_name)
    assert not outcome.moved and "retention" in outcome.reason and f"teacher v{teacher}" in outcome.scores
    strong = register("good", name=student_name, **{"graftline.role": "student", "teacher_version": teacher})
    outcome = promote(
        client, student_name, STAGING, eval_sets, GateParams(), "t", version=strong, experiment=unique_name
    )
    assert outcome.moved and weak != strong


def test_rollback_returns_the_alias_to_its_previous_holders(register, unique_name, eval_sets):
    client = MlflowClient()
    v1, v2 = register("good"), register("good")
    gates = GateParams(min_improvement=-1)  # equal models: accept
    promote(client, unique_name, PRODUCTION, eval_sets, gates, "t", version=v1, experiment=unique_name)
    promote(client, unique_name, PRODUCTION, eval_sets, gates, "t", version=v2, experiment=unique_name)
    outcome = rollback(client, unique_name, PRODUCTION, "on-call", experiment=unique_name)
    assert (
        outcome.moved
        and (outcome.previous, outcome.version) == (v2, v1)
        and holder(client, unique_name, PRODUCTION) == v1
    )
    records = history(client, unique_name)
    assert [r["action"] for r in records] == ["promote", "promote", "rollback"] and records[-1][
        "triggered_by"
    ] == "on-call"
    with pytest.raises(PromotionError, match="no previous holder"):
        rollback(client, unique_name, PRODUCTION, "on-call", experiment=unique_name)  # v1 had nobody before it
    assert holder(client, unique_name, PRODUCTION) == v1


def test_previous_holder_unwinds_promotions_and_rollbacks():
    def rec(action, old, new):
        return {"action": action, "alias": PRODUCTION, "from_version": old, "to_version": new}

    records = [rec("promote", None, "1"), rec("promote", "1", "2"), rec("promote", "2", "3"), rec("rollback", "3", "2")]
    assert previous_holder(records, PRODUCTION) == "1"
    assert previous_holder(records + [rec("rollback", "2", "1")], PRODUCTION) is None
    assert previous_holder(records, STAGING) is None


def test_racing_promotions_leave_one_consistent_state(register, unique_name, eval_sets):
    client = MlflowClient()
    versions = [register("good") for _ in range(3)]
    gates = GateParams(min_improvement=-1)
    errors = []

    def go(version):
        try:
            promote(
                MlflowClient(),
                unique_name,
                STAGING,
                eval_sets,
                gates,
                f"racer {version}",
                version=version,
                experiment=unique_name,
            )
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    records = history(client, unique_name)
    # serialised: each move starts from the version the previous move left, and the last one holds
    assert [r["from_version"] for r in records] == [None] + [r["to_version"] for r in records[:-1]]
    assert holder(client, unique_name, STAGING) == records[-1]["to_version"]
    assert sorted(r["to_version"] for r in records) == sorted(versions)
    assert not client.search_registered_models(f"name='{unique_name}.graftline-lock'")


def test_a_held_lock_makes_others_wait_then_fail(register, unique_name):
    client = MlflowClient()
    register("good")
    with registry_lock(client, unique_name, "first"):
        with pytest.raises(PromotionError, match=r"registry lock is held by another process .*second waited 1 s"):
            with registry_lock(client, unique_name, "second", wait=1.0):
                pass
    with registry_lock(client, unique_name, "third", wait=1.0):  # released: free again
        pass
    names = {m.name for m in client.search_registered_models()}
    assert not any(name.endswith(".graftline-lock") for name in names)  # nothing in the registry but models


def test_a_killed_holder_frees_the_lock_at_once(register, unique_name, monkeypatch):
    """Without a Prefect server the lock is a file lock: the lock of a process killed outright
    (SIGKILL: no cleanup of its own runs) is free the moment it dies. The registered model an
    earlier graftline kept as a lock is deleted."""
    import signal
    import subprocess
    import sys

    from graftline.tasks.registry import locks

    # the session's shared Prefect API (prefect_harness) may be the configured server by now
    monkeypatch.setattr(locks, "prefect_server", lambda: None)
    client = MlflowClient()
    register("good")
    client.create_registered_model(f"{unique_name}.graftline-lock", tags={"owner": "crashed", "since": "0"})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]);"
         "lock.acquire(); print('held', flush=True); time.sleep(60)", str(locks.lock_file(unique_name))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PromotionError, match="held by another process"):
            with registry_lock(client, unique_name, "waiting", wait=0.5):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with registry_lock(client, unique_name, "next", wait=1.0):
        pass
    assert not client.search_registered_models(f"name='{unique_name}.graftline-lock'")


def test_lock_names_keep_distinct_models_apart():
    from graftline.tasks.registry import locks

    names = ["a/b", "a_2fb", "a_b", "a__b", "a%b", "a&b", "a>b", "a<b", "team/model.v2"]
    limits = [locks.limit_name(n) for n in names]
    assert len(set(limits)) == len(names)
    assert not any(c in limit for limit in limits for c in "/%&><")
    assert len({locks.lock_file(n) for n in names}) == len(names)


def test_promotion_errors_are_clear(register, unique_name, eval_sets):
    client = MlflowClient()
    with pytest.raises(PromotionError, match="no registered model named 'nope'"):
        promote(client, "nope", STAGING, eval_sets, GateParams(), "t")
    register("good")
    with pytest.raises(PromotionError, match="no version holds 'staging' to promote to production"):
        promote(client, unique_name, PRODUCTION, eval_sets, GateParams(), "t")
    with pytest.raises(PromotionError, match="has no version 9"):
        promote(client, unique_name, STAGING, eval_sets, GateParams(), "t", version="9")
    with pytest.raises(PromotionError, match="cannot promote to 'candidate'"):
        promote(client, unique_name, CANDIDATE, eval_sets, GateParams(), "t")
    assert json.dumps(history(client, unique_name)) == "[]"


# -- the same through the command line (in-process, as the console script calls it) and the flows --


def cli(*args) -> tuple[int, str, str]:
    import contextlib
    import io

    from graftline.flows.cli.app import app

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        app(list(args), standalone_mode=True)
    return exited.value.code or 0, out.getvalue(), err.getvalue()


def test_promote_rollback_and_history_on_the_command_line(prefect_harness, register, unique_name, tmp_path):
    path = tmp_path / "test.csv"
    toy_frame(15, 5).to_csv(path, index=False)
    v1, v2 = register("good"), register("random")
    code, out, _ = cli(
        "promote",
        unique_name,
        "--to",
        "staging",
        "--version",
        v1,
        "--eval",
        f"test={path}",
        "--set",
        f"experiment={unique_name}",
    )
    assert code == 0 and f"{unique_name}: staging promoted from v- to v{v1}" in out
    code, out, _ = cli(
        "promote", unique_name, "--to", "staging", "--eval", f"test={path}", "--set", f"experiment={unique_name}"
    )
    assert code == 1 and f"{unique_name} v{v2} not promoted to staging" in out and "FAILED regression" in out
    code, out, _ = cli(
        "promote", unique_name, "--to", "production", "--eval", f"test={path}", "--set", f"experiment={unique_name}"
    )
    assert code == 0 and f"production promoted from v- to v{v1}" in out  # production takes staging's holder
    code, out, _ = cli("history", unique_name)
    assert code == 0 and f"staging v{v1}, production v{v1}" in out
    assert len(re.findall(r"promote\s+(staging|production)\s+v- -> v1", out)) == 2
    assert "by graftline promote (" in out
    code, _, err = cli("rollback", unique_name, "--alias", "production")
    assert code == 2 and "production v1 has no previous holder" in err.strip().splitlines()[-1]


def test_command_line_errors_are_one_line(prefect_harness, register, unique_name):
    code, _, err = cli("promote", "no-such-model", "--to", "staging")
    assert code == 2 and err.strip().splitlines()[-1] == "graftline: error: no registered model named 'no-such-model'"
    code, _, err = cli("promote", unique_name, "--to", "candidate")
    assert code == 2 and "invalid parameters: to:" in err
    code, _, err = cli("history", "no-such-model")
    assert code == 2 and "no registered model named 'no-such-model'" in err


def test_a_resumed_run_adopts_the_version_its_failed_run_registered(register, unique_name):
    """A lifecycle that failed after registering (e.g. its promotion could not reach the lock) is
    finished by `graftline resume`: the same weights are not registered a second time."""
    client = MlflowClient()
    first = register("good", lifecycle_run_id="run-a", weights_sha256="w1")
    other = register("good", lifecycle_run_id="run-b", weights_sha256="w1")  # another run, same weights
    adopted = register("good", lifecycle_run_id="run-c", weights_sha256="w1", **{"graftline.resumed_from": "run-a"})
    assert adopted == first and other != first
    fresh = register("good", lifecycle_run_id="run-d", weights_sha256="w2", **{"graftline.resumed_from": "run-a"})
    assert fresh not in (first, other)  # different weights: a new version
    assert len(client.search_model_versions(f"name='{unique_name}'")) == 3
    assert holder(client, unique_name, "candidate") == fresh


def test_the_gates_are_scored_outside_the_lock_and_checked_again_if_the_alias_moved(
    register, unique_name, eval_sets, monkeypatch
):
    """The lock is held for the move alone: while a promotion scores its gates, another promotion may
    move the alias; the first then checks its gates again, against the new holder."""
    from graftline.tasks.registry import promotion

    client = MlflowClient()
    first, second, third = register("good"), register("good"), register("good")
    promote(client, unique_name, STAGING, eval_sets, GateParams(), "t", version=first)
    real, compared = promotion.check_gates, []

    def racing(*args, holder, **kwargs):
        compared.append(holder)
        if len(compared) == 1:  # another promotion lands while this one scores
            client.set_registered_model_alias(unique_name, STAGING, second)
        return real(*args, holder=holder, **kwargs)

    monkeypatch.setattr(promotion, "check_gates", racing)
    outcome = promote(client, unique_name, STAGING, eval_sets, GateParams(), "t", version=third)
    assert compared == [first, second]
    assert outcome.moved and outcome.previous == second and holder(client, unique_name, STAGING) == third
    assert history(client, unique_name)[-1]["from_version"] == second
