"""ONNX export, INT8 quantisation and the parity check, on the tiny BERT (no downloads)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from graftline.tasks.engine import backbones
from graftline.tasks.export.onnx import (
    export_and_measure,
    export_onnx,
    onnx_predictor,
    plot_tradeoff,
    predict_in_batches,
    quantize_int8,
    torch_predictor,
)
from graftline.tasks.settings import DistillParams, ExportParams, FinetuneParams
from graftline.tasks.train.finetune import finetune
from tests.conftest import short_texts


@pytest.fixture(scope="module")
def trained(tiny_backbone, tmp_path_factory):
    """A teacher and a 1-layer copy of it that learned the toy task (a stand-in for a student)."""
    from graftline.tasks.data.splits import Split, Splits
    from tests.conftest import toy_frame

    splits = Splits(
        Split("train", toy_frame(40, 0), "toy"),
        Split("validation", toy_frame(10, 1), "toy"),
        Split("test", toy_frame(30, 2), "toy"),
    )
    root = tmp_path_factory.mktemp("export")
    teacher = finetune(
        splits,
        FinetuneParams(backbone=str(tiny_backbone), epochs=5, learning_rate=3e-3),
        short_texts(),
        root / "teacher",
    )
    from graftline.tasks.train.distill import distill

    student = distill(
        teacher.model_dir,
        splits,
        DistillParams(student="teacher-layers:1", epochs=3, learning_rate=3e-3),
        short_texts(),
        root / "student",
    )
    return teacher.model_dir, student.model_dir, splits


def test_onnx_export_computes_what_torch_computes(trained, tmp_path):
    _, student_dir, splits = trained
    model, tokenizer = backbones.load_classifier(str(student_dir)).eval(), backbones.load_tokenizer(str(student_dir))
    path = export_onnx(model, tokenizer, tmp_path / "model.onnx")
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.graph.output] == ["logits", "pooled"]
    texts = splits.test.frame["text"].tolist() + ["x", "a much longer text than the export example ever had " * 3]
    for batch in (1, 7, 64):  # dynamic batch and sequence axes
        ours = predict_in_batches(torch_predictor(model, tokenizer, 32), texts, batch)
        theirs = predict_in_batches(onnx_predictor(path, tokenizer, 32), texts, batch)
        assert np.abs(ours - theirs).max() < 1e-4
    # the second output is the drift monitor's embedding: the torch model's mean-pooled last states
    from graftline.tasks.export.predictors import onnx_profiler
    from graftline.tasks.serve.monitor import torch_forward

    logits, pooled = onnx_profiler(path, tokenizer, 32, batch_size=7)(texts)
    torch_logits, torch_pooled = torch_forward(model, tokenizer, 32)(texts)
    assert np.abs(logits - torch_logits).max() < 1e-4 and np.abs(pooled - torch_pooled).max() < 1e-4


def test_int8_model_is_smaller_and_agrees(trained, tmp_path):
    _, student_dir, splits = trained
    model, tokenizer = backbones.load_classifier(str(student_dir)).eval(), backbones.load_tokenizer(str(student_dir))
    fp32 = export_onnx(model, tokenizer, tmp_path / "model.onnx")
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx")
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for node in onnx.load(str(int8)).graph.node)
    texts = splits.test.frame["text"].tolist()
    ours = predict_in_batches(torch_predictor(model, tokenizer, 32), texts).argmax(-1)
    theirs = predict_in_batches(onnx_predictor(int8, tokenizer, 32), texts).argmax(-1)
    assert (ours == theirs).mean() >= 0.9


def test_export_report_measures_every_served_model(trained, tmp_path):
    teacher_dir, student_dir, splits = trained
    report = export_and_measure(student_dir, teacher_dir, splits.test, ExportParams(), 32, tmp_path)
    assert [r.name for r in report.rows] == ["teacher", "student", "student-onnx", "student-onnx-int8"]
    student, onnx_fp32 = report.row("student"), report.row("student-onnx")
    assert onnx_fp32.agreement == 1.0 and onnx_fp32.passed and onnx_fp32.accuracy == student.accuracy
    assert all(r.ms_batch_1 > 0 and r.examples_per_second_batch_32 > 0 for r in report.rows)
    metrics = report.metrics()
    assert metrics["student_onnx_parity_passed"] == 1.0 and metrics["student_onnx_accuracy_drop"] == 0.0
    assert math.isclose(
        metrics["student_onnx_int8_speedup_batch_32"],
        report.row("student-onnx-int8").examples_per_second_batch_32
        / report.row("teacher").examples_per_second_batch_32,
    )
    assert plot_tradeoff(report, tmp_path / "tradeoff.png").stat().st_size > 0


def test_an_export_that_loses_accuracy_fails_parity(trained, tmp_path, monkeypatch):
    # Stand-in for a broken export (mocked: a real one is hard to produce on purpose): the ONNX
    # model's logits come back reversed, so it predicts the other class.
    import graftline.tasks.export.onnx as export

    real = export.onnx_predictor
    monkeypatch.setattr(export, "onnx_predictor", lambda *a: lambda texts, p=real(*a): -p(texts))
    teacher_dir, student_dir, splits = trained
    report = export_and_measure(student_dir, teacher_dir, splits.test, ExportParams(), 32, tmp_path)
    for name in ("student-onnx", "student-onnx-int8"):
        assert not report.row(name).passed and report.row(name).agreement < 0.5
    assert report.metrics()["student_onnx_parity_passed"] == 0.0 and len(report.failures()) == 2


def test_an_export_that_disagrees_fails_parity(trained, tmp_path):
    teacher_dir, _, splits = trained
    # An agreement floor above 1 cannot be met: the report must say the export failed, not pass it.
    report = export_and_measure(
        teacher_dir, None, splits.test, ExportParams().model_copy(update={"min_agreement": 1.01}), 32, tmp_path
    )
    assert [r.name for r in report.rows] == ["teacher", "teacher-onnx", "teacher-onnx-int8"]
    assert not report.row("teacher-onnx").passed and report.row("teacher").passed
    assert report.failures()[0].startswith("teacher-onnx agrees with torch on 1.0000 of the test set")


# Runs in a fresh Python in which any import of graftline fails: what a serving machine without
# graftline does with a logged model.
PREDICT_WITHOUT_GRAFTLINE = """
import importlib.abc
import sys

