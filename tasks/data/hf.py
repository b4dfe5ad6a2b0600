"""Hugging Face `datasets` as a data source, beside files: every door that reads a table reads these.

Three kinds of source, one grammar (`?config=` and `?split=` are optional, either order):

    hf://datasets/OWNER/NAME[@REVISION][?config=CONFIG][&split=SPLIT]   a Hub dataset (online, or cached)
    FOLDER[?split=SPLIT]        a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`
    FOLDER[?config=...&split=...]   a local folder laid out as a Hub dataset repository: data files
                                (top level or data/) and optionally a README.md whose YAML lists configs

A path inside a Hub repository that ends in a file suffix (`hf://datasets/OWNER/NAME/data/train.csv`)
is a file, read by fsspec like any other URL. `data.hf_config` gives the config of every dataset
source of a run that names none.

The data are loaded by `datasets` itself (Arrow, memory-mapped; the Hub's cache and revisions), so
what the library knows about formats, configs and data files applies unchanged. Class labels
(`ClassLabel` features) are read as their names, and -1 (the Hub's "no label") as a missing label.
Without a split, a source means its `train` split (or its only one); `splits.load_splits` takes the
validation and test splits from the training source when they are not given.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pandas as pd

from graftline.tasks.errors import DataError

HUB_PREFIX = "hf://datasets/"
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".pq", ".arrow")
VALIDATION_NAMES = ("validation", "valid", "dev", "val")  # what datasets call their validation split
OPTIONS = ("config", "split")


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset is and which part of it is meant."""

    location: str  # a Hub id (OWNER/NAME) or a local folder
    on_hub: bool
    revision: str | None = None
    config: str | None = None
    split: str | None = None

    def uri(self) -> str:
        """The source as a user writes it: what runs record and reports name."""
        base = f"{HUB_PREFIX}{self.location}" + (f"@{self.revision}" if self.revision else "")
        options = {k: v for k, v in (("config", self.config), ("split", self.split)) if v}
        return base + (f"?{urlencode(options)}" if options else "")


def parse(source: str) -> DatasetSource | None:
    """The dataset `source` names, or None for a file (or anything else `splits` reads)."""
    base, _, query = source.partition("?")
    if base.startswith(HUB_PREFIX):
        repo = base.removeprefix(HUB_PREFIX).rstrip("/")
        if repo.lower().endswith(TABLE_SUFFIXES):
            return None  # a file inside a Hub repository: fsspec reads it
        name, _, revision = repo.partition("@")
        if name.count("/") > 1 or not name:
            raise DataError(f"{source}: a Hub dataset is hf://datasets/OWNER/NAME[@REVISION]")
        return DatasetSource(name, True, revision or None, **_options(source, query))
    if "://" in base or not is_dataset_folder(Path(base)):
        return None
    return DatasetSource(str(Path(base)), False, None, **_options(source, query))


def _options(source: str, query: str) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DataError(
            f"{source}: unknown option(s) {', '.join(unknown)}; a dataset source takes ?config= and ?split="
        )
    blank = [k for k, v in options.items() if not v.strip()]
    if blank:
        raise DataError(f"{source}: option {blank[0]} is empty")
    return options


def is_dataset_folder(folder: Path) -> bool:
    """A folder `datasets` reads: written by save_to_disk, or laid out as a Hub dataset repository
    (a dataset card listing configs, or table files at the top level or under data/)."""
    if not folder.is_dir():
        return False
    if any((folder / marker).is_file() for marker in SAVED_MARKERS):
        return True
    card = folder / "README.md"
    if card.is_file() and "\nconfigs:" in card.read_text(encoding="utf-8", errors="replace"):
        return True
    tables = [p for where in (folder, folder / "data") if where.is_dir() for p in where.iterdir()]
    return any(p.is_file() and p.name.lower().endswith(TABLE_SUFFIXES) for p in tables)


def with_config(source: str, config: str | None) -> str:
    """`source` with `config` as its config when it is a dataset source that names none."""
    found = parse(source) if config else None
    if found is None or found.config:
        return source
    return _uri(found, config=config)


