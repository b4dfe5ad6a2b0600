"""Drift statistics on toy samples whose answer is known: same distribution (rarely flagged),
a clear shift (flagged), and a calibrated toy model whose accuracy the estimates must recover."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from graftline.tasks.evaluate.drift import (
    Detection,
    atc_threshold,
    bbsd_ks,
    classifier_test,
    combined_alpha,
    estimate_accuracy,
    label_shift,
    mmd_test,
)


def _false_alarms(p_values: list[float], alpha: float = 0.05) -> float:
    return float(np.mean(np.asarray(p_values) < alpha))


def test_detection_is_detected_below_alpha_only():
    assert Detection("mmd", 0.1, 0.01, 0.05).detected
    assert not Detection("mmd", 0.1, 0.05, 0.05).detected


def test_bbsd_ks_rarely_flags_two_samples_of_one_distribution():
    p_values = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        p_values.append(bbsd_ks(rng.dirichlet([2, 1, 1], 300), rng.dirichlet([2, 1, 1], 150)).p_value)
    assert _false_alarms(p_values) <= 0.15
    assert all(0.0 < p <= 1.0 for p in p_values)


def test_bbsd_ks_detects_a_shift_in_the_softmax_outputs():
    rng = np.random.default_rng(0)
    found = bbsd_ks(rng.dirichlet([2, 1, 1], 300), rng.dirichlet([1, 1, 3], 150))
    assert found.detected and found.name == "bbsd_ks" and found.statistic > 0.3


def test_bbsd_ks_tests_one_column_for_two_classes():
    rng = np.random.default_rng(1)
    reference, window = rng.dirichlet([2, 1], 200), rng.dirichlet([1.5, 1], 100)
    found = bbsd_ks(reference, window)
    expected = ks_2samp(reference[:, 0], window[:, 0])
    assert found.p_value == pytest.approx(expected.pvalue)  # not doubled: column 1 is 1 - column 0
    assert found.statistic == pytest.approx(expected.statistic)


def test_mmd_rarely_flags_two_samples_of_one_gaussian():
    p_values = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        p_values.append(mmd_test(rng.normal(size=(100, 10)), rng.normal(size=(60, 10)), permutations=100).p_value)
    assert _false_alarms(p_values) <= 0.15


def test_mmd_detects_a_mean_shift_and_is_reproducible():
    rng = np.random.default_rng(0)
    reference, window = rng.normal(size=(100, 10)), rng.normal(size=(100, 10)) + 1.0
    found = mmd_test(reference, window, permutations=200)
    assert found.detected and found.name == "mmd" and found.statistic > 0
    assert 0.0 < found.p_value <= 1.0
    assert found.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed statistic
    same = rng.normal(size=(50, 10))
    assert mmd_test(reference, same, seed=3).p_value == mmd_test(reference, same, seed=3).p_value


def test_mmd_of_identical_rows_is_zero_and_not_flagged():
    found = mmd_test(np.ones((10, 4)), np.ones((5, 4)), permutations=20)
    assert found.statistic == pytest.approx(0.0) and found.p_value == 1.0


def test_classifier_cannot_tell_one_distribution_from_itself_and_its_p_value_holds():
    """Many dimensions for few rows, where a pooled cross-validated p-value flagged far too often."""
    results = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        results.append(classifier_test(rng.normal(size=(200, 64)), rng.normal(size=(100, 64)), seed=seed))
    assert all(abs(r.statistic - 0.5) < 0.2 for r in results)
    assert sum(r.detected for r in results) <= 5  # alpha 0.05 of 40: 2 expected


def test_classifier_detects_a_separable_shift():
    rng = np.random.default_rng(0)
    reference, window = rng.normal(size=(200, 5)), rng.normal(size=(100, 5))
    window[:, 0] += 4.0
    found = classifier_test(reference, window)
    assert found.name == "classifier" and found.statistic > 0.9 and found.detected


def test_label_shift_small_without_shift_and_detected_after_a_flip():
    rng = np.random.default_rng(0)
    reference = rng.choice(3, size=1000, p=[0.6, 0.3, 0.1])
    same = label_shift(reference, rng.choice(3, size=300, p=[0.6, 0.3, 0.1]), classes=3)
    assert same.statistic < 0.08 and not same.detected
    flipped = label_shift(reference, rng.choice(3, size=300, p=[0.1, 0.3, 0.6]), classes=3)
    assert flipped.detected and flipped.statistic == pytest.approx(0.5, abs=0.08)


def test_label_shift_with_one_class_on_both_sides_is_not_flagged():
    found = label_shift(np.full(50, 2), np.full(20, 2), classes=4)
    assert found.p_value == 1.0 and found.statistic == 0.0 and not found.detected


def _calibrated(rows: int, low: float, high: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A toy model that is right with probability exactly its confidence."""
    rng = np.random.default_rng(seed)
    confidences = rng.uniform(low, high, rows)
    return confidences, rng.random(rows) < confidences