import pandas as pd


FORBIDDEN = set(sys.argv[4].split(","))


class NoGraftline(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in FORBIDDEN:
            raise ModuleNotFoundError(f"the logged model imported {name}")


sys.meta_path.insert(0, NoGraftline())
import mlflow.pyfunc

model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_pickle(sys.argv[2]), params={"batch_size": 7}).to_pickle(sys.argv[3])
assert not [m for m in sys.modules if m.partition(".")[0] == "graftline"]
"""


def predict_without_graftline(
    model_uri: str, frame: pd.DataFrame, folder: Path, forbidden: tuple[str, ...] = ("graftline",)
) -> pd.DataFrame:
    """The logged model's predictions for `frame`, computed in a fresh Python where graftline (and the
    other `forbidden` packages) cannot be imported (batches of 7 rows); fails if loading or predicting
    reaches for one."""
    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder))
    frame.to_pickle(folder / "input.pkl")
    command = [sys.executable, "-c", PREDICT_WITHOUT_GRAFTLINE, local, "input.pkl", "output.pkl", ",".join(forbidden)]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_pickle(folder / "output.pkl")


def test_the_logged_servable_predicts_calibrated_scores_without_graftline(trained, mlflow_store, tmp_path):
    import mlflow

    from graftline.tasks.evaluate.calibration import softmax
    from graftline.tasks.export.onnx import log_servable

    _, student_dir, splits = trained
    model, tokenizer = backbones.load_classifier(str(student_dir)).eval(), backbones.load_tokenizer(str(student_dir))
    path = export_onnx(model, tokenizer, tmp_path / "model.onnx")
    labels = backbones.labels_of(model)
    mlflow.set_experiment("servable-without-graftline")
    with mlflow.start_run():
        logged = log_servable(path, student_dir, labels, 32, 1.5, tmp_path / "logged")
    texts = splits.test.frame["text"].tolist()[:20]
    # nor torch: the ONNX servable declares no torch (its tokenizer.json runs on `tokenizers`)
    frame = pd.DataFrame({"text": texts})
    served = predict_without_graftline(logged.model_uri, frame, tmp_path / "served", ("graftline", "torch"))
    assert [p.name for p in (tmp_path / "served").rglob("code/*.py")] == ["onnx_pyfunc.py"]  # shipped beside it
    expected = softmax(onnx_predictor(path, tokenizer, 32)(texts), 1.5)
    assert list(served.columns) == ["label", "score", *(f"score_{label}" for label in labels)]
    assert list(served["label"]) == [labels[i] for i in expected.argmax(-1)]
    assert np.allclose(served[[f"score_{label}" for label in labels]], expected, atol=1e-5)
    assert np.allclose(served["score"], expected.max(-1), atol=1e-5)


def test_the_torch_free_tokenizer_gives_transformers_inputs(tiny_backbone):
    """What ONNX scoring tokenizes with (no transformers, so no torch import) against transformers."""
    from graftline.tasks.export.onnx_pyfunc import fast_tokenizer
    from graftline.tasks.export.predictors import model_inputs

    reference = backbones.load_tokenizer(str(tiny_backbone))
    ours = fast_tokenizer(Path(tiny_backbone))
    texts = ["I was charged twice", "", "Ünïcödé CAFÉ — 東京 emoji 🎉", "word " * 300, "a\tb\nc  d", "don't!!"]
    for max_length in (8, 32, 512):
        expected = model_inputs(reference, texts, max_length, "np")
        got = model_inputs(ours, texts, max_length, "np")
        for key in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(got[key], expected[key])
    assert ours.pad_token_id == reference.pad_token_id
