"""Drift monitoring: what a registered version makes of new texts, against what it made of its own data.

The reference is the version's held-out test set (the training domain's rows it never trained on,
kept by its ingest run): scoring the training rows instead would compare new data with rows the
model has memorised, and every window would look shifted. For both sides one forward pass gives a
`Profile`: the calibrated class probabilities (the version's `temperature` tag) and the mean-pooled
last hidden state. On those (statistics in drift.py):

    bbsd_ks      KS tests on the softmax outputs, Bonferroni-corrected over the classes
    mmd          MMD with a permutation test on the embeddings
    classifier   a domain classifier's AUC (window vs reference), out-of-fold
    label_shift  the shift of the predicted-label distribution (chi-square)

The four vote on one verdict at `alpha / 4` each (Bonferroni: the false-alarm rate of the verdict
stays at most `alpha`). The accuracy on the window is estimated without labels from calibrated
confidence: ATC (the share of rows above the confidence threshold at which the reference's share
equals its accuracy) or the mean calibrated confidence (the default: it erred far less on the Amazon
domains, BENCHMARKS "Drift detection"). The verdict is `no drift`, `drift`, or `harmful drift`
when the estimate falls more than `max_accuracy_drop` below the reference's true accuracy.

The reference profile is kept in a local cache (probabilities and embeddings, never texts), keyed by
version and reference digest, so a scheduled monitor scores only its window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from graftline.tasks import plots
from graftline.tasks.errors import GraftlineError
from graftline.tasks.evaluate import drift
from graftline.tasks.evaluate.calibration import softmax
from graftline.tasks.registry import tracking
from graftline.tasks.settings import MonitorParams

NO_DRIFT, DRIFT, HARMFUL = "no drift", "drift", "harmful drift"
VERDICTS = (NO_DRIFT, DRIFT, HARMFUL)
DETECTORS = ("bbsd_ks", "mmd", "classifier", "label_shift")


@dataclass(frozen=True)
class Profile:
    """What a model makes of some texts: calibrated probabilities and mean-pooled embeddings."""

    probabilities: np.ndarray  # (n, classes)
    embeddings: np.ndarray  # (n, hidden)

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(-1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(-1)


@dataclass(frozen=True)
class Reference:
    """The version's profile on its own held-out data, with the labels it was scored against."""

    profile: Profile
    truth: np.ndarray  # class ids

    @property
    def accuracy(self) -> float:
        return float((self.profile.predicted == self.truth).mean())

    @property
    def atc_threshold(self) -> float:
        return drift.atc_threshold(self.profile.confidence, self.profile.predicted == self.truth)


@dataclass(frozen=True)
class DriftReport:
    verdict: str
    detections: dict[str, drift.Detection]
    reference_accuracy: float
    estimated_accuracy: float
    reference_rows: int
    window_rows: int
    labels: list[str]
    reference_shares: list[float]  # predicted-label distribution on each side
    window_shares: list[float]
    settings: MonitorParams = field(default_factory=MonitorParams)  # the thresholds it was judged by
    seconds: float = 0.0

    @property
    def estimated_drop(self) -> float:
        return self.reference_accuracy - self.estimated_accuracy

    def metrics(self) -> dict[str, float]:
        out = {
            "reference_accuracy": self.reference_accuracy,
            "estimated_accuracy": self.estimated_accuracy,
            "estimated_accuracy_drop": self.estimated_drop,
            "reference_rows": self.reference_rows,
            "window_rows": self.window_rows,
            "drift_detected": float(self.verdict != NO_DRIFT),
            "harmful_drift": float(self.verdict == HARMFUL),
            "monitor_seconds": self.seconds,
        }
        for name, d in self.detections.items():
            out[f"{name}_statistic"], out[f"{name}_p_value"] = d.statistic, d.p_value
        return out

    def summary(self) -> str:
        tests = ", ".join(f"{n} p={d.p_value:.3g}{'*' if d.detected else ''}" for n, d in self.detections.items())
        return (
            f"{self.verdict}: {tests}; accuracy {self.reference_accuracy:.3f} on the reference, "
            f"estimated {self.estimated_accuracy:.3f} on {self.window_rows} new rows"
        )


