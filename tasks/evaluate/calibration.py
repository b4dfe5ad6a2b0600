"""Calibrated confidence: temperature scaling, expected calibration error, reliability diagrams.

A fine-tuned classifier is usually over-confident: among the rows it scores 0.95, fewer than 95%
are right. Temperature scaling (Guo et al., ICML 2017) divides the logits by one number T fitted
on the validation split by minimising the negative log-likelihood; it leaves every prediction
(the argmax) unchanged and only makes the probabilities honest. The temperature travels with the
registered version (tag `temperature`), so `graftline predict` and the drift monitor use the
calibrated probabilities.

A temperature fitted on a small or near-perfect validation split can make confidence worse: with
few errors the likelihood is maximised by sharpening every prediction (T far below 1), and 170 rows
can suggest a T that does not hold on the test set. So a temperature replaces T = 1 only when it
earns it (`guarded_temperature`):

- with at least MIN_ERRORS wrong validation predictions, the likelihood fit is used when a
  temperature fitted on part of the split lowers the negative log-likelihood of the rest, in
  FOLDS-fold cross-validation;
- with fewer, the errors cannot show how confidence and correctness go together row by row, but the
  split still shows the model's accuracy: when the mean confidence lies outside the 95% (Wilson)
  interval of the validation accuracy, the temperature is the one whose mean confidence equals the
  smoothed accuracy (k + 1) / (n + 2), which is never 1. A model trained briefly on few rows is often
  far less sure than it is right (mean confidence 0.6 at 98% accuracy); this fixes that without
  sharpening towards certainty.

Otherwise T = 1 is kept; the reason is reported either way.

Written here rather than taken from a library: the fit is a one-dimensional minimisation
(scipy), the error a 15-bin histogram; the calibration libraries (netcal, torchcal) would add a
dependency for a few lines. Limits: one temperature per model cannot fix a model whose
over-confidence differs by class, and a temperature fitted on the training domain's validation
split is not guaranteed to hold on another domain (the report shows both per evaluation set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graftline.tasks import plots

# The one softmax: it lives with the predict body that ships inside every logged ONNX model, so the
# served probabilities and the evaluated ones come from the same lines.
from graftline.tasks.export.onnx_pyfunc import softmax

BINS = 15  # the usual choice (Guo et al.); a window of 200 rows still has ~13 rows per bin
TEMPERATURE_RANGE = (0.05, 20.0)
MIN_ERRORS = 10  # fewer wrong validation rows cannot show how over-confident a model is
FOLDS = 5  # cross-validation of the fit on the validation split


def negative_log_likelihood(logits: np.ndarray, truth: np.ndarray, temperature: float = 1.0) -> float:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(-1, keepdims=True)
    log_normaliser = (top + np.log(np.exp(scaled - top).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(log_normaliser - scaled[np.arange(len(truth)), truth]))


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `truth` (class ids) on `logits`."""
    from scipy.optimize import minimize_scalar

    logits, truth = np.asarray(logits), np.asarray(truth)
    if logits.ndim != 2 or len(logits) != len(truth) or not len(truth):
        raise ValueError(f"temperature needs (n, classes) logits and n labels, got {logits.shape} and {truth.shape}")
    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, truth, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
    )
    return float(np.exp(found.x))


