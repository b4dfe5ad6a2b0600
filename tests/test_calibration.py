"""Temperature scaling and calibration error on toy logits whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from graftline.tasks.evaluate.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    softmax,
)


def _sample(temperature: float, rows: int = 4000, classes: int = 3, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): T recovers `temperature`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(rows, classes))
    truth = np.array([rng.choice(classes, p=p) for p in softmax(logits, temperature)])
    return logits, truth


def test_fit_recovers_the_temperature_the_labels_were_drawn_with():
    logits, truth = _sample(temperature=2.5)
    assert fit_temperature(logits, truth) == pytest.approx(2.5, rel=0.1)
    logits, truth = _sample(temperature=1.0, seed=1)
    assert fit_temperature(logits, truth) == pytest.approx(1.0, rel=0.1)


def test_scaling_lowers_the_error_of_an_over_confident_model_and_keeps_its_predictions(tmp_path):
    validation, test = _sample(3.0, seed=2), _sample(3.0, seed=3)
    calibration = calibrate(validation, {"test": test})
    assert calibration.temperature > 2
    assert calibration.ece_before["test"] > 0.1  # raw logits are far too confident
    assert calibration.ece_after["test"] < calibration.ece_before["test"] / 3
    assert (softmax(test[0], calibration.temperature).argmax(-1) == test[0].argmax(-1)).all()
    assert set(calibration.metrics()) == {"temperature", "test_ece", "test_ece_calibrated"}
    assert plot_reliability(calibration, tmp_path / "reliability.png").stat().st_size > 0


def test_a_perfectly_calibrated_model_has_a_small_error():
    logits, truth = _sample(1.0, rows=20000, seed=4)
    assert expected_calibration_error(softmax(logits), truth) < 0.02


def test_bad_logits_are_refused():
    with pytest.raises(ValueError, match="temperature needs"):
        fit_temperature(np.zeros(5), np.zeros(5, dtype=int))


def test_a_temperature_replaces_one_only_where_it_lowers_held_out_likelihood():
    from graftline.tasks.evaluate.calibration import MIN_ERRORS, guarded_temperature

    # over-confident, 600 rows: the fit earns its place in cross-validation
    temperature, why = guarded_temperature(*_sample(3.0, rows=600, seed=5))
    assert temperature > 2 and why.startswith(f"T = {temperature:.3g}: lowers held-out NLL")
    # near-perfect on a small split (the demo's case): too few errors for the likelihood fit, but the mean
    # confidence (0.881) lies below the accuracy's 95% interval (161 of 170 right: 0.902-0.972), so T
    # makes it the smoothed accuracy 162 / 172: sharper, and never certain
    logits = np.tile([[2.0, 0.0]], (170, 1))
    truth = np.zeros(170, dtype=int)
    truth[: MIN_ERRORS - 1] = 1
    temperature, why = guarded_temperature(logits, truth)
    assert temperature < 1 and softmax(logits, temperature).max(-1).mean() == pytest.approx(162 / 172, abs=1e-4)
    assert why.startswith(f"T = {temperature:.3g}: {MIN_ERRORS - 1} validation errors, fewer than {MIN_ERRORS}")
    assert "outside the 95% interval of the accuracy (0.902-0.972, 161 of 170 right)" in why
    # every row right: the target stays below certainty
    perfect, _ = guarded_temperature(logits, np.zeros(170, dtype=int))
    assert softmax(logits, perfect).max(-1).mean() == pytest.approx(171 / 172, abs=1e-4)
    # as sure as it is right (0.953 inside the interval): T = 1 stays
    kept, why = guarded_temperature(np.tile([[3.0, 0.0]], (170, 1)), truth)
    assert kept == 1.0 and "within the 95% interval of the accuracy" in why
    # already calibrated, small split: a fitted T does not generalise across folds
    kept, why = guarded_temperature(*_sample(1.0, rows=120, seed=6))
    assert kept == 1.0 and why.startswith("T = 1 kept: a fitted temperature raised held-out NLL")
    # the calibration report carries the decision
    assert calibrate(_sample(1.0, rows=120, seed=6), {"test": _sample(1.0, seed=7)}).reason == why
