"""How far a target domain is from the training (source) domain, in a model's eyes.

Per target set, on a seeded sample of source and target texts:

- **proxy A-distance**: a linear domain classifier (logistic regression, 3-fold cross-validated) on
  the model's mean-pooled last hidden states; `2 * (1 - 2 * error)`, clipped to [0, 2]. 0: the
  domains look alike; 2: the model tells them apart perfectly (Ben-David et al., 2007).
- **MMD²**: unbiased squared maximum mean discrepancy between the two embedding samples, RBF
  kernel with the median pairwise distance as bandwidth (Gretton et al., 2012).
- For a classifier: the share of **confident predictions** (top softmax probability at least
  `CONFIDENT`) on target and on source texts, and the **label shift**: total variation distance
  between the predicted label distributions on target and on source (0: same mix, 1: disjoint).

Labels of a target set are never read here. Written in this module rather than taken from a
domain-adaptation library (skada, ADAPT): both quantities are a few lines over embeddings the
engine already computes, and those libraries would add their own dependency pins for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from graftline.tasks import plots
from graftline.tasks.engine.training import autocast, batches, encode, model_inputs, resolve_device
from graftline.tasks.evaluate import drift
from graftline.tasks.evaluate.calibration import softmax
from graftline.tasks.registry.tracking import StepLog

CONFIDENT = 0.9  # top softmax probability of a "confident" prediction
SAMPLE = 1000  # texts per domain measured (all of them when fewer)


@dataclass(frozen=True)
class DomainGap:
    name: str
    rows: int  # target texts measured
    proxy_a_distance: float
    mmd: float
    confident_share: float | None = None  # None for a bare backbone (no classifier head)
    source_confident_share: float | None = None
    label_shift: float | None = None
    predicted: dict[str, float] | None = None  # share of target texts per predicted label

    def metrics(self) -> dict[str, float]:
        keys = ("proxy_a_distance", "mmd", "confident_share", "source_confident_share", "label_shift")
        return {f"{self.name}_{k}": getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class Embedded:
    """Mean-pooled last hidden states and, for a classifier, its logits."""

    pooled: np.ndarray
    logits: np.ndarray | None

    @property
    def probabilities(self) -> np.ndarray | None:
        return None if self.logits is None else softmax(self.logits)


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64, device: str = "auto") -> Embedded:
    """One forward pass per batch: pooled states from the encoder, probabilities from the head if any."""
    device = resolve_device(device)
    model.to(device).eval()
    split = encode(tokenizer, texts, [0] * len(texts), max_length)  # no labels: placeholders
    order = np.argsort(-split.lengths, kind="stable")
    pooled, logits = [], []
    classifier = model.base_model is not model  # a head on an encoder, not the bare encoder
    for batch in batches(split, batch_size, tokenizer.pad_token_id, order):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            out = model(**model_inputs(batch), output_hidden_states=True)
        hidden = out.hidden_states[-1].float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
        if classifier:
            logits.append(out.logits.float().cpu())
    pooled_all = np.empty((len(texts), pooled[0].shape[1]), dtype=np.float32)
    pooled_all[order] = torch.cat(pooled).numpy()
    if not classifier:
        return Embedded(pooled_all, None)
    logits_all = np.empty((len(texts), logits[0].shape[1]), dtype=np.float32)
    logits_all[order] = torch.cat(logits).numpy()
    return Embedded(pooled_all, logits_all)


def confident_share(probabilities: np.ndarray) -> float:
    """Share of rows (of rows x classes probabilities) whose top probability reaches CONFIDENT."""
    return float((probabilities.max(axis=-1) >= CONFIDENT).mean()) if len(probabilities) else 0.0


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """2 (1 - 2 err) of a cross-validated linear domain classifier, clipped to [0, 2]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source, target])
    y = np.r_[np.zeros(len(source)), np.ones(len(target))]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    error = 1 - float(cross_val_score(classifier, x, y, cv=folds).mean())
    return float(np.clip(2 * (1 - 2 * error), 0.0, 2.0))


def mmd(source: np.ndarray, target: np.ndarray) -> float:
    """Unbiased squared MMD with an RBF kernel (the drift monitor's statistic, drift.mmd2)."""
    return drift.mmd2(source.astype(np.float64), target.astype(np.float64))


