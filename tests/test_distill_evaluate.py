"""Distillation loss, layer-copy students, a real distillation run, and evaluation numbers."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from graftline.tasks.engine import backbones
from graftline.tasks.engine.backbones import layer_student as make_layer_student
from graftline.tasks.engine.backbones import student_layers
from graftline.tasks.errors import BackboneError
from graftline.tasks.evaluate.scores import evaluate_model, plot_confusion, retention_gate
from graftline.tasks.settings import DistillParams, FinetuneParams
from graftline.tasks.train.distill import (
    UNLABELED,
    HiddenStateStudent,
    augment,
    distill,
    distillation_loss,
    mean_pool,
    uniform_layer_map,
)
from graftline.tasks.train.finetune import finetune
from tests.conftest import short_texts


def test_distillation_loss_matches_a_hand_computed_value():
    student = torch.tensor([[2.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0]])
    labels = torch.tensor([0])
    alpha, t = 0.25, 2.0
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))  # student's CE on label 0
    p = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax(teacher / 2)
    q = [math.e / (1 + math.e), 1 / (1 + math.e)]  # softmax(student / 2)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = alpha * ce + (1 - alpha) * t**2 * kl
    assert distillation_loss(student, teacher, labels, alpha, t).item() == pytest.approx(expected, rel=1e-6)


def test_unlabeled_rows_only_feed_the_soft_term():
    student, teacher = torch.tensor([[2.0, 0.0], [0.5, 1.0]]), torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    alpha, t = 0.3, 2.0
    mixed = distillation_loss(student, teacher, torch.tensor([0, UNLABELED]), alpha, t)
    hard = torch.nn.functional.cross_entropy(student[:1], torch.tensor([0]))  # the labeled row only
    soft = distillation_loss(student, teacher, torch.tensor([0, 0]), 0.0, t) / t**2  # both rows
    assert mixed.item() == pytest.approx((alpha * hard + (1 - alpha) * t**2 * soft).item(), rel=1e-6)
    only_unlabeled = distillation_loss(student, teacher, torch.tensor([UNLABELED, UNLABELED]), alpha, t)
    assert torch.isfinite(only_unlabeled) and only_unlabeled.item() == pytest.approx(
        ((1 - alpha) * t**2 * soft).item(), rel=1e-6
    )


def test_uniform_layer_map_ends_on_the_teachers_last_layer():
    assert uniform_layer_map(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert uniform_layer_map(3, 12) == [(0, 3), (1, 7), (2, 11)]
    assert uniform_layer_map(2, 2) == [(0, 0), (1, 1)]


def test_augmented_copies_are_noisy_variants_and_reproducible():
    texts = ["the screen cracked after two days of use", "fast delivery and great price"]
    copies = augment(texts, 3, seed=1)
    assert len(copies) == 6 and copies == augment(texts, 3, seed=1)
    assert all(c != texts[i // 3] and set(c.split()) <= set(texts[i // 3].split()) for i, c in enumerate(copies))


def test_pure_soft_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 3)
    assert distillation_loss(
        logits, logits.clone(), torch.zeros(4, dtype=torch.long), 0.0, 3.0
    ).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize(
    "spec, kept",
    [
        ("teacher-layers:3", [0, 2, 4]),
        ("teacher-layers:2", [0, 3]),
        ("teacher-layers:1,5", [1, 5]),
        ("minilm-l6", None),
    ],
)
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
    teacher = finetune(
        toy_splits,
        FinetuneParams(backbone=str(tiny_backbone), epochs=5, learning_rate=3e-3),
        short_texts(),
        tmp_path / "t",
    )
    config = DistillParams(student="teacher-layers:1", epochs=4, learning_rate=3e-3)
    result = distill(teacher.model_dir, toy_splits, config, short_texts(), tmp_path / "s")
    assert result.kept_layers == [0]
    assert result.parameter_ratio < 1
    student = backbones.load_classifier(str(result.model_dir))
    assert student.config.num_hidden_layers == 1
    evaluation = evaluate_model(student, backbones.load_tokenizer(str(result.model_dir)), toy_splits.test, 32)
    assert evaluation.accuracy >= 0.8


@pytest.fixture
def toy_teacher(tiny_backbone, toy_splits, tmp_path):
    config = FinetuneParams(backbone=str(tiny_backbone), epochs=5, learning_rate=3e-3)
    return finetune(toy_splits, config, short_texts(), tmp_path / "teacher").model_dir


def pooled_layer_distance(student_dir, teacher_dir, split, student_layer, teacher_layer) -> float:
    """Mean squared distance between a student layer's and a teacher layer's mean-pooled states."""
    tokenizer = backbones.load_tokenizer(str(teacher_dir))
    batch = tokenizer(split.frame["text"].tolist(), padding=True, return_tensors="pt")
    states = []
    for folder, layer in ((student_dir, student_layer), (teacher_dir, teacher_layer)):
        model = backbones.load_classifier(str(folder)).eval()
        with torch.no_grad():
            hidden = model(**batch, output_hidden_states=True).hidden_states[layer + 1]
        states.append(mean_pool(hidden, batch["attention_mask"]))
    return float(((states[0] - states[1]) ** 2).mean())


def test_hidden_state_loss_pulls_the_student_towards_the_teachers_layer(toy_teacher, toy_splits, tmp_path):
    distances = {}
    for weight in (0.0, 10.0):
        config = DistillParams(
            student="teacher-layers:1", hidden_weight=weight, epochs=3, learning_rate=3e-3, patience=3
        )
        result = distill(toy_teacher, toy_splits, config, short_texts(), tmp_path / f"s{weight}")
        assert result.layer_map == ([(0, 1)] if weight else [])
        distances[weight] = pooled_layer_distance(result.model_dir, toy_teacher, toy_splits.test, 0, 1)
    assert distances[10.0] < 0.5 * distances[0.0]


def test_a_narrower_student_learns_through_a_projection_from_unlabeled_and_augmented_text(
    toy_teacher, toy_splits, narrow_backbone, tmp_path
):
    from safetensors import safe_open

    unlabeled = toy_frame_texts()
    splits = replace(toy_splits, unlabeled=tuple(unlabeled))
    config = DistillParams(
        student=str(narrow_backbone), hidden_weight=1.0, augment_copies=1, epochs=6, learning_rate=1e-2, patience=6
    )  # at 3e-3 the 16-wide student stayed on one class for about half the seeds tried; at 1e-2, none of 12
    result = distill(toy_teacher, splits, config, short_texts(), tmp_path / "s")
    assert result.transfer_rows == len(unlabeled) + len(toy_splits.train.frame)
    assert result.layer_map == [(0, 1)]
    with safe_open(str(result.model_dir / "model.safetensors"), "pt") as saved:
        assert not any("projection" in key for key in saved.keys())  # training-only parts are not saved
    student = backbones.load_classifier(str(result.model_dir))
    assert student.config.hidden_size == 16
    evaluation = evaluate_model(student, backbones.load_tokenizer(str(result.model_dir)), toy_splits.test, 32)
    assert evaluation.accuracy >= 0.8


def test_hidden_state_student_projects_to_the_teachers_width(narrow_backbone):
    student = backbones.load_classifier(str(narrow_backbone), ["a", "b"])
    wrapped = HiddenStateStudent(student, [0], teacher_width=32)
    batch = backbones.load_tokenizer(str(narrow_backbone))(
        ["one text", "another longer text"], padding=True, return_tensors="pt"
    )
    out = wrapped(**batch)
    assert out.logits.shape == (2, 2) and out.pooled_hidden.shape == (2, 1, 32)
    assert sum(p.numel() for p in wrapped.projections.parameters()) == 16 * 32 + 32


def toy_frame_texts() -> list[str]:
    from tests.conftest import toy_frame

    return toy_frame(20, seed=7)["text"].tolist()


def test_evaluation_numbers_agree_with_sklearn(tiny_backbone, toy_splits, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    from graftline.tasks.engine.training import predict_logits
    from graftline.tasks.train.finetune import encode_split

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
    assert retention_gate(report, 0.97) == "test macro_f1 retention 0.9600 below the floor 0.97"
    assert retention_gate(report, 0.99) == (
        "test accuracy retention 0.9800 and test macro_f1 retention 0.9600 below the floor 0.99"
    )


def test_retention_gate_holds_on_the_sets_named():
    report = {"test_accuracy_retention": 1.0, "test_macro_f1_retention": 1.0,
              "home_accuracy_retention": 0.95, "home_macro_f1_retention": 0.9493}  # fmt: skip
    assert retention_gate(report, 0.97) is None  # test only: the demo's student passes
    assert retention_gate(report, 0.97, ["test", "home"]) == (
        "home accuracy retention 0.9500 and home macro_f1 retention 0.9493 below the floor 0.97"
    )
    assert retention_gate(report, 0.97, ["*"]) == retention_gate(report, 0.97, ["home", "test"])
    assert "'books' cannot be checked: not evaluated" in retention_gate(report, 0.97, ["books"])
