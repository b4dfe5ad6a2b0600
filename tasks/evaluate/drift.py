"""Data-drift statistics for a text classifier: is this window of traffic unlike the reference data?

Four detectors, each answering one window with a p-value, and two label-free accuracy estimates:

- `bbsd_ks`: black-box shift detection (BBSD) on the model's softmax outputs, one two-sample
  Kolmogorov-Smirnov test per class, Bonferroni-corrected;
- `mmd_test`: kernel two-sample test (maximum mean discrepancy) on sentence embeddings;
- `classifier_test`: a domain classifier that tries to tell window rows from reference rows (held-out AUC);
- `label_shift`: chi-square test on the predicted-label proportions;
- `atc_threshold` / `estimate_accuracy`: average (thresholded) confidence, an accuracy estimate
  for a window without labels.

The tests follow "Failing Loudly: An Empirical Study of Methods for Detecting Dataset Shift"
(Rabanser, Günnemann and Lipton, NeurIPS 2019), which found BBSD on softmax outputs with
univariate KS tests and Bonferroni correction a strong default, and MMD and domain classifiers
useful on representations. ATC is from "Leveraging Unlabeled Data to Predict Out-of-Distribution
Performance" (Garg et al., ICLR 2022).

Written here rather than taken from a library: the maintained drift libraries do not fit our
stack. alibi-detect is licensed under the Business Source License, which is not open source;
Evidently and NannyML pull in heavy dependency trees and pin versions that conflict with our
lock. Each statistic here is a few lines on top of scipy and scikit-learn.

Limits shared by all detectors: a p-value says whether the window differs from the reference,
not whether the difference hurts accuracy; a small window has little power, a very large one
flags differences too small to matter. Several detectors voting on one verdict should share the
error budget (`combined_alpha`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUM_TOLERANCE = 1e-3  # softmax rows stored as float16/float32 do not sum to 1 exactly


@dataclass(frozen=True)
class Detection:
    """One detector's answer on one window.

    `name` is "bbsd_ks", "mmd", "classifier" or "label_shift"; `statistic` depends on the detector:
    the largest KS D (bbsd_ks), the unbiased MMD^2 (mmd), the out-of-fold ROC AUC (classifier),
    the total-variation distance (label_shift).
    """

    name: str
    statistic: float
    p_value: float
    alpha: float

    @property
    def detected(self) -> bool:
        return self.p_value < self.alpha


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _matrix(name: str, values: np.ndarray, min_rows: int = 1) -> np.ndarray:
    """`values` as a finite 2-D float array with at least `min_rows` rows."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {array.shape}")
    if len(array) < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _pair(reference: np.ndarray, window: np.ndarray, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    reference, window = _matrix("reference", reference, min_rows), _matrix("window", window, min_rows)
    if reference.shape[1] != window.shape[1]:
        raise ValueError(f"reference has {reference.shape[1]} columns but window has {window.shape[1]}")
    return reference, window


def _check_probabilities(name: str, probabilities: np.ndarray) -> None:
    if probabilities.shape[1] < 2:
        raise ValueError(f"{name} probabilities need at least 2 class columns, got {probabilities.shape[1]}")
    if probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise ValueError(f"{name} probabilities lie outside [0, 1] (logits passed instead of softmax outputs?)")
    if np.abs(probabilities.sum(1) - 1.0).max() > SUM_TOLERANCE:
        raise ValueError(f"{name} probability rows do not sum to 1")


def bbsd_ks(reference: np.ndarray, window: np.ndarray, alpha: float = 0.05) -> Detection:
    """Black-box shift detection: two-sample KS test per softmax column, Bonferroni-corrected.

    `reference` and `window` are (n, k) softmax probabilities of the same model. The p-value is
    min(1, k' * min p_i) over the k' tested columns; for k == 2 only column 0 is tested, since
    column 1 is 1 minus it and a second test would only halve the power. The statistic is the
    largest KS D. Limits: Bonferroni ignores the dependence between columns, so the test is
    conservative; it sees only shifts that move the model's outputs.
    """
    from scipy.stats import ks_2samp

    _check_alpha(alpha)
    reference, window = _pair(reference, window)
    _check_probabilities("reference", reference)
    _check_probabilities("window", window)
    columns = 1 if reference.shape[1] == 2 else reference.shape[1]
    tests = [ks_2samp(reference[:, c], window[:, c]) for c in range(columns)]
    p_value = min(1.0, columns * min(float(t.pvalue) for t in tests))
    return Detection("bbsd_ks", max(float(t.statistic) for t in tests), p_value, alpha)


def _rbf_kernel(pooled: np.ndarray) -> np.ndarray:
    """Gaussian kernel exp(-|x - y|^2 / (2 s^2)) with s the median pairwise distance (median heuristic)."""
    norms = (pooled**2).sum(1)
    squared = np.maximum(norms[:, None] + norms[None, :] - 2.0 * pooled @ pooled.T, 0.0)  # rounding can dip below 0
    median = float(np.median(squared[np.triu_indices(len(pooled), k=1)]))
    # All rows identical: any bandwidth gives a constant kernel and MMD^2 = 0, so 1 is as good as any.
    return np.exp(-squared / (2.0 * (median if median > 0 else 1.0)))


def _mmd2_unbiased(kernel: np.ndarray, in_reference: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD^2 for each row of `in_reference` (0/1 masks over the pooled rows, n ones each).

    One matrix product covers every split: with the diagonal removed, a K a is the reference-reference
    sum, a K 1 - a K a the cross sum, and 1 K 1 - 2 a K 1 + a K a the window-window sum.
    """
    row_sums = kernel.sum(1)
    within_reference = np.einsum("pi,pi->p", in_reference @ kernel, in_reference)
    reference_total = in_reference @ row_sums
    cross = reference_total - within_reference
    within_window = row_sums.sum() - 2.0 * reference_total + within_reference
    return within_reference / (n * (n - 1)) + within_window / (m * (m - 1)) - 2.0 * cross / (n * m)


def mmd_test(
    reference: np.ndarray, window: np.ndarray, alpha: float = 0.05, permutations: int = 300, seed: int = 0
) -> Detection:
    """Kernel two-sample test: unbiased MMD^2 with a Gaussian kernel, p-value by permutation.

    `reference` and `window` are (n, d) and (m, d) embeddings, at least 2 rows each. The bandwidth
    is the median pairwise distance of the pooled sample. The p-value is
    (1 + #{permuted MMD^2 >= observed}) / (1 + permutations), so it is never below
    1 / (1 + permutations): with the default 300, alpha below ~0.0033 can never be reached.
    Limits: the pooled kernel matrix takes (n + m)^2 floats (8 MB at 1000 + 200 rows), so
    subsample a large reference; the median heuristic is a default, not a tuned bandwidth.
    """
    _check_alpha(alpha)
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    reference, window = _pair(reference, window, min_rows=2)
    n, m = len(reference), len(window)
    kernel = _rbf_kernel(np.concatenate([reference, window]))
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimator leaves out k(x, x)
    # A random permutation of 0..N-1 read as "value < n" is a uniformly random reference subset of size n.
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.tile(np.arange(n + m), (permutations, 1)), axis=1) < n
    # Row 0 is the observed split, computed by the same arithmetic as the permuted ones so ties compare exactly.
    masks = np.concatenate([np.arange(n + m)[None, :] < n, shuffled]).astype(np.float64)
    statistics = _mmd2_unbiased(kernel, masks, n, m)
    observed = float(statistics[0])
    p_value = (1 + int((statistics[1:] >= observed).sum())) / (1 + permutations)
    return Detection("mmd", observed, p_value, alpha)


def mmd2(reference: np.ndarray, window: np.ndarray) -> float:
    """The unbiased MMD^2 of `mmd_test` alone (no permutations): a distance, not a test."""
    reference, window = _pair(reference, window, min_rows=2)
    kernel = _rbf_kernel(np.concatenate([reference, window]))
    np.fill_diagonal(kernel, 0.0)
    mask = (np.arange(len(reference) + len(window)) < len(reference))[None, :].astype(np.float64)
    return float(_mmd2_unbiased(kernel, mask, len(reference), len(window))[0])


def classifier_test(
    reference: np.ndarray, window: np.ndarray, alpha: float = 0.05, holdout: float = 0.5, seed: int = 0
) -> Detection:
    """Domain classifier: can a logistic regression tell window rows from reference rows?

    Standardised features, class_weight="balanced", fitted on a stratified share of the rows and
    scored on the other `holdout` share. The statistic is the ROC AUC of the held-out scores (0.5:
    no shift); the p-value is a one-sided Mann-Whitney U test of held-out window scores against
    held-out reference scores (AUC = U / (n m)), exact in the sense that the scored rows played no
    part in the fit. Pooling cross-validated scores instead would use every row but is not a valid
    test: on pure noise (400 x 200 rows, 384 dimensions) it flagged 17% of windows at alpha 0.05.
    Limits: half the rows train the classifier, so its power is that of a smaller sample; a linear
    classifier misses shifts that are not linearly separable.
    """
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_alpha(alpha)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be between 0 and 1, got {holdout}")
    reference, window = _pair(reference, window, min_rows=4)
    features = np.concatenate([reference, window])
    is_window = np.r_[np.zeros(len(reference), dtype=int), np.ones(len(window), dtype=int)]
    fit_x, test_x, fit_y, test_y = train_test_split(
        features, is_window, test_size=holdout, stratify=is_window, random_state=seed
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
    scores = model.fit(fit_x, fit_y).decision_function(test_x)
    auc = float(roc_auc_score(test_y, scores))
    p_value = float(mannwhitneyu(scores[test_y == 1], scores[test_y == 0], alternative="greater").pvalue)
    return Detection("classifier", auc, p_value, alpha)


def _labels(name: str, values: np.ndarray, classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not len(array):
        raise ValueError(f"{name} must be a non-empty 1-D array of class ids, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer class ids, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= classes:
        raise ValueError(f"{name} holds class ids outside [0, {classes})")
    return array.astype(np.int64)


def label_shift(reference: np.ndarray, window: np.ndarray, classes: int, alpha: float = 0.05) -> Detection:
    """Did the predicted-label proportions move? Chi-square test of homogeneity on the counts.

    `reference` and `window` are predicted class ids in [0, classes). The statistic is the total
    variation distance between the two predicted-label distributions. Classes with zero count on
    both sides are dropped; with fewer than 2 left the p-value is 1.0. Limits: the chi-square
    approximation is poor when expected counts fall below ~5 (rare classes, small windows), and
    for 2 classes scipy applies Yates' continuity correction, which makes the test conservative.
    """
    from scipy.stats import chi2_contingency

    _check_alpha(alpha)
    if classes < 1:
        raise ValueError(f"classes must be at least 1, got {classes}")
    counts = np.stack(
        [
            np.bincount(_labels("reference", reference, classes), minlength=classes),
            np.bincount(_labels("window", window, classes), minlength=classes),
        ]
    )
    shares = counts / counts.sum(1, keepdims=True)
    distance = 0.5 * float(np.abs(shares[0] - shares[1]).sum())
    seen = counts[:, counts.sum(0) > 0]
    p_value = 1.0 if seen.shape[1] < 2 else float(chi2_contingency(seen).pvalue)
    return Detection("label_shift", distance, p_value, alpha)


def _confidences(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not len(array):
        raise ValueError(f"confidences must be a non-empty 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError("confidences must be finite and lie in [0, 1] (the max softmax probability per row)")
    return array


def atc_threshold(confidences: np.ndarray, correct: np.ndarray) -> float:
    """Average Thresholded Confidence (Garg et al. 2022) with the max-confidence score.

    Fits on labeled held-out rows (confidence = max softmax probability, `correct` = prediction
    right or not) the threshold t such that the share of rows with confidence > t equals their
    accuracy: the (1 - accuracy) quantile of the confidences, exact to within 1/n. Limits: ATC
    assumes the shift changes confidence and accuracy together; fit it on held-out rows, not
    training rows, whose accuracy is inflated.
    """
    confidences = _confidences(confidences)
    correct = np.asarray(correct)
    if correct.shape != confidences.shape:
        raise ValueError(f"correct must match confidences in shape, got {correct.shape} and {confidences.shape}")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must hold booleans or 0/1")
    return float(np.quantile(confidences, 1.0 - float(correct.mean())))


def estimate_accuracy(confidences: np.ndarray, threshold: float | None = None) -> float:
    """Label-free accuracy estimate of a window from its max-softmax confidences.

    Without a threshold: the average confidence (confidence-based performance estimation), which
    is right exactly when the model is calibrated on the window, so use calibrated probabilities.
    With a threshold from `atc_threshold`: the share of rows with confidence above it (ATC).
    Limits: both are estimates, not measurements; neither survives a shift that leaves the model
    confident and wrong.
    """
    confidences = _confidences(confidences)
    if threshold is None:
        return float(confidences.mean())
    return float((confidences > threshold).mean())


def combined_alpha(alpha: float, detectors: int) -> float:
    """Bonferroni: the per-detector alpha when `detectors` tests vote on one verdict ("any detects").

    Keeps the family-wise false-alarm rate at most `alpha` whatever the dependence between the
    detectors; conservative when they are strongly correlated, as drift detectors on one window are.
    """
    _check_alpha(alpha)
    if detectors < 1:
        raise ValueError(f"detectors must be at least 1, got {detectors}")
    return alpha / detectors
