"""Does the fine-tuning search find a better teacher than the defaults for a fixed compute budget?

For each dataset: graftline's fine-tuning with its default settings (the peer, in the same run), then
the search (`finetune.search`) with a budget of `--budget` times the seconds that default training
took, on the same splits and seed. Both models are scored on the dataset's test set. The search's
first trial is the default settings themselves (`start_from_settings`), as for a user.

Datasets (in the datasets folder: --data DIR, else $GRAFTLINE_DATA, else the development datasets):
- `sst2`: SST-2's train file (deduplicated, without dev texts), a stratified sample of `--sst2-rows`
  rows for training plus 1,000 for validation (0: the whole file, 10% of it for validation); the dev
  file is the test set.
- `amazon-<domain>`: the Amazon multi-domain reviews, one domain: its train file (10% carved for
  validation) and its dev file as the test set (the in-domain dev set).

    .venv/bin/python bench/search.py                                      # sst2 (8,000 rows) + 4 Amazon domains
    .venv/bin/python bench/search.py --only sst2 --sst2-rows 0            # the full SST-2 train file (hours)
    .venv/bin/python bench/search.py --only amazon-books --budget 2
Results also go to bench/results/search.json (merged by dataset and setting).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import add_data_option, require_folders, sst2_splits  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

from graftline.tasks.data.splits import Split, Splits, read_table, stratified_split  # noqa: E402
from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.evaluate.scores import evaluate_model  # noqa: E402
from graftline.tasks.settings import FinetuneParams, ModelParams, SearchParams  # noqa: E402
from graftline.tasks.train.finetune import RECIPES, finetune  # noqa: E402
from graftline.tasks.train.search import Study, search  # noqa: E402

DOMAINS = ("books", "dvd", "electronics", "kitchen")


def splits_of(name: str, data: Path, sst2_rows: int, seed: int) -> Splits:
    if name == "sst2":
        require_folders(data / "sst2")
        if sst2_rows:
            return sst2_splits(data / "sst2", sst2_rows, 1000, seed)
        train = read_table(str(data / "sst2" / "train.csv"), "text", "label")
        test = read_table(str(data / "sst2" / "dev.csv"), "text", "label")
        return _carved(train, test, "sst2", seed)
    domain = name.removeprefix("amazon-")
    folder = data / "amazon_multidomain" / domain
    require_folders(folder)
    train = read_table(str(folder / "train.csv"), "text", "label")
    test = read_table(str(folder / "dev.csv"), "text", "label")
    return _carved(train, test, name, seed)


def _carved(train, test, source: str, seed: int) -> Splits:
    train, validation = stratified_split(train, 0.1, seed, source)
    return Splits(
        Split("train", train.reset_index(drop=True), source),
        Split("validation", validation.reset_index(drop=True), source),
        Split("test", test.reset_index(drop=True), source),
    )


def test_accuracy(model_dir: Path, splits: Splits, model: ModelParams) -> float:
    classifier, tokenizer = backbones.load_classifier(str(model_dir)), backbones.load_tokenizer(str(model_dir))
    return evaluate_model(classifier, tokenizer, splits.test, model.max_length).accuracy


def run(name: str, args, work: Path) -> dict:
    splits = splits_of(name, args.data, args.sst2_rows, args.seed)
    model = ModelParams(seed=args.seed)
    defaults = FinetuneParams(backbone=args.backbone)
    started = time.perf_counter()
    trained = finetune(splits, defaults, model, work / f"{name}-defaults")
    default_seconds = time.perf_counter() - started
    default_accuracy = test_accuracy(trained.model_dir, splits, model)
    print(f"{name}: defaults {default_accuracy:.4f} in {default_seconds:.0f} s", file=sys.stderr, flush=True)

    budget = args.budget * default_seconds
    settings = SearchParams(enabled=True, trials=None, seconds=budget, pruner=args.pruner)
    searching = defaults.model_copy(update={"search": settings})
    study = Study(f"sqlite:///{work / 'studies.db'}", f"{name}-{args.seed}")
    heard = lambda r: print(f"  trial {r.number} {r.state} {r.value} {r.seconds:.0f} s {r.settings}", file=sys.stderr)  # noqa: E731
    started = time.perf_counter()
    found = search(splits, searching, model, work / f"{name}-search", study, RECIPES, on_trial=heard)
    search_seconds = time.perf_counter() - started
    search_accuracy = test_accuracy(found.finetune.model_dir, splits, model)
    metrics = found.metrics()
    return {
        "dataset": name,
        "train_rows": len(splits.train.frame),
        "validation_rows": len(splits.validation.frame),
        "test_rows": len(splits.test.frame),
        "seed": args.seed,
        "backbone": args.backbone,
        "budget": args.budget,
        "pruner": args.pruner,
        "default_accuracy": default_accuracy,
        "default_seconds": default_seconds,
        "default_val_macro_f1": trained.training.best_val_macro_f1,
        "search_accuracy": search_accuracy,
        "search_seconds": search_seconds,
        "search_val_macro_f1": found.best.value,
        "gain_points": 100 * (search_accuracy - default_accuracy),
        "compute_ratio": search_seconds / default_seconds,
        "trials": metrics["search_trials"],
        "complete": metrics["search_complete"],
        "pruned": metrics["search_pruned"],
        "pruned_share_of_seconds": metrics["search_pruned_share_of_seconds"],
        "best_trial": found.best.number,
        "best_settings": found.best.settings,
        "importances": found.importances,
    }


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'dataset':18s} {'train':>6s} {'defaults':>9s} {'search':>9s} {'gain':>6s} "
        f"{'default s':>9s} {'search s':>9s} {'ratio':>6s} {'trials':>6s} {'pruned':>6s} {'pruned s':>8s}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['dataset']:18s} {r['train_rows']:6d} {100 * r['default_accuracy']:8.2f}% "
            f"{100 * r['search_accuracy']:8.2f}% {r['gain_points']:+6.2f} {r['default_seconds']:9.0f} "
            f"{r['search_seconds']:9.0f} {r['compute_ratio']:5.2f}x "
            f"{r['trials']:6d} {r['pruned']:6d} {100 * r['pruned_share_of_seconds']:7.0f}%"
        )
    amazon = [r for r in rows if r["dataset"].startswith("amazon-")]
    if amazon:
        mean = sum(r["gain_points"] for r in amazon) / len(amazon)
        print(f"Amazon in-domain mean gain: {mean:+.2f} points over {len(amazon)} domains")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "holding sst2/ and amazon_multidomain/")
    names = ["sst2", *(f"amazon-{d}" for d in DOMAINS)]
    parser.add_argument("--only", nargs="*", choices=names, default=names, help="datasets (default: all)")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--budget", type=float, default=3.0, help="search seconds as a multiple of the defaults'")
    parser.add_argument("--pruner", default="successive-halving", choices=["successive-halving", "hyperband", "none"])
    parser.add_argument("--sst2-rows", type=int, default=8000, help="SST-2 training rows (0: the whole train file)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "search.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="graftline-search-") as folder:
        for name in args.only:
            rows.append(run(name, args, Path(folder)))
            print_table(rows[-1:])
            _merge(args.results, rows[-1])
    print_table(rows)


def _merge(path: Path, row: dict) -> None:
    key = lambda r: (r["dataset"], r["train_rows"], r["seed"], r["budget"], r["pruner"], r["backbone"])  # noqa: E731
    kept = json.loads(path.read_text()) if path.is_file() else []
    kept = [r for r in kept if key(r) != key(row)] + [row]
    path.write_text(json.dumps(kept, indent=1))


if __name__ == "__main__":
    main()
