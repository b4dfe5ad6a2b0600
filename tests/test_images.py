"""Image datasets: both layouts, the bytes digest, and the metadata validation will check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from graftline.tasks.data import images
from graftline.tasks.errors import DataError


def _picture(path: Path, seed: int, size=(48, 32), mode="RGB") -> Path:
    """A smooth random picture (blocks of colour, so resizing keeps its look)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.Resampling.BILINEAR).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    for i in range(3):
        _picture(tmp_path / "set" / "ants" / f"a{i}.png", seed=i)
        _picture(tmp_path / "set" / "bees" / f"b{i}.jpg", seed=10 + i)
    (tmp_path / "set" / "bees" / "notes.txt").write_text("not an image")
    return tmp_path / "set"


def test_a_folder_per_class_is_read_with_its_labels(folder):
    frame = images.read_images(str(folder))
    assert frame["label"].tolist() == ["ants"] * 3 + ["bees"] * 3
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["image"])
    assert frame["row"].tolist() == list(range(1, 7))


def test_a_table_of_relative_paths_is_read_against_its_own_folder(folder, tmp_path):
    table = folder / "labels.csv"
    pd.DataFrame({"path": ["ants/a0.png", "bees/b1.jpg"], "kind": ["ants", "bees"]}).to_csv(table, index=False)
    frame = images.read_images(str(table), image_column="path", label_column="kind")
    assert frame["image"].tolist() == [str(folder / "ants" / "a0.png"), str(folder / "bees" / "b1.jpg")]
    assert frame["label"].tolist() == ["ants", "bees"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "bees").mkdir(parents=True), "empty class folder"),
        (lambda d: d.mkdir(parents=True), "no class subfolders"),
    ],
)
def test_a_folder_without_images_is_refused_naming_it(tmp_path, make, message):
    root = tmp_path / "set"
    make(root)
    with pytest.raises(DataError, match=message):
        images.read_images(str(root))


def test_a_table_without_its_image_column_or_paths_is_refused(tmp_path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"file": ["a.png"], "label": ["x"]}).to_csv(table, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) 'image'; found 'file', 'label'"):
        images.read_images(str(table))
    pd.DataFrame({"image": ["a.png", ""], "label": ["x", "y"]}).to_csv(table, index=False)
    with pytest.raises(DataError, match=r"row\(s\) 2 have no image path"):
        images.read_images(str(table))
    with pytest.raises(DataError, match="image file not found"):
        images.digest([str(tmp_path / "nothing.png")])


def test_the_digest_follows_the_bytes_not_the_names(folder, tmp_path):
    paths = images.read_images(str(folder))["image"].tolist()
    before = images.digest(paths)
    renamed = Path(paths[0]).rename(Path(paths[0]).with_name("renamed.png"))
    assert images.digest([str(renamed), *paths[1:]]) == before
    _picture(renamed, seed=99)
    assert images.digest([str(renamed), *paths[1:]]) != before


def test_the_profile_finds_broken_tiny_exact_and_near_duplicate_images(folder, tmp_path):
    from PIL import Image

    paths = images.read_images(str(folder))["image"].tolist()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    tiny = _picture(tmp_path / "tiny.png", seed=5, size=(1, 1), mode="L")
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(paths[0]).read_bytes())
    resized = tmp_path / "resized.jpg"
    Image.open(paths[0]).resize((96, 64)).save(resized, quality=85)  # the same picture, re-encoded bigger
    meta = images.profile([*paths, str(broken), str(tiny), str(copy), str(resized)])
    assert meta["decodes"].tolist() == [True] * 6 + [False, True, True, True]
    assert "UnidentifiedImageError" in meta.loc[6, "error"]
    assert (meta.loc[7, ["width", "height", "channels"]] == [1, 1, 1]).all()
    assert meta.loc[6, ["width", "height", "channels"]].isna().all()  # undecodable: no size, not size 0
    assert meta.loc[0, ["width", "height", "channels"]].tolist() == [48, 32, 3]
    assert meta.loc[8, "sha256"] == meta.loc[0, "sha256"]  # exact duplicate
    near = images.near_duplicate_of(meta["dhash"].tolist())
    assert near[9] == 0 and near[8] == 0  # the re-encoded copy and the byte copy both point at the first
    assert near[6] == -1 and all(n == -1 for n in near[1:6])  # distinct pictures and the broken file: none
    across = images.near_duplicate_of(meta["dhash"].tolist()[8:], others=meta["dhash"].tolist()[:6])
    assert across == [0, 0]  # leakage: both copies are found among the "training" images


