"""The real lifecycle flow on a real (temporary) Prefect API and a real sqlite MLflow store.

The backbone is the tiny random BERT, so numbers are not judged here, only what is recorded.
"""

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from graftline.flows.lifecycle import transfer
from graftline.tasks.data.splits import resolve_source
from graftline.tasks.errors import ValidationFailed
from graftline.tasks.records import weights_digest
from graftline.tasks.registry import contract
from graftline.tasks.registry.promotion import history
from graftline.tasks.registry.tracking import DATASET_FINGERPRINT
from graftline.tasks.settings import (
    AdaptParams,
    DataParams,
    DistillParams,
    ExportParams,
    FinetuneParams,
    GateParams,
    ModelParams,
    PrivacyParams,
    RegistryParams,
    RunParams,
    TrackingParams,
    ValidationParams,
)
from tests.conftest import toy_frame

STEPS = {"ingest", "validate", "select", "finetune", "evaluate", "distill", "export", "register"}


@pytest.fixture
def run_flow(prefect_harness, mlflow_store, tiny_backbone, unique_name):
    def run(
        data=None,
        validation=None,
        min_improvement=0.0,
        distill=None,
        epochs=2,
        export=False,
        reuse=False,
        seed=13,
        retention_floor=0.0,
        adapt=None,
        copy_data=True,
        privacy=None,
        name=None,
    ):
        # Random tiny models: the retention gate is off unless a test turns it on. Tests share one
        # graftline home, so step reuse is off unless a test is about it.
        gates = GateParams(min_improvement=min_improvement, retention_floor=retention_floor)
        name = name or unique_name
        return transfer(
            data=data or DataParams(),
            validation=validation or ValidationParams(),
            model=ModelParams(max_length=32, seed=seed),
            finetune=FinetuneParams(
                backbone=str(tiny_backbone),
                epochs=epochs,
                patience=epochs,
                learning_rate=3e-3,
                privacy=privacy or PrivacyParams(),
            ),
            adapt=adapt or AdaptParams(),
            distill=distill or DistillParams(student="teacher-layers:1", epochs=1, learning_rate=3e-3),
            export=ExportParams(enabled=export),  # ~5 s: only where a test looks at it
            registry=RegistryParams(model_name=name, experiment=name, gates=gates),
            tracking=TrackingParams(copy_data=copy_data),
            run=RunParams(reuse_steps=reuse),
        )

    return run


