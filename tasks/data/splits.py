"""Reading labeled text datasets: the one place that opens data files.

Supports CSV, JSONL and Parquet from local paths or fsspec URLs (s3://, gs://, https://, ...), and
Hugging Face datasets (a Hub id, a save_to_disk folder, a Hub-layout folder: hf.py).
Splits are either given (train / validation / test files) or carved from one file by a seeded,
stratified split. Labels are strings; ids follow the sorted label set of the training split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from graftline.tasks.data import demo_images, hf
from graftline.tasks.errors import DataError

if TYPE_CHECKING:
    from graftline.tasks.settings import DataParams

DEMO_PREFIX = "demo:"  # demo:electronics -> the embedded demo file tasks/data/demo_data/electronics.csv
DEMO_DIR = Path(__file__).parent / "demo_data"

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Split:
    """One named table of (text, label) rows and where it came from."""

    name: str
    frame: pd.DataFrame  # columns: text, label (strings), whatever the user's column names were; row (in the file)
    source: str

    modality = "text"
    input_column = "text"  # the column a model reads

    @property
    def texts(self) -> list[str]:
        """The texts as a model reads them: a missing one (reported by validation) is empty."""
        return self.frame["text"].fillna("").tolist()

    @property
    def inputs(self) -> list[str]:
        """What a model reads: the texts here, the image paths of an image split (images.ImageSplit)."""
        return self.texts

    @cached_property  # frozen: the rows cannot change, so they are hashed once
    def digest(self) -> str:
        """Content hash of the rows, stable across file formats and row order is kept significant."""
        hashed = pd.util.hash_pandas_object(self.frame[["text", "label"]], index=False)
        return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]

    @property
    def recorded_source(self):
        """Where MLflow says the rows came from: the source as given, or a Hub dataset's own record."""
        return hf.recorded_source(self.source) or self.source

    @property
    def fingerprint(self) -> str | None:
        """A Hugging Face dataset's fingerprint (which version of it was read); None for a file."""
        return hf.fingerprint(self.source)

    @cached_property
    def digest_of_texts(self) -> str:
        """Content hash of the texts alone (an unlabeled target set has no label column)."""
        hashed = pd.util.hash_pandas_object(self.frame["text"], index=False)
        return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Splits:
    """Everything the lifecycle trains and evaluates on."""

    train: Split
    validation: Split
    test: Split
    extra: dict[str, Split] = field(default_factory=dict)  # other domains, evaluated under their names
    unlabeled: tuple[str, ...] = ()  # texts only the teacher labels (distillation data)
    targets: dict[str, Split] = field(default_factory=dict)  # unlabeled texts of domains the model will serve

    @property
    def labels(self) -> list[str]:
        return sorted(self.train.frame["label"].dropna().unique())

    @property
    def modality(self) -> str:
        return self.train.modality

    @cached_property  # frozen: the rows cannot change, so they are hashed once
    def digest(self) -> str:
        """One hash for the data a model was trained and tested on (train, validation, test)."""
        joined = "".join(s.digest for s in (self.train, self.validation, self.test))
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def target_texts(self) -> list[str]:
        """Every target set's non-blank texts, in order: what adaptation trains on."""
        return [t for split in self.targets.values() for t in split.texts if t.strip()]

    def evaluation_sets(self) -> dict[str, Split]:
        return {"test": self.test, **self.extra}

    def row_counts(self) -> dict[str, int]:
        return {f"{s.name}_rows": len(s.frame) for s in [self.train, self.validation, *self.evaluation_sets().values()]}


def read_table(
    source: str, text_column: str, label_column: str | None, fmt: str = "auto", encoding: str = "utf-8"
) -> pd.DataFrame:
    """Read one file into a frame with string columns `text` and `label` (`text` only when
    `label_column` is None: unlabeled data), plus `row`: the 1-based data row in the file, so a
    report can point at it. Every fault names the file and, where it can, the row or line."""
    return table_of(read_frame(source, fmt, encoding), source, text_column, label_column)


