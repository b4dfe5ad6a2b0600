"""Domain adaptation by rounds on the target texts (tasks/train/self_training.py, adapt.method
self-training and self-distillation): which pseudo-labels a round keeps, the soft labels and their
loss against a computation by hand, rounds that never read target labels, the label-free guard that
keeps the source model when a round goes wrong, and resume inside a round."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from graftline.tasks.data.splits import Split
from graftline.tasks.engine import backbones
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import TrainingIO
from graftline.tasks.settings import AdaptParams, FinetuneParams
from graftline.tasks.train import self_training
from graftline.tasks.train.finetune import finetune
from graftline.tasks.train.self_training import (
    UNLABELED,
    aligned,
    confident_flips,
    prediction_entropy,
    select_pseudo_labels,
    soft_target_loss,
)
from tests.conftest import short_texts, toy_frame


def test_a_round_labels_its_share_of_the_texts_most_confident_first():
    p = np.array([[0.95, 0.05], [0.60, 0.40], [0.05, 0.95], [0.99, 0.01], [0.30, 0.70], [0.02, 0.98]])
    chosen = select_pseudo_labels(p, share=0.5)
    assert chosen.rows.tolist() == [3, 0, 5]  # the three surest whatever their class, grouped by class
    assert chosen.labels.tolist() == [0, 0, 1] and chosen.per_class(["bad", "good"]) == {"bad": 2, "good": 1}
    assert select_pseudo_labels(p, share=1.0, threshold=0.9).rows.tolist() == [3, 0, 5, 2]  # not the unsure 1, 4
    assert len(select_pseudo_labels(p, share=1.0, threshold=0.999)) == 0


def test_class_balance_splits_the_share_by_the_source_prior_and_caps_hold():
    rng = np.random.default_rng(0)
    sure_a = rng.uniform(0.85, 1.0, 60)  # the model says `a` for 60 texts,
    sure_b = rng.uniform(0.6, 0.8, 20)  # `b` for 20, less surely
    p = np.vstack([np.column_stack([sure_a, 1 - sure_a]), np.column_stack([1 - sure_b, sure_b])])
    assert select_pseudo_labels(p, 0.5).per_class(["a", "b"]) == {"a": 40, "b": 0}  # a floods the round
    balanced = select_pseudo_labels(p, 0.5, prior=np.array([50, 50]))
    assert balanced.per_class(["a", "b"]) == {"a": 20, "b": 20}  # 40 labels split 1:1
    kept_a = balanced.rows[balanced.labels == 0]
    assert set(kept_a) == set(np.argsort(-sure_a)[:20])  # each class keeps its surest rows
    skewed = select_pseudo_labels(p, 0.5, prior=np.array([75, 25]))
    assert skewed.per_class(["a", "b"]) == {"a": 30, "b": 10}  # the source's 3:1 mix
    scarce = select_pseudo_labels(p, 1.0, prior=np.array([20, 80]))
    assert scarce.per_class(["a", "b"]) == {"a": 16, "b": 20}  # b has only 20: it keeps them, a is not starved
    assert select_pseudo_labels(p, 0.5, max_per_class=4).per_class(["a", "b"]) == {"a": 4, "b": 0}


def test_prediction_entropy_is_lower_for_surer_predictions():
    assert prediction_entropy(np.array([[0.5, 0.5]])) == pytest.approx(np.log(2))
    assert prediction_entropy(np.array([[0.99, 0.01]])) < prediction_entropy(np.array([[0.7, 0.3]]))


def test_soft_labels_take_the_source_class_mix():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])  # mean prediction (0.65, 0.35)
    soft = aligned(p, prior=np.array([50, 50]))
    by_hand = p * np.array([0.5 / 0.65, 0.5 / 0.35])
    assert soft == pytest.approx(by_hand / by_hand.sum(axis=1, keepdims=True))
    assert soft[:, 1].mean() > p[:, 1].mean()  # the under-predicted class gains
    assert soft.argmax(axis=1).tolist() == [0, 0, 1, 1]  # the 0.6/0.4 text now leans to the rarer class
    assert aligned(p, prior=None) == pytest.approx(p)  # class_balance off: the model's own distributions


def test_the_soft_round_loss_is_cross_entropy_on_source_rows_and_soft_cross_entropy_on_target_rows():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5], [1.0, -1.0]])
    batch = {
        "labels": torch.tensor([1, UNLABELED, UNLABELED]),
        "soft_targets": torch.tensor([[0.0, 0.0], [0.25, 0.75], [1.0, 0.0]]),
    }
    log_p = torch.log_softmax(logits, dim=-1)
    by_hand = (-log_p[0, 1] - (0.25 * log_p[1, 0] + 0.75 * log_p[1, 1]) - log_p[2, 0]) / 3
    got = soft_target_loss(type("Out", (), {"logits": logits})(), batch)
    assert float(got) == pytest.approx(float(by_hand))


def test_confident_flips_count_only_the_source_models_sure_predictions():
    before = np.array([[0.95, 0.05], [0.02, 0.98], [0.6, 0.4], [0.91, 0.09]])
    after = np.array([[0.30, 0.70], [0.10, 0.90], [0.1, 0.9], [0.80, 0.20]])
    assert confident_flips(before, after) == pytest.approx(1 / 3)  # row 0 of the sure rows 0, 1, 3; not row 2
    assert confident_flips(np.array([[0.6, 0.4]]), np.array([[0.1, 0.9]])) == 0.0  # nothing sure: nothing flipped


TARGET = [f"kettle review {i}: " + text for i, text in enumerate(toy_frame(12, seed=7)["text"])]


@pytest.fixture
def target_splits(toy_splits):
    poisoned = pd.DataFrame({"text": TARGET, "row": range(1, len(TARGET) + 1), "label": "poison"})
    return replace(toy_splits, targets={"kitchen": Split("kitchen", poisoned, "mem")})


def train_params(backbone, **changes):
    return FinetuneParams(**{"backbone": str(backbone), "epochs": 2, "batch_size": 8, "learning_rate": 1e-2, **changes})


def test_rounds_train_on_pseudo_labels_and_record_what_they_did(tiny_backbone, target_splits, tmp_path):
    adapt = AdaptParams(method="self-training", rounds=2, max_source_drop=1.0, max_confident_flips=1.0)
    result = finetune(target_splits, train_params(tiny_backbone), short_texts(), tmp_path / "st", adapt=adapt)
    rounds = result.self_training.rounds
    assert [r.round for r in rounds] == [1, 2] and all(r.kept for r in rounds)
    assert all(0 < r.pseudo_labels <= len(TARGET) for r in rounds)
    assert all(set(r.per_class) == {"bad", "good"} for r in rounds)  # labels from the source's vocabulary only
    assert rounds[1].target_entropy < rounds[0].target_entropy  # round 1's model is surer of the target texts
    assert result.self_training.final_confident_share >= rounds[1].confident_share
    assert result.final_training is result.self_training.training is not result.training
    metrics = result.metrics()
    assert metrics["self_training_rounds_kept"] == 2 and "self_training_round_2_pseudo_labels" in metrics
    summary = result.self_training.summary()  # source-only against adapted, as the lifecycle's summary shows it
    assert summary["target_entropy_adapted"] < summary["target_entropy_source_only"] == rounds[0].target_entropy
    assert backbones.load_classifier(str(result.model_dir)).config.id2label == {0: "bad", 1: "good"}
    logged = result.logged()  # what the finetune step logs: the rounds as a file and one line each
    assert [r["round"] for r in logged.dicts["self_training/rounds.json"]] == [1, 2]
    assert [line.split(":")[0] for line in logged.lines] == [
        "teacher",
        "self-training round 1",
        "self-training round 2",
        "adaptation",
    ]
    assert logged.tags["adaptation_decision"] == result.self_training.decision == "adapted (2 of 2 rounds kept)"
    assert result.adaptation_report() == summary


def test_self_distillation_trains_every_target_text_on_the_two_source_models_soft_labels(
    tiny_backbone, target_splits, tmp_path, monkeypatch
):
    seen, predicted = [], []
    original, align = self_training._with_soft_labels, self_training.aligned
    monkeypatch.setattr(self_training, "_with_soft_labels", lambda *a: seen.append(original(*a)) or seen[-1])
    monkeypatch.setattr(self_training, "aligned", lambda p, prior: predicted.append((p, prior)) or align(p, prior))
    adapt = AdaptParams(method="auto", max_source_drop=1.0, max_confident_flips=1.0)  # self-distillation, 2 teachers
    params, first = train_params(tiny_backbone), tmp_path / "source"
    result = finetune(target_splits, params, short_texts(), tmp_path / "sd", adapt=adapt, source_dir=first)
    (record,) = result.self_training.rounds
    assert record.kept and record.pseudo_labels == len(TARGET)  # every text, whatever its confidence
    (split,) = seen
    target_rows = split.labels == UNLABELED
    assert target_rows.sum() == len(TARGET) and (split.labels[~target_rows] >= 0).all()
    soft = split.extras["soft_targets"][target_rows]
    assert soft.sum(axis=1) == pytest.approx(np.ones(len(TARGET)))  # a distribution per target text
    # the teacher by hand: the source model and one trained the same way with the next seed, averaged
    second = finetune(target_splits, params, short_texts().model_copy(update={"seed": 14}), tmp_path / "second")
    one, other = (target_probabilities(folder) for folder in (first, second.model_dir))
    assert not np.allclose(one, other)  # two different models
    ((p, prior),) = predicted
    assert p == pytest.approx((one + other) / 2, abs=1e-5)
    assert result.self_training.teacher_agreement == (float((one.argmax(1) == other.argmax(1)).mean()),)
    assert result.self_training.decision == "adapted (1 of 1 rounds kept; round 1 labelled by 2 source models)"
    prior = prior / prior.sum()  # aligned towards the source's class mix
    assert np.abs(soft.mean(axis=0) - prior).sum() < np.abs(p.mean(axis=0) - prior).sum()
    assert soft == pytest.approx(aligned(p, prior))
    assert result.final_training is result.self_training.training
    summary = result.self_training.summary()  # the source model's own numbers, not the pair's
    assert summary["target_entropy_source_only"] == pytest.approx(prediction_entropy(one), abs=1e-5)


def target_probabilities(folder) -> np.ndarray:
    """A saved model's class probabilities on the target texts, computed here."""
    model, tokenizer = backbones.load_classifier(str(folder)).eval(), backbones.load_tokenizer(str(folder))
    with torch.no_grad():
        encoded = tokenizer(TARGET, truncation=True, max_length=32, padding=True, return_tensors="pt")
        return torch.softmax(model(**encoded).logits, dim=-1).numpy()


