"""Batch prediction with a registered version: `graftline predict MODEL[@ALIAS|/VERSION]`.

A version is scored with the fastest of its forms that passed the export's parity check: the INT8
ONNX file of its export run, else the fp32 ONNX file, else the registered torch model (a teacher,
or a version that was never exported). The tokenizer, the labels and the text length it was
trained at come from the registered version itself, so the file the export wrote is never trusted
alone.

The input is read like training data (CSV, JSONL or Parquet; a local path or fsspec URL); the output
format follows the output's suffix. Every input column is kept, and three kinds are added:
`predicted_label`, `score_<label>` (calibrated probability per class: the softmax of the logits
divided by the version's `temperature` tag) and `model_version`. The output
is written to a temporary file beside it and renamed into place, so a failed run leaves nothing
half-written.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from graftline.tasks import modality as modalities
from graftline.tasks import plots, progress
from graftline.tasks.data.splits import FORMATS, read_frame, resolve_source, table_of
from graftline.tasks.errors import GraftlineError
from graftline.tasks.evaluate.calibration import softmax
from graftline.tasks.modality.base import TEXT_SCORING
from graftline.tasks.registry import contract
from graftline.tasks.settings import PredictParams, default_of

FORMS = ("onnx-int8", "onnx", "torch")  # fastest first
EXPORT_FILES = {"onnx-int8": "export/model.int8.onnx", "onnx": "export/model.onnx"}
REFERENCE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))?$")


class PredictionError(GraftlineError):
    """A model reference or input that cannot be scored."""


@dataclass(frozen=True)
class ModelReference:
    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelReference:
        """`name@alias`, `name/version`, or `name` (its production version)."""
        match = REFERENCE.match(text.strip())
        if not match:
            raise PredictionError(f"{text!r}: expected MODEL, MODEL@ALIAS or MODEL/VERSION")
        alias, version = match["alias"], match["version"]
        return cls(match["name"], alias or (None if version else contract.PRODUCTION), version)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


@dataclass
class Scorer:
    """A version ready to score texts: texts -> logits, with the labels in logit order."""

    name: str
    version: str
    form: str  # one of FORMS
    labels: list[str]
    max_length: int
    predict: object  # Callable[[list[str]], np.ndarray]
    temperature: float = 1.0  # logits are divided by it: calibrated probabilities
    source: Version | None = field(default=None, repr=False)  # the downloaded version (its torch model, tokenizer)

    def probabilities(self, texts: list[str], batch_size: int = 32, shown=None) -> np.ndarray:
        """Calibrated class probabilities of `texts`, scored `batch_size` at a time."""
        logits = []
        for start in range(0, len(texts), batch_size):
            logits.append(self.predict(texts[start : start + batch_size]))
            if shown is not None:
                shown.update(len(logits))
        if not logits:
            return np.zeros((0, len(self.labels)))
        return softmax(np.concatenate(logits), self.temperature)


@dataclass
class Predictions:
    rows: int
    seconds: float
    label_counts: dict[str, int]
    confidences: np.ndarray = field(repr=False)  # the top probability of every row

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "rows": self.rows,
            "rows_per_second": self.rows_per_second,
            "seconds": self.seconds,
            "mean_confidence": float(self.confidences.mean()) if self.rows else 0.0,
            **{f"predicted_{label}": n for label, n in self.label_counts.items()},
        }


def resolve_version(client, reference: ModelReference) -> str:
    """The version number `reference` names, or a one-line error saying what is missing."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(reference.name)
    except MlflowException:
        raise PredictionError(f"registered model {reference.name!r} not found") from None
    try:
        if reference.alias:
            return str(client.get_model_version_by_alias(reference.name, reference.alias).version)
        return str(client.get_model_version(reference.name, reference.version).version)
    except MlflowException:
        raise PredictionError(f"{reference}: no such version of {reference.name!r}") from None


@dataclass(frozen=True)
class Version:
    """A registered version, downloaded: its tags and its MLflow model folder."""

    name: str
    version: str
    tags: dict[str, str]
    folder: Path  # the transformers-flavor model: model/ (config, safetensors), components/tokenizer/

    @property
    def max_length(self) -> int:
        return contract.recorded_max_length(self.tags)

    @property
    def temperature(self) -> float:
        return contract.recorded_temperature(self.tags)

    def tokenizer(self):
        from graftline.tasks.engine import backbones

        return backbones.load_saved_tokenizer(self.folder / "components" / "tokenizer")

    def tokenizer_without_torch(self):
        """The tokenizer for an ONNX file: its tokenizer.json run by `tokenizers` (transformers would
        import torch, seconds of a small file's scoring), else transformers' own."""
        from graftline.tasks.export.onnx_pyfunc import fast_tokenizer

        return fast_tokenizer(self.folder / "components" / "tokenizer") or self.tokenizer()

    def classifier(self):
        from graftline.tasks.engine import backbones

        return backbones.load_classifier(str(self.folder / "model")).eval()

    def labels(self) -> list[str]:
        """The class names in logit order, from the model's config (no weights loaded)."""
        import json

        id2label = json.loads((self.folder / "model" / "config.json").read_text())["id2label"]
        return [id2label[str(i)] for i in range(len(id2label))]