def read_frame(source: str, fmt: str = "auto", encoding: str = "utf-8", rows: int | None = None) -> pd.DataFrame:
    """Every column of one file, as written (CSV cells as strings; text files in `encoding`); a
    fault names the file. With `rows`, only the first rows of a CSV or Parquet file are read (a JSON
    Lines file is read whole). A Hugging Face dataset source (hf.py) reads its split."""
    if hf.parse(source) is not None:
        return hf.read(source, rows)
    fmt = format_of(source) if fmt == "auto" else fmt
    _require_exists(source)
    try:
        if fmt == "csv":
            frame = _read_csv(source, encoding, rows)
            frame.columns = _csv_header(source, frame.columns, encoding)
        elif fmt == "jsonl":
            frame = _read_jsonl(source, encoding)
        elif rows is not None:
            frame = _parquet_head(source, rows)
        else:
            frame = pd.read_parquet(source)
    except DataError:
        raise
    except Exception as exc:  # each reader raises its own family of errors
        raise _read_error(source, fmt, encoding, exc) from exc
    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if repeated:
        raise DataError(f"{source}: column name(s) {', '.join(map(repr, repeated))} appear more than once")
    return frame


PEEK_ROWS = 1000  # rows `peek_table` reads


def peek_table(source: str, text_column: str, label_column: str | None = None, encoding: str = "utf-8") -> None:
    """The checks of `read_table` on the head of `source` (its first PEEK_ROWS rows; a JSON Lines
    file whole): it exists, parses as its format, holds its columns and at least one row. What a
    command checks before it starts a server; reading every row stays with the step that uses it."""
    source = resolve_source(source)
    table_of(read_frame(source, encoding=encoding, rows=PEEK_ROWS), source, text_column, label_column)


def _read_error(source: str, fmt: str, encoding: str, exc: Exception) -> DataError:
    """One line for a file its reader refused; a text file in another encoding says which setting reads it."""
    if isinstance(exc, UnicodeDecodeError):
        return DataError(
            f"{source} is not {encoding} text ({_undecodable(source, encoding, exc)}): give its encoding "
            "(data.encoding, or --encoding; e.g. cp1252 or latin-1 for a spreadsheet's export) or save it as UTF-8"
        )
    return DataError(f"cannot read {source} as {fmt}: {_first_line(exc)}")


def _undecodable(source: str, encoding: str, exc: UnicodeDecodeError) -> str:
    """Where the first byte `encoding` cannot decode is: the reader's error counts from its buffer."""
    import fsspec

    with fsspec.open(source, "rb", compression="infer") as handle:
        raw = handle.read()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as found:
        line = raw[: found.start].count(b"\n") + 1
        return f"byte 0x{raw[found.start : found.start + 1].hex()} on line {line}"
    return f"byte 0x{exc.object[exc.start : exc.start + 1].hex()}"


def _parquet_head(source: str, rows: int) -> pd.DataFrame:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(source, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        first = next(parquet.iter_batches(batch_size=rows), None)
        return (first if first is not None else parquet.schema_arrow.empty_table()).to_pandas()


def table_of(frame: pd.DataFrame, source: str, text_column: str, label_column: str | None) -> pd.DataFrame:
    """`frame`'s text (and label) column as `read_table` returns them, checked."""
    columns = [text_column] + ([label_column] if label_column else [])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, map(str, frame.columns)))}"
        )
    if frame.empty:
        raise DataError(f"{source}: the dataset is empty")
    out = frame[columns].rename(columns={text_column: "text", label_column: "label"}).reset_index(drop=True)
    for column, given in zip(out.columns, columns, strict=True):
        if not _is_text(out[column]):  # a text column (CSV's) holds nothing nested and nothing but text
            _require_scalars(out[column], source, given)
    if not _is_text(out["text"]):
        out["text"] = out["text"].map(lambda v: v if pd.isna(v) else str(v))
    if label_column:
        names = {value: _label_name(value) for value in out["label"].dropna().unique()}  # few classes, many rows
        out["label"] = out["label"].map(names)
        _require_labels(out["label"], source, label_column)
    out["row"] = range(1, len(out) + 1)
    return out