def test_the_guard_keeps_the_source_model_when_a_round_turns_the_target_upside_down(
    tiny_backbone, target_splits, tmp_path, monkeypatch
):
    # A labeller that teaches the opposite of what the model believes: no real method does this on
    # purpose; it stands in for an adaptation gone wrong on the target alone.
    monkeypatch.setattr(self_training, "aligned", lambda p, prior: np.ascontiguousarray(p[:, ::-1]).astype(np.float32))
    params = train_params(tiny_backbone, epochs=4)
    source = finetune(target_splits, params, short_texts(), tmp_path / "source")
    adapt = AdaptParams(method="self-distillation", max_source_drop=1.0, round_epochs=3)  # the source check off
    adapted = finetune(target_splits, params, short_texts(), tmp_path / "adapted", adapt=adapt)
    (record,) = adapted.self_training.rounds
    assert record.confident_flips > 0.05 and not record.kept
    assert adapted.self_training.decision.startswith("source-only kept; round 1: flipped")
    one, other = (backbones.load_classifier(str(r.model_dir)).state_dict() for r in (source, adapted))
    assert all(torch.equal(one[k], other[k]) for k in one)  # exactly the source-only model


def test_no_confident_prediction_leaves_exactly_the_source_model(tiny_backbone, target_splits, tmp_path):
    params = train_params(tiny_backbone)
    source = finetune(target_splits, params, short_texts(), tmp_path / "source")
    adapt = AdaptParams(method="self-training", confidence_threshold=1.0)  # a softmax never reaches 1.0 here
    adapted = finetune(target_splits, params, short_texts(), tmp_path / "adapted", adapt=adapt)
    assert [(r.pseudo_labels, r.kept) for r in adapted.self_training.rounds] == [(0, False)]
    one, other = (backbones.load_classifier(str(r.model_dir)).state_dict() for r in (source, adapted))
    assert all(torch.equal(one[k], other[k]) for k in one)


