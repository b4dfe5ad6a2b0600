"""Backbone selection from transferability scores, without fine-tuning every candidate.

(Named selection.py, not select.py: a module called `select` shadows the standard library's
wherever its folder lands on sys.path.)

For each candidate backbone: embed a stratified sample of the training split with the frozen
backbone (mean-pooled token states, of the last layer or averaged over all layers; an image
backbone's globally pooled features), score how well
those features explain the labels, and measure what the backbone costs (parameters, latency per
example). The estimators are transformer-ranker's maintained implementations:

- `logme`  LogME, the log maximum evidence of a Bayesian linear model on the features
           (You et al., 2021); higher is better, comparable across backbones on one dataset;
- `hscore` regularised (Ledoit-Wolf shrinkage) H-score;
- `knn`    leave-one-out k-nearest-neighbour accuracy on the sample.

`score_candidate` scores one candidate and logs nothing, so candidates can be scored one after the
other here (`score_candidates`) or each in its own process (graftline.flows.fanout, on Dask) with the
same result. `choose` picks the best-scoring candidate within the budget (max parameters, max ms per
example).
Limits: the score ranks backbones for fine-tuning with the same recipe; it says nothing about a
backbone whose tokenizer truncates the user's texts differently, and a few hundred examples per
class are needed for stable scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from graftline.tasks import plots, progress
from graftline.tasks.data.splits import Split
from graftline.tasks.engine import backbones
from graftline.tasks.engine.training import resolve_device
from graftline.tasks.errors import GraftlineError
from graftline.tasks.modality.base import InputPreparer, Modality
from graftline.tasks.registry.tracking import StepLog, metric_safe
from graftline.tasks.settings import ModelParams, SelectParams

Method = Literal["logme", "hscore", "knn"]
Pooling = Literal["last", "layer-mean"]
METHODS: tuple[Method, ...] = ("logme", "hscore", "knn")


@dataclass
class CandidateReport:
    backbone: str
    parameters: int
    layers: int | None
    width: int | None
    scores: dict[str, float]
    cpu_ms_per_example: float
    gpu_ms_per_example: float | None
    seconds: float  # embedding + scoring
    within_budget: bool = True
    chosen: bool = False


@dataclass
class Selection:
    choice: str
    reason: str
    method: Method
    leaderboard: list[CandidateReport] = field(default_factory=list)
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Every candidate's scores, CPU latency and size, keyed by the candidate's short name."""
        out = {"selection_seconds": self.seconds}
        for report in self.leaderboard:
            name = metric_safe(short_name(report.backbone))
            out.update({f"{name}_{m}": v for m, v in report.scores.items()})
            out[f"{name}_cpu_ms_per_example"] = report.cpu_ms_per_example
            out[f"{name}_parameters"] = report.parameters
        return out

    def table(self) -> pd.DataFrame:
        rows = [{**{k: v for k, v in asdict(r).items() if k != "scores"}, **r.scores} for r in self.leaderboard]
        return pd.DataFrame(rows).sort_values(self.method, ascending=False, na_position="last").reset_index(drop=True)

    def logged(self, picture: Path) -> StepLog:
        """The scores, the leaderboard (table, CSV and `picture`, its plot) and why the choice won."""
        table = self.table()
        return StepLog(
            metrics=self.metrics(),
            tags={"graftline.selection": f"{self.choice}: {self.reason}"},
            files=[(picture, "selection")],
            texts={"selection/leaderboard.csv": table.to_csv(index=False)},
            tables={"selection/leaderboard.json": table},
            lines=[f"selected backbone {self.choice}: {self.reason} ({self.seconds:.1f} s)"],
        )


