"""`graftline run` as a user types it: every bad input ends in one line, status 2, no registry change."""

import contextlib
import io

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from graftline.flows.cli.app import app
from graftline.flows.cli.lifecycle import build_params
from graftline.tasks.settings import DEMO_EVAL_SETS
from tests.conftest import toy_frame


def test_parameters_merge_config_options_and_set(tmp_path):
    config = tmp_path / "params.yaml"
    config.write_text("finetune:\n  epochs: 7\n  batch_size: 8\nregistry:\n  model_name: from-file\n")
    params = build_params(config, {"finetune.epochs": 2, "registry.model_name": None}, [], ["distill.alpha=0.3"])
    assert params.finetune.epochs == 2  # an option beats the file
    assert params.finetune.batch_size == 8  # the file's other values stay
    assert params.registry.model_name == "from-file"
    assert params.distill.alpha == 0.3
    assert params.data.eval_sets == DEMO_EVAL_SETS  # demo data keeps its second domain


def test_own_training_data_drops_the_demo_evaluation_set():
    params = build_params(None, {"data.train_path": "mine.csv"}, [], [])
    assert params.data.eval_sets == {}
    params = build_params(None, {"data.train_path": "mine.csv"}, ["other=theirs.csv"], [])
    assert params.data.eval_sets == {"other": "theirs.csv"}


@pytest.fixture
def files(tmp_path):
    """One file per bad input the issue names."""
    good = toy_frame(20)
    paths = {}
    paths["missing"] = tmp_path / "missing.csv"
    paths["format"] = tmp_path / "data.parquet"
    paths["format"].write_text("text,label\nnot,parquet\n")
    paths["columns"] = tmp_path / "columns.csv"
    good.rename(columns={"text": "body"}).to_csv(paths["columns"], index=False)
    paths["empty"] = tmp_path / "empty.csv"
    paths["empty"].write_text("text,label\n")
    paths["single"] = tmp_path / "single.csv"
    good.assign(label="good").drop_duplicates("text").to_csv(paths["single"], index=False)
    paths["train"] = tmp_path / "train.csv"
    good.to_csv(paths["train"], index=False)
    paths["unknown_labels"] = tmp_path / "test.csv"
    toy_frame(5, 3).assign(label=["good", "bad", "spam"] * 3 + ["good"]).to_csv(paths["unknown_labels"], index=False)
    return {k: str(v) for k, v in paths.items()}


# One case a line or two: it reads as the table it is.
# fmt: off
CASES = {
    "missing file": (["--train", "{missing}"], r"missing\.csv: file not found"),
    "unreadable format": (["--train", "{format}"], r"cannot read .*data\.parquet as parquet"),
    "missing columns": (["--train", "{columns}"], r"missing column\(s\) 'text'"),
    "empty dataset": (["--train", "{empty}"], r"the dataset is empty"),
    "single class": (["--train", "{single}"], r"at least 2 classes, found only 'good'"),
    "labels absent from train": (["--train", "{train}", "--test", "{unknown_labels}"],
                                 r"test: column_values_to_be_in_set\(label\) 3 of 10 rows fail, e.g. 'spam'"),
    "unknown backbone": (["--train", "{train}", "--backbone", "no-such-org/no-such-model"],
                         r"unknown backbone 'no-such-org/no-such-model'"),
    "missing unlabeled distillation file": (["--train", "{train}", "--set", "distill.unlabeled_paths=[{missing}]"],
                                            r"missing\.csv: file not found"),
    "unlabeled file without its text column": (["--train", "{train}", "--set", "distill.unlabeled_paths=[{columns}]"],
                                               r"columns\.csv: missing column\(s\) 'text'"),
    "invalid parameter": (["--train", "{train}", "--set", "finetune.epochs=0"],
                          r"invalid parameters: finetune.epochs: Input should be greater than or equal to 1"),
}
# fmt: on


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, files, prefect_harness, mlflow_store, unique_name):
    # The app is called in-process, as the console script calls it. Only sys.stderr is swapped
    # (not pytest's capsys/CliRunner streams, which close after each test while Prefect's log
    # handler keeps writing to them).
    args, pattern = CASES[case]
    args = [a.format(**files) for a in args]
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(stderr):
        app(["run", *args, "--model-name", unique_name, "--set", f"registry.experiment={unique_name}"])
    assert exited.value.code == 2
    last = stderr.getvalue().strip().splitlines()[-1]
    assert last.startswith("graftline: error: ")
    assert pd.Series([last]).str.contains(pattern).all(), last
    assert not MlflowClient().search_registered_models(f"name='{unique_name}'")
