"""Image datasets: how they are read, what identifies their content, and what each image is.

Two layouts, the same columns as text data (`image` instead of `text`):

- a **folder with one subfolder per class** (`train/ants/*.jpg`, `train/bees/*.jpg`): the label is
  the subfolder's name; files with an image suffix are read, in sorted order;
- a **table** (CSV, JSONL or Parquet, read by data.read_frame) with an image column of paths or fsspec
  URLs and a label column; relative paths are relative to the table's own folder.

Either way the frame has `image` (an absolute path or URL), `label` and `row` (the 1-based row in the
table, or the position in the folder listing), so a fault can point at its row.

`digest` identifies a set by the bytes of its images (renaming a file does not change it, editing a
pixel does). `profile` decodes every image once and records what validation checks: whether it
decodes, width, height, channels, the SHA-256 of its bytes (exact duplicates) and a 64-bit
difference hash of its pixels (near duplicates: the same picture resized or re-encoded; image_files.py).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from graftline.tasks.data.image_files import difference_hash, hamming, read_bytes  # noqa: F401  (this module's interface)
from graftline.tasks.data.splits import (
    Split,
    Splits,
    format_of,
    read_frame,
    require_known_labels,
    resolve_source,
    stratified_split,
)
from graftline.tasks.errors import DataError

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_path(value: str) -> bool:
    return Path(str(value).split("?")[0]).suffix.lower() in SUFFIXES


def read_images(source: str, image_column: str = "image", label_column: str | None = "label") -> pd.DataFrame:
    """An image set as a frame of `image`, `label` (unless `label_column` is None) and `row`."""
    if Path(source).is_dir():
        return _read_folder(Path(source), with_labels=label_column is not None)
    frame = read_frame(source)
    wanted = [image_column] + ([label_column] if label_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        found = ", ".join(map(repr, frame.columns))
        raise DataError(f"{source}: missing column(s) {', '.join(map(repr, missing))}; found {found}")
    if frame.empty:
        raise DataError(f"{source}: the dataset is empty")
    base = Path(source).parent
    images = frame[image_column].astype("string")
    blank = images.isna() | (images.str.strip() == "")
    if blank.any():
        raise DataError(f"{source}: row(s) {_rows(np.flatnonzero(blank))} have no image path")
    out = pd.DataFrame({"image": [_absolute(str(v), base) for v in images]})
    if label_column:
        out["label"] = frame[label_column].astype("string").str.strip().to_numpy()
    out["row"] = np.arange(1, len(out) + 1)
    return out


def _read_folder(folder: Path, with_labels: bool) -> pd.DataFrame:
    if not with_labels:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p.name))
        if not files:
            raise DataError(f"{folder}: no image files ({', '.join(SUFFIXES)})")
        return pd.DataFrame({"image": [str(p.resolve()) for p in files], "row": np.arange(1, len(files) + 1)})
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class subfolders (expected one folder of images per class)")
    rows = []
    for label_dir in classes:
        files = sorted(p for p in label_dir.rglob("*") if p.is_file() and is_image_path(p.name))
        if not files:
            raise DataError(f"{label_dir}: empty class folder (no image files)")
        rows += [(str(p.resolve()), label_dir.name) for p in files]
    out = pd.DataFrame(rows, columns=["image", "label"])
    out["row"] = np.arange(1, len(out) + 1)
    return out


def _absolute(value: str, base: Path) -> str:
    if "://" in value or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def _rows(positions, shown: int = 5) -> str:
    listed = ", ".join(str(int(p) + 1) for p in positions[:shown])
    return listed + (f" and {len(positions) - shown} more" if len(positions) > shown else "")


def digest(paths: list[str]) -> str:
    """One hash of the images' bytes, in order."""
    whole = hashlib.sha256()
    for path in paths:
        whole.update(hashlib.sha256(read_bytes(path)).digest())
    return whole.hexdigest()[:16]


