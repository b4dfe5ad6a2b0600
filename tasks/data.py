"""Reading labeled text datasets: the one place that opens data files.

Supports CSV, JSONL and Parquet from local paths or fsspec URLs (s3://, gs://, https://, ...).
Splits are either given (train / validation / test files) or carved from one file by a seeded,
stratified split. Labels are strings; ids follow the sorted label set of the training split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from graftline.tasks.errors import DataError

if TYPE_CHECKING:
    from graftline.tasks.settings import DataParams

DEMO_PREFIX = "demo:"  # demo:electronics -> the embedded demo file tasks/demo_data/electronics.csv
DEMO_DIR = Path(__file__).parent / "demo_data"

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Split:
    """One named table of (text, label) rows and where it came from."""

    name: str
    frame: pd.DataFrame  # columns: text, label (strings), whatever the user's column names were
    source: str

    @cached_property  # frozen: the rows cannot change, so they are hashed once
    def digest(self) -> str:
        """Content hash of the rows, stable across file formats and row order is kept significant."""
        hashed = pd.util.hash_pandas_object(self.frame[["text", "label"]], index=False)
        return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Splits:
    """Everything the lifecycle trains and evaluates on."""

    train: Split
    validation: Split
    test: Split
    extra: dict[str, Split] = field(default_factory=dict)  # other domains, evaluated under their names
    unlabeled: tuple[str, ...] = ()  # texts only the teacher labels (distillation data)

    @property
    def labels(self) -> list[str]:
        return sorted(self.train.frame["label"].unique())

    @cached_property  # frozen: the rows cannot change, so they are hashed once
    def digest(self) -> str:
        """One hash for the data a model was trained and tested on (train, validation, test)."""
        joined = "".join(s.digest for s in (self.train, self.validation, self.test))
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def evaluation_sets(self) -> dict[str, Split]:
        return {"test": self.test, **self.extra}

    def row_counts(self) -> dict[str, int]:
        return {f"{s.name}_rows": len(s.frame) for s in [self.train, self.validation, *self.evaluation_sets().values()]}


def read_table(source: str, text_column: str, label_column: str | None, fmt: str = "auto") -> pd.DataFrame:
    """Read one file into a frame with string columns `text` and `label` (`text` only when
    `label_column` is None: unlabeled data)."""
    fmt = _format_of(source) if fmt == "auto" else fmt
    _require_exists(source)
    try:
        if fmt == "csv":
            frame = pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[""])
        elif fmt == "jsonl":
            frame = pd.read_json(source, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(source)
    except Exception as exc:  # each reader raises its own family of errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {source} as {fmt}: {reason}") from exc
    columns = [text_column] + ([label_column] if label_column else [])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, map(str, frame.columns)))}"
        )
    if frame.empty:
        raise DataError(f"{source}: the dataset is empty")
    out = frame[columns].rename(columns={text_column: "text", label_column: "label"})
    if label_column:
        # Labels are names: 1 and "1" are the same class. Nulls stay null for validation to report.
        out["label"] = out["label"].map(lambda v: v if pd.isna(v) else str(v).strip())
    out["text"] = out["text"].map(lambda v: v if pd.isna(v) else str(v))
    return out.reset_index(drop=True)


def read_texts(source: str, text_column: str = "text", fmt: str = "auto") -> list[str]:
    """The non-blank texts of an unlabeled file (any label column is ignored)."""
    frame = read_table(resolve_source(source), text_column, None, fmt)
    texts = [t for t in frame["text"].dropna() if t.strip()]
    if not texts:
        raise DataError(f"{source}: no non-blank texts in column {text_column!r}")
    return texts


def load_splits(params: DataParams, unlabeled: list[str] | tuple[str, ...] = ()) -> Splits:
    """Read the user's data as the `data` parameter group describes it: train/validation/test, the
    extra evaluation sets, and the unlabeled transfer texts given.

    Missing validation/test files are carved out of the training file with a seeded stratified split.
    """
    read = lambda path: read_table(path, params.text_column, params.label_column, params.format)  # noqa: E731
    train, validation, test = (
        resolve_source(p) if p else None for p in (params.train_path, params.validation_path, params.test_path)
    )
    extra = {name: resolve_source(path) for name, path in params.eval_sets.items()}
    frame = read(train)
    _require_two_classes(frame, train)
    test_frame = read(test) if test else None
    if test_frame is None:
        frame, test_frame = stratified_split(frame, params.test_fraction, params.split_seed, train)
    val_frame = read(validation) if validation else None
    if val_frame is None:
        # The fraction is of the whole dataset, so rescale it to what is left after the test split.
        share = params.validation_fraction / (1 - (0 if test else params.test_fraction))
        frame, val_frame = stratified_split(frame, share, params.split_seed + 1, train)
    return Splits(
        train=Split("train", frame.reset_index(drop=True), train),
        validation=Split("validation", val_frame.reset_index(drop=True), validation or train),
        test=Split("test", test_frame.reset_index(drop=True), test or train),
        extra={name: Split(name, read(path), path) for name, path in extra.items()},
        unlabeled=tuple(unlabeled),
    )


def stratified_split(frame: pd.DataFrame, fraction: float, seed: int, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split keeping each label's share; every class keeps at least one row on each side."""
    from sklearn.model_selection import train_test_split

    labels = frame["label"].fillna("<null>")
    counts = labels.value_counts()
    if (counts < 2).any():
        rare = ", ".join(map(repr, counts[counts < 2].index))
        raise DataError(f"{source}: class(es) {rare} have a single row; cannot make a stratified split")
    n_holdout = max(round(len(frame) * fraction), len(counts))
    if len(frame) - n_holdout < len(counts):
        raise DataError(f"{source}: {len(frame)} rows are too few to split {len(counts)} classes")
    kept, held = train_test_split(frame, test_size=n_holdout, random_state=seed, stratify=labels)
    return kept, held


