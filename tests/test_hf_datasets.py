"""Hugging Face `datasets` as sources: save_to_disk folders, Hub-layout folders and Hub ids, through
the one reader (tasks/data/hf.py behind splits.read_frame) and the commands. Every dataset here is
built by `datasets` itself; nothing reaches the Hub (a Hub id's download is the one thing replaced,
by a local dataset, where the test is about what is recorded)."""

import json

import pytest

from graftline.tasks.data import hf
from graftline.tasks.data.splits import load_splits, read_frame
from graftline.tasks.errors import DataError
from graftline.tasks.settings import DataParams
from tests.conftest import toy_frame


def dataset_dict(**sizes):
    """A DatasetDict of toy reviews with a ClassLabel label, one split per keyword (rows per class)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"review": Value("string"), "label": ClassLabel(names=["bad", "good"])})
    splits = {}
    for offset, (name, n) in enumerate(sizes.items()):
        frame = toy_frame(n, seed=offset)
        frame["text"] = frame["text"] + f" {name}"  # no text in two splits
        splits[name] = Dataset.from_dict(
            {"review": frame["text"].tolist(), "label": [["bad", "good"].index(v) for v in frame["label"]]},
            features=features,
        )
    return DatasetDict(splits)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict written by save_to_disk: train, validation ("dev") and test splits."""
    folder = tmp_path_factory.mktemp("saved") / "reviews"
    dataset_dict(train=30, dev=5, test=6).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A folder laid out as a Hub dataset repository: two configs declared in its README."""
    folder = tmp_path_factory.mktemp("hub") / "reviews"
    for config, offset in (("books", 0), ("music", 7)):
        (folder / config).mkdir(parents=True)
        for split, n in (("train", 20), ("test", 5)):
            toy_frame(n, seed=offset + n).rename(columns={"label": "sentiment"}).to_csv(
                folder / config / f"{split}.csv", index=False
            )
    (folder / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(
            f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.csv\n"
            f"  - split: test\n    path: {c}/test.csv\n"
            for c in ("books", "music")
        )
        + "---\n# Toy reviews\n"
    )
    return folder


def test_a_saved_dataset_gives_its_own_splits_and_class_names(saved):
    splits = load_splits(DataParams(train_path=str(saved), text_column="review", eval_sets={}))
    assert (len(splits.train.frame), len(splits.validation.frame), len(splits.test.frame)) == (60, 10, 12)
    assert splits.validation.source == f"{saved}?split=dev" and splits.test.source == f"{saved}?split=test"
    assert splits.labels == ["bad", "good"]  # ClassLabel ids read as their names
    assert splits.validation.frame["text"].str.endswith(" dev").all()
    assert splits.train.fingerprint and splits.train.fingerprint != splits.test.fingerprint
    # a split named explicitly; a missing validation split is carved from the training rows
    alone = load_splits(DataParams(train_path=f"{saved}?split=test", text_column="review", eval_sets={}))
    assert sum(len(s.frame) for s in (alone.train, alone.validation, alone.test)) == 12


def test_a_hub_layout_folder_reads_the_config_asked_for(hub_folder):
    data = DataParams(train_path=str(hub_folder), text_column="text", label_column="sentiment", eval_sets={})
    for config in ("books", "music"):
        splits = load_splits(data.model_copy(update={"hf_config": config}))
        assert len(splits.test.frame) == 10 and splits.test.source == f"{hub_folder}?config={config}&split=test"
        assert len(splits.train.frame) + len(splits.validation.frame) == 40  # validation carved from train
    books = read_frame(f"{hub_folder}?config=books&split=test")
    assert books["text"].tolist() == load_splits(data.model_copy(update={"hf_config": "books"})).test.texts


@pytest.mark.parametrize(
    "source, message",
    [
        ("{saved}?split=nope", r"\?split=nope: no split 'nope'; the dataset has 'train', 'dev', 'test'$"),
        ("{saved}?config=x", "a folder written by save_to_disk has no configs"),
        ("{hub}?config=poetry", r"^cannot load .*: BuilderConfig 'poetry' not found"),
        ("{saved}?shard=1", "unknown option.s. shard; a dataset source takes"),
        ("hf://datasets/nobody/nothing", r"^cannot load hf://datasets/nobody/nothing: .*(offline|Offline)"),
        ("hf://datasets/a/b/c", "a Hub dataset is hf://datasets/OWNER/NAME"),
    ],
)
def test_a_bad_dataset_source_is_one_line(source, message, saved, hub_folder):
    with pytest.raises(DataError, match=message) as raised:
        read_frame(source.format(saved=saved, hub=hub_folder))
    assert "\n" not in str(raised.value)


def test_check_reads_a_saved_dataset_and_refuses_a_missing_column(saved, tmp_path):
    from tests.test_cli import run_cli

    code, stderr = run_cli(["check", "--train", str(saved), "--text-column", "review", "--set", "data.eval_sets={}",
                            "--out", str(tmp_path / "report")])  # fmt: skip
    assert code == 0, stderr
    assert stderr.startswith("checked in ") and "60 train / 10 validation / 12 test rows" in stderr
    code, stderr = run_cli(["check", "--train", str(saved), "--set", "data.eval_sets={}"])
    assert code == 2 and stderr.strip() == (
        f"graftline: error: {saved}: missing column(s) 'text'; found 'review', 'label'"
    )


def test_a_hub_dataset_is_recorded_with_its_id_split_revision_and_fingerprint(saved, mlflow_store, monkeypatch):
    """The Hub cannot be reached here: its download is replaced by the saved dataset."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from graftline.tasks.registry.tracking import DATASET_FINGERPRINT, log_datasets

    real = hf._load.__wrapped__

    def from_the_hub(location, on_hub, revision, config):
        return real(str(saved), False, None, None) if on_hub else real(location, on_hub, revision, config)

    monkeypatch.setattr(hf, "_load", from_the_hub)
    splits = load_splits(DataParams(train_path="hf://datasets/toy/reviews@v1.0", text_column="review", eval_sets={}))
    assert splits.validation.source == "hf://datasets/toy/reviews@v1.0?split=dev"
    with mlflow.start_run() as run:
        log_datasets(run.info.run_id, splits)
    found = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    inputs = {i.dataset.name: i for i in found}
    source = json.loads(inputs["validation"].dataset.source)
    assert inputs["validation"].dataset.source_type == "hugging_face"
    assert (source["path"], source["split"], source["revision"]) == ("toy/reviews", "dev", "v1.0")
    assert json.loads(inputs["train"].dataset.source)["split"] == "train"
    tags = {t.key: t.value for t in inputs["train"].tags}
    assert tags[DATASET_FINGERPRINT] == splits.train.fingerprint


def test_predict_reads_a_dataset_split_as_its_input(saved):
    """The serving commands' front door and reader take a dataset where they take a file."""
    from graftline.tasks.data.splits import peek_table
    from graftline.tasks.serve.predict import read_input

    peek_table(f"{saved}?split=test", "review")
    frame = read_input(f"{saved}?split=test", "review")
    assert len(frame) == 12 and set(frame["label"]) == {"bad", "good"}
    with pytest.raises(DataError, match="missing column"):
        peek_table(f"{saved}?split=test", "text")