def _is_text(values: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(values) and values.dtype != object


def _label_name(value) -> str | None:
    """Labels are names: 1, 1.0 and " 1" are the same class (Parquet and JSON keep numbers, CSV reads text)."""
    if pd.isna(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() or None


CSV_CHUNK_ROWS = 65_536  # rows parsed at a time: the parser's Python strings live for one chunk only


def _read_csv(source: str, encoding: str, rows: int | None) -> pd.DataFrame:
    """Every cell as a string. Parsed a chunk at a time into Arrow-backed columns: parsed whole, the
    parser's per-cell Python strings for every row would exist at once beside the result (a million
    reviews: 0.84 GB peak against 0.51 GB in chunks, and no slower)."""
    chunks = pd.read_csv(
        source, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding, nrows=rows,
        chunksize=CSV_CHUNK_ROWS,
    )  # fmt: skip
    with chunks:
        return pd.concat(list(chunks), ignore_index=True)


def _csv_header(source: str, parsed: pd.Index, encoding: str = "utf-8") -> pd.Index:
    """The header as written: pandas renames a repeated name (`label`, `label.1`), which would hide it."""
    written = pd.read_csv(source, header=None, nrows=1, dtype=str, keep_default_na=False, encoding=encoding).iloc[0]
    return pd.Index(written) if len(written) == len(parsed) else parsed


def _read_jsonl(source: str, encoding: str = "utf-8") -> pd.DataFrame:
    """JSON Lines (one object per line; a file holding one JSON array of objects is read too).

    Read here rather than by pandas so a broken line is reported by its line number (pandas reports
    a byte position) and a key repeated within an object is an error (JSON keeps the last silently)."""
    import json

    import fsspec

    def unique_keys(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"key(s) {', '.join(map(repr, repeated))} appear more than once")
        return dict(pairs)

    with fsspec.open(source, "rt", encoding=encoding, compression="infer") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):  # a JSON array of objects
        try:
            rows = json.loads(text, object_pairs_hook=unique_keys)
        except ValueError as exc:
            raise DataError(f"{source}: not valid JSON ({_first_line(exc)})") from None
        lines = list(enumerate(rows, start=1))
    else:
        lines = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line, object_pairs_hook=unique_keys)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{source}: line {number}, column {exc.colno}: not valid JSON ({exc.msg})") from None
            except ValueError as exc:  # a repeated key
                raise DataError(f"{source}: line {number}: {exc}") from None
    for number, row in lines:
        if not isinstance(row, dict):
            raise DataError(f"{source}: line {number}: expected a JSON object, found {type(row).__name__}")
    return pd.DataFrame.from_records([row for _, row in lines])


def _require_scalars(values: pd.Series, source: str, column: str) -> None:
    nested = values.map(lambda v: isinstance(v, (dict, list, tuple, set, np.ndarray)))
    if nested.any():
        row = int(nested.idxmax()) + 1
        kind = type(values[row - 1]).__name__
        raise DataError(f"{source}: row {row}: column {column!r} holds a {kind}, expected text")


def _require_labels(labels: pd.Series, source: str, column: str) -> None:
    empty = labels.isna()
    if empty.any():
        rows = ", ".join(str(i + 1) for i in empty[empty].index[:5]) + (", ..." if empty.sum() > 5 else "")
        raise DataError(
            f"{source}: {int(empty.sum())} of {len(labels)} rows have no {column!r} (rows {rows}); "
            "label them or remove them"
        )


def read_texts(source: str, text_column: str = "text", fmt: str = "auto", encoding: str = "utf-8") -> list[str]:
    """The non-blank texts of an unlabeled file (any label column is ignored)."""
    frame = read_table(resolve_source(source), text_column, None, fmt, encoding)
    texts = [t for t in frame["text"].dropna() if t.strip()]
    if not texts:
        raise DataError(f"{source}: no non-blank texts in column {text_column!r}")
    return texts