def _image_splits(root: Path) -> dict[str, Path]:
    """A clean train/test pair of folders: 6 distinct pictures per class in train, 2 in test."""
    for c, label in enumerate(("ants", "bees")):
        for i in range(6):
            _picture(root / "train" / label / f"{label}{i}.png", seed=100 * c + i)
        for i in range(2):
            _picture(root / "test" / label / f"{label}{i}.png", seed=100 * c + 50 + i)
    return {"train": root / "train", "test": root / "test"}


def _validate(folders: dict[str, Path], tmp_path: Path, **settings):
    from graftline.tasks.data.image_validation import validate_images
    from graftline.tasks.settings import ValidationParams

    frames = {name: images.read_images(str(folder)) for name, folder in folders.items()}
    return validate_images(frames, ValidationParams(**settings), tmp_path / "report")


def test_a_clean_image_set_passes(tmp_path):
    report = _validate(_image_splits(tmp_path / "set"), tmp_path)
    assert report.success, report.table()
    assert report.statistics["test_overlap_with_train"] == 0.0 and (tmp_path / "report" / "report.md").is_file()


def test_broken_tiny_and_leaked_images_are_each_a_finding_naming_the_files(tmp_path):
    folders = _image_splits(tmp_path / "set")
    (folders["train"] / "ants" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    _picture(folders["train"] / "bees" / "tiny.png", seed=7, size=(1, 1))
    leaked = folders["test"] / "bees" / "leaked.png"
    leaked.write_bytes((folders["train"] / "ants" / "ants0.png").read_bytes())
    report = _validate(folders, tmp_path, min_examples_per_class=2)
    checks = {(f.split, f.check): f for f in report.findings}
    assert set(checks) == {
        ("train", "undecodable image"),
        ("train", "width out of bounds"),
        ("train", "height out of bounds"),
        ("test", "leakage from train"),
    }, report.table()
    assert "broken.jpg" in checks["train", "undecodable image"].examples[0]
    assert "tiny.png" in checks["train", "width out of bounds"].examples[0]
    assert checks["test", "leakage from train"].failing == "1 of 5 images"
    assert "leaked.png" in checks["test", "leakage from train"].examples[0]
    assert all("\n" not in f.line() for f in report.findings)
    assert report.summary() == "data validation failed: 4 expectations on 2 splits; see the report"


def test_near_duplicates_within_a_split_count_against_the_duplicate_share(tmp_path):
    from PIL import Image

    folders = _image_splits(tmp_path / "set")
    for i in range(3):  # half the ants again, each re-encoded at another size
        original = folders["train"] / "ants" / f"ants{i}.png"
        Image.open(original).resize((96, 64)).save(original.with_name(f"again{i}.jpg"), quality=80)
    report = _validate(folders, tmp_path, max_duplicate_fraction=0.1)
    [finding] = report.findings
    assert (finding.split, finding.check, finding.failing) == ("train", "duplicate images", "3 of 15 images")
    assert _validate(folders, tmp_path, max_duplicate_fraction=0.25).success


def test_graftline_check_validates_image_folders_and_run_refuses_a_text_backbone_first(tmp_path):
    from typer.testing import CliRunner

    from graftline.flows.cli.app import app

    folders = _image_splits(tmp_path / "set")
    runner = CliRunner()
    few = ["--set", "validation.min_examples_per_class=2"]  # 12 pictures, carved three ways
    done = runner.invoke(app, ["check", "--train", str(folders["train"]), "--out", str(tmp_path / "ok"), *few])
    assert done.exit_code == 0, done.output
    assert "image data: train 8, validation 2, test 2 images, 2 classes" in done.output  # carved, stratified
    assert "data validation passed" in done.output
    (folders["train"] / "ants" / "broken.jpg").write_bytes(b"not an image")
    failed = runner.invoke(
        app,
        [
            "check",
            "--train",
            str(folders["train"]),
            "--test",
            str(folders["test"]),
            "--out",
            str(tmp_path / "no"),
            *few,
        ],
    )
    assert failed.exit_code == 2
    assert "graftline: error: data validation failed: 1 expectation on 1 split; see the report" in failed.output
    assert "undecodable image" in failed.output and "broken.jpg" in (tmp_path / "no" / "report.md").read_text()
    refused = runner.invoke(app, ["run", "--train", str(folders["train"]), "--backbone", "minilm-l6"])
    assert refused.exit_code == 2  # before any server starts: the backbone cannot read images
    assert "backbone 'minilm-l6' is a text backbone; image data needs an image one" in refused.output
