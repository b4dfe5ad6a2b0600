"""Every text dataset of a datasets folder through graftline's front door, with the default settings.

For each dataset: the pre-flight checks and the validation suite with the default thresholds (what
`graftline check` runs, in process: which expectations fire and why), then `graftline run --epochs 1`
as a subprocess (a fresh process per dataset, as a user runs it). Prints one table: rows, what
validation found, the run's exit status (or its one-line error), teacher and student test accuracy
and macro-F1, and wall seconds. Splits a dataset ships are used as given; the others are carved.

    python bench/real_data.py [--data DIR] [--only trec sms_spam] [--check-only] [--set key=value ...]

`--set` is passed on to every run (default: distill.epochs=1 and export.enabled=false, so that the
sweep measures data handling and one epoch of transfer rather than export timings).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_option  # noqa: E402

# name -> the files of the dataset, relative to the datasets folder (as its index lists them)
PLANS: dict[str, dict[str, str]] = {
    **{
        f"amazon-{domain}": {
            "train": f"amazon_multidomain/{domain}/train.csv",
            "validation": f"amazon_multidomain/{domain}/dev.csv",
        }
        for domain in ("books", "dvd", "electronics", "kitchen")
    },
    "airline": {"train": "airline_reviews/train.csv", "validation": "airline_reviews/dev.csv"},
    "sst2": {"train": "sst2/train.csv", "validation": "sst2/dev.csv", "test": "sst2/test.csv"},
    "sst2-sentences": {
        "train": "sst2/train_sentence_level.csv",
        "validation": "sst2/dev.csv",
        "test": "sst2/test.csv",
    },
    "imdb": {"train": "imdb/train.csv", "test": "imdb/test.csv"},
    "yelp-1k": {"train": "yelp_polarity_1k/test.csv"},
    **{f"uci-{name}": {"train": f"uci_sentiment_sentences/{name}.csv"} for name in ("amazon_cells", "imdb", "yelp")},
    "movie-review": {"train": "movie_review_polarity/all.csv"},
    "customer-reviews": {"train": "customer_reviews/all.csv"},
    "tweeteval": {"train": "tweeteval_sentiment/dev.csv", "test": "tweeteval_sentiment/test.csv"},
    **{
        f"fpb-{agree}": {"train": f"financial_phrasebank/sentences_{agree}.csv"}
        for agree in ("50agree", "66agree", "75agree", "allagree")
    },
    "ag-news": {"train": "ag_news/train.csv", "test": "ag_news/test.csv"},
    "trec": {"train": "trec/train.csv", "test": "trec/test.csv"},
    "sms-spam": {"train": "sms_spam/all.csv"},
}
DEFAULT_SETS = ["distill.epochs=1", "export.enabled=false"]


def check(name: str, files: dict[str, Path], out: Path) -> dict:
    """The pre-flight checks and the validation suite with default thresholds, as `graftline check`."""
    from graftline.tasks import preflight
    from graftline.tasks.data.validate import validate_splits
    from graftline.tasks.errors import GraftlineError
    from graftline.tasks.settings import DataParams, DistillParams, FinetuneParams, SelectParams, ValidationParams

    data = DataParams(
        train_path=str(files["train"]),
        validation_path=str(files["validation"]) if "validation" in files else None,
        test_path=str(files["test"]) if "test" in files else None,
        eval_sets={},
    )
    try:
        checked = preflight.check(data, FinetuneParams(), SelectParams(), DistillParams())
    except GraftlineError as error:
        return {"preflight": str(error), "findings": [], "rows": None}
    report = validate_splits(checked.splits, ValidationParams(), out / name)
    rows = {s.name: len(s.frame) for s in (checked.splits.train, checked.splits.validation, checked.splits.test)}
    return {"preflight": None, "rows": rows, "findings": [f.line() for f in report.findings]}


def run(name: str, files: dict[str, Path], sets: list[str], home: Path) -> dict:
    """`graftline run --epochs 1` in a fresh process; its exit status, error line, scores and time."""
    command = [sys.executable, "-m", "graftline.flows.cli.app", "run", "--epochs", "1", "--model-name", f"bench-{name}"]
    for option in ("train", "validation", "test"):
        if option in files:
            command += [f"--{option}", str(files[option])]
    for assignment in ["registry.experiment=datasets", *sets]:
        command += ["--set", assignment]
    env = {**os.environ, "GRAFTLINE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    error = next((line for line in done.stderr.splitlines() if line.startswith("graftline: error:")), None)
    if done.returncode != 0 and error is None:
        error = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    scores = {}
    for role, key, value in re.findall(
        r"^\s+(teacher|student)\s+(test_accuracy|test_macro_f1)\s+([\d.]+)", done.stdout, re.M
    ):
        scores[f"{role}_{key.removeprefix('test_')}"] = float(value)
    return {"exit": done.returncode, "error": error, "seconds": round(seconds, 1), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "laid out as its README's index")
    parser.add_argument("--only", nargs="*", default=None, help="dataset names (default: all)")
    parser.add_argument("--check-only", action="store_true", help="checks and validation only, no runs")
    parser.add_argument("--set", dest="sets", action="append", default=None, help="passed on to every run")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "datasets.json")
    args = parser.parse_args()
    names = args.only or list(PLANS)
    unknown = sorted(set(names) - set(PLANS))
    if unknown:
        sys.exit(f"unknown dataset(s) {unknown}; known: {', '.join(PLANS)}")

    from graftline.tasks import environment

    environment.apply_defaults()
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="graftline-datasets-") as tmp:
        for name in names:
            files = {split: args.data / path for split, path in PLANS[name].items()}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                print(f"{name}: skipped, not found: {', '.join(missing)}", file=sys.stderr)
                continue
            result = {"files": PLANS[name], **check(name, files, Path(tmp))}
            if not args.check_only:
                result["run"] = run(name, files, args.sets if args.sets is not None else DEFAULT_SETS, Path(tmp))
            results[name] = result
            print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=1))
    print_table({n: results[n] for n in names if n in results})


def print_table(results: dict) -> None:
    print(
        "| dataset | train / validation / test rows | validation with default thresholds | run --epochs 1 | "
        "teacher acc / F1 | student acc / F1 | s |"
    )
    print("|---" * 7 + "|")
    for name, r in results.items():
        rows = " / ".join(str(n) for n in r["rows"].values()) if r["rows"] else "-"
        found = r["preflight"] or ("; ".join(r["findings"]) if r["findings"] else "passes")
        run = r.get("run") or {}
        status = "-" if not run else ("ok" if run["exit"] == 0 else f"exit {run['exit']}: {run['error']}")
        teacher = f"{run['teacher_accuracy']:.4f} / {run['teacher_macro_f1']:.4f}" if "teacher_accuracy" in run else "-"
        student = f"{run['student_accuracy']:.4f} / {run['student_macro_f1']:.4f}" if "student_accuracy" in run else "-"
        print(f"| {name} | {rows} | {found} | {status} | {teacher} | {student} | {run.get('seconds', '-')} |")


if __name__ == "__main__":
    main()