def stratified_sample(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """At most `size` rows keeping each label's share (every label keeps at least one row)."""
    if len(frame) <= size:
        return frame.reset_index(drop=True)
    share = size / len(frame)
    parts = [g.sample(max(1, round(len(g) * share)), random_state=seed) for _, g in frame.groupby("label", sort=True)]
    return pd.concat(parts).sample(frac=1, random_state=seed).reset_index(drop=True)


@torch.no_grad()
def embed(
    encoder, tokenizer, texts: list[str], max_length: int, batch_size: int, pooling: Pooling, device: torch.device
) -> np.ndarray:
    """Mean-pooled token states (padding excluded) of the last layer or of all layers averaged; for an
    image backbone (`tokenizer` an InputPreparer, `texts` image paths) its pooled features."""
    encoder.to(device).eval()
    if isinstance(tokenizer, InputPreparer):
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        return np.concatenate(
            [encoder.features(tokenizer.prepare(chunk).to(device)).float().cpu().numpy() for chunk in chunks]
        )
    # Sorting by length keeps padding low; the original order is restored at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        ).to(device)
        outputs = encoder(**batch, output_hidden_states=pooling == "layer-mean")
        mask = batch["attention_mask"].unsqueeze(-1).float()
        states = outputs.hidden_states[1:] if pooling == "layer-mean" else (outputs.last_hidden_state,)
        pooled = torch.stack([(h.float() * mask).sum(1) / mask.sum(1) for h in states]).mean(0)
        out[rows] = pooled.cpu().numpy()
    return out


def score_features(features: np.ndarray, labels: np.ndarray, method: Method) -> float:
    """Transferability of `features` for `labels` by transformer-ranker's estimator."""
    from transformer_ranker.estimators import HScore, LogME, NearestNeighbors

    if not np.isfinite(features).all() or np.ptp(features, axis=0).max() < 1e-8:
        return float("nan")  # constant or broken features carry no information (and break H-score)
    estimator = {"logme": LogME, "hscore": HScore, "knn": NearestNeighbors}[method]()
    try:
        return float(estimator.fit(embeddings=torch.from_numpy(features), labels=torch.from_numpy(labels)))
    except torch.linalg.LinAlgError:
        return float("nan")


def _rank_key(method: Method):
    """Sort key: the score, with NaN (unscorable features) below everything."""
    return lambda report: report.scores[method] if np.isfinite(report.scores[method]) else -np.inf


def score_candidate(
    spec: str, texts: list[str], labels: np.ndarray, params: SelectParams, model: ModelParams
) -> CandidateReport:
    """One candidate's report: load it, embed `texts`, score the features against `labels`, time it.

    Self-contained (it loads its own backbone and returns plain data, logging nothing), so it can run
    in another process or on another machine: the Dask fan-out ships exactly this call."""
    device = resolve_device(model.device)
    started = time.perf_counter()
    encoder = backbones.load_encoder(spec, model.trust_remote_code, model.image_size)
    tokenizer = backbones.load_tokenizer(spec, model.trust_remote_code, model.image_size)
    timed = time.perf_counter()
    features = embed(encoder, tokenizer, texts, model.max_length, params.batch_size, params.pooling, device)
    ms = (time.perf_counter() - timed) * 1000 / len(texts)
    cpu_ms, gpu_ms = (ms, None) if device.type == "cpu" else (_cpu_ms(encoder, tokenizer, texts, params, model), ms)
    return CandidateReport(
        backbone=spec,
        parameters=backbones.count_parameters(encoder),
        layers=getattr(encoder.config, "num_hidden_layers", None),
        width=getattr(encoder.config, "hidden_size", getattr(encoder.config, "head", None)),
        scores={method: score_features(features, labels, method) for method in METHODS},
        cpu_ms_per_example=cpu_ms,
        gpu_ms_per_example=gpu_ms,
        seconds=time.perf_counter() - started,
    )


def score_candidates(
    texts: list[str], labels: np.ndarray, params: SelectParams, model: ModelParams
) -> list[CandidateReport]:
    """Every candidate, one after the other, in this process (the default `ScoreAll`)."""
    reports = []
    with progress.activity("scoring backbones", total=len(params.candidates)) as shown:
        for spec in params.candidates:
            shown.update(len(reports), detail=spec)
            reports.append(score_candidate(spec, texts, labels, params, model))
    return reports


# How the candidates get scored: in this process (`score_candidates`) or fanned out
# (graftline.flows.fanout); whichever it is returns one report per candidate, in candidate order.
ScoreAll = Callable[[list[str], np.ndarray, SelectParams, ModelParams], list[CandidateReport]]


def choose(reports: list[CandidateReport], config: SelectParams) -> Selection:
    """The best `config.method` score among the candidates within the budget."""
    for report in reports:
        report.within_budget = (config.max_parameters is None or report.parameters <= config.max_parameters) and (
            config.max_ms_per_example is None or report.cpu_ms_per_example <= config.max_ms_per_example
        )
    affordable = [r for r in reports if r.within_budget]
    if not affordable:
        raise GraftlineError(
            f"no candidate backbone fits the budget (max_parameters={config.max_parameters}, "
            f"max_ms_per_example={config.max_ms_per_example}): "
            + ", ".join(f"{r.backbone} {r.parameters:,} params {r.cpu_ms_per_example:.1f} ms" for r in reports)
        )
    best = max(affordable, key=_rank_key(config.method))
    best.chosen = True
    ranked = sorted(reports, key=_rank_key(config.method), reverse=True)
    runner_up = next((r for r in ranked if r is not best), None)
    reason = f"highest {config.method} {best.scores[config.method]:.4f} within budget"
    if runner_up is not None:
        reason += f" (next: {runner_up.backbone} {runner_up.scores[config.method]:.4f})"
    over = [r.backbone for r in ranked if not r.within_budget]
    if over:
        reason += f"; over budget: {', '.join(over)}"
    return Selection(best.backbone, reason, config.method, reports)


def select_backbone(
    train: Split, params: SelectParams, model: ModelParams, score_all: ScoreAll = score_candidates
) -> Selection:
    """Sample, embed, score and choose: the whole selection step for one training split (its
    `input_column` is what a model reads). `score_all` decides where the candidates are scored; the
    sample and the choice are the same."""
    if len(params.candidates) == 0:
        raise GraftlineError("backbone 'auto' needs at least one candidate in select.candidates")
    started = time.perf_counter()
    sample = stratified_sample(train.frame, params.sample_size, model.seed)
    label_names = sorted(sample["label"].unique())
    labels = sample["label"].map({name: i for i, name in enumerate(label_names)}).to_numpy(np.int64)
    selection = choose(score_all(sample[train.input_column].fillna("").tolist(), labels, params, model), params)
    selection.seconds = time.perf_counter() - started
    return selection


def plot_leaderboard(selection: Selection, path: Path) -> Path:
    """Bars of the deciding score per candidate (chosen one highlighted) beside CPU latency."""
    table = selection.table()
    colours = [
        "tab:green" if c else ("tab:blue" if b else "tab:gray")
        for c, b in zip(table["chosen"], table["within_budget"], strict=True)
    ]
    size = (10, 1.2 + 0.5 * len(table))
    with plots.figure(path, dpi=120, ncols=2, figsize=size, sharey=True) as (fig, (left, right)):
        left.barh(table["backbone"], table[selection.method], color=colours)
        left.set_xlabel(f"{selection.method} (higher transfers better)")
        right.barh(table["backbone"], table["cpu_ms_per_example"], color=colours)
        right.set_xlabel("CPU ms per example")
        left.invert_yaxis()
        fig.suptitle(f"backbone selection: {selection.choice} (green); grey = over budget")
    return path


def _cpu_ms(encoder, tokenizer, texts: list[str], params: SelectParams, model: ModelParams) -> float:
    """CPU latency on a small slice when the scores were computed on a GPU."""
    subset = texts[:64]
    started = time.perf_counter()
    embed(encoder, tokenizer, subset, model.max_length, params.batch_size, params.pooling, torch.device("cpu"))
    return (time.perf_counter() - started) * 1000 / len(subset)


def short_name(spec: str) -> str:
    """A candidate's name for metric keys: a folder's own name rather than its whole path."""
    path = Path(spec)
    return path.name if path.is_dir() else spec


# -- the lifecycle's select step ------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneChoice:
    """The backbone to fine-tune, how it was chosen, and what it (and the student) are."""

    backbone: str
    described: dict[str, object]  # backbone.* (and student.*) of their configs
    student: str | None
    selection: Selection | None = None  # None: fixed by the finetune.backbone parameter
    params: SelectParams | None = None  # the selection's settings, when it ran
    picture: Path | None = None  # the leaderboard's plot, when it ran

    def logged(self) -> StepLog:
        if self.selection is None:
            log = StepLog(tags={"graftline.selection": f"{self.backbone}: fixed by the finetune.backbone parameter"})
        else:
            settings = {"select": self.params.model_dump(exclude={"candidates"})}
            log = StepLog(params={**settings, "select.candidates": ", ".join(self.params.candidates)})
            log += self.selection.logged(self.picture)
        log.params |= {"backbone": self.backbone, **self.described}
        if self.student is not None:
            log.params["student"] = self.student
        return log


def choose_backbone(
    train: Split,
    modality: Modality,
    backbone: str,
    student: str | None,
    params: SelectParams,
    model: ModelParams,
    score_all: ScoreAll,
    folder: Path,
) -> BackboneChoice:
    """`backbone` as given, or chosen by transferability when it is `auto`; checked to read data of
    `modality`, with `student` (the distillation student, when there is one) checked against it
    here, before training."""
    selection = picture = None
    if backbone == "auto":
        selection = select_backbone(train, params, model, score_all)
        backbone, picture = selection.choice, plot_leaderboard(selection, folder / "leaderboard.png")
    trust = model.trust_remote_code
    modality.require_backbone(backbone)
    config = backbones.load_config(backbone, trust)
    described = _describe(config, "backbone.")
    if student is not None:
        modality.require_student(student)
        if backbones.student_layers(student, config.num_hidden_layers) is None:
            described |= _describe(backbones.load_config(student, trust), "student.")
    return BackboneChoice(backbone, described, student, selection, params if selection else None, picture)


def _describe(config, prefix: str) -> dict[str, object]:
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings")
    keys += ("architecture", "image_size")  # an image classifier's config
    return {prefix + k: getattr(config, k) for k in keys if hasattr(config, k)}