def with_split(source: str, split: str) -> str:
    """The same dataset's `split`."""
    return _uri(parse(source), split=split)


def _uri(found: DatasetSource, **changes) -> str:
    changed = replace(found, **changes)
    if changed.on_hub:
        return changed.uri()
    options = {k: v for k, v in (("config", changed.config), ("split", changed.split)) if v}
    return changed.location + (f"?{urlencode(options)}" if options else "")


def split_names(source: str) -> list[str]:
    """The splits of the dataset `source` names (in the order the dataset lists them)."""
    found = parse(source)
    return list(_load(found.location, found.on_hub, found.revision, found.config))


def named_splits(source: str) -> dict[str, str]:
    """For a training source without a split: the sources of its validation and test splits, where
    the dataset has them (`validation`, or `valid`, `dev`, `val`; `test`)."""
    found = parse(source)
    if found is None or found.split:
        return {}
    names = split_names(source)
    out = {}
    validation = next((n for n in VALIDATION_NAMES if n in names), None)
    if validation:
        out["validation"] = with_split(source, validation)
    if "test" in names:
        out["test"] = with_split(source, "test")
    return out


def read(source: str, rows: int | None = None) -> pd.DataFrame:
    """Every column of one split, as a frame (class labels as names); the first `rows` with `rows`."""
    dataset = load_split(source)
    if rows is not None:
        dataset = dataset.select(range(min(rows, len(dataset))))
    import datasets
    import numpy as np

    frame = dataset.to_pandas()
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):  # ids -> names; -1 (or anything else unnamed): missing
            names, ids = np.asarray([*feature.names, None], dtype=object), frame[column].to_numpy()
            frame[column] = names[np.where((ids >= 0) & (ids < len(feature.names)), ids, len(feature.names))]
    return frame


def fingerprint(source: str) -> str | None:
    """The `datasets` fingerprint of the split `source` names (which version of the data was read);
    None for a source that is not a dataset."""
    return getattr(load_split(source), "_fingerprint", None) if parse(source) is not None else None


def recorded_source(source: str):
    """What MLflow records as the source of a split read from `source`: a Hub dataset as MLflow's own
    Hugging Face source (id, config, split, revision: `mlflow.data` can load it back); else None."""
    found = parse(source)
    if found is None or not found.on_hub:
        return None
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    split = split_name(source)
    return HuggingFaceDatasetSource(found.location, found.config, split=split, revision=found.revision)


def load_split(source: str):
    """The `datasets.Dataset` of the split `source` names; a fault is one line naming the source."""
    found = parse(source)
    return _load(found.location, found.on_hub, found.revision, found.config)[split_name(source)]


def split_name(source: str) -> str:
    """The split `source` means: the one it names, else `train`, else the dataset's only split."""
    found = parse(source)
    names = list(_load(found.location, found.on_hub, found.revision, found.config))
    split = found.split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
    if split not in names:
        wanted = f"split {found.split!r}" if found.split else "split named (add ?split=NAME)"
        raise DataError(f"{source}: no {wanted}; the dataset has {', '.join(map(repr, names))}")
    return split


@functools.lru_cache(maxsize=8)  # one run reads the train, validation and test splits of one dataset
def _load(location: str, on_hub: bool, revision: str | None, config: str | None) -> dict:
    import datasets

    shown = f"{HUB_PREFIX}{location}" if on_hub else location
    datasets.disable_progress_bars()
    try:
        if not on_hub and any((Path(location) / marker).is_file() for marker in SAVED_MARKERS):
            if config:
                raise DataError(f"{shown}: a folder written by save_to_disk has no configs (drop config={config})")
            loaded = datasets.load_from_disk(location)
        else:
            loaded = datasets.load_dataset(location, name=config, revision=revision)
    except DataError:
        raise
    except Exception as exc:  # datasets raises a wide family: missing configs, offline, bad files
        raise DataError(f"cannot load {shown}: {_first_line(exc)}") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