def test_average_confidence_and_atc_recover_a_calibrated_models_accuracy():
    confidences, correct = _calibrated(5000, 0.5, 1.0, seed=0)
    assert estimate_accuracy(confidences) == pytest.approx(correct.mean(), abs=0.03)
    threshold = atc_threshold(confidences, correct)
    assert estimate_accuracy(confidences, threshold) == pytest.approx(correct.mean(), abs=1 / 5000)
    fresh, fresh_correct = _calibrated(5000, 0.5, 1.0, seed=1)
    assert estimate_accuracy(fresh, threshold) == pytest.approx(fresh_correct.mean(), abs=0.03)


def test_both_estimates_fall_when_a_shift_lowers_accuracy():
    confidences, correct = _calibrated(5000, 0.5, 1.0, seed=0)
    threshold = atc_threshold(confidences, correct)
    shifted, shifted_correct = _calibrated(5000, 0.5, 0.8, seed=2)
    assert shifted_correct.mean() < correct.mean() - 0.05
    assert estimate_accuracy(shifted) < estimate_accuracy(confidences) - 0.05
    assert estimate_accuracy(shifted, threshold) < estimate_accuracy(confidences, threshold) - 0.05
    assert estimate_accuracy(shifted) == pytest.approx(shifted_correct.mean(), abs=0.03)  # still calibrated


def test_combined_alpha_splits_the_budget():
    assert combined_alpha(0.05, 4) == pytest.approx(0.0125)


_PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bbsd_ks(_PROBS, _PROBS[:0]), "window needs at least 1 row"),
        (lambda: bbsd_ks(_PROBS, _PROBS[:, :2] / _PROBS[:, :2].sum(1, keepdims=True)), "columns"),
        (lambda: bbsd_ks(_PROBS[0], _PROBS), "reference must be 2-D"),
        (lambda: bbsd_ks(_PROBS * 5, _PROBS), "outside \\[0, 1\\]"),
        (lambda: bbsd_ks(_PROBS * 0.5, _PROBS), "do not sum to 1"),
        (lambda: bbsd_ks(_PROBS, _PROBS, alpha=1.5), "alpha"),
        (lambda: mmd_test(np.zeros((5, 3)), np.zeros((1, 3))), "window needs at least 2"),
        (lambda: mmd_test(np.zeros((5, 3)), np.zeros((5, 4))), "columns"),
        (lambda: mmd_test(np.full((5, 3), np.nan), np.zeros((5, 3))), "NaN"),
        (lambda: mmd_test(np.zeros((5, 3)), np.zeros((5, 3)), permutations=0), "permutations"),
        (lambda: classifier_test(np.zeros((10, 3)), np.zeros((3, 3))), "window needs at least 4"),
        (lambda: classifier_test(np.zeros((10, 3)), np.zeros((10, 3)), holdout=1.0), "holdout"),
        (lambda: label_shift(np.array([0, 1]), np.array([], dtype=int), classes=2), "window must be a non-empty"),
        (lambda: label_shift(np.array([0, 3]), np.array([0, 1]), classes=3), "outside \\[0, 3\\)"),
        (lambda: label_shift(np.array([0.5, 1.0]), np.array([0, 1]), classes=2), "integer class ids"),
        (lambda: atc_threshold(np.array([0.9, 0.8]), np.array([1])), "correct must match"),
        (lambda: atc_threshold(np.array([0.9, 0.8]), np.array([1, 2])), "0/1"),
        (lambda: estimate_accuracy(np.array([1.5])), "lie in \\[0, 1\\]"),
        (lambda: estimate_accuracy(np.array([])), "non-empty"),
        (lambda: combined_alpha(0.05, 0), "detectors"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
