"""All-or-nothing registration against a real (sqlite) MLflow store."""

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from graftline.tasks.engine import backbones
from graftline.tasks.registry import tracking
from graftline.tasks.registry.contract import CANDIDATE, PRODUCTION
from graftline.tasks.registry.versions import Candidate, log_classifier, register_all


@pytest.fixture
def logged_model(mlflow_store, tiny_backbone, tmp_path, unique_name):
    tracking.configure(unique_name)
    model_dir = tmp_path / "model"
    backbones.load_classifier(str(tiny_backbone), ["bad", "good"]).save_pretrained(model_dir)
    backbones.load_tokenizer(str(tiny_backbone)).save_pretrained(model_dir)
    with mlflow.start_run():
        info = log_classifier(model_dir, ["hello there"])
    return info.model_uri


def test_registration_sets_the_candidate_alias_tags_and_the_teacher_link(logged_model, unique_name):
    client = MlflowClient()
    student = f"{unique_name}-student"
    first = register_all(
        client,
        [
            Candidate(unique_name, logged_model, {"data_digest": "abc"}),
            Candidate(student, logged_model, teacher=unique_name),
        ],
    )
    assert [(r.name, r.version, r.aliases) for r in first] == [
        (unique_name, "1", (CANDIDATE,)),
        (student, "1", (CANDIDATE,)),
    ]
    second = register_all(
        client, [Candidate(unique_name, logged_model), Candidate(student, logged_model, teacher=unique_name)]
    )
    assert [r.version for r in second] == ["2", "2"]
    assert aliases_of(client, unique_name) == {CANDIDATE: "2"}
    assert client.get_model_version(unique_name, "1").tags["data_digest"] == "abc"
    assert client.get_model_version(student, "2").tags["teacher_version"] == "2"


def test_a_failure_midway_leaves_the_registry_as_it_was(logged_model, unique_name):
    client = MlflowClient()
    register_all(client, [Candidate(unique_name, logged_model)])
    client.set_registered_model_alias(unique_name, PRODUCTION, "1")
    student = f"{unique_name}-student"
    candidates = [
        Candidate(unique_name, logged_model),  # registers as v2 and takes `candidate`...
        Candidate(student, "models:/m-does-not-exist"),  # ...then this one fails
    ]
    with pytest.raises(MlflowException):
        register_all(client, candidates)
    versions = client.search_model_versions(f"name='{unique_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert aliases_of(client, unique_name) == {CANDIDATE: "1", PRODUCTION: "1"}
    assert not client.search_registered_models(f"name='{student}'")


def aliases_of(client, name):
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_a_logged_model_serves_through_mlflow_pyfunc(logged_model):
    """What a registered version is for: MLflow loads it as a generic model and it predicts our labels."""
    predictions = mlflow.pyfunc.load_model(logged_model).predict(["hello there", "the screen cracked"])
    assert list(predictions["label"]) and set(predictions["label"]) <= {"bad", "good"}


def test_the_gates_reuse_evaluated_scores_only_for_the_weights_that_were_logged(tmp_path):
    from graftline.tasks.evaluate.scores import Evaluation
    from graftline.tasks.records import TrainedModel, weights_digest

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"weights one")
    (tmp_path / "b" / "model").mkdir(parents=True)  # a store's layout: the same file one folder down
    (tmp_path / "b" / "model" / "model.safetensors").write_bytes(b"weights one")
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")
    (tmp_path / "b" / "model" / "model.safetensors").write_bytes(b"weights two")
    assert weights_digest(tmp_path / "a") != weights_digest(tmp_path / "b")

    test = Evaluation("test", 10, 0.8, 0.75, {}, [], ["a", "b"], 100.0)
    model = TrainedModel("teacher", tmp_path / "a", "runs:/x/model", "x", 1, "b", evaluations={"test": test})
    logged = weights_digest(tmp_path / "a")
    assert model.but(weights_digest=logged, evaluated_digest=logged).scores_of_logged_weights() == {
        "test_accuracy": 0.8,
        "test_macro_f1": 0.75,
    }
    changed = model.but(weights_digest=logged, evaluated_digest=weights_digest(tmp_path / "b"))
    assert changed.scores_of_logged_weights() is None  # scored other weights: the registry's copy is scored
    assert model.scores_of_logged_weights() is None  # digests unknown


def test_the_default_store_keeps_its_artifact_folder_after_mlflow_exports_its_uri(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: a second connect() must still see the
    default store (and put new experiments' artifacts in graftline's home, not in ./mlruns)."""
    import os

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("GRAFTLINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GRAFTLINE_ARTIFACT_ROOT", raising=False)
    try:
        first = tracking.connect()
        assert os.environ["MLFLOW_TRACKING_URI"] == first[0] == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
        assert tracking.connect() == first == (first[0], (tmp_path / "home" / "artifacts").as_uri())
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