def test_rounds_stop_at_the_first_that_falls_below_the_source_validation(tiny_backbone, target_splits, tmp_path):
    adapt = AdaptParams(method="self-training", max_source_drop=0.0, rounds=4, max_confident_flips=1.0)
    adapted = finetune(target_splits, train_params(tiny_backbone), short_texts(), tmp_path / "st", adapt=adapt)
    rounds, source_f1 = adapted.self_training.rounds, adapted.training.best_val_macro_f1
    assert [r.kept for r in rounds] == [r.val_macro_f1 >= source_f1 for r in rounds]
    assert all(r.kept for r in rounds[:-1])  # rounds go on only while kept
    assert len(rounds) == 4 or not rounds[-1].kept
    kept = [r for r in rounds if r.kept]
    assert adapted.metrics()["best_val_macro_f1"] == (
        adapted.self_training.training.best_val_macro_f1 if kept else source_f1
    )


@pytest.mark.parametrize(("method", "teachers"), [("self-training", 1), ("self-distillation", 2)])
def test_resume_inside_a_round_matches_an_uninterrupted_run(method, teachers, still_backbone, target_splits, tmp_path):
    params = train_params(still_backbone, checkpoint_every=2, checkpoint_seconds=0)
    adapt = AdaptParams(method=method, rounds=2, max_source_drop=1.0, max_confident_flips=1.0, teachers=teachers)
    straight = finetune(target_splits, params, short_texts(), tmp_path / "straight", adapt=adapt)

    def crash_in_round_two(record):  # round 2's epoch ends after its mid-epoch checkpoints, before the last
        if record.epoch == len(straight.training.history) + 2:
            raise KeyboardInterrupt

    folder = tmp_path / "checkpoints"
    killed = TrainingIO(None, folder, crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        finetune(target_splits, params, short_texts(), tmp_path / "killed", killed, adapt)
    assert Checkpoints(folder.with_name("checkpoints-round-2")).latest() is not None
    if teachers == 2:  # the second source model finished: the resumed run replays it without training
        assert Checkpoints(folder.with_name("checkpoints-teacher-1")).latest() is not None
    resumed = finetune(target_splits, params, short_texts(), tmp_path / "resumed", TrainingIO(None, folder), adapt)
    assert resumed.self_training.training.resumed_from_step is not None
    assert resumed.self_training.rounds == straight.self_training.rounds
    assert resumed.self_training.training.step_losses == straight.self_training.training.step_losses
    one, other = (backbones.load_classifier(str(r.model_dir)).state_dict() for r in (straight, resumed))
    assert all(torch.equal(one[k], other[k]) for k in one)
    cleared = [folder, folder.with_name("checkpoints-round-1"), folder.with_name("checkpoints-teacher-1")]
    assert not any(f.exists() for f in cleared)  # cleared once saved
