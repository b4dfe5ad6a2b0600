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
