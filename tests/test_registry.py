"""Registry rules and all-or-nothing registration against a real (sqlite) MLflow store."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from graftline.tasks import backbones, tracking
from graftline.tasks.registry import CHALLENGER, CHAMPION, Candidate, decide, log_classifier, register_all


@pytest.mark.parametrize("score, champion, margin, promote", [
    (0.90, None, 0.0, True),      # no champion yet
    (0.91, 0.90, 0.0, True),      # strictly better
    (0.90, 0.90, 0.0, False),     # a tie keeps the champion
    (0.905, 0.90, 0.01, False),   # better, but not by the margin
    (0.92, 0.90, 0.01, True),
])
def test_champion_rule(score, champion, margin, promote):
    candidate = Candidate("m", "uri", score, champion_score=champion, champion_version=None if champion is None else "1")
    decision = decide(candidate, "macro_f1", margin)
    assert decision.promote is promote
    assert decision.challenger_score == score and decision.champion_score == champion


def test_an_incomparable_champion_is_kept():
    candidate = Candidate("m", "uri", 0.99, champion_version="3", champion_note="labels differ")
    decision = decide(candidate, "accuracy", 0.0)
    assert not decision.promote and "champion v3 kept: labels differ" in decision.reason


@pytest.fixture
def logged_model(mlflow_store, tiny_backbone, tmp_path, unique_name):
    tracking.configure(unique_name)
    model_dir = tmp_path / "model"
    backbones.load_classifier(str(tiny_backbone), ["bad", "good"]).save_pretrained(model_dir)
    backbones.load_tokenizer(str(tiny_backbone)).save_pretrained(model_dir)
    with mlflow.start_run():
        info = log_classifier(model_dir, ["hello there"])
    return info.model_uri


def test_registration_sets_aliases_and_tags(logged_model, unique_name):
    client = MlflowClient()
    first = register_all(client, [Candidate(unique_name, logged_model, 0.8, {"data_digest": "abc"})], "accuracy", 0.0)
    assert first[0].aliases == [CHALLENGER, CHAMPION]
    second = register_all(client, [Candidate(unique_name, logged_model, 0.7, champion_score=0.8, champion_version="1")],
                          "accuracy", 0.0)
    assert second[0].version == "2" and second[0].aliases == [CHALLENGER]
    assert aliases_of(client, unique_name) == {CHAMPION: "1", CHALLENGER: "2"}
    assert client.get_model_version(unique_name, "1").tags["data_digest"] == "abc"
    assert "does not beat" in client.get_model_version(unique_name, "2").tags["graftline.decision"]


def test_a_failure_midway_leaves_the_registry_as_it_was(logged_model, unique_name):
    client = MlflowClient()
    register_all(client, [Candidate(unique_name, logged_model, 0.8)], "accuracy", 0.0)
    student = f"{unique_name}-student"
    candidates = [
        Candidate(unique_name, logged_model, 0.95, champion_score=0.8, champion_version="1"),  # would be promoted
        Candidate(student, "models:/m-does-not-exist", 0.9),  # fails to register
    ]
    with pytest.raises(Exception):
        register_all(client, candidates, "accuracy", 0.0)
    versions = client.search_model_versions(f"name='{unique_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert aliases_of(client, unique_name) == {CHAMPION: "1", CHALLENGER: "1"}
    assert not client.search_registered_models(f"name='{student}'")


def aliases_of(client, name):
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
