"""Transferability scores rank known-good features first; `auto` picks within the budget."""

import numpy as np
import pandas as pd
import pytest

from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import SelectParams
from graftline.tasks.train.selection import METHODS, CandidateReport, choose, score_features, stratified_sample


def synthetic(separation: float, seed: int = 0, n: int = 300, dims: int = 32):
    """Three classes whose means are `separation` apart along random directions, unit noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    means = rng.normal(size=(3, dims)) * separation
    return (means[labels] + rng.normal(size=(n, dims))).astype(np.float32), labels.astype(np.int64)


@pytest.mark.parametrize("method", METHODS)
def test_separable_features_score_above_noise(method):
    separable, labels = synthetic(3.0)
    noise, noise_labels = synthetic(0.0)
    weak, weak_labels = synthetic(0.5)
    scores = [
        score_features(f, y, method) for f, y in ((separable, labels), (weak, weak_labels), (noise, noise_labels))
    ]
    assert scores[0] > scores[1] > scores[2], scores


def test_stratified_sample_keeps_shares():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(1000)], "label": ["a"] * 900 + ["b"] * 100})
    sample = stratified_sample(frame, 100, seed=1)
    assert len(sample) == 100 and sample["label"].value_counts().to_dict() == {"a": 90, "b": 10}
    assert stratified_sample(frame.head(50), 100, seed=1).shape[0] == 50


def report(name, logme, parameters, ms):
    return CandidateReport(name, parameters, 6, 384, {"logme": logme, "hscore": 0.0, "knn": 0.0}, ms, None, 1.0)


def test_choice_respects_the_budget():
    reports = [
        report("big", 3.0, 100_000_000, 30.0),
        report("small", 1.0, 20_000_000, 4.0),
        report("tiny", 0.5, 5_000_000, 1.0),
    ]
    free = choose([*reports], SelectParams(candidates=["big", "small", "tiny"]))
    assert free.choice == "big" and "next: small" in free.reason
    capped = choose(
        [
            report("big", 3.0, 100_000_000, 30.0),
            report("small", 1.0, 20_000_000, 4.0),
            report("tiny", 0.5, 5_000_000, 1.0),
        ],
        SelectParams(max_parameters=50_000_000),
    )
    assert capped.choice == "small" and "over budget: big" in capped.reason
    fast = choose(
        [report("big", 3.0, 1, 30.0), report("small", 1.0, 1, 4.0), report("tiny", 0.5, 1, 1.0)],
        SelectParams(max_ms_per_example=2.0),
    )
    assert fast.choice == "tiny"
    with pytest.raises(GraftlineError, match="no candidate backbone fits the budget"):
        choose([report("big", 3.0, 100, 30.0)], SelectParams(max_parameters=10))


def test_constant_features_score_nan_and_rank_last():
    constant = np.ones((50, 8), dtype=np.float32)
    labels = np.array([0, 1] * 25)
    assert all(np.isnan(score_features(constant, labels, m)) for m in METHODS)
    chosen = choose([report("dead", float("nan"), 1, 1.0), report("alive", -5.0, 1, 1.0)], SelectParams())
    assert chosen.choice == "alive"