def torch_forward(model, tokenizer, max_length: int):
    """texts -> (logits, pooled states) of the torch model (domain_gap.embed)."""
    from graftline.tasks.evaluate.domain_gap import embed

    def forward(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        embedded = embed(model, tokenizer, texts, max_length)
        return embedded.logits, embedded.pooled

    return forward


def profile(model, tokenizer, texts: list[str], max_length: int, temperature: float) -> Profile:
    """One forward pass of the torch model over `texts`: calibrated probabilities and embeddings."""
    return profile_with(torch_forward(model, tokenizer, max_length), texts, temperature)


def profile_with(forward, texts: list[str], temperature: float) -> Profile:
    """One pass of `forward` (texts -> logits, pooled states) over `texts`."""
    if not texts:
        raise MonitorError("no texts to profile")
    logits, pooled = forward(texts)
    return Profile(softmax(logits, temperature), pooled)


def compare(reference: Reference, window: Profile, labels: list[str], settings: MonitorParams) -> DriftReport:
    """Every detector on `window` against `reference`, the accuracy estimate, and the verdict, by the
    thresholds of `settings`."""
    started = time.perf_counter()
    alpha = drift.combined_alpha(settings.alpha, len(DETECTORS))
    ref = reference.profile
    detections = {
        "bbsd_ks": drift.bbsd_ks(ref.probabilities, window.probabilities, alpha),
        "mmd": drift.mmd_test(ref.embeddings, window.embeddings, alpha, settings.permutations, settings.seed),
        "classifier": drift.classifier_test(ref.embeddings, window.embeddings, alpha, seed=settings.seed),
        "label_shift": drift.label_shift(ref.predicted, window.predicted, len(labels), alpha),
    }
    threshold = reference.atc_threshold if settings.accuracy_estimate == "atc" else None
    estimated = drift.estimate_accuracy(window.confidence, threshold)
    drifted = any(d.detected for d in detections.values())
    harmful = drifted and reference.accuracy - estimated > settings.max_accuracy_drop
    return DriftReport(
        verdict=HARMFUL if harmful else DRIFT if drifted else NO_DRIFT,
        detections=detections,
        reference_accuracy=reference.accuracy,
        estimated_accuracy=estimated,
        reference_rows=len(ref),
        window_rows=len(window),
        labels=labels,
        reference_shares=_shares(ref.predicted, len(labels)),
        window_shares=_shares(window.predicted, len(labels)),
        settings=settings,
        seconds=time.perf_counter() - started,
    )


def _shares(predicted: np.ndarray, classes: int) -> list[float]:
    return (np.bincount(predicted, minlength=classes) / max(len(predicted), 1)).tolist()


def save_profile(path: Path, reference: Reference) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    p = reference.profile
    np.savez(partial, probabilities=p.probabilities, embeddings=p.embeddings, truth=reference.truth)
    partial.replace(path)


def load_profile(path: Path) -> Reference | None:
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return Reference(Profile(saved["probabilities"], saved["embeddings"]), saved["truth"])


def plot_report(report: DriftReport, reference: Reference, window: Profile, path: Path, title: str = "") -> Path:
    """Four panels: confidence on each side, predicted-label shares, each detector's p-value against
    its threshold, and the embeddings of both sides on their first two principal components."""
    with plots.figure(path, dpi=100, ncols=4, figsize=(17, 3.8)) as (fig, axes):
        bins = np.linspace(0, 1, 21)
        axes[0].hist(reference.profile.confidence, bins, alpha=0.6, density=True, label="reference")
        axes[0].hist(window.confidence, bins, alpha=0.6, density=True, label="new data")
        axes[0].set(title="confidence (calibrated)", xlabel="top-class probability")
        axes[0].legend(fontsize=8)
        x = np.arange(len(report.labels))
        axes[1].bar(x - 0.2, report.reference_shares, 0.4, label="reference")
        axes[1].bar(x + 0.2, report.window_shares, 0.4, label="new data")
        axes[1].set_xticks(x, report.labels, rotation=30, ha="right")
        axes[1].set(title="predicted labels", ylabel="share")
        names = list(report.detections)
        p_values = [max(report.detections[n].p_value, 1e-12) for n in names]
        colours = ["tab:red" if report.detections[n].detected else "tab:green" for n in names]
        axes[2].barh(names, p_values, color=colours)
        axes[2].axvline(report.detections[names[0]].alpha, color="black", linestyle=":", label="threshold")
        axes[2].set(xscale="log", title="p-values (red: drift)", xlim=(1e-12, 1))
        axes[2].legend(fontsize=8)
        both = np.concatenate([reference.profile.embeddings, window.embeddings])
        centred = both - both.mean(0)
        _, _, components = np.linalg.svd(centred[:: max(1, len(centred) // 2000)], full_matrices=False)
        points = centred @ components[:2].T
        n = len(reference.profile)
        axes[3].scatter(*points[:n].T, s=4, alpha=0.4, label="reference")
        axes[3].scatter(*points[n:].T, s=4, alpha=0.4, label="new data")
        axes[3].set(title="embeddings (first two principal components)")
        axes[3].legend(fontsize=8)
        fig.suptitle(title or report.summary(), fontsize=9)
    return path


def write_html(report: DriftReport, picture: Path, path: Path, title: str) -> Path:
    """A self-contained page: the verdict, every statistic and threshold, and the picture inlined."""
    import base64
    import html

    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{d.statistic:.4f}</td><td>{d.p_value:.3g}</td><td>{d.alpha:.3g}</td>"
        f"<td>{'drift' if d.detected else '-'}</td></tr>"
        for n, d in report.detections.items()
    )
    image = base64.b64encode(picture.read_bytes()).decode()
    t = report.settings
    path.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:left}}
.verdict{{font-size:1.4em;font-weight:bold}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="verdict">{html.escape(report.verdict)}</p>
<p>{report.window_rows} new rows against {report.reference_rows} reference rows (the version's held-out test set).
Accuracy on the reference {report.reference_accuracy:.3f}; estimated on the new rows without labels
({html.escape(t.accuracy_estimate)}): {report.estimated_accuracy:.3f}
(drop {report.estimated_drop:+.3f}; harmful above {t.max_accuracy_drop}).</p>
<table><tr><th>detector</th><th>statistic</th><th>p-value</th><th>threshold</th><th></th></tr>{rows}</table>
<p>Verdict threshold alpha {t.alpha} shared by {len(report.detections)} detectors (Bonferroni).</p>
<img src="data:image/png;base64,{image}" style="max-width:100%">
</body></html>
""",
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class Monitored:
    """One monitor check: the version, both profiles and the report."""

    version: object  # predict.Version
    reference: Reference
    window: Profile
    report: DriftReport
    form: str = "torch"  # what computed the profiles: torch, or the version's INT8 export


def check(client, texts: list[str], settings: MonitorParams, cache: Path | None = None) -> Monitored:
    """Compare `texts` with the held-out data of registered version `settings.model` (MODEL@ALIAS |
    MODEL/VERSION), on up to `settings.reference_rows` of it."""
    from graftline.tasks.serve.predict import ModelReference, fetch_version

    if not texts:
        raise MonitorError("no texts to monitor: the window is empty")
    version = fetch_version(client, ModelReference.parse(settings.model))
    labels, tokenizer = version.labels(), version.tokenizer()
    form, forward = _fastest_forward(client, version, tokenizer)
    reference = _reference(client, version, forward, form, labels, settings.reference_rows, cache, settings.seed)
    started = time.perf_counter()
    window = profile_with(forward, texts, version.temperature)
    report = compare(reference, window, labels, settings)
    report = replace(report, seconds=time.perf_counter() - started)
    return Monitored(version, reference, window, report, form)


def _fastest_forward(client, version, tokenizer):
    """(form, texts -> logits and pooled states): the version's INT8 export when it passed parity and
    has a `pooled` output, else the torch model. Reference and window always use the same one."""
    import mlflow

    from graftline.tasks.export.predictors import onnx_profiler
    from graftline.tasks.registry import contract
    from graftline.tasks.serve.predict import EXPORT_FILES, passed_exports

    exports = passed_exports(client, version.tags.get(contract.EXPORT_RUN))
    if "onnx-int8" in exports:
        path = mlflow.artifacts.download_artifacts(run_id=exports["onnx-int8"], artifact_path=EXPORT_FILES["onnx-int8"])
        forward = onnx_profiler(Path(path), tokenizer, version.max_length)
        if forward is not None:
            return "onnx-int8", forward
    return "torch", torch_forward(version.classifier(), tokenizer, version.max_length)  # weights only when needed


class MonitorError(GraftlineError):
    """A window or a version that cannot be monitored."""


def _reference(client, version, forward, form: str, labels, rows: int, cache: Path | None, seed: int) -> Reference:
    """The version's profile on (up to `rows` of) its held-out test set, from the cache when it is there."""
    from graftline.tasks.data.splits import encode_labels
    from graftline.tasks.registry import evaluation_sets

    test = evaluation_sets.of_version(client, version.name, version.version)["test"]
    frame = test.frame
    if len(frame) > rows:
        frame = frame.sample(n=rows, random_state=seed)
    key = f"{version.name}-v{version.version}-{form}-{test.digest[:16]}-{len(frame)}-{seed}.npz"
    path = (cache or tracking.home() / "monitor") / key
    cached = load_profile(path)
    if cached is not None:
        return cached
    texts = frame["text"].fillna("").astype(str).tolist()
    truth = np.asarray(encode_labels(frame["label"], labels, "test"))
    reference = Reference(profile_with(forward, texts, version.temperature), truth)
    save_profile(path, reference)
    return reference


@dataclass(frozen=True)
class MonitorOutcome:
    """What one drift check did: its verdict and report (none while it waits for rows), its MLflow run,
    and the retraining it started (or why none could start)."""

    verdict: str
    window_rows: int
    report: DriftReport | None = None  # None: too few new rows yet, nothing was checked
    run_id: str | None = None
    retrain_flow_run_id: str | None = None
    retrain_error: str | None = None
