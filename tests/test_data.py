"""Reading datasets and splitting them: formats, stratification, and every bad input."""

import pandas as pd
import pytest

from graftline.tasks.data.splits import encode_labels, load_splits, read_table, read_texts, resolve_source
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
    assert list(table.columns) == ["text", "label", "row"]
    assert table["row"].tolist() == list(range(1, len(frame) + 1))  # where a report points
    assert table["text"].tolist() == frame["message"].tolist()
    assert set(table["label"]) == {"good", "bad"}


def load(train_path: str, **data):
    """The splits of `train_path` as the lifecycle reads them, with no extra evaluation sets."""
    return load_splits(DataParams(train_path=train_path, **{"eval_sets": {}, **data}))


def test_numeric_labels_become_names(tmp_path):
    path = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}).to_json(path, orient="records", lines=True)
    assert read_table(str(path), "text", "label")["label"].tolist() == ["0", "1", "0", "1"]
    mixed = tmp_path / "mixed.jsonl"  # numbers, numbers as text, floats (Parquet/JSON keep them), padding
    mixed.write_text(
        '{"text": 5, "label": 1}\n{"text": "b", "label": "1"}\n{"text": "c", "label": 1.0}\n'
        '{"text": "d", "label": " 2 "}\n'
    )
    table = read_table(str(mixed), "text", "label")
    assert table["label"].tolist() == ["1", "1", "1", "2"] and table["text"].tolist() == ["5", "b", "c", "d"]


def test_repeated_texts_stay_on_one_side_of_a_carved_split(tmp_path):
    frame = toy_frame(30)
    repeated = pd.concat([frame, frame.head(15), frame.tail(15)], ignore_index=True)  # 30 texts twice
    repeated.to_csv(tmp_path / "d.csv", index=False)
    splits = load(str(tmp_path / "d.csv"))
    train = set(splits.train.frame["text"])
    assert not train & set(splits.test.frame["text"]) and not train & set(splits.validation.frame["text"])
    assert sum(len(s.frame) for s in (splits.train, splits.validation, splits.test)) == len(repeated)


def test_carving_reads_as_two_stratified_splits_of_a_file_read_in_chunks(tmp_path, monkeypatch):
    """The file is parsed a few rows at a time and both held-out splits are drawn as row positions
    of the one frame: the same rows, in the same order, as splitting twice the frame read whole."""
    from graftline.tasks.data import splits as module

    frame = toy_frame(40)
    frame = pd.concat([frame, frame.head(8)], ignore_index=True)  # repeated texts
    frame.loc[3, "text"] = None  # and a missing one
    frame.to_csv(tmp_path / "d.csv", index=False)
    whole = read_table(str(tmp_path / "d.csv"), "text", "label")
    rest, test = module.stratified_split(whole, 0.2, 42, "d.csv")
    train, validation = module.stratified_split(rest, 0.1 / 0.8, 43, "d.csv")

    monkeypatch.setattr(module, "CSV_CHUNK_ROWS", 7)
    splits = load(str(tmp_path / "d.csv"), split_seed=42, test_fraction=0.2, validation_fraction=0.1)
    for expected, split in ((train, splits.train), (validation, splits.validation), (test, splits.test)):
        pd.testing.assert_frame_equal(split.frame, expected.reset_index(drop=True))
    assert splits.train.frame["row"].is_unique and len(splits.train.frame) > 30


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
    with pytest.raises(DataError, match="'b' have a single distinct text"):
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


