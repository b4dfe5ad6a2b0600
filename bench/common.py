"""What the benchmark scripts share: where their datasets are, and the engine settings they were
first measured with (so a changed default elsewhere does not silently change what they measure)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The development datasets next to the repository; --data and GRAFTLINE_DATA name another folder.
DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Optimisation settings every graftline run of these benchmarks uses unless the script says otherwise.
MEASURED_WITH = dict(
    weight_decay=0.01,
    warmup_ratio=0.1,
    grad_accumulation=1,
    group_by_length="auto",
    compile=False,
    fast_cpu_dropout=True,
    layer_decay=1.0,
    backbone_rate=1.0,
    checkpoint_every=0,
)


def add_data_option(parser: argparse.ArgumentParser, holding: str) -> None:
    default = Path(os.environ.get("GRAFTLINE_DATA") or DEV_DATA)
    help_text = f"folder of the datasets, {holding} (default: $GRAFTLINE_DATA, else the development datasets "
    parser.add_argument("--data", metavar="DIR", type=Path, default=default, help=help_text + "next to the repository)")


def require_folders(*folders: Path) -> None:
    """Stop with one line naming the first dataset folder that is missing."""
    for folder in folders:
        if not folder.is_dir():
            sys.exit(f"{folder}: dataset folder not found (give the datasets folder with --data DIR or GRAFTLINE_DATA)")


def sst2_splits(folder: Path, train_rows: int, validation_rows: int, seed: int):
    """A seeded, stratified sample of SST-2's train file (deduplicated, without dev texts) split into
    train and validation; the dev file is the test set."""
    from graftline.tasks.data.splits import Split, Splits, read_table, stratified_split
    from graftline.tasks.train.selection import stratified_sample

    pool = read_table(str(folder / "train.csv"), "text", "label").drop_duplicates("text")
    test = read_table(str(folder / "dev.csv"), "text", "label")
    pool = pool[~pool["text"].isin(test["text"])]
    sample = stratified_sample(pool, train_rows + validation_rows, seed)
    train, validation = stratified_split(sample, validation_rows / len(sample), seed, "sst2")
    return Splits(
        Split("train", train.reset_index(drop=True), "sst2"),
        Split("validation", validation.reset_index(drop=True), "sst2"),
        Split("test", test, "sst2"),
    )