def gap(name: str, source: Embedded, target: Embedded, labels: list[str] | None, seed: int) -> DomainGap:
    distance = proxy_a_distance(source.pooled, target.pooled, seed)
    discrepancy = mmd(source.pooled, target.pooled)
    if source.probabilities is None or target.probabilities is None or labels is None:
        return DomainGap(name, len(target.pooled), distance, discrepancy)
    shares = lambda p: np.bincount(p.argmax(-1), minlength=p.shape[1]) / len(p)  # noqa: E731
    target_mix, source_mix = shares(target.probabilities), shares(source.probabilities)
    return DomainGap(
        name,
        len(target.pooled),
        distance,
        discrepancy,
        confident_share=confident_share(target.probabilities),
        source_confident_share=confident_share(source.probabilities),
        label_shift=float(0.5 * np.abs(target_mix - source_mix).sum()),
        predicted={label: float(s) for label, s in zip(labels, target_mix, strict=True)},
    )


def measure(
    model, tokenizer, source_texts: list[str], targets: dict[str, list[str]], max_length: int, seed: int, device="auto"
) -> tuple[dict[str, DomainGap], dict[str, Embedded]]:
    """The gap of every target set from `source_texts` for one model (a classifier or a bare backbone);
    also the embeddings, for the picture. Each domain is sampled to at most SAMPLE texts, seeded."""
    from graftline.tasks.engine.backbones import labels_of

    rng = np.random.default_rng(seed)
    sample = lambda texts: [texts[i] for i in sorted(rng.permutation(len(texts))[:SAMPLE])]  # noqa: E731
    embedded = {"source": embed(model, tokenizer, sample(source_texts), max_length, device=device)}
    labels = labels_of(model) if embedded["source"].probabilities is not None else None
    gaps = {}
    for name, texts in targets.items():
        embedded[name] = embed(model, tokenizer, sample(texts), max_length, device=device)
        gaps[name] = gap(name, embedded["source"], embedded[name], labels, seed)
    return gaps, embedded


def plot(embedded: dict[str, dict[str, Embedded]], path: Path) -> Path:
    """Source and target embeddings projected on their first two principal components, one panel per
    model (e.g. the pretrained backbone, then the fine-tuned teacher)."""
    from sklearn.decomposition import PCA

    columns = len(embedded)
    with plots.figure(path, dpi=110, ncols=columns, figsize=(5 * columns, 4.5), squeeze=False) as (fig, axes):
        for ax, (title, sets) in zip(axes[0], embedded.items(), strict=True):
            pooled = np.concatenate([e.pooled for e in sets.values()])
            points = PCA(n_components=2, random_state=0).fit_transform(pooled)
            start = 0
            for name, e in sets.items():
                part = points[start : start + len(e.pooled)]
                ax.scatter(part[:, 0], part[:, 1], s=6, alpha=0.5, label=name)
                start += len(e.pooled)
            ax.set_title(title)
            ax.legend(markerscale=3)
    return path


@dataclass(frozen=True)
class GapReport:
    """The gap of every target set before adaptation (the pretrained backbone: distances only) and
    after (the trained classifier: distances, confidence, label shift), and their picture."""

    role: str  # the trained model measured (teacher)
    before: dict[str, DomainGap]
    after: dict[str, DomainGap]
    picture: Path

    def metrics(self) -> dict[str, float]:
        """Flat metrics `gap_<target>_<measure>` and `gap_before_<target>_<measure>`."""
        metrics = {f"gap_before_{k}": v for g in self.before.values() for k, v in g.metrics().items()}
        return metrics | {f"gap_{k}": v for g in self.after.values() for k, v in g.metrics().items()}

    def logged(self) -> StepLog:
        lines = [
            f"domain gap {name}: proxy A-distance {self.before[name].proxy_a_distance:.3f} -> "
            f"{after.proxy_a_distance:.3f} (backbone -> {self.role}), confident {100 * after.confident_share:.0f}%, "
            f"label shift {after.label_shift:.3f}"
            for name, after in self.after.items()
        ]
        return StepLog(metrics=self.metrics(), files=[(self.picture, "domain_gap")], lines=lines)


def report(model_dir: Path, role: str, backbone: str, splits, model_params, out: Path) -> GapReport:
    """The gap of every target set from the training data, for the pretrained `backbone` and for the
    trained classifier in `model_dir`, with the picture written into `out`."""
    from graftline.tasks.engine.backbones import load_classifier, load_encoder, load_tokenizer

    source = splits.train.texts
    targets = {name: [t for t in s.texts if t.strip()] for name, s in splits.targets.items()}
    args = (source, targets, model_params.max_length, model_params.seed, model_params.device)
    trust = model_params.trust_remote_code
    before, before_embedded = measure(load_encoder(backbone, trust), load_tokenizer(backbone, trust), *args)
    after, after_embedded = measure(load_classifier(str(model_dir)), load_tokenizer(str(model_dir)), *args)
    picture = plot({f"backbone {backbone}": before_embedded, "fine-tuned": after_embedded}, out / "domain_gap.png")
    return GapReport(role, before, after, picture)