def resolve_source(source: str) -> str:
    """Expand `demo:<name>` to the embedded demo file; anything else is returned as given."""
    if not source.startswith(DEMO_PREFIX):
        return source
    name = source.removeprefix(DEMO_PREFIX)
    path = DEMO_DIR / f"{name}.csv"
    if not path.is_file():
        known = ", ".join(sorted(DEMO_PREFIX + p.stem for p in DEMO_DIR.glob("*.csv")))
        raise DataError(f"{source}: no such demo dataset (known: {known})")
    return str(path)


def encode_labels(labels: pd.Series, label_names: list[str], split_name: str) -> list[int]:
    """Map label strings to ids; a label the model does not know is an error that names it."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(labels.dropna()) - set(index))
    if unknown or labels.isna().any():
        what = ", ".join(map(repr, unknown)) if unknown else "null"
        raise DataError(f"{split_name}: label(s) {what} do not occur in the training labels {label_names}")
    return [index[v] for v in labels]


def _format_of(source: str) -> str:
    suffixes = Path(source.split("?")[0]).suffixes
    for suffix in reversed(suffixes):
        if suffix.lower() in FORMATS:
            return FORMATS[suffix.lower()]
    raise DataError(f"{source}: unknown file format; use .csv, .jsonl or .parquet (or set the format)")


def _require_exists(source: str) -> None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(source)
        exists = fs.exists(path)
    except Exception as exc:
        raise DataError(f"cannot open {source}: {exc}") from exc
    if not exists:
        raise DataError(f"{source}: file not found")


def _require_two_classes(frame: pd.DataFrame, source: str) -> None:
    classes = frame["label"].dropna().unique()
    if len(classes) < 2:
        only = f"only {classes[0]!r}" if len(classes) else "no labels"
        raise DataError(f"{source}: a classifier needs at least 2 classes, found {only}")
