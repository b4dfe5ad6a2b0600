"""Does the fine-tuning search find a better teacher than the defaults for a fixed compute budget?

For each dataset: graftline's fine-tuning with its default settings (the peer, in the same run), then
the search (`finetune.search`, its default space, pruner and check) with a budget of `--budget` times
the seconds that default training took, on the same splits and seed. Both teachers are scored on the
dataset's test set; the gain comes with a 95% interval from a paired bootstrap over the test rows.
The search's first trial is the default settings themselves (`start_from_settings`), as for a user,
and they stay the teacher unless another trial beats them on validation beyond its noise.

Datasets (in the datasets folder: --data DIR, else $GRAFTLINE_DATA, else the development datasets):
- `ag-news`: AG News, its train file (10% carved for validation), its 7,600-row test file.
- `tweeteval`: TweetEval sentiment (3 classes); its 2,000-row dev file is split 80/20 into training
  and validation (the collection has no train file), its 12,284-row test file is the test set.
- `sst2`: SST-2's train file (deduplicated, without dev or test texts), a stratified sample of
  `--sst2-rows` rows for training plus 1,000 for validation (0: the whole file, 10% of it for
  validation); the labeled 1,821-row test file is the test set.
- `amazon-<domain>`: the Amazon multi-domain reviews, one domain: its train file (10% carved for
  validation) and its 300-row dev file as the test set (too small to show a gain of a point).

    .venv/bin/python bench/search.py                                      # tweeteval, ag-news, sst2 (20,000 rows)
    .venv/bin/python bench/search.py --only sst2 --sst2-rows 0            # the full SST-2 train file (hours)
    .venv/bin/python bench/search.py --only amazon-books --budget 2
Results also go to bench/results/search.json (merged by dataset and setting), each as it finishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

from graftline.tasks.data.splits import Split, Splits, read_table, stratified_split  # noqa: E402
from graftline.tasks.evaluate.scores import paired_bootstrap, predictions_on  # noqa: E402
from graftline.tasks.settings import FinetuneParams, ModelParams, SearchParams  # noqa: E402
from graftline.tasks.train.finetune import RECIPES, finetune  # noqa: E402
from graftline.tasks.train.search import Study, search  # noqa: E402

DOMAINS = ("books", "dvd", "electronics", "kitchen")


def splits_of(name: str, data: Path, sst2_rows: int, seed: int) -> Splits:
    if name == "sst2":
        return _sst2(data / "sst2", sst2_rows, seed)
    if name == "ag-news":
        folder = data / "ag_news"
        require_folders(folder)
        return _carved(_read(folder / "train.csv"), _read(folder / "test.csv"), name, seed, 0.1)
    if name == "tweeteval":
        folder = data / "tweeteval_sentiment"
        require_folders(folder)
        return _carved(_read(folder / "dev.csv"), _read(folder / "test.csv"), name, seed, 0.2)
    folder = data / "amazon_multidomain" / name.removeprefix("amazon-")
    require_folders(folder)
    return _carved(_read(folder / "train.csv"), _read(folder / "dev.csv"), name, seed, 0.1)


def _read(path: Path):
    return read_table(str(path), "text", "label")


def _sst2(folder: Path, rows: int, seed: int) -> Splits:
    """A stratified sample of the train file (every row with `rows` 0) without the dev and test texts;
    the labeled test file is the test set."""
    from graftline.tasks.train.selection import stratified_sample

    require_folders(folder)
    test = _read(folder / "test.csv")
    pool = _read(folder / "train.csv").drop_duplicates("text")
    pool = pool[~pool["text"].isin(set(test["text"]) | set(_read(folder / "dev.csv")["text"]))]
    if rows:
        pool = stratified_sample(pool, rows + 1000, seed)
    return _carved(pool.reset_index(drop=True), test, "sst2", seed, 1000 / len(pool) if rows else 0.1)


def _carved(train, test, source: str, seed: int, share: float) -> Splits:
    train, validation = stratified_split(train, share, seed, source)
    return Splits(
        Split("train", train.reset_index(drop=True), source),
        Split("validation", validation.reset_index(drop=True), source),
        Split("test", test.reset_index(drop=True), source),
    )


def gain_interval(defaults: Path, searched: Path, splits: Splits, model: ModelParams) -> dict:
    """Both teachers' test accuracy, and the gain's 95% interval from 2,000 paired bootstrap resamples
    of the test rows."""
    import numpy as np

    (ours, truth), (theirs, _) = (predictions_on(folder, splits.test, model) for folder in (searched, defaults))
    differences = paired_bootstrap(ours, theirs, truth, "accuracy", seed=model.seed)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {
        "default_accuracy": float((theirs == truth).mean()),
        "search_accuracy": float((ours == truth).mean()),
        "gain_low": 100 * float(low),
        "gain_high": 100 * float(high),
    }


def run(name: str, args, work: Path) -> dict:
    splits = splits_of(name, args.data, args.sst2_rows, args.seed)
    model = ModelParams(seed=args.seed)
    defaults = FinetuneParams(backbone=args.backbone)
    started = time.perf_counter()
    trained = finetune(splits, defaults, model, work / f"{name}-defaults")
    default_seconds = time.perf_counter() - started
    print(f"{name}: defaults trained in {default_seconds:.0f} s", file=sys.stderr, flush=True)

    budget = args.budget * default_seconds
    settings = SearchParams(enabled=True, trials=None, seconds=budget, pruner=args.pruner)
    searching = defaults.model_copy(update={"search": settings})
    study = Study(f"sqlite:///{work / 'studies.db'}", f"{name}-{args.seed}")
    heard = lambda r: print(f"  {r.line()}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    found = search(splits, searching, model, work / f"{name}-search", study, RECIPES, on_trial=heard)
    search_seconds = time.perf_counter() - started
    scores = gain_interval(trained.model_dir, found.finetune.model_dir, splits, model)
    metrics, check = found.metrics(), found.confirmation
    leader = max((t for t in found.trials if t.state == "complete"), key=lambda t: t.value)
    return {
        "dataset": name,
        "train_rows": len(splits.train.frame),
        "validation_rows": len(splits.validation.frame),
        "test_rows": len(splits.test.frame),
        "seed": args.seed,
        "backbone": args.backbone,
        "budget": args.budget,
        "pruner": args.pruner,
        "search": "checked",  # the search with its validation check, equal-training pruning, scaled start-up
        **scores,
        "default_seconds": default_seconds,
        "default_val_macro_f1": trained.training.best_val_macro_f1,
        "search_seconds": search_seconds,
        "search_val_macro_f1": found.best.value,
        "gain_points": 100 * (scores["search_accuracy"] - scores["default_accuracy"]),
        "leader_trial": leader.number,
        "leader_val_macro_f1": leader.value,
        "leader_settings": leader.settings,
        "check_share": check.share if check else None,
        "check_replaced": check.replaced if check else None,
        "compute_ratio": search_seconds / default_seconds,
        "trials": metrics["search_trials"],
        "complete": metrics["search_complete"],
        "pruned": metrics["search_pruned"],
        "pruned_share_of_seconds": metrics["search_pruned_share_of_seconds"],
        "best_trial": found.best.number,
        "best_settings": found.best.settings,
        "importances": found.importances,
        "trial_lines": [t.line() for t in found.trials],
    }


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'dataset':12s} {'train':>6s} {'test':>6s} {'defaults':>9s} {'search':>9s} {'gain':>6s} "
        f"{'95% interval':>15s} "
        f"{'ratio':>6s} {'trials':>6s} {'pruned':>6s} {'best':>5s} {'check':>6s} {'chosen':>7s}"
    )
    print(head)
    for r in rows:
        check = "-" if r.get("check_share") is None else f"{100 * r['check_share']:.0f}%"
        chosen = "search" if r["best_trial"] != 0 else "given"
        print(
            f"{r['dataset']:12s} {r['train_rows']:6d} {r['test_rows']:6d} {100 * r['default_accuracy']:8.2f}% "
            f"{100 * r['search_accuracy']:8.2f}% {r['gain_points']:+6.2f} "
            f"[{r.get('gain_low', float('nan')):+5.2f}, {r.get('gain_high', float('nan')):+5.2f}] "
            f"{r['compute_ratio']:5.2f}x {r['trials']:6d} {r['pruned']:6d} {r.get('leader_trial', r['best_trial']):5d} "
            f"{check:>6s} {chosen:>7s}"
        )
    if rows:
        mean = sum(r["gain_points"] for r in rows) / len(rows)
        print(f"mean gain: {mean:+.2f} points over {len(rows)} datasets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "holding ag_news/, tweeteval_sentiment/, sst2/ and amazon_multidomain/")
    names = ["tweeteval", "ag-news", "sst2", *(f"amazon-{d}" for d in DOMAINS)]
    parser.add_argument(
        "--only",
        nargs="*",
        choices=names,
        default=names[:3],
        help="datasets (default: the three with 1,800+ test rows)",
    )
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--budget", type=float, default=3.0, help="search seconds as a multiple of the defaults'")
    parser.add_argument("--pruner", default="successive-halving", choices=["successive-halving", "hyperband", "none"])
    parser.add_argument("--sst2-rows", type=int, default=20_000, help="SST-2 training rows (0: the whole train file)")
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
    key = lambda r: (r["dataset"], r["train_rows"], r["seed"], r["budget"], r["pruner"], r["backbone"], r.get("search"))  # noqa: E731
    kept = json.loads(path.read_text()) if path.is_file() else []
    kept = [r for r in kept if key(r) != key(row)] + [row]
    path.write_text(json.dumps(kept, indent=1))


if __name__ == "__main__":
    main()
