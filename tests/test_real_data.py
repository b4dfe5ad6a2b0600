"""The default validation thresholds against real public datasets: the development datasets next to
the repository, or the folder in GRAFTLINE_DATA. Each case is skipped when its files are absent.
(bench/real_data.py runs every dataset of the index through `graftline run`; these are the cases
that once failed by default, and the one real leak.)"""

import os
from pathlib import Path

import pytest

from graftline.tasks import preflight
from graftline.tasks.data.validate import validate_splits
from graftline.tasks.settings import DataParams, DistillParams, FinetuneParams, SelectParams, ValidationParams

DATA = Path(os.environ.get("GRAFTLINE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

PII = "validation.pii=redact"  # what a personal-data finding suggests first
# dataset -> (its files, the findings expected with the default thresholds). Real texts carry
# personal data: links and e-mail addresses in reviews, the phone numbers of spam.
CASES = {
    "amazon books: reviews up to 21 169 characters": (
        {"train_path": "amazon_multidomain/books/train.csv", "validation_path": "amazon_multidomain/books/dev.csv"},
        {
            ("train", "personal data"): ("6 of 1359 rows", "4 url, 1 phone, 1 email", PII),
            ("validation", "personal data"): ("1 of 300 rows", "1 email, 1 url", PII),
            ("test", "personal data"): ("4 of 341 rows", "4 url", PII),
        },
    ),
    "sms spam: 7% repeated messages, carved": (
        {"train_path": "sms_spam/all.csv"},
        {
            ("train", "personal data"): ("330 of 3882 rows", "273 phone, 76 url, 6 email", PII),
            ("validation", "personal data"): ("50 of 568 rows", "34 phone, 18 url", PII),
            ("test", "personal data"): ("113 of 1124 rows", "95 phone, 21 url", PII),
        },
    ),
    "trec: 9 of 500 test questions verbatim in train": (
        {"train_path": "trec/train.csv", "test_path": "trec/test.csv"},
        {
            ("test", "leakage: texts also in train"): ("9 of 500 rows", "1.8%", "validation.max_overlap_fraction=0.02"),
            ("train", "personal data"): ("2 of 4907 rows", "2 url", PII),
        },
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_default_thresholds_on_real_data(case, tmp_path):
    files, expected = CASES[case]
    paths = {key: DATA / name for key, name in files.items()}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip(f"real datasets not found under {DATA}")
    data = DataParams(**{k: str(p) for k, p in paths.items()}, eval_sets={})
    checked = preflight.check(data, FinetuneParams(), SelectParams(), DistillParams())
    report = validate_splits(checked.splits, ValidationParams(), tmp_path)
    found = {(f.split, f.check): (f.failing, f.observed, f.relax.split()[0]) for f in report.findings}
    assert found == expected, report.table()


def test_the_ants_and_bees_images_pass_the_image_checks(tmp_path):
    """397 real photographs (folders per class, train and val): they decode, are large enough, hold no
    duplicates and leak nothing from train into val."""
    from graftline.tasks.data import images
    from graftline.tasks.data.image_validation import validate_images

    root = DATA / "hymenoptera_ants_bees"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    frames = {"train": images.read_images(str(root / "train")), "test": images.read_images(str(root / "val"))}
    report = validate_images(frames, ValidationParams(), tmp_path)
    assert report.success, report.table()
    assert report.statistics["train_rows"] == 244 and report.statistics["test_rows"] == 153
