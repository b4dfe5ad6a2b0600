"""Domain adaptation by self-training (tasks/train/self_training.py, adapt.method self-training): which
pseudo-labels a round keeps, rounds that never read target labels, and resume inside a round."""

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
from graftline.tasks.train.finetune import finetune
from graftline.tasks.train.self_training import prediction_entropy, select_pseudo_labels
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


TARGET = [f"kettle review {i}: " + text for i, text in enumerate(toy_frame(12, seed=7)["text"])]


@pytest.fixture
def target_splits(toy_splits):
    poisoned = pd.DataFrame({"text": TARGET, "row": range(1, len(TARGET) + 1), "label": "poison"})
    return replace(toy_splits, targets={"kitchen": Split("kitchen", poisoned, "mem")})


def train_params(backbone, **changes):
    return FinetuneParams(backbone=str(backbone), epochs=2, batch_size=8, learning_rate=1e-2, **changes)


def test_rounds_train_on_pseudo_labels_and_record_what_they_did(tiny_backbone, target_splits, tmp_path):
    adapt = AdaptParams(method="self-training", rounds=2, max_source_drop=1.0)
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
    ]
    assert result.adaptation_report() == summary


def test_no_confident_prediction_leaves_exactly_the_source_model(tiny_backbone, target_splits, tmp_path):
    params = train_params(tiny_backbone)
    source = finetune(target_splits, params, short_texts(), tmp_path / "source")
    adapt = AdaptParams(method="self-training", confidence_threshold=1.0)  # a softmax never reaches 1.0 here
    adapted = finetune(target_splits, params, short_texts(), tmp_path / "adapted", adapt=adapt)
    assert [(r.pseudo_labels, r.kept) for r in adapted.self_training.rounds] == [(0, False)]
    one, other = (backbones.load_classifier(str(r.model_dir)).state_dict() for r in (source, adapted))
    assert all(torch.equal(one[k], other[k]) for k in one)


def test_rounds_stop_at_the_first_that_falls_below_the_source_validation(tiny_backbone, target_splits, tmp_path):
    adapt = AdaptParams(method="self-training", max_source_drop=0.0, rounds=4)
    adapted = finetune(target_splits, train_params(tiny_backbone), short_texts(), tmp_path / "st", adapt=adapt)
    rounds, source_f1 = adapted.self_training.rounds, adapted.training.best_val_macro_f1
    assert [r.kept for r in rounds] == [r.val_macro_f1 >= source_f1 for r in rounds]
    assert all(r.kept for r in rounds[:-1])  # rounds go on only while kept
    assert len(rounds) == 4 or not rounds[-1].kept
    kept = [r for r in rounds if r.kept]
    assert adapted.metrics()["best_val_macro_f1"] == (
        adapted.self_training.training.best_val_macro_f1 if kept else source_f1
    )


def test_resume_inside_a_round_matches_an_uninterrupted_run(still_backbone, target_splits, tmp_path):
    params = train_params(still_backbone, checkpoint_every=2, checkpoint_seconds=0)
    adapt = AdaptParams(method="self-training", rounds=2, max_source_drop=1.0)
    straight = finetune(target_splits, params, short_texts(), tmp_path / "straight", adapt=adapt)

    def crash_in_round_two(record):  # round 2's epoch ends after its mid-epoch checkpoints, before the last
        if record.epoch == len(straight.training.history) + 2:
            raise KeyboardInterrupt

    folder = tmp_path / "checkpoints"
    killed = TrainingIO(None, folder, crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        finetune(target_splits, params, short_texts(), tmp_path / "killed", killed, adapt)
    assert Checkpoints(folder.with_name("checkpoints-round-2")).latest() is not None
    resumed = finetune(target_splits, params, short_texts(), tmp_path / "resumed", TrainingIO(None, folder), adapt)
    assert resumed.self_training.training.resumed_from_step is not None
    assert resumed.self_training.rounds == straight.self_training.rounds
    assert resumed.self_training.training.step_losses == straight.self_training.training.step_losses
    one, other = (backbones.load_classifier(str(r.model_dir)).state_dict() for r in (straight, resumed))
    assert all(torch.equal(one[k], other[k]) for k in one)
    assert not folder.exists() and not folder.with_name("checkpoints-round-1").exists()  # cleared once saved
