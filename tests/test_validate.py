"""Great Expectations suites: clean data passes; each kind of bad data is caught and counted."""

import json

import pandas as pd
import pytest

from graftline.tasks.data import Split, Splits, load_splits
from graftline.tasks.settings import DataParams, ValidationParams
from graftline.tasks.validate import validate_splits
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


def test_blank_and_null_text_and_duplicates_are_reported_with_counts(tmp_path):
    train = toy_frame(20)
    train.loc[0, "text"] = "   "
    train.loc[1, "text"] = None
    train.loc[2:9, "text"] = "same text"
    report = validate_splits(splits_of(train), ValidationParams(), tmp_path)
    assert not report.success
    text = report.summary()
    assert "train: column_values_to_not_be_null(text) 1 of 40 rows fail" in text
    assert "train: column_values_to_not_match_regex(text) 1 of" in text
    assert "train: column_proportion_of_unique_values_to_be_between(text) observed" in text


def test_leakage_unknown_labels_and_length_bounds(tmp_path):
    train = toy_frame(20)
    test = pd.concat([train.head(5), toy_frame(5, 12)], ignore_index=True)  # 5 of 15 rows leak
    test.loc[len(test) - 1, "label"] = "surprise"
    report = validate_splits(splits_of(train, test=test), ValidationParams(max_text_chars=10), tmp_path)
    text = report.summary()
    assert "test: column_values_to_be_in_set(seen_in_train) 5 of 15 rows fail" in text
    assert "test: column_values_to_be_in_set(label) 1 of 15 rows fail, e.g. 'surprise'" in text
    assert "train: column_value_lengths_to_be_between(text)" in text
    assert report.statistics["test_overlap_with_train"] == pytest.approx(5 / 15)


def test_class_balance_and_minimum_examples(tmp_path):
    train = pd.concat([toy_frame(30).query("label == 'good'"), toy_frame(30).query("label == 'bad'").head(3)])
    report = validate_splits(splits_of(train), ValidationParams(min_examples_per_class=5, max_class_ratio=5), tmp_path)
    failure = next(f for f in report.failures if "class_counts_to_be_balanced" in f)
    assert "'good': 30" in failure and "'bad': 3" in failure and "'ratio': 10.0" in failure
    loose = validate_splits(splits_of(train), ValidationParams(min_examples_per_class=3, max_class_ratio=10), tmp_path)
    assert not any("balanced" in f for f in loose.failures)
