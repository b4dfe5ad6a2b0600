"""Image data through the real lifecycle flow (temporary Prefect API, sqlite MLflow store): the same
steps as text, on drawn pictures and the tiny EfficientNet-Lite built from config (random weights:
what is recorded is checked here, not how accurate it is)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from graftline.flows.lifecycle import transfer
from graftline.tasks import settings
from graftline.tasks.errors import ValidationFailed
from graftline.tasks.registry import contract


@pytest.fixture
def run_images(prefect_harness, mlflow_store, tiny_image_backbone, shape_images, unique_name):
    def run(train: Path, export: bool = False):
        backbone = str(tiny_image_backbone)
        return transfer(
            data=settings.DataParams(train_path=str(train), eval_sets={"outlines": str(shape_images["outlines"])}),
            model=settings.ModelParams(image_size=32, seed=13),
            finetune=settings.FinetuneParams(
                backbone=backbone, strategy="lp-ft", probe_epochs=1, epochs=1, batch_size=8, learning_rate=3e-3
            ),
            distill=settings.DistillParams(student=backbone, epochs=1, batch_size=8, learning_rate=3e-3),
            export=settings.ExportParams(enabled=export, min_agreement=0.5, max_accuracy_drop=0.5, latency_rows=8),
            registry=settings.RegistryParams(
                model_name=unique_name, experiment=unique_name, gates=settings.GateParams(retention_floor=0.0)
            ),
            run=settings.RunParams(reuse_steps=False),
        )

    return run


def test_image_data_runs_the_lifecycle_and_registers_image_models_that_predict_from_bytes(
    run_images, shape_images, unique_name
):
    summary = run_images(shape_images["train"], export=True)
    client = MlflowClient()
    assert [r.version for r in summary.registered] == ["1", "1"]
    for registration in summary.registered:
        tags = client.get_model_version(registration.name, registration.version).tags
        assert tags[contract.MODALITY] == "image" and tags[contract.BACKBONE].endswith("tiny-lite0")
        assert "production" in registration.aliases  # promotion re-scored the version from the registry
    experiment = client.get_experiment_by_name(unique_name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["ingest"].data.tags[contract.MODALITY] == "image"
    assert runs["finetune"].data.params["finetune.strategy"] == "lp-ft"
    assert runs["finetune"].data.metrics["best_epoch"] >= 1
    evaluated = {Path(a.path).name for a in client.list_artifacts(runs["evaluate"].info.run_id, "evaluation")}
    assert {"test_confusion.png", "outlines_confusion.png", "test_misclassified.png"} <= evaluated
    assert "outlines_accuracy_gap_vs_test" in runs["evaluate"].data.metrics
    assert runs["export"].data.tags["graftline.export"] == "parity passed"

    student = next(r for r in summary.registered if r.name.endswith("-student"))
    servable = client.get_model_version(student.name, student.version).tags[contract.SERVABLE]
    pictures = sorted(shape_images["outlines"].rglob("*.png"))[:3]
    served = mlflow.pyfunc.load_model(servable).predict(
        pd.DataFrame({"image_bytes": [p.read_bytes() for p in pictures]})
    )
    registered = mlflow.pyfunc.load_model(f"models:/{student.name}@production")
    by_path = registered.predict(pd.DataFrame({"image": [str(p) for p in pictures]}))
    assert len(served) == len(by_path) == 3 and set(by_path["label"]) <= {"circle", "square", "triangle"}

    from graftline.tasks.serve.predict import ModelReference, PredictionError, load_scorer

    with pytest.raises(PredictionError, match=r"classifies images; predict, monitor and explain read texts"):
        load_scorer(client, ModelReference.parse(f"{student.name}@production"))


def test_an_undecodable_image_stops_the_run_before_training_and_registers_nothing(
    run_images, shape_images, unique_name, tmp_path
):
    train = tmp_path / "train"
    shutil.copytree(shape_images["train"], train)
    (train / "square" / "scan-0042.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValidationFailed, match="data validation failed") as failed:
        run_images(train)
    assert "scan-0042.jpg" in failed.value.details
    client = MlflowClient()
    experiment = client.get_experiment_by_name(unique_name)
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert "finetune" not in names and not client.search_registered_models(f"name='{unique_name}'")