def runs_by_name(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return runs


def test_the_lifecycle_tracks_every_step_and_promotes_first_versions(exported_run, tmp_path):
    unique_name, summary = exported_run
    client = MlflowClient()
    runs = runs_by_name(client, unique_name)
    parent = next(r for r in runs if r.info.run_id == summary.mlflow_run_id)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == STEPS | {"explain_teacher", "explain_student"}
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children.values())

    # datasets with digests on the parent run
    inputs = {d.dataset.name: d.dataset.digest for d in parent.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test", "home"} and all(inputs.values())
    # per-epoch curves and evaluation on both domains
    curve = client.get_metric_history(children["finetune"].info.run_id, "train_loss")
    assert [m.step for m in curve] == [1, 2]
    # every optimizer step's loss streamed during training, and the steps' progress in the Prefect UI
    for step in ("finetune", "distill"):
        steps = sorted(m.step for m in client.get_metric_history(children[step].info.run_id, "train_step_loss"))
        assert len(steps) > 2 and steps == list(range(1, len(steps) + 1))
        progress = Artifact.get(f"{step}-progress")
        assert float(progress.data) == 100.0 and str(progress.flow_run_id) == parent.data.tags["prefect_flow_run_id"]
    evaluate = children["evaluate"].data.metrics
    assert {"test_accuracy", "test_macro_f1", "home_accuracy", "home_macro_f1", "test_examples_per_second"} <= set(
        evaluate
    )
    evaluation_files = {f.path for f in client.list_artifacts(children["evaluate"].info.run_id, "evaluation")}
    assert {"evaluation/test_confusion.png", "evaluation/home_confusion.png", "evaluation/reliability.png"} <= set(
        evaluation_files
    )
    # calibrated confidence: a temperature fitted on validation, ECE before/after per set, carried by the version
    assert {"temperature", "test_ece", "test_ece_calibrated", "home_ece", "home_ece_calibrated"} <= set(evaluate)
    validation_files = {f.path for f in client.list_artifacts(children["validate"].info.run_id, "validation")}
    assert {"validation/gx_results.json", "validation/data_docs", "validation/failures.txt"} <= validation_files
    distill = children["distill"].data.metrics
    assert distill["parameter_ratio"] < 1 and distill["cpu_speedup"] > 0 and "test_accuracy_retention" in distill
    # the student exported to ONNX and INT8, checked and timed beside teacher and torch student
    export = children["export"]
    export_files = {f.path for f in client.list_artifacts(export.info.run_id, "export")}
    assert {"export/model.onnx", "export/model.int8.onnx", "export/tradeoff.png", "export/latency.json"} <= export_files
    assert (
        export.data.metrics["student_onnx_agreement"] == 1.0
        and export.data.metrics["student_onnx_int8_speedup_batch_32"] > 0
    )
    assert export.data.tags["graftline.export"] == "parity passed"
    assert summary.metrics["export"]["student_onnx_int8_speedup_batch_32"] > 0
    student = client.get_model_version_by_alias(f"{unique_name}-student", "production")
    assert student.tags["export_run_id"] == export.info.run_id
    # registry: both models, candidate and (first version, gates passed) production, lineage tags
    for name in (unique_name, f"{unique_name}-student"):
        version = client.get_model_version_by_alias(name, "production")
        assert str(version.version) == "1"
        assert str(client.get_model_version_by_alias(name, "candidate").version) == "1"
        assert version.tags["data_digest"] == summary.data_digest
        assert version.tags["prefect_flow_run_id"] and version.tags["git_commit"]
        assert version.tags["validation_success"] == "true"
        assert float(version.tags["temperature"]) > 0
        # the registry's copy holds the weights the evaluate step scored, so the gates read those scores
        classifier = version.tags["classifier_uri"]  # what the registered pyfunc runs, stored once
        copy = Path(mlflow.artifacts.download_artifacts(classifier, dst_path=str(tmp_path / name)))
        assert version.tags["weights_sha256"] == weights_digest(copy)
        promoted = client.get_run(next(r for r in history(client, name) if r["action"] == "promote")["run_id"])
        thresholds = next(c for c in promoted.data.tags["graftline.decision"].split("; ") if "test accuracy" in c)
        assert "(the evaluate step's scores of these weights)" in thresholds, promoted.data.tags
        ingest = client.get_run(version.tags["ingest_run_id"])
        assert {f.path for f in client.list_artifacts(ingest.info.run_id, "evaluation_sets")} == {
            "evaluation_sets/test.parquet",
            "evaluation_sets/home.parquet",
        }
        [record] = [r for r in history(client, name) if r["action"] != "monitor"]  # serving tests add checks
        assert record["to_version"] == "1" and record["triggered_by"].startswith("transfer flow run ")
    student = client.get_model_version(f"{unique_name}-student", "1")
    assert student.tags["teacher_version"] == "1"
    assert summary.ui_command.startswith("mlflow ui --backend-store-uri sqlite:///")


def test_a_new_version_must_pass_the_gates_against_production_on_the_same_sets(run_flow, exported_run):
    # v1 of the teacher and of its student hold production from the shared run (same data, same settings
    # but export and explanations); nothing can beat production by a whole point
    unique_name, _ = exported_run
    summary = run_flow(min_improvement=1.0, name=unique_name)
    client = MlflowClient()
    for name in (unique_name, f"{unique_name}-student"):
        assert str(client.get_model_version_by_alias(name, "production").version) == "1"
        assert str(client.get_model_version_by_alias(name, "candidate").version) == "2"
    assert [r.aliases for r in summary.registered] == [("candidate",), ("candidate",)]
    register = client.get_run(
        next(
            r.info.run_id
            for r in runs_by_name(client, unique_name)
            if r.info.run_name == "register" and r.data.tags["mlflow.parentRunId"] == summary.mlflow_run_id
        )
    )
    assert register.data.tags["teacher.decision"].startswith("refused: regression: test macro_f1")
    attempt = client.get_run(summary.registered[0].promotion_run_id)  # re-evaluated: both versions scored
    assert {"v1_test_macro_f1", "v2_test_macro_f1", "v1_home_macro_f1"} <= set(attempt.data.metrics)


@pytest.fixture
def duplicated_data(tmp_path):
    frame = pd.read_csv(resolve_source("demo:electronics"))
    frame = pd.concat([frame, frame], ignore_index=True)  # the file read twice: half the rows repeat
    path = tmp_path / "dup.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_failed_validation_stops_before_training_and_registers_nothing(run_flow, unique_name, duplicated_data):
    with pytest.raises(ValidationFailed, match=r"^data validation failed: 3 expectations on 3 splits") as failed:
        run_flow(data=DataParams(train_path=duplicated_data, eval_sets={}))
    table = [line.split() for line in failed.value.details.splitlines()[1:4]]
    assert [row[:3] for row in table] == [["train", "repeated", "texts"], ["validation", "repeated", "texts"],
                                          ["test", "repeated", "texts"]]  # fmt: skip
    assert table[0][3:6] == ["252", "of", "504"] and table[0][-1] == "validation.max_duplicate_fraction=0.5"
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:  # the table on the run's page in the Prefect UI
        shown = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-validation"])))
    ours = [a.data for a in shown if "| train | repeated texts | 252 of 504 rows |" in a.data]
    assert ours and not any("row 1:" in data for data in ours)  # the table, without example rows
    client = MlflowClient()
    runs = runs_by_name(client, unique_name)
    assert {r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags} == {"ingest", "validate"}
    assert next(r for r in runs if "mlflow.parentRunId" not in r.data.tags).info.status == "FAILED"
    assert not client.search_registered_models(f"name='{unique_name}'")


def test_a_name_holding_another_kind_of_model_stops_the_run_before_training(run_flow, unique_name, tmp_path):
    """As a deployment run from the UI meets it (the command line refuses earlier): a version of other
    labels already holds the name."""
    from graftline.tasks.registry.stages import PromotionError

    client = MlflowClient()
    client.create_registered_model(unique_name)
    with mlflow.start_run(experiment_id=mlflow.create_experiment(f"{unique_name}-seed")) as seed:
        mlflow.log_text("weights", "model/file.txt")
    tags = {contract.MODALITY: "text", contract.LABELS: contract.labels_tag(["cat", "dog"])}
    client.create_model_version(unique_name, f"runs:/{seed.info.run_id}/model", seed.info.run_id, tags=tags)
    toy_frame(20).to_csv(tmp_path / "toy.csv", index=False)
    with pytest.raises(PromotionError, match=rf'^{unique_name} v1 predicts \["cat", "dog"\]; this run'):
        run_flow(data=DataParams(train_path=str(tmp_path / "toy.csv"), eval_sets={}))
    runs = runs_by_name(client, unique_name)
    assert {r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags} == {"ingest"}
    assert [str(v.version) for v in client.search_model_versions(f"name = '{unique_name}'")] == ["1"]


def test_warn_mode_records_the_failure_and_continues(run_flow, unique_name, duplicated_data):
    summary = run_flow(
        data=DataParams(train_path=duplicated_data, eval_sets={}),
        validation=ValidationParams(mode="warn"),
        distill=DistillParams(enabled=False),  # what goes on after validation is the teacher's training
    )
    client = MlflowClient()
    validate = next(r for r in runs_by_name(client, unique_name) if r.info.run_name == "validate")
    assert validate.data.tags["validation.success"] == "false"
    assert validate.data.metrics["failed_expectations"] >= 1
    assert [r.version for r in summary.registered] == ["1"]


def test_auto_backbone_chooses_by_transferability_then_a_search_tunes_it_inside_the_flow(
    prefect_harness, mlflow_store, tiny_backbone, dead_backbone, unique_name
):
    from graftline.tasks.settings import SearchParams, SelectParams

    space = {"learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}, "batch_size": {"choices": [16, 32]}}
    summary = transfer(
        data=DataParams(eval_sets={}),
        select=SelectParams(candidates=[str(dead_backbone), str(tiny_backbone)], sample_size=200),
        model=ModelParams(max_length=32),
        finetune=FinetuneParams(
            backbone="auto", epochs=1, learning_rate=3e-3, search=SearchParams(enabled=True, trials=2, space=space)
        ),
        distill=DistillParams(enabled=False),
        registry=RegistryParams(model_name=unique_name, experiment=unique_name),
    )
    assert summary.backbone == str(tiny_backbone)
    client = MlflowClient()
    runs = {r.info.run_name: r for r in runs_by_name(client, unique_name)}
    select = runs["select"]
    assert select.data.tags["graftline.selection"].startswith(f"{tiny_backbone}: highest logme")
    dead = select.data.metrics[f"{dead_backbone.name}_logme"]
    assert math.isnan(dead) or dead < select.data.metrics[f"{tiny_backbone.name}_logme"]  # constant features: NaN
    files = {f.path for f in client.list_artifacts(select.info.run_id, "selection")}
    assert {"selection/leaderboard.csv", "selection/leaderboard.json", "selection/leaderboard.png"} <= files
    finetune = runs["finetune"]
    assert finetune.data.params["finetune.backbone"] == str(tiny_backbone)

    # the search: each trial a finished nested run of the finetune step, the best one's settings the teacher's
    trials = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == finetune.info.run_id]
    assert sorted(r.info.run_name for r in trials) == ["trial-0", "trial-1"]
    assert all(r.info.status in ("FINISHED", "KILLED") and "val_macro_f1_report" in r.data.metrics for r in trials)
    assert trials[0].data.params.keys() == {"learning_rate", "batch_size"}
    best = int(finetune.data.metrics["search_best_trial"])
    chosen = next(r for r in trials if r.info.run_name == f"trial-{best}")
    for name in ("learning_rate", "batch_size"):
        assert finetune.data.params[f"search.best.{name}"] == chosen.data.params[name]
    assert finetune.data.metrics["best_val_macro_f1"] == chosen.data.metrics["val_macro_f1"]
    files = {f.path for f in client.list_artifacts(finetune.info.run_id, "search")}
    assert files == {"search/leaderboard.csv", "search/leaderboard.json", "search/search.png"}


def test_a_student_below_the_retention_floor_is_not_registered(run_flow, unique_name, dead_backbone, tmp_path):
    # The tiny teacher learns the separable toy task; a student with constant features predicts one
    # class, so it keeps about half of the teacher's accuracy.
    for split, (rows, seed) in {"train": (40, 0), "validation": (10, 1), "test": (10, 2)}.items():
        toy_frame(rows, seed).to_csv(tmp_path / f"{split}.csv", index=False)
    data = DataParams(
        train_path=str(tmp_path / "train.csv"),
        validation_path=str(tmp_path / "validation.csv"),
        test_path=str(tmp_path / "test.csv"),
        eval_sets={},
    )
    summary = run_flow(
        data=data,
        epochs=6,
        distill=DistillParams(student=str(dead_backbone), epochs=1),
        export=True,
        retention_floor=0.97,
    )
    assert summary.metrics["teacher"]["test_accuracy"] >= 0.9
    assert [r.name for r in summary.registered] == [unique_name]
    assert "below the floor 0.97" in summary.not_registered["student"]
    client = MlflowClient()
    assert not client.search_registered_models(f"name='{unique_name}-student'")
    distill = next(r for r in runs_by_name(client, unique_name) if r.info.run_name == "distill")
    assert distill.data.metrics["retention_gate_passed"] == 0.0
    assert "below the floor" in distill.data.tags["graftline.gate"]
    # what is served is the teacher, so the teacher is exported
    export = next(r for r in runs_by_name(client, unique_name) if r.info.run_name == "export")
    assert "teacher_onnx_int8_agreement" in export.data.metrics and "student_onnx_agreement" not in export.data.metrics


def test_retrain_proposes_for_staging_then_promote_and_rollback_flows_move_production(
    run_flow, unique_name, tiny_backbone
):
    from graftline.flows.operations import promote, rollback
    from graftline.flows.params import PromoteParams

    run_flow(distill=DistillParams(enabled=False))  # v1: candidate and production (the teacher is the question)
    transfer(  # what the retrain deployment runs, set to propose its result for staging
        model=ModelParams(max_length=32),
        finetune=FinetuneParams(backbone=str(tiny_backbone), epochs=2, learning_rate=3e-3),
        distill=DistillParams(enabled=False),
        export=ExportParams(enabled=False),
        registry=RegistryParams(model_name=unique_name, experiment=unique_name, promote_to="staging"),
    )
    client = MlflowClient()
    aliases = {a: str(v) for a, v in client.get_registered_model(unique_name).aliases.items()}
    assert aliases == {"candidate": "2", "staging": "2", "production": "1"}

    # production takes staging's holder, re-evaluated on v2's own evaluation sets (logged at ingest)
    outcome = promote(PromoteParams(model_name=unique_name, to="production", experiment=unique_name))
    assert outcome.moved and (outcome.previous, outcome.version) == ("1", "2")
    assert set(outcome.scores["v2"]) == {"test_accuracy", "test_macro_f1", "home_accuracy", "home_macro_f1"}
    assert outcome.scores["v1"]  # the holder was re-evaluated on the same sets
    assert " flow run " in history(client, unique_name)[-1]["triggered_by"]

    back = rollback(unique_name, "production", unique_name)
    assert back.moved and back.version == "1"
    assert str(client.get_model_version_by_alias(unique_name, "production").version) == "1"


def test_referenced_evaluation_sets_keep_rows_out_of_the_store_and_promotions_read_the_files_again(
    run_flow, unique_name, tmp_path
):
    from graftline.flows.operations import promote
    from graftline.flows.params import PromoteParams
    from graftline.tasks.registry.evaluation_sets import EvaluationSetsError

    train = tmp_path / "train.csv"
    toy_frame(40, 0).to_csv(train, index=False)  # its test split is carved from it
    run_flow(
        data=DataParams(train_path=str(train), eval_sets={}), distill=DistillParams(enabled=False), copy_data=False
    )
    client = MlflowClient()
    version = client.get_model_version(unique_name, "1")
    kept = {f.path for f in client.list_artifacts(version.tags["ingest_run_id"], "evaluation_sets")}
    assert kept == {"evaluation_sets/reference.json"}  # no Parquet copy of any row

    staging = PromoteParams(model_name=unique_name, to="staging", version="1", experiment=unique_name)
    original = train.read_bytes()
    toy_frame(40, 1).to_csv(train, index=False)
    with pytest.raises(EvaluationSetsError, match=r"evaluation set 'test' \(.*train.csv\) changed since"):
        promote(staging)
    assert "staging" not in client.get_registered_model(unique_name).aliases

    train.write_bytes(original)
    outcome = promote(staging)  # re-carved with the run's seed: the rows v1 was scored on
    assert outcome.moved and outcome.scores["v1"]["test_accuracy"] == float(version.tags["test_accuracy"])


def test_a_private_teacher_carries_its_budget_to_the_registry_and_the_gate_reads_it(run_flow, unique_name):
    from graftline.flows.operations import promote
    from graftline.flows.params import PromoteParams

    privacy = PrivacyParams(enabled=True, epsilon=4.0, logical_batch_size=32, epochs=1)
    summary = run_flow(privacy=privacy, epochs=1)
    client = MlflowClient()
    teacher = client.get_model_version(unique_name, "1")
    spent = float(teacher.tags["privacy_epsilon"])
    assert 0 < spent <= 4.0 * 1.001 and float(teacher.tags["privacy_delta"]) > 0
    assert summary.metrics["teacher"]["test_accuracy"] >= 0  # evaluated like any teacher
    student = client.get_model_version(f"{unique_name}-student", "1")
    assert "privacy_epsilon" not in student.tags and "no differential-privacy guarantee" in student.tags["privacy_note"]

    def to_staging(name, max_epsilon):
        gates = GateParams(max_epsilon=max_epsilon, retention_floor=0.0)
        return promote(PromoteParams(model_name=name, to="staging", version="1", gates=gates, experiment=unique_name))

    refused = to_staging(unique_name, spent / 2)
    assert not refused.moved and f"epsilon {spent:.3g} > {spent / 2}" in _detail(refused, "privacy")
    student_refused = to_staging(f"{unique_name}-student", 10.0)
    assert not student_refused.moved and "without differential privacy" in _detail(student_refused, "privacy")
    assert to_staging(unique_name, 10.0).moved


def _detail(outcome, check: str) -> str:
    return next(c.detail for c in outcome.checks if c.name == check)


def demo_as_datasets(folder: Path) -> DataParams:
    """The demo's data as Hugging Face datasets: its training file written by `save_to_disk`, its
    evaluation set in a folder laid out as a Hub dataset repository."""
    from datasets import Dataset

    Dataset.from_pandas(pd.read_csv(resolve_source("demo:electronics"))).save_to_disk(str(folder / "saved"))
    (folder / "hub" / "data").mkdir(parents=True)
    pd.read_csv(resolve_source("demo:home")).to_csv(folder / "hub" / "data" / "train.csv", index=False)
    return DataParams(train_path=str(folder / "saved"), eval_sets={"home": str(folder / "hub")})


def test_an_identical_second_run_reuses_the_training_steps_and_says_so(run_flow, unique_name, tmp_path):
    """The data come as Hugging Face datasets here: the same rows as the demo's files, the same runs."""
    seed = int(unique_name[2:], 16) % 10_000  # no earlier test trained with these parameters
    data = demo_as_datasets(tmp_path)
    first = run_flow(reuse=True, seed=seed, data=data)
    second = run_flow(reuse=True, seed=seed, data=data)
    assert first.reused_steps == ()
    assert second.reused_steps == ("finetune", "evaluate", "distill")
    assert second.metrics == first.metrics

    client = MlflowClient()
    runs = runs_by_name(client, unique_name)
    ingest = next(r for r in runs if r.info.run_name == "ingest")
    recorded = {i.dataset.name: {t.key: t.value for t in i.tags} for i in ingest.inputs.dataset_inputs}
    assert set(recorded) == {"train", "validation", "test", "home"}
    assert all(tags.get(DATASET_FINGERPRINT) for tags in recorded.values())  # which version was read
    steps_of = {
        parent: {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
        for parent in (first.mlflow_run_id, second.mlflow_run_id)
    }
    assert steps_of[first.mlflow_run_id] == STEPS - {"export"}  # export is off in these runs
    assert steps_of[second.mlflow_run_id] == STEPS - {"export", "finetune", "evaluate", "distill"}
    assert client.get_run(second.mlflow_run_id).data.tags["graftline.reused_steps"] == "finetune, evaluate, distill"
    # the second version is the first one's model, registered again with its training run
    v1, v2 = (client.get_model_version(unique_name, v) for v in ("1", "2"))
    assert v1.tags["training_run_id"] == v2.tags["training_run_id"]

    # without distillation from here on: whether fine-tuning is reused is the question
    alone = DistillParams(enabled=False)
    assert run_flow(reuse=False, seed=seed, distill=alone, data=data).reused_steps == ()  # asked not to reuse
    assert (
        run_flow(reuse=True, seed=seed, epochs=1, distill=alone, data=data).reused_steps == ()
    )  # another parameter: trains again


def misleading_tail(frame: pd.DataFrame) -> pd.DataFrame:
    """Toy rows followed by words of the other class: within 8 tokens a model sees only its own class's
    words, at 128 tokens mostly the other class's, so a model scores differently at the two lengths."""
    other = toy_frame(len(frame), seed=99).set_index("label")["text"]
    flip = {"good": "bad", "bad": "good"}
    tails = [
        " ".join(other[flip[label]].iloc[i % len(other[flip[label]])].split()[:5] * 4)
        for i, label in enumerate(frame["label"])
    ]
    return frame.assign(text=[f"{text} {tail}" for text, tail in zip(frame["text"], tails, strict=True)])


def test_promotion_re_evaluates_a_version_with_the_max_length_it_was_trained_with(
    prefect_harness, mlflow_store, tiny_backbone, unique_name, tmp_path
):
    for split, (rows, seed) in {"train": (40, 0), "validation": (10, 1), "test": (10, 2), "other": (10, 3)}.items():
        misleading_tail(toy_frame(rows, seed)).to_csv(tmp_path / f"{split}.csv", index=False)
    data = DataParams(
        train_path=str(tmp_path / "train.csv"),
        validation_path=str(tmp_path / "validation.csv"),
        test_path=str(tmp_path / "test.csv"),
        eval_sets={"other": str(tmp_path / "other.csv")},
    )
    summary = transfer(
        data=data,
        model=ModelParams(max_length=8),
        finetune=FinetuneParams(backbone=str(tiny_backbone), epochs=6, patience=6, learning_rate=3e-3),
        distill=DistillParams(enabled=False),
        export=ExportParams(enabled=False),
        registry=RegistryParams(model_name=unique_name, experiment=unique_name),
        run=RunParams(reuse_steps=False),
    )
    client = MlflowClient()
    [registration] = summary.registered
    gate_scores = client.get_run(registration.promotion_run_id).data.metrics
    evaluate = next(r for r in runs_by_name(client, unique_name) if r.info.run_name == "evaluate").data.metrics
    assert evaluate["test_accuracy"] >= 0.9  # it learned, so the length it reads at matters
    for key in ("test_accuracy", "test_macro_f1", "other_accuracy", "other_macro_f1"):
        assert gate_scores[f"v1_{key}"] == pytest.approx(evaluate[key], abs=1e-9), key
    version = client.get_model_version(unique_name, "1")
    assert (version.tags["max_length"], version.tags["backbone"], version.tags["modality"]) == (
        "8",
        str(tiny_backbone),
        "text",
    )


def test_a_target_set_gets_a_gap_report_and_mlm_then_self_training(run_flow, unique_name, tmp_path):
    """Target texts in another vocabulary than the training data: the teacher trained on the mixed loss
    and then one pseudo-label round registers; its rounds are logged; the gap of the target set is
    measured for the backbone and the teacher, logged and summarised."""
    pd.DataFrame({"text": [f"the novel's plot in chapter {i} twists" for i in range(40)]}).to_csv(
        tmp_path / "books.csv", index=False
    )
    summary = run_flow(
        data=DataParams(eval_sets={}, target_sets={"books": str(tmp_path / "books.csv")}),
        adapt=AdaptParams(method="mlm+self-training", head_warmup_steps=5, pseudo_label_share=1.0, class_balance=False),
        epochs=1,
    )
    teacher = summary.metrics["teacher"]
    assert teacher["gap_before_books_proxy_a_distance"] > 1.5  # other words: easy to tell apart
    assert 0 <= teacher["gap_books_label_shift"] <= 1 and 0 <= teacher["gap_books_confident_share"] <= 1
    assert teacher["self_training_rounds_kept"] in (0, 1) and "target_entropy_source_only" in teacher
    client = MlflowClient()
    gap = next(r for r in runs_by_name(client, unique_name) if r.info.run_name == "domain_gap")
    assert gap.data.metrics["gap_books_mmd"] == pytest.approx(teacher["gap_books_mmd"])
    assert [a.path for a in client.list_artifacts(gap.info.run_id, "domain_gap")] == ["domain_gap/domain_gap.png"]
    finetune = next(r for r in runs_by_name(client, unique_name) if r.info.run_name == "finetune")
    assert finetune.data.params["adapt.method"] == "mlm+self-training"
    assert finetune.data.metrics["self_training_round_1_pseudo_labels"] == 40  # every text: share 1, no balance
    rounds = json.loads(Path(client.download_artifacts(finetune.info.run_id, "self_training/rounds.json")).read_text())
    assert [r["round"] for r in rounds] == [1] and rounds[0]["pseudo_labels"] == 40
    kept = rounds[0]["kept"]  # the guard's decision: in the summary and on the finetune run, with its reason
    assert summary.adaptation.startswith("adapted (1 of 1" if kept else "source-only kept; round 1: ")
    assert finetune.data.tags["adaptation_decision"] == summary.adaptation
    assert [r.version for r in summary.registered] == ["1", "1"]


SECRETS = ["jane.roe@example.co.uk", "4111 1111 1111 1111", "+1 415-555-0132", "DE89 3704 0044 0532 0130 00"]


def test_personal_data_stops_the_run_unless_redacted_and_never_reaches_the_store(run_flow, mlflow_store, tmp_path):
    frames = {"train": toy_frame(40, 0), "test": toy_frame(10, 2)}
    for frame in frames.values():  # a secret in each of the first rows, the words that carry the label kept
        frame.loc[:3, "text"] = [f"{text} write {secret}" for text, secret in zip(frame.text[:4], SECRETS, strict=True)]
    paths = {}
    for name, frame in frames.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
        paths[f"{name}_path"] = str(tmp_path / f"{name}.csv")
    with pytest.raises(ValidationFailed, match="data validation failed") as failed:
        run_flow(data=DataParams(**paths, eval_sets={}))  # validation.pii: fail by default
    assert "personal data" in failed.value.details and "validation.pii=redact" in failed.value.details

    summary = run_flow(data=DataParams(**paths, eval_sets={}), validation=ValidationParams(pii="redact"), epochs=1)
    ingest = next(
        r
        for r in runs_by_name(MlflowClient(), summary.experiment)
        if r.info.run_name == "ingest" and r.data.tags.get("mlflow.parentRunId") == summary.mlflow_run_id
    )
    assert {k: v for k, v in ingest.data.metrics.items() if k.startswith("pii_redacted_")} == {
        "pii_redacted_email": 2.0,
        "pii_redacted_card": 2.0,
        "pii_redacted_phone": 2.0,
        "pii_redacted_iban": 2.0,
    }
    stored = b"".join(_readable(path) for path in Path(mlflow_store).rglob("*") if path.is_file())
    assert b"<EMAIL>" in stored  # the redacted texts are there (evaluation set, input example)...
    assert not [secret for secret in SECRETS if secret.encode() in stored]  # ...the secrets are not
    examples = [json.loads(p.read_text()) for p in Path(mlflow_store).rglob("input_example.json")]
    texts = [[row[0] for row in e["data"]] if isinstance(e, dict) else e for e in examples]  # the servable's: a frame
    assert texts and all(t == contract.INPUT_EXAMPLE for t in texts), examples[:1]  # written, not rows of the data


def _readable(path: Path) -> bytes:
    """A stored file's bytes, Parquet decoded (its pages may be compressed)."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_csv().encode()
    return path.read_bytes()
