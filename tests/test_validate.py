"""Great Expectations suites: clean data passes; each kind of bad data is caught and counted."""

import json

import pandas as pd
import pytest

from graftline.tasks.data.splits import Split, Splits, load_splits
from graftline.tasks.data.validate import validate_splits
from graftline.tasks.settings import DataParams, ValidationParams
from tests.conftest import toy_frame


def splits_of(train, validation=None, test=None, **extra):
    return Splits(
        Split("train", train, "mem"),
        Split("validation", validation if validation is not None else toy_frame(5, 11), "mem"),
        Split("test", test if test is not None else toy_frame(5, 12), "mem"),
        {name: Split(name, frame, "mem") for name, frame in extra.items()},
    )


def test_the_demo_data_passes_and_docs_are_built(tmp_path):
    splits = load_splits(DataParams())  # the demo: electronics, with home goods as a second domain
    report = validate_splits(splits, ValidationParams(), tmp_path)
    assert report.success, report.summary()
    assert report.failures == []
    assert (tmp_path / "data_docs" / "index.html").is_file()
    results = json.loads((tmp_path / "gx_results.json").read_text())
    assert set(results) == {"train", "validation", "test", "home"}
    assert report.statistics["home_overlap_with_train"] == 0.0


def checks(report) -> dict[tuple[str, str], object]:
    """The findings by (split, check)."""
    return {(f.split, f.check): f for f in report.findings}


def test_blank_and_null_text_and_duplicates_are_reported_with_counts(tmp_path):
    train = toy_frame(20)
    train.loc[0, "text"] = "   "
    train.loc[1, "text"] = None
    train.loc[2:13, "text"] = "same text"  # 12 rows, 11 of them repeats
    report = validate_splits(splits_of(train), ValidationParams(), tmp_path)
    assert not report.success
    found = checks(report)
    assert found["train", "missing text"].failing == "1 of 40 rows"
    assert found["train", "blank text"].failing == "1 of 40 rows"
    repeated = found["train", "repeated texts"]
    assert (repeated.failing, repeated.threshold, repeated.observed) == ("11 of 40 rows", "<= 20%", "28.2%")
    assert repeated.relax == "validation.max_duplicate_fraction=0.29"  # 11 repeats of 39 non-missing texts
    assert repeated.examples[0] == "row 3: same text"


def test_a_missing_text_is_never_leakage_and_an_empty_train_leaks_nothing():
    """Leakage is read from text fingerprints: equal texts match, a missing text on both sides does not."""
    from graftline.tasks.data.validate import _present_hashes, _seen

    train = pd.Series(["a", None, "b", "b"], dtype="str")
    test = pd.Series([None, "b", "c", "a", "A"], dtype="str")
    assert _seen(test, _present_hashes(train)).tolist() == [False, True, False, True, False]
    assert _seen(test, _present_hashes(pd.Series([None], dtype="str"))).tolist() == [False] * 5


def test_leakage_and_length_bounds_say_what_passes(tmp_path):
    train = toy_frame(20)
    train.loc[4, "text"] = "long " * 40
    test = pd.concat([train.head(5), toy_frame(5, 12)], ignore_index=True)  # 5 of 15 rows leak
    report = validate_splits(splits_of(train, test=test), ValidationParams(max_text_chars=100), tmp_path)
    found = checks(report)
    leak = found["test", "leakage: texts also in train"]
    assert (leak.failing, leak.threshold, leak.observed) == ("5 of 15 rows", "<= 1%", "33.3%")
    assert leak.relax.startswith("validation.max_overlap_fraction=0.34")
    length = found["train", "text length"]
    assert (length.threshold, length.observed) == ("<= 100 chars", "longest 200 chars (row 5)")
    assert length.relax == "validation.max_text_chars=200"
    assert report.statistics["test_overlap_with_train"] == pytest.approx(5 / 15)
    passing = ValidationParams(max_text_chars=200, max_overlap_fraction=0.34)  # what the findings suggest
    assert validate_splits(splits_of(train, test=test), passing, tmp_path).success


def test_the_table_and_summary_hold_no_row_text_and_the_report_file_does(tmp_path):
    train = toy_frame(20)
    test = pd.concat([train.head(3), toy_frame(5, 12)], ignore_index=True)
    report = validate_splits(splits_of(train, test=test), ValidationParams(), tmp_path)
    leaked = train.loc[0, "text"]
    assert report.summary() == "data validation failed: 1 expectation on 1 split; see the report"
    table = report.table().splitlines()
    assert table[0].split() == ["split", "check", "failing", "rows", "threshold", "observed", "relax", "with"]
    assert table[1].split()[:6] == ["test", "leakage:", "texts", "also", "in", "train"]
    assert leaked not in report.table() + report.summary()
    written = (tmp_path / "report.md").read_text()
    assert f"row 1: {leaked}" in written and "| test | leakage: texts also in train | 3 of 13 rows |" in written
    assert leaked not in report.markdown(examples=False)


def test_class_balance_and_minimum_examples(tmp_path):
    train = pd.concat([toy_frame(30).query("label == 'good'"), toy_frame(30).query("label == 'bad'").head(3)])
    report = validate_splits(splits_of(train), ValidationParams(min_examples_per_class=5, max_class_ratio=5), tmp_path)
    balance = checks(report)["train", "class balance"]
    assert balance.observed == "'bad' has 3 rows; largest/smallest 10.0"
    assert balance.relax == "validation.min_examples_per_class=3 and validation.max_class_ratio=10"
    loose = validate_splits(splits_of(train), ValidationParams(min_examples_per_class=3, max_class_ratio=10), tmp_path)
    assert ("train", "class balance") not in checks(loose)


@pytest.mark.parametrize(
    "labels, fault",
    [
        (["positive", "negative", "0", "1", "2"], "numbers '0', '1', '2'; words 'negative', 'positive'"),
        (["positive", "Positive", "negative"], "same but for case 'Positive', 'positive'"),
    ],
)
def test_a_label_column_with_two_vocabularies_fails(tmp_path, labels, fault):
    train = pd.DataFrame({"text": [f"text number {i}" for i in range(10 * len(labels))], "label": labels * 10})
    nothing = train.head(0)
    report = validate_splits(splits_of(train, validation=nothing, test=nothing), ValidationParams(), tmp_path)
    assert checks(report)["train", "label vocabulary"].observed == fault


def test_one_vocabulary_passes_whatever_it_is():
    from graftline.tasks.data.validate import vocabulary_faults

    assert vocabulary_faults(["0", "1", "2"]) == {} == vocabulary_faults(["World", "Sports", "Sci/Tech"])
    assert vocabulary_faults(["1 star", "2 stars"]) == {}