def fetch_version(client, reference: ModelReference) -> Version:
    """The version `reference` names, downloaded (MLflow caches nothing: each call downloads)."""
    import mlflow

    version = resolve_version(client, reference)
    tags = dict(client.get_model_version(reference.name, version).tags)
    refused = modalities.of_version(tags).refusal(TEXT_SCORING, uri=f"models:/{reference.name}/{version}")
    if refused:
        raise PredictionError(f"{reference.name} v{version} {refused}")
    folder = Path(mlflow.artifacts.download_artifacts(contract.trained_model_uri(reference.name, version, tags)))
    return Version(reference.name, version, tags, folder)


def load_scorer(client, reference: ModelReference, form: str = default_of(PredictParams, "form")) -> Scorer:
    """The version `reference` names, in `form` (auto: the fastest that passed parity)."""
    import mlflow

    from graftline.tasks.export.predictors import onnx_predictor, torch_predictor

    if form not in ("auto", *FORMS):
        raise PredictionError(f"form {form!r}: expected auto or one of {', '.join(FORMS)}")
    fetched = fetch_version(client, reference)
    version, max_length, temperature = fetched.version, fetched.max_length, fetched.temperature
    exports = passed_exports(client, fetched.tags.get(contract.EXPORT_RUN))
    wanted = [f for f in FORMS if f in exports or f == "torch"] if form == "auto" else [form]
    chosen = wanted[0]
    if chosen != "torch":
        if chosen not in exports:
            raise PredictionError(f"{reference.name} v{version} has no {chosen} export that passed its parity check")
        onnx = mlflow.artifacts.download_artifacts(run_id=exports[chosen], artifact_path=EXPORT_FILES[chosen])
        predict = onnx_predictor(Path(onnx), fetched.tokenizer_without_torch(), max_length)
        return Scorer(reference.name, version, chosen, fetched.labels(), max_length, predict, temperature, fetched)
    predict = torch_predictor(fetched.classifier(), fetched.tokenizer(), max_length)
    return Scorer(reference.name, version, "torch", fetched.labels(), max_length, predict, temperature, fetched)


def passed_exports(client, run_id: str | None) -> dict[str, str]:
    """{form: export run id} for the forms the version's export run logged (only files that passed parity are)."""
    if not run_id:
        return {}
    logged = {f.path for f in client.list_artifacts(run_id, "export")}
    return {form: run_id for form, path in EXPORT_FILES.items() if path in logged}


def output_format(output: Path) -> str:
    """The format `output` is written in, checked before any work is done."""
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise PredictionError(f"{output}: unknown output format; use .csv, .jsonl or .parquet")
    if not output.parent.is_dir():
        raise PredictionError(f"{output.parent}: output folder not found")
    return fmt


def predict_frame(
    scorer: Scorer,
    frame: pd.DataFrame,
    text_column: str,
    output: Path,
    batch_size: int = default_of(PredictParams, "batch_size"),
    explainer=None,
) -> Predictions:
    """Score every row of `frame` (from `read_input`) and write them, with the predictions, to `output`;
    with `explainer` (texts -> top words of each), also a `top_words` column."""
    fmt = output_format(output)
    if batch_size < 1:
        raise PredictionError(f"batch size {batch_size}: must be at least 1")
    texts = frame[text_column].fillna("").astype(str).tolist()
    started = time.perf_counter()
    with progress.activity(f"predicting {len(texts):,} rows", total=-(-len(texts) // batch_size)) as shown:
        probabilities = scorer.probabilities(texts, batch_size, shown)
    seconds = time.perf_counter() - started
    predicted = np.asarray(scorer.labels, dtype=object)[probabilities.argmax(-1)]
    scored = frame.copy()
    scored["predicted_label"] = predicted
    for i, label in enumerate(scorer.labels):
        scored[f"score_{label}"] = probabilities[:, i]
    scored["model_version"] = f"{scorer.name}/{scorer.version}"
    if explainer is not None:
        scored["top_words"] = [" ".join(words) for words in explainer(texts)]
    _write(scored, output, fmt)
    counts = pd.Series(predicted).value_counts()
    return Predictions(
        rows=len(scored),
        seconds=seconds,
        label_counts={label: int(counts.get(label, 0)) for label in scorer.labels},
        confidences=probabilities.max(-1),
    )


def read_input(
    source: str,
    text_column: str = default_of(PredictParams, "text_column"),
    encoding: str = default_of(PredictParams, "encoding"),
) -> pd.DataFrame:
    """Every column of the input as written, its text column checked and read as for training."""
    path = resolve_source(source)
    frame = read_frame(path, encoding=encoding)
    frame[text_column] = table_of(frame, source, text_column, None)["text"].to_numpy()
    return frame


def _write(frame: pd.DataFrame, output: Path, fmt: str) -> None:
    partial = output.with_name(f".{output.name}.partial")
    try:
        if fmt == "csv":
            frame.to_csv(partial, index=False)
        elif fmt == "jsonl":
            frame.to_json(partial, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(partial, index=False)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class PredictionRun:
    """What one prediction run did: its numbers, the version and form that scored, and its MLflow run."""

    predictions: Predictions
    version: str
    form: str  # onnx-int8 | onnx | torch
    run_id: str


# Fewer rows get no confidence histogram: it would say nothing, and drawing it (matplotlib's import
# included) takes a tenth of a small file's scoring time.
HISTOGRAM_MIN_ROWS = 20


def plot_confidence(confidences, path: Path) -> Path:
    """A histogram of the rows' top-class probabilities: how sure the version was of this input."""
    with plots.figure(path, dpi=100, figsize=(5, 3)) as (_, axes):
        axes.hist(confidences, bins=20, range=(0, 1))
        axes.set_xlabel("confidence (top class probability)")
        axes.set_ylabel("rows")
    return path