def profile(paths: list[str]) -> pd.DataFrame:
    """One row per image: decodes, width, height, channels (empty when it does not decode), sha256,
    dhash (-1 when it does not decode), error (why it does not decode)."""
    import io

    from PIL import Image, UnidentifiedImageError

    rows = []
    for path in paths:
        data = read_bytes(path)
        row = {"decodes": False, "width": None, "height": None, "channels": None, "dhash": -1, "error": ""}
        row["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                row.update(
                    decodes=True,
                    width=image.width,
                    height=image.height,
                    channels=len(image.getbands()),
                    dhash=difference_hash(image),
                )
        except (UnidentifiedImageError, OSError, ValueError) as error:
            row["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["decodes", "width", "height", "channels", "sha256", "dhash", "error"])
    return frame.astype({"width": "Int64", "height": "Int64", "channels": "Int64"})


def near_duplicate_of(hashes: list[int], others: list[int] | None = None, max_distance: int = 4) -> list[int]:
    """For each hash, the index of the first *earlier* hash in `hashes` (or, given `others`, of the first
    hash there) at most `max_distance` bits away; -1 when there is none. Undecoded images (-1) match nothing."""
    mine, valid = _as_bits(hashes)
    theirs, their_valid = (mine, valid) if others is None else _as_bits(others)
    out = np.full(len(hashes), -1)
    for start in range(0, len(hashes), 256):  # (256 x n x 64) bits at a time
        block = mine[start : start + 256]
        distance = np.unpackbits((block[:, None, :] ^ theirs[None, :, :]), axis=-1).sum(-1)
        close = (distance <= max_distance) & their_valid[None, :] & valid[start : start + 256, None]
        if others is None:  # only earlier images count: the first of a group is not its own duplicate
            close &= np.arange(len(theirs))[None, :] < np.arange(start, start + len(block))[:, None]
        found = close.argmax(1)
        out[start : start + len(block)] = np.where(close.any(1), found, -1)
    return out.tolist()


def _as_bits(hashes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8) bytes of each 64-bit hash, and which hashes are real (not the -1 of an undecoded image)."""
    valid = np.asarray([h >= 0 for h in hashes], dtype=bool)
    packed = np.asarray([h if h >= 0 else 0 for h in hashes], dtype=np.uint64).reshape(-1, 1)
    return packed.view(np.uint8).reshape(len(hashes), 8), valid


# -- image splits ---------------------------------------------------------------------------------


def column_names(source: str, fmt: str) -> set[str]:
    """The column names of a table, read from its head only (a missing or unreadable file: none)."""
    try:
        fmt = format_of(source) if fmt == "auto" else fmt
        if fmt == "csv":
            return set(pd.read_csv(source, nrows=0).columns)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(source).names)
        return set(pd.read_json(source, lines=True, nrows=1).columns)
    except Exception:  # the text reader reports the file's fault in its own words
        return set()


class ImageSplit(Split):
    """A split of images: `frame` has `image` (paths or URLs), `label` and `row`."""

    modality = "image"
    input_column = "image"

    @property
    def inputs(self) -> list[str]:
        return self.frame["image"].tolist()

    @cached_property
    def digest(self) -> str:
        """The bytes of every image, in order, and the labels (renaming a file keeps it)."""
        labels = pd.util.hash_pandas_object(self.frame["label"], index=False).to_numpy().tobytes()
        return hashlib.sha256(digest(self.inputs).encode() + labels).hexdigest()[:16]


def image_splits(data, check_labels: bool = True) -> Splits:
    """The lifecycle's splits of an image dataset (load_image_splits), labels checked as for text
    unless `check_labels` is off (`graftline check` leaves unknown labels to the validation suite)."""
    frames = load_image_splits(data)
    given = {"train": data.train_path, "validation": data.validation_path, "test": data.test_path, **data.eval_sets}
    sources = {name: resolve_source(path or data.train_path) for name, path in given.items()}
    named = {name: ImageSplit(name, frame, sources[name]) for name, frame in frames.items()}
    extra = {name: named[name] for name in data.eval_sets}
    splits = Splits(named["train"], named["validation"], named["test"], extra=extra)
    if check_labels:
        require_known_labels(splits)
    return splits


def load_image_splits(data) -> dict[str, pd.DataFrame]:
    """train, validation, test and every evaluation set as image frames (read_images): given files or
    folders, else carved out of the training data with the same seeded stratified split as text."""

    def read(path: str) -> pd.DataFrame:
        return read_images(resolve_source(path), data.image_column, data.label_column)

    def carve(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        # The unit of the split is the distinct image file, as it is the distinct text for text data.
        kept, held = stratified_split(frame.rename(columns={"image": "text"}), share, seed, data.train_path)
        return kept.rename(columns={"text": "image"}), held.rename(columns={"text": "image"})

    train = read(data.train_path)
    if train["label"].nunique() < 2:
        raise DataError(f"{data.train_path}: needs at least two classes, found {train['label'].nunique()}")
    test = read(data.test_path) if data.test_path else None
    if test is None:
        train, test = carve(train, data.test_fraction, data.split_seed)
    validation = read(data.validation_path) if data.validation_path else None
    if validation is None:
        share = data.validation_fraction / (1 - (0 if data.test_path else data.test_fraction))
        train, validation = carve(train, share, data.split_seed + 1)
    sets = {"train": train, "validation": validation, "test": test}
    sets |= {name: read(path) for name, path in data.eval_sets.items()}
    return {name: frame.reset_index(drop=True) for name, frame in sets.items()}