def test_labels_the_model_never_learns_are_refused_when_reading(tmp_path):
    toy_frame(10).to_csv(tmp_path / "train.csv", index=False)
    toy_frame(3, 1).assign(label=["good", "bad", "spam", "spam", "good", "bad"]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t\.csv \(test\): label\(s\) 'spam' \(2 rows\) do not occur in the training"):
        load(str(tmp_path / "train.csv"), test_path=str(tmp_path / "t.csv"))


# Faults inside a file: each names the file and the row or line where it can.
# fmt: off
FILE_FAULTS = {
    "empty labels": ("d.csv", "text,label\na,x\nb,\nc,y\nd,\n",
                     r"d\.csv: 2 of 4 rows have no 'label' \(rows 2, 4\); label them or remove them"),
    "blank labels": ("d.csv", "text,label\na,x\nb,\"  \"\nc,y\n", r"1 of 3 rows have no 'label' \(rows 2\)"),
    "null labels in JSON": ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n',
                            r"d\.jsonl: 1 of 2 rows have no 'label' \(rows 2\)"),
    "broken JSON line": ("d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"\n',
                         r"d\.jsonl: line 3, column 27: not valid JSON \(Expecting ',' delimiter\)$"),
    "JSON line not an object": ("d.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n',
                                r"line 2: expected a JSON object, found list"),
    "key repeated in a JSON object": ("d.jsonl", '{"text": "a", "label": "x", "label": "y"}\n',
                                      r"d\.jsonl: line 1: key\(s\) 'label' appear more than once$"),
    "column name repeated": ("d.csv", "text,label,label\na,x,y\n",
                             r"d\.csv: column name\(s\) 'label' appear more than once"),
    "nested value": ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": {"body": "b"}, "label": "y"}\n',
                     r"d\.jsonl: row 2: column 'text' holds a dict, expected text"),
    "not UTF-8": ("d.csv", b"text,label\n\xff\xfe,x\n", r"d\.csv is not utf-8 text \(byte 0xff on line 2\)"),
    "ragged CSV": ("d.csv", "text,label\na,x\nb,y,z\n", r"cannot read .*d\.csv as csv: .*line 3"),
}
# fmt: on


@pytest.mark.parametrize("case", list(FILE_FAULTS))
def test_faults_inside_a_file_name_the_file_and_where(tmp_path, case):
    name, content, pattern = FILE_FAULTS[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=pattern):
        read_table(str(path), "text", "label")


def test_referenced_evaluation_sets_hold_no_rows_and_read_back_as_scored(tmp_path):
    """`tracking.copy_data: false`: the ingest run keeps a reference (URI, rows, digest); a promotion
    reads the files again, re-carving and redacting as the run did, and refuses changed files."""
    from graftline.tasks.data import pii
    from graftline.tasks.registry import evaluation_sets
    from graftline.tasks.settings import ValidationParams

    frame, other = toy_frame(20, 0), toy_frame(6, 1)
    other.loc[0, "text"] += " mail jane.roe@example.com"  # scored redacted: read back redacted
    frame.to_csv(tmp_path / "train.csv", index=False)
    other.to_csv(tmp_path / "other.csv", index=False)
    data = DataParams(train_path=str(tmp_path / "train.csv"), eval_sets={"other": str(tmp_path / "other.csv")})
    validation = ValidationParams(pii="redact")
    splits, _ = pii.redact_splits(load_splits(data), pii.Scanner())
    kept = tmp_path / "kept"
    kept.mkdir()

    evaluation_sets.keep(splits, data, validation, copy=False, folder=kept)
    assert [p.name for p in kept.iterdir()] == ["reference.json"]
    reference = (kept / "reference.json").read_text()
    assert not [text for text in splits.test.texts if text in reference]  # no row is in it
    back = evaluation_sets.load(kept, "run")
    assert list(back) == ["test", "other"]  # test (carved from train.csv with the run's seed) first
    assert [s.digest for s in back.values()] == [splits.test.digest, splits.extra["other"].digest]

    toy_frame(20, 3).to_csv(tmp_path / "train.csv", index=False)  # the file changed since
    with pytest.raises(evaluation_sets.EvaluationSetsError, match=r"evaluation set 'test' \(.*train.csv\) changed"):
        evaluation_sets.load(kept, "run")
    (tmp_path / "train.csv").unlink()
    with pytest.raises(evaluation_sets.EvaluationSetsError, match="cannot be read again: .*train.csv"):
        evaluation_sets.load(kept, "run")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_in_another_encoding_names_the_setting_and_reads_with_it(tmp_path, suffix):
    frame = toy_frame(20).assign(text=lambda f: f["text"] + " — café crème")  # a spreadsheet export's accents
    path = tmp_path / f"export{suffix}"
    text = (
        frame.to_csv(index=False)
        if suffix == ".csv"
        else frame.to_json(orient="records", lines=True, force_ascii=False)
    )
    path.write_bytes(text.replace("—", "-").encode("cp1252"))
    with pytest.raises(DataError, match=r"is not utf-8 text \(byte 0xe9 on line [12]\): give its encoding \(data"):
        read_table(str(path), "text", "label")
    splits = load_splits(DataParams(train_path=str(path), eval_sets={}, encoding="cp1252"))
    assert splits.train.frame["text"].str.endswith("café crème").all()
    assert read_texts(str(path), encoding="cp1252")[0].endswith("café crème")  # unlabeled files read alike
    with pytest.raises(ValueError, match="unknown text encoding 'klingon'"):
        DataParams(train_path=str(path), encoding="klingon")
