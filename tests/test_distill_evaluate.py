"""Distillation loss, layer-copy students, a real distillation run, and evaluation numbers."""

import math

import numpy as np
import pytest
import torch

from graftline.tasks import backbones
from graftline.tasks.distill import (
    DistillConfig, distill, distillation_loss, make_layer_student, retention_gate, student_layers,
)
from graftline.tasks.errors import BackboneError
from graftline.tasks.evaluate import evaluate_model, plot_confusion
from graftline.tasks.finetune import FinetuneConfig, finetune
from graftline.tasks.training import TrainConfig


def test_distillation_loss_matches_a_hand_computed_value():
    student = torch.tensor([[2.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0]])
    labels = torch.tensor([0])
    alpha, t = 0.25, 2.0
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))  # student's CE on label 0
    p = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax(teacher / 2)
    q = [math.e / (1 + math.e), 1 / (1 + math.e)]  # softmax(student / 2)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = alpha * ce + (1 - alpha) * t**2 * kl
    assert distillation_loss(student, teacher, labels, alpha, t).item() == pytest.approx(expected, rel=1e-6)


def test_pure_soft_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 3)
    assert distillation_loss(logits, logits.clone(), torch.zeros(4, dtype=torch.long), 0.0, 3.0).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("spec, kept", [("teacher-layers:3", [0, 2, 4]), ("teacher-layers:2", [0, 3]),
                                        ("teacher-layers:1,5", [1, 5]), ("minilm-l6", None)])
def test_student_layer_specs(spec, kept):
    assert student_layers(spec, 6) == kept


@pytest.mark.parametrize("spec", ["teacher-layers:0", "teacher-layers:7", "teacher-layers:6,9", "teacher-layers:x"])
def test_bad_student_specs_are_refused(spec):
    with pytest.raises(BackboneError, match="student"):
        student_layers(spec, 6)


def test_layer_student_copies_the_chosen_teacher_layers(tiny_backbone):
    teacher = backbones.load_classifier(str(tiny_backbone), ["a", "b"])
    student = make_layer_student(teacher, [1])
    assert student.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    copied = [k for k in s if k.startswith("bert.encoder.layer.0.")]
    assert copied and all(torch.equal(s[k], t[k.replace("layer.0.", "layer.1.")]) for k in copied)
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])


def test_distillation_produces_a_smaller_student_that_learned(tiny_backbone, toy_splits, tmp_path):
    teacher = finetune(toy_splits, FinetuneConfig(backbone=str(tiny_backbone), max_length=32,
                                                  train=TrainConfig(epochs=5, learning_rate=3e-3)), tmp_path / "t")
    config = DistillConfig(student="teacher-layers:1", max_length=32, train=TrainConfig(epochs=4, learning_rate=3e-3))
    result = distill(teacher.model_dir, toy_splits, config, tmp_path / "s")
    assert result.kept_layers == [0]
    assert result.parameter_ratio < 1
    student = backbones.load_classifier(str(result.model_dir))
    assert student.config.num_hidden_layers == 1
    evaluation = evaluate_model(student, backbones.load_tokenizer(str(result.model_dir)), toy_splits.test, 32)
    assert evaluation.accuracy >= 0.8


def test_evaluation_numbers_agree_with_sklearn(tiny_backbone, toy_splits, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    from graftline.tasks.finetune import encode_split
    from graftline.tasks.training import predict_logits

    model = backbones.load_classifier(str(tiny_backbone), ["bad", "good"])  # random head: imperfect
    tokenizer = backbones.load_tokenizer(str(tiny_backbone))
    evaluation = evaluate_model(model, tokenizer, toy_splits.test, 32)
    encoded = encode_split(tokenizer, toy_splits.test, ["bad", "good"], 32)
    predicted = predict_logits(model, encoded, 8, tokenizer.pad_token_id).argmax(-1)
    assert evaluation.accuracy == pytest.approx(accuracy_score(encoded.labels, predicted))
    assert evaluation.macro_f1 == pytest.approx(f1_score(encoded.labels, predicted, average="macro"))
    confusion = np.asarray(evaluation.confusion)
    assert confusion.sum() == 20 and confusion.trace() == round(evaluation.accuracy * 20)
    assert evaluation.per_class["good"]["support"] == 10
    assert set(evaluation.metrics()) >= {"test_accuracy", "test_macro_f1", "test_good_recall", "test_bad_f1"}
    picture = plot_confusion(evaluation, tmp_path / "cm.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_retention_gate():
    report = {"test_accuracy_retention": 0.98, "test_macro_f1_retention": 0.96}
    assert retention_gate(report, 0.95) is None
    assert retention_gate(report, 0.97) == "macro_f1 retention 0.9600 below the floor 0.97"
    assert retention_gate(report, 0.99) == "accuracy retention 0.9800 and macro_f1 retention 0.9600 below the floor 0.99"
