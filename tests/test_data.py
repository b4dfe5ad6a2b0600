"""Reading datasets and splitting them: formats, stratification, and every bad input."""

import pandas as pd
import pytest

from graftline.tasks.data import encode_labels, load_splits, read_table, resolve_source
from graftline.tasks.errors import DataError
from graftline.tasks.settings import DataParams
from tests.conftest import toy_frame


@pytest.fixture
def frame():
    return toy_frame(30).rename(columns={"text": "message", "label": "team"})


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_reads_every_format_with_user_column_names(tmp_path, frame, suffix):
    path = tmp_path / f"data.{suffix}"
    {
        "csv": lambda: frame.to_csv(path, index=False),
        "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        "parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    table = read_table(str(path), "message", "team")
    assert list(table.columns) == ["text", "label"]
    assert table["text"].tolist() == frame["message"].tolist()
    assert set(table["label"]) == {"good", "bad"}


def load(train_path: str, **data):
    """The splits of `train_path` as the lifecycle reads them, with no extra evaluation sets."""
    return load_splits(DataParams(train_path=train_path, **{"eval_sets": {}, **data}))


def test_numeric_labels_become_names(tmp_path):
    path = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}).to_json(path, orient="records", lines=True)
    assert read_table(str(path), "text", "label")["label"].tolist() == ["0", "1", "0", "1"]


def test_seeded_stratified_split_is_reproducible_and_keeps_class_shares(tmp_path, frame):
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    first = load(str(path), text_column="message", label_column="team", split_seed=7)
    second = load(str(path), text_column="message", label_column="team", split_seed=7)
    other = load(str(path), text_column="message", label_column="team", split_seed=8)
    assert first.digest == second.digest != other.digest
    sizes = [len(s.frame) for s in (first.train, first.validation, first.test)]
    assert sum(sizes) == len(frame) and sizes == [42, 6, 12]
    for split in (first.train, first.validation, first.test):
        counts = split.frame["label"].value_counts()
        assert counts["good"] == counts["bad"]  # 50/50 in, 50/50 out
    all_texts = pd.concat([s.frame["text"] for s in (first.train, first.validation, first.test)])
    assert all_texts.is_unique  # a row lands in exactly one split


def test_given_splits_and_extra_sets_are_used_as_is(tmp_path):
    for name, seed in (("train", 0), ("val", 1), ("test", 2), ("other", 3)):
        toy_frame(10, seed).to_csv(tmp_path / f"{name}.csv", index=False)
    splits = load(
        str(tmp_path / "train.csv"),
        validation_path=str(tmp_path / "val.csv"),
        test_path=str(tmp_path / "test.csv"),
        eval_sets={"other": str(tmp_path / "other.csv")},
    )
    assert [len(s.frame) for s in (splits.train, splits.validation, splits.test)] == [20, 20, 20]
    assert list(splits.evaluation_sets()) == ["test", "other"]
    assert splits.labels == ["bad", "good"]


def test_demo_sources_resolve_to_the_embedded_files():
    path = resolve_source("demo:electronics")
    table = read_table(path, "text", "label")
    assert len(table) >= 300 and table["label"].nunique() == 4
    assert len(read_table(resolve_source("demo:home"), "text", "label")) >= 300
    with pytest.raises(DataError, match="no such demo dataset"):
        resolve_source("demo:nope")


# Bad input: each gets one line naming the file and the problem.


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load(str(tmp_path / "nope.csv"))


def test_unknown_format(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unknown file format"):
        load(str(path))


def test_unreadable_file(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("this is not parquet")
    with pytest.raises(DataError, match=r"cannot read .*data\.parquet as parquet"):
        load(str(path))


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"body": ["a", "b"], "label": ["x", "y"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) 'text'; found 'body', 'label'"):
        load(str(path))


def test_empty_dataset(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="the dataset is empty"):
        load(str(path))


def test_single_class(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["only"] * 10}).to_csv(path, index=False)
    with pytest.raises(DataError, match="at least 2 classes, found only 'only'"):
        load(str(path))


def test_class_with_one_row_cannot_be_stratified(tmp_path):
    path = tmp_path / "d.csv"
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(11)], "label": ["a"] * 10 + ["b"]})
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="'b' have a single row"):
        load(str(path))


def test_labels_unknown_to_the_model_are_named():
    with pytest.raises(DataError, match=r"test: label\(s\) 'spam' do not occur in the training labels"):
        encode_labels(pd.Series(["ham", "spam"]), ["eggs", "ham"], "test")


def test_fsspec_urls_are_read_like_paths(frame):
    import fsspec

    with fsspec.open("memory://graftline-test/data.csv", "w") as handle:
        frame.to_csv(handle, index=False)
    splits = load("memory://graftline-test/data.csv", text_column="message", label_column="team")
    assert len(splits.train.frame) + len(splits.validation.frame) + len(splits.test.frame) == len(frame)
    with pytest.raises(DataError, match="memory://graftline-test/nope.csv: file not found"):
        load("memory://graftline-test/nope.csv")
