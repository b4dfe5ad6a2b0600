"""Does transferability-based selection pick the backbone that fine-tunes best, and how much faster?

For each task of the datasets folder (--data DIR, else $GRAFTLINE_DATA, else the development datasets
next to the repository): score every text candidate with LogME, H-score and kNN on a
stratified sample of the training data (graftline's selection step), then brute force: fine-tune
every candidate with the same budget (same rows, epochs, batch size, learning rate, max length)
and measure test accuracy. Reports per task Kendall's tau between each score and the fine-tuned
accuracy, whether the top-ranked backbone was the best (or within 0.5 points of it), and the wall
time of selection against brute force.

    .venv/bin/python bench/selection.py                     # all four tasks, ~30-40 min on 2 CPU cores
    .venv/bin/python bench/selection.py --tasks sst2 trec   # a subset
    .venv/bin/python bench/selection.py --data DIR          # the datasets from another folder
Results also go to bench/results/selection.json (tasks run separately accumulate there, and the
table covers all of them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import MEASURED_WITH, add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

import pandas as pd  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from graftline.tasks.data.splits import Split, Splits, read_table, stratified_split  # noqa: E402
from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.evaluate.scores import evaluate_model  # noqa: E402
from graftline.tasks.settings import FinetuneParams, ModelParams, SelectParams  # noqa: E402
from graftline.tasks.train.finetune import finetune  # noqa: E402
from graftline.tasks.train.selection import METHODS, select_backbone, stratified_sample  # noqa: E402

CANDIDATES = ("minilm-l3", "minilm-l6", "mpnet-base")
TRAIN_ROWS, VALIDATION_ROWS, TEST_ROWS, SEED = 2000, 200, 1000, 13
MAX_LENGTH = 64
MODEL = ModelParams(max_length=MAX_LENGTH, device="auto", precision="auto", seed=SEED)
# The selection step's settings, spelt out (`method` only decides its pick; all three scores are compared).
SELECT = SelectParams(
    candidates=list(CANDIDATES), method="logme", sample_size=1000, pooling="layer-mean", batch_size=32
)
# The fine-tuning budget, the same for all candidates; every setting spelt out, so the measured work
# does not move with the project's defaults.
BUDGET = dict(strategy="full", epochs=1, batch_size=16, learning_rate=8e-5, patience=1, **MEASURED_WITH)


def task_splits(data: Path, name: str) -> Splits:
    """A train pool, a small validation set for early stopping, and a test set per task."""
    folder = data / name
    if name == "sst2":
        pool, test = (
            read_table(str(folder / "train.csv"), "text", "label"),
            read_table(str(folder / "dev.csv"), "text", "label"),
        )
    elif name in ("trec", "ag_news"):
        pool, test = (
            read_table(str(folder / "train.csv"), "text", "label"),
            read_table(str(folder / "test.csv"), "text", "label"),
        )
    else:  # sms_spam ships one file
        pool = read_table(str(folder / "all.csv"), "text", "label")
        pool, test = stratified_split(pool, 0.3, SEED, name)
    pool = pool.drop_duplicates("text")
    test = test[~test["text"].isin(pool["text"])]
    train = stratified_sample(pool, TRAIN_ROWS + VALIDATION_ROWS, SEED)
    train, validation = stratified_split(train, VALIDATION_ROWS / len(train), SEED, name)
    test = stratified_sample(test, TEST_ROWS, SEED)
    return Splits(
        Split("train", train.reset_index(drop=True), name),
        Split("validation", validation.reset_index(drop=True), name),
        Split("test", test, name),
    )


def run_task(data: Path, name: str) -> dict:
    splits = task_splits(data, name)
    selection = select_backbone(splits.train.frame, SELECT, MODEL)
    scores = {r.backbone: r.scores for r in selection.leaderboard}
    accuracy, brute_seconds = {}, 0.0
    for backbone in CANDIDATES:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = finetune(splits, FinetuneParams(backbone=backbone, **BUDGET), MODEL, Path(tmp) / "m")
            model = backbones.load_classifier(str(result.model_dir))
            accuracy[backbone] = evaluate_model(
                model, backbones.load_tokenizer(str(result.model_dir)), splits.test, MAX_LENGTH
            ).accuracy
        brute_seconds += time.perf_counter() - started
        print(f"  {name}: {backbone} fine-tuned to accuracy {accuracy[backbone]:.4f}", file=sys.stderr, flush=True)
    best = max(accuracy.values())
    report = {
        "task": name,
        "train_rows": len(splits.train.frame),
        "test_rows": len(splits.test.frame),
        "accuracy": accuracy,
        "scores": scores,
        "selection_seconds": selection.seconds,
        "brute_force_seconds": brute_seconds,
    }
    for method in METHODS:
        ordered = [scores[b][method] for b in CANDIDATES]
        top = max(CANDIDATES, key=lambda b: scores[b][method])
        report[method] = {
            "tau": kendalltau(ordered, [accuracy[b] for b in CANDIDATES]).statistic,
            "top": top,
            "top_ok": accuracy[top] >= best - 0.005,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "trec", "ag_news", "sms_spam"])
    add_data_option(parser, "one subfolder per task")
    args = parser.parse_args()
    require_folders(args.data, *(args.data / name for name in args.tasks))
    out = Path(__file__).parent / "results" / "selection.json"
    out.parent.mkdir(exist_ok=True)
    # Tasks run separately accumulate: a rerun of a task replaces its earlier result.
    stored = {r["task"]: r for r in (json.loads(out.read_text()) if out.is_file() else [])}
    for name in args.tasks:
        stored[name] = run_task(args.data, name)
        out.write_text(json.dumps(list(stored.values()), indent=1))
    print_table(list(stored.values()))


def print_table(reports: list[dict]) -> None:
    rows = []
    for r in reports:
        row = {"task": r["task"], **{f"acc {b}": f"{r['accuracy'][b]:.4f}" for b in CANDIDATES}}
        for method in METHODS:
            row[f"{method} tau"] = f"{r[method]['tau']:+.2f}"
            row[f"{method} top"] = f"{r[method]['top']}{'' if r[method]['top_ok'] else ' (miss)'}"
        row["select s"] = f"{r['selection_seconds']:.0f}"
        row["brute s"] = f"{r['brute_force_seconds']:.0f}"
        row["speedup"] = f"{r['brute_force_seconds'] / r['selection_seconds']:.1f}x"
        rows.append(row)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    for method in METHODS:
        hits = sum(r[method]["top_ok"] for r in reports)
        print(f"{method}: top pick best or within 0.5 points on {hits} of {len(reports)} tasks")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