def load_splits(params: DataParams, unlabeled: list[str] | tuple[str, ...] = ()) -> Splits:
    """Read the user's data as the `data` parameter group describes it: train/validation/test, the
    extra evaluation sets, and the unlabeled transfer texts given.

    Missing validation/test files are carved out of the training file with a seeded stratified split.
    """
    read = lambda path: read_table(path, params.text_column, params.label_column, params.format, params.encoding)  # noqa: E731
    train, validation, test = (
        resolve_source(p) if p else None for p in (params.train_path, params.validation_path, params.test_path)
    )
    extra = {name: resolve_source(path) for name, path in params.eval_sets.items()}
    targets = {name: resolve_source(path) for name, path in params.target_sets.items()}
    if params.hf_config:
        train, validation, test = (
            hf.with_config(p, params.hf_config) if p else None for p in (train, validation, test)
        )
        extra = {name: hf.with_config(path, params.hf_config) for name, path in extra.items()}
        targets = {name: hf.with_config(path, params.hf_config) for name, path in targets.items()}
    given = hf.named_splits(train)  # a dataset's own validation and test splits, where it has them
    validation, test = validation or given.get("validation"), test or given.get("test")
    frame = read(train)
    _require_two_classes(frame, train)
    test_frame = read(test) if test else None
    val_frame = read(validation) if validation else None
    # Carved splits are drawn as row positions and taken from the file's frame once each, so the
    # rows are copied once, not once per carving.
    kept, carved = np.arange(len(frame)), {}
    if test_frame is None:
        kept, carved["test"] = _carve(frame, kept, params.test_fraction, params.split_seed, train)
    if val_frame is None:
        # The fraction is of the whole dataset, so rescale it to what is left after the test split.
        share = params.validation_fraction / (1 - (0 if test else params.test_fraction))
        kept, carved["validation"] = _carve(frame, kept, share, params.split_seed + 1, train)
    if carved:
        frame = _contiguous(frame)
        test_frame = frame.iloc[carved["test"]] if "test" in carved else test_frame
        val_frame = frame.iloc[carved["validation"]] if "validation" in carved else val_frame
        frame = frame.iloc[kept]
    splits = Splits(
        train=Split("train", frame.reset_index(drop=True), train),
        validation=Split("validation", val_frame.reset_index(drop=True), validation or train),
        test=Split("test", test_frame.reset_index(drop=True), test or train),
        extra={name: Split(name, read(path), path) for name, path in extra.items()},
        unlabeled=tuple(unlabeled),
        # Texts only: a target file's label column, if it has one, is never read (adaptation must not
        # see target labels; a target set that is also an evaluation set is scored as that set).
        targets={
            name: Split(name, read_table(path, params.text_column, None, params.format, params.encoding), path)
            for name, path in targets.items()
        },  # fmt: skip
    )
    require_known_labels(splits)
    return splits


def stratified_split(frame: pd.DataFrame, fraction: float, seed: int, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split keeping each label's share; every class keeps at least one text on each side.

    Identical texts stay on one side: the unit split is the distinct text (labelled as its first
    row), so repeated rows in a file cannot leak from the training half into the held-out half."""
    kept, held = split_positions(frame, fraction, seed, source)
    return frame.iloc[kept], frame.iloc[held]


def _contiguous(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each Arrow-backed string column in one piece. Taking rows from a column read in
    chunks first joins the chunks into a copy that lives only for the take: joined once, the rows
    of three carved splits cost one copy of the texts, not four."""
    import pyarrow as pa

    joined = {}
    for name, column in frame.items():
        if isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow":
            pieces = pa.array(column)
            if isinstance(pieces, pa.ChunkedArray) and pieces.num_chunks > 1:
                joined[name] = pd.Series(pieces.combine_chunks(), dtype=column.dtype, index=column.index)
    return frame.assign(**joined) if joined else frame


HASH_CHUNK = 65_536  # texts turned into Python strings at a time by `text_hashes`


def text_hashes(texts: pd.Series) -> np.ndarray:
    """A 64-bit fingerprint per text, equal for equal texts (a missing text is one value), stable
    within this process. Factorizing or hashing the strings themselves keeps a copy of every
    distinct text beside its hash table (a million reviews: +0.84 GB); a text's fingerprint is 8
    bytes, and only one chunk of texts is ever a Python string. Two distinct texts share a
    fingerprint with odds of about n² / 2⁶⁵ (3 in 100 million at a million texts)."""
    out = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), HASH_CHUNK):
        chunk = texts.iloc[start : start + HASH_CHUNK].tolist()
        out[start : start + len(chunk)] = [hash(t if isinstance(t, str) else None) for t in chunk]
    return out


def text_codes(texts: pd.Series) -> np.ndarray:
    """One id per distinct text, 0, 1, 2... in order of first appearance (`text_hashes` factorized)."""
    return np.asarray(pd.factorize(text_hashes(texts))[0])


