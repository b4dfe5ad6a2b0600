"""The monitor's verdict on profiles of known shift, and its report; no model, no store."""

from __future__ import annotations

import numpy as np
import pytest

from graftline.tasks.serve.monitor import (
    DRIFT,
    HARMFUL,
    NO_DRIFT,
    Profile,
    Reference,
    compare,
    plot_report,
    write_html,
)
from graftline.tasks.settings import MonitorParams

LABELS = ["bad", "good"]


def _profile(rows: int, confidence: float, shift: float, seed: int) -> tuple[Profile, np.ndarray]:
    """Binary predictions whose confidence is drawn around `confidence` and is calibrated (a row is
    right with the probability it states); embeddings moved by `shift` in every dimension."""
    rng = np.random.default_rng(seed)
    top = np.clip(rng.normal(confidence, 0.05, rows), 0.5, 0.999)
    predicted = rng.integers(0, 2, rows)
    probabilities = np.where(predicted[:, None] == np.arange(2), top[:, None], 1 - top[:, None])
    truth = np.where(rng.random(rows) < top, predicted, 1 - predicted)
    return Profile(probabilities, rng.normal(shift, 1.0, (rows, 8)).astype(np.float32)), truth


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(*_profile(600, 0.9, 0.0, seed=0))


def test_a_window_like_the_reference_is_no_drift(reference):
    window, _ = _profile(200, 0.9, 0.0, seed=1)
    report = compare(reference, window, LABELS, MonitorParams(permutations=100))
    assert report.verdict == NO_DRIFT
    assert abs(report.estimated_accuracy - reference.accuracy) < 0.05


def test_a_shift_that_keeps_confidence_is_drift_but_not_harmful(reference):
    window, _ = _profile(200, 0.9, 1.0, seed=2)
    report = compare(reference, window, LABELS, MonitorParams(permutations=100))
    assert report.verdict == DRIFT
    assert report.detections["mmd"].detected and report.detections["classifier"].detected
    assert all(d.alpha == pytest.approx(0.05 / 4) for d in report.detections.values())  # Bonferroni


def test_a_shift_that_costs_accuracy_is_harmful_and_the_estimate_follows_it(reference, tmp_path):
    window, truth = _profile(400, 0.7, 1.0, seed=3)
    true_accuracy = float((window.predicted == truth).mean())
    atc = compare(reference, window, LABELS, MonitorParams(permutations=100, accuracy_estimate="atc"))
    assert atc.verdict == HARMFUL and atc.estimated_accuracy < reference.accuracy - 0.1
    report = compare(reference, window, LABELS, MonitorParams(permutations=100, accuracy_estimate="confidence"))
    assert report.verdict == HARMFUL
    # calibrated probabilities: their mean is the accuracy (ATC's threshold, fitted where the model was
    # surer, does not carry over to a window this much less sure: it only says "lower")
    assert abs(report.estimated_accuracy - true_accuracy) < 0.05
    assert report.detections["bbsd_ks"].detected  # the confidence moved
    picture = plot_report(report, reference, window, tmp_path / "drift.png")
    page = write_html(report, picture, tmp_path / "drift.html", "toy v1")
    assert "harmful drift" in page.read_text() and "data:image/png;base64," in page.read_text()
    assert report.metrics()["harmful_drift"] == 1.0 and "bbsd_ks_p_value" in report.metrics()