def guarded_temperature(logits: np.ndarray, truth: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """(temperature, why): the fitted temperature where it lowers held-out NLL, else 1 (the module's
    docstring says when)."""
    logits, truth = np.asarray(logits), np.asarray(truth)
    errors = int((logits.argmax(-1) != truth).sum()) if logits.ndim == 2 else 0
    if errors < MIN_ERRORS:
        few = f"{errors} validation errors, fewer than {MIN_ERRORS} to fit a temperature on"
        return (
            _matched_to_accuracy(logits, truth, few) if logits.ndim == 2 and len(truth) else (1.0, f"T = 1 kept: {few}")
        )
    folds = np.array_split(np.random.default_rng(seed).permutation(len(truth)), FOLDS)
    gains = []
    for held in folds:
        rest = np.setdiff1d(np.arange(len(truth)), held)
        fitted = fit_temperature(logits[rest], truth[rest])
        scored = logits[held], truth[held]
        gains.append(negative_log_likelihood(*scored) - negative_log_likelihood(*scored, fitted))
    gain = float(np.mean(gains))
    if gain <= 0:
        return 1.0, f"T = 1 kept: a fitted temperature raised held-out NLL by {-gain:.4f} ({FOLDS}-fold)"
    temperature = fit_temperature(logits, truth)
    return temperature, f"T = {temperature:.3g}: lowers held-out NLL by {gain:.4f} ({FOLDS}-fold)"


def _matched_to_accuracy(logits: np.ndarray, truth: np.ndarray, few: str) -> tuple[float, str]:
    """Few errors: T = 1 unless the mean confidence lies outside the 95% interval of the accuracy;
    then the temperature whose mean confidence is the smoothed accuracy (module docstring)."""
    from scipy.optimize import brentq
    from scipy.stats import binomtest

    n, right = len(truth), int((logits.argmax(-1) == truth).sum())
    confidence = float(softmax(logits).max(-1).mean())
    low, high = binomtest(right, n).proportion_ci(confidence_level=0.95, method="wilson")
    if low <= confidence <= high:
        return 1.0, f"T = 1 kept: {few}; mean confidence {confidence:.3f} is within the 95% interval of the accuracy"
    target = (right + 1) / (n + 2)
    mean_confidence = lambda log_t: float(softmax(logits, float(np.exp(log_t))).max(-1).mean()) - target  # noqa: E731
    bounds = np.log(TEMPERATURE_RANGE)
    if mean_confidence(bounds[0]) <= 0 or mean_confidence(bounds[1]) >= 0:  # out of reach: the nearer end
        temperature = float(TEMPERATURE_RANGE[0] if mean_confidence(bounds[0]) <= 0 else TEMPERATURE_RANGE[1])
    else:
        temperature = float(np.exp(brentq(mean_confidence, *bounds, xtol=1e-6)))
    return temperature, (
        f"T = {temperature:.3g}: {few}, but the mean confidence {confidence:.3f} lies outside the 95% interval of "
        f"the accuracy ({low:.3f}-{high:.3f}, {right} of {n} right); matched to the smoothed accuracy {target:.3f}"
    )


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = BINS) -> float:
    """ECE: the row-weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


@dataclass(frozen=True)
class Calibration:
    """A model's temperature and, per evaluation set, its ECE before and after scaling."""

    temperature: float
    ece_before: dict[str, float]
    ece_after: dict[str, float]
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False, compare=False)
    reason: str = ""  # why this temperature (guarded_temperature)

    def metrics(self) -> dict[str, float]:
        out = {"temperature": self.temperature}
        for name in self.ece_before:
            out[f"{name}_ece"] = self.ece_before[name]
            out[f"{name}_ece_calibrated"] = self.ece_after[name]
        return out


def calibrate(validation: tuple[np.ndarray, np.ndarray], sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> Calibration:
    """Fit the temperature on `validation` (logits, class ids), guarded, and measure ECE on every set of `sets`."""
    temperature, reason = guarded_temperature(*validation)
    before, after, curves = {}, {}, {}
    for name, (logits, truth) in sets.items():
        raw, scaled = softmax(logits), softmax(logits, temperature)
        before[name] = expected_calibration_error(raw, truth)
        after[name] = expected_calibration_error(scaled, truth)
        curves[name] = {"before": _reliability(raw, truth), "after": _reliability(scaled, truth)}
    return Calibration(temperature, before, after, curves, reason)


def _reliability(probabilities: np.ndarray, truth: np.ndarray, bins: int = BINS) -> list[float]:
    """Accuracy per confidence bin (NaN where a bin is empty), for the diagram."""
    confidence, correct = probabilities.max(-1), probabilities.argmax(-1) == truth
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    return [float(correct[which == b].mean()) if (which == b).any() else float("nan") for b in range(bins)]


def plot_reliability(calibration: Calibration, path: Path, title: str = "") -> Path:
    """One panel per evaluation set: accuracy per confidence bin before and after temperature scaling."""
    names = list(calibration.curves)
    centres = (np.arange(BINS) + 0.5) / BINS
    with plots.figure(path, dpi=110, ncols=len(names), figsize=(3.6 * len(names), 3.6), squeeze=False) as (fig, axes):
        for ax, name in zip(axes[0], names, strict=True):
            curve = calibration.curves[name]
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.plot(centres, curve["before"], "o-", label=f"raw (ECE {calibration.ece_before[name]:.3f})")
            ax.plot(
                centres,
                curve["after"],
                "s-",
                label=f"T={calibration.temperature:.2f} (ECE {calibration.ece_after[name]:.3f})",
            )
            ax.set(title=name, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
            ax.legend(fontsize=7, loc="upper left")
        if title:
            fig.suptitle(title)
    return path