def _carve(
    frame: pd.DataFrame, rows: np.ndarray, fraction: float, seed: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """`stratified_split` of `frame`'s rows at positions `rows`, as positions in `frame` (no row copied)."""
    kept, held = split_positions(frame, fraction, seed, source, rows)
    return rows[kept], rows[held]


def split_positions(
    frame: pd.DataFrame, fraction: float, seed: int, source: str, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`stratified_split`'s two sides as positions (kept, held out): in `frame`, or in `rows` (the
    positions of the rows to split, in their order) where given."""
    from sklearn.model_selection import train_test_split

    codes = text_codes(frame["text"])  # positions throughout: no frame is copied
    if rows is not None:
        codes = np.asarray(pd.factorize(codes[rows])[0])  # renumbered in the rows' own order
    first = np.unique(codes, return_index=True)[1]  # each distinct text's first row, in order
    labels = frame["label"].iloc[first if rows is None else rows[first]].fillna("<null>")
    counts = labels.value_counts()
    if (counts < 2).any():
        rare = ", ".join(map(repr, counts[counts < 2].index))
        raise DataError(f"{source}: class(es) {rare} have a single distinct text; cannot make a stratified split")
    n_holdout = max(round(len(first) * fraction), len(counts))
    if len(first) - n_holdout < len(counts):
        raise DataError(f"{source}: {len(first)} distinct texts are too few to split {len(counts)} classes")
    classes = pd.factorize(labels, sort=True)[0]  # sorted as the names sort: the split the names would give
    kept, held = train_test_split(np.arange(len(first)), test_size=n_holdout, random_state=seed, stratify=classes)
    # Every row follows its text's first row, in the order the split drew (shuffled, as without repeats).
    order = np.empty(len(first), dtype=np.int64)
    order[np.concatenate([kept, held])] = np.arange(len(first))
    rank = order[codes]
    sorting = np.argsort(rank, kind="stable")
    is_held = rank[sorting] >= len(kept)
    return sorting[~is_held], sorting[is_held]


def resolve_source(source: str) -> str:
    """Expand `demo:<name>` to the embedded demo file (or the drawn demo images' folder, demo_images.py);
    anything else is returned as given."""
    if not source.startswith(DEMO_PREFIX):
        return source
    name = source.removeprefix(DEMO_PREFIX)
    if name in demo_images.DOMAINS:
        return str(demo_images.folder(name))
    path = DEMO_DIR / f"{name}.csv"
    if not path.is_file():
        known = [DEMO_PREFIX + p.stem for p in DEMO_DIR.glob("*.csv")] + [DEMO_PREFIX + d for d in demo_images.DOMAINS]
        raise DataError(f"{source}: no such demo dataset (known: {', '.join(sorted(known))})")
    return str(path)


def encode_labels(labels: pd.Series, label_names: list[str], split_name: str) -> list[int]:
    """Map label strings to ids; a label the model does not know is an error that names it."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(labels.dropna()) - set(index))
    if unknown or labels.isna().any():
        what = ", ".join(map(repr, unknown)) if unknown else "null"
        raise DataError(f"{split_name}: label(s) {what} do not occur in the training labels {label_names}")
    return [index[v] for v in labels]


def format_of(source: str) -> str:
    suffixes = Path(source.split("?")[0]).suffixes
    for suffix in reversed(suffixes):
        if suffix.lower() in FORMATS:
            return FORMATS[suffix.lower()]
    raise DataError(f"{source}: unknown file format; use .csv, .jsonl or .parquet (or set the format)")


def require_exists(source: str) -> None:
    """A one-line error when `source` (a path or fsspec URL) is not there: the check a command makes
    before it starts anything."""
    _require_exists(resolve_source(source))


def _require_exists(source: str) -> None:
    import fsspec

    if hf.parse(source) is not None:
        return  # a dataset that cannot load says so when it is read
    try:
        fs, path = fsspec.core.url_to_fs(source)
        exists = fs.exists(path)
    except Exception as exc:
        raise DataError(f"cannot open {source}: {exc}") from exc
    if not exists:
        raise DataError(f"{source}: file not found")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def require_known_labels(splits: Splits) -> None:
    """Every evaluated label must be one the model learns: the training split defines the classes."""
    known = set(splits.labels)
    for split in [splits.validation, *splits.evaluation_sets().values()]:
        counts = split.frame["label"].value_counts()
        unknown = counts[~counts.index.isin(known)]
        if len(unknown):
            found = ", ".join(f"{label!r} ({n} rows)" for label, n in unknown.head(5).items())
            raise DataError(
                f"{split.source} ({split.name}): label(s) {found} do not occur in the training labels "
                f"{sorted(known)}; a model cannot predict a class it never saw"
            )


def _require_two_classes(frame: pd.DataFrame, source: str) -> None:
    classes = frame["label"].dropna().unique()
    if len(classes) < 2:
        only = f"only {classes[0]!r}" if len(classes) else "no labels"
        raise DataError(f"{source}: a classifier needs at least 2 classes, found {only}")
