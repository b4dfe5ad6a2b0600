"""Does adapting to the target domain's unlabeled text close the cross-domain gap?

The Amazon multi-domain sentiment pairs (`amazon_multidomain` in the datasets folder: --data DIR, else
$GRAFTLINE_DATA, else the development datasets next to the repository). For each source -> target
pair: fine-tune on `S/train.csv` (early stopping on `S/dev.csv`) with graftline's fine-tuning step,
once per adaptation method, and score each model on `T/all.csv`. Source-only (`none`) is the peer
every ratio is measured against, in the same run; it never sees the target, so one source-only model
per source (and seed) is trained and scored on each of its targets.

This data has no separate unlabeled pool, so adapting on `T/all.csv` and scoring on it is
transductive (the target texts, never their labels, are seen in training). `--inductive` instead
adapts on one half of the target texts and scores on the other half, then swaps, and reports the
mean of the two halves.

    .venv/bin/python bench/adapt.py                                 # 12 pairs x (none, self-training): hours on 2 cores
    .venv/bin/python bench/adapt.py --pairs electronics:books kitchen:dvd --methods none mlm self-training
    .venv/bin/python bench/adapt.py --max-length 128 --epochs 1     # a quicker, weaker look
Results also go to bench/results/adapt.json (merged by pair, method, seed and setting).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

from common import MEASURED_WITH, add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")


from graftline.tasks.data.splits import Split, Splits, read_table  # noqa: E402
from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.evaluate.scores import evaluate_model  # noqa: E402
from graftline.tasks.settings import AdaptParams, DistillParams, FinetuneParams, ModelParams  # noqa: E402
from graftline.tasks.train.distill import distill  # noqa: E402
from graftline.tasks.train.finetune import finetune  # noqa: E402
from graftline.tasks.train.recipes.adaptation import Adaptation  # noqa: E402

DOMAINS = ("books", "dvd", "electronics", "kitchen")
NOTED = ("pseudo_labels", "confident_flips", "val_macro_f1")  # of each round, kept in the results
HARD = ("electronics:books", "electronics:dvd", "kitchen:books", "kitchen:dvd")  # product -> media


def pair_splits(folder: Path, source: str, target: str, half: int | None, seed: int) -> tuple[Splits, Split]:
    """Training splits with the target texts to adapt on, and the labeled target set to score."""
    read = lambda path: read_table(str(path), "text", "label")  # noqa: E731
    train, dev, pool = (
        read(folder / source / "train.csv"),
        read(folder / source / "dev.csv"),
        read(folder / target / "all.csv"),
    )
    scored = adapt_on = pool
    if half is not None:  # inductive: adapt on one half of the target texts, score on the other
        shuffled = pool.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        halves = (shuffled.iloc[: len(shuffled) // 2], shuffled.iloc[len(shuffled) // 2 :])
        adapt_on, scored = halves[half], halves[1 - half]
    targets = {target: Split(target, adapt_on[["text", "row"]].reset_index(drop=True), "target")}
    where = lambda name: str(folder / source / name)  # noqa: E731
    splits = Splits(Split("train", train, where("train.csv")), Split("validation", dev, where("dev.csv")),
                    Split("test", dev, where("dev.csv")),
                    targets=targets)  # fmt: skip
    return splits, Split(target, scored.reset_index(drop=True), "all")


class SourceModels:
    """An adapting run's source model and its other teachers do not depend on the target (unless the
    target MLM loss trains with them): each is trained once per source, seed and setting, and reused
    for the source's other targets, with its training seconds added to every run that reuses it, so
    a run's time is still what a user's run costs. Training is seeded, so a reused model has the
    weights a fresh one would."""

    def __init__(self) -> None:
        self.models: dict = {}
        self.reused_seconds = 0.0  # of the run in progress
        self.teachers: list = []  # the run in progress's other teachers (trained recipes), to score them too

    def install(self) -> None:
        train_source, train_teacher = Adaptation._train_source, Adaptation._train_teacher

        def source(recipe: Adaptation, target):
            if recipe.job.adapt.uses_mlm:
                return train_source(recipe, target)
            return self._once(recipe, 0, lambda: train_source(recipe, target), recipe.source)

        def teacher(recipe: Adaptation, number: int):
            trained = self._once(recipe, number, lambda: train_teacher(recipe, number), None)
            self.teachers.append(trained)
            return trained

        Adaptation._train_source, Adaptation._train_teacher = source, teacher

    def _once(self, recipe: Adaptation, number: int, train, source):
        job = recipe.job
        key = (job.splits.train.source, job.model.model_dump_json(), job.params.model_dump_json(), number)
        if key not in self.models:
            started = time.perf_counter()
            made = train()  # the source's TrainResult, or a trained teacher
            state = {k: v.detach().clone() for k, v in source.classifier.state_dict().items()} if source else None
            self.models[key] = (made, state, time.perf_counter() - started)
            return made
        made, state, seconds = self.models[key]
        if state is not None:
            source.classifier.load_state_dict(state)
        self.reused_seconds += seconds
        return made


def run_pair(splits: Splits, scored: Split, methods: list[str], args, seed: int, work: Path, trained: dict) -> dict:
    """Every method's row (target accuracy, macro-F1, training seconds) for one pair, seed and half.

    Source-only never sees the target: one source-only model per (source, seed) is trained and reused
    for every target. A self-training run trains exactly that model first (same data, seed and
    settings) before its rounds, so when it runs first its source model is saved and scored as the
    source-only row, with the seconds before the rounds as its time: the same work, not done twice."""
    model = ModelParams(max_length=args.max_length, seed=seed, precision=args.precision)
    params = FinetuneParams(backbone=args.backbone, epochs=args.epochs, patience=args.epochs, checkpoint_every=0,
                            **{k: v for k, v in MEASURED_WITH.items() if k != "checkpoint_every"})  # fmt: skip
    key, rows = (splits.train.source, seed), {}
    for method in sorted(methods, key=lambda m: m == "none"):  # source-only last: it may come for free
        if method == "none" and key in trained:
            model_dir, seconds = trained[key]
            rows[method] = {**score(model_dir, scored, args), "seconds": seconds}
            continue
        adapt = AdaptParams(method=method, **args.adapt)
        wanted = adapt.self_trains and "none" in methods and key not in trained
        source_dir = work / f"none-{len(trained)}" if wanted else None
        noted: dict = {}
        started, SOURCES.reused_seconds, SOURCES.teachers = time.perf_counter(), 0.0, []
        result = finetune(splits, params, model, work / method, adapt=adapt, source_dir=source_dir)
        seconds = time.perf_counter() - started + SOURCES.reused_seconds
        for number, teacher in enumerate(SOURCES.teachers, start=2):  # the other teachers alone, for comparison
            noted[f"teacher_{number}_accuracy"] = evaluate_model(
                teacher.classifier, teacher.tokenizer, scored, args.max_length
            ).accuracy
        rounds = result.self_training.metrics() if result.self_training else {}
        noted |= {k: v for k, v in rounds.items() if k == "self_training_rounds_kept" or k.endswith(NOTED)}
        rows[method] = {**score(result.model_dir, scored, args), "seconds": seconds, **noted}
        if args.student and method != "none":  # the lifecycle's next step: distil on the source and target texts
            started = time.perf_counter()
            student = distill(result.model_dir, splits, DistillParams(epochs=args.epochs, **MEASURED_WITH), model,
                              work / f"{method}-student")  # fmt: skip
            rows[f"{method}+student"] = {**score(student.model_dir, scored, args),
                                         "seconds": time.perf_counter() - started}  # fmt: skip
        if method == "none":
            source_dir = result.model_dir.rename(work / f"none-{len(trained)}")
        if source_dir is not None and key not in trained:
            trained[key] = (source_dir, seconds - rounds.get("self_training_seconds", 0.0))
    return rows


def score(model_dir: Path, scored: Split, args) -> dict:
    classifier, tokenizer = backbones.load_classifier(str(model_dir)), backbones.load_tokenizer(str(model_dir))
    evaluation = evaluate_model(classifier, tokenizer, scored, args.max_length)
    return {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1}


SOURCES = SourceModels()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser, "holding amazon_multidomain/")
    parser.add_argument("--pairs", nargs="*", default=None, help="source:target (default: all 12)")
    parser.add_argument("--methods", nargs="*", default=["none", "self-training"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[13])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="model.precision")
    parser.add_argument("--inductive", action="store_true", help="adapt on half the target texts, score the other")
    parser.add_argument(
        "--student",
        action="store_true",
        help="also distil every adapted teacher into the lifecycle's default 3-layer student, the target texts "
        "among its distillation rows (row METHOD+student)",
    )
    parser.add_argument(
        "--set",
        dest="adapt",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="adapt.* settings for every adapting method, e.g. rounds=2 pseudo_label_share=0.3",
    )
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "adapt.json")
    parser.add_argument("--report", action="store_true", help="print the table of the saved results; train nothing")
    args = parser.parse_args()
    args.adapt = dict(item.split("=", 1) for item in args.adapt)
    folder = args.data / "amazon_multidomain"
    require_folders(folder)
    pairs = args.pairs or [f"{s}:{t}" for s, t in itertools.permutations(DOMAINS, 2)]
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    setting = (
        f"{args.backbone} epochs={args.epochs} max_length={args.max_length}"
        + ("" if args.precision == "auto" else f" {args.precision}")
        + (" inductive" if args.inductive else "")
        + "".join(f" {k}={v}" for k, v in sorted(args.adapt.items()))
    )
    shown = args.methods + ([f"{m}+student" for m in args.methods if m != "none"] if args.student else [])
    if args.report:
        print_table(results, setting, pairs, shown, args.seeds)
        return
    trained: dict = {}  # source-only models by (source, seed): the target plays no part in training them
    SOURCES.install()
    with tempfile.TemporaryDirectory(prefix="graftline-adapt-") as tmp:
        for pair, seed in itertools.product(pairs, args.seeds):
            source, target = pair.split(":")
            halves = [0, 1] if args.inductive else [None]
            runs = [run_pair(*pair_splits(folder, source, target, half, seed), args.methods, args, seed, Path(tmp),
                             trained) for half in halves]  # fmt: skip
            for method in runs[0]:
                row = {k: sum(r[method][k] for r in runs) / len(runs) for k in runs[0][method]}
                results[f"{setting} | {pair} | {method} | {seed}"] = row
                print(f"{pair} {method} seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=1))
    print_table(results, setting, pairs, shown, args.seeds)


def print_table(results: dict, setting: str, pairs: list[str], methods: list[str], seeds: list[int]) -> None:
    """Target accuracy per pair and method (mean over the seeds measured, with the spread between
    them), each method's difference from source-only (the first method) and its lowest pair."""

    def values(pair: str, method: str, key: str) -> list[float]:
        found = [results.get(f"{setting} | {pair} | {method} | {s}", {}).get(key) for s in seeds]
        return [v for v in found if v is not None]

    def mean(pair: str, method: str, key: str) -> float | None:
        found = values(pair, method, key)
        return sum(found) / len(found) if found else None

    print(f"{setting}, seeds {seeds}: target accuracy (x100) per pair, mean (spread over seeds when several)")
    print("| pair | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for pair in pairs + ["average", "hard pairs"]:
        chosen = pairs if pair == "average" else [p for p in pairs if p in HARD] if pair == "hard pairs" else [pair]
        cells = []
        for method in methods:
            scores = [mean(p, method, "accuracy") for p in chosen]
            if not chosen or any(s is None for s in scores):
                cells.append("-")
                continue
            cell = f"{100 * sum(scores) / len(scores):.2f}"
            found = values(pair, method, "accuracy") if len(chosen) == 1 else []
            cells.append(cell + (f" ± {50 * (max(found) - min(found)):.2f}" if len(found) > 1 else ""))
        print(f"| {pair} | " + " | ".join(cells) + " |")
    base = methods[0]
    for method in methods[1:]:
        both = [(mean(p, base, "accuracy"), mean(p, method, "accuracy")) for p in pairs]
        both = [(b, o) for b, o in both if b is not None and o is not None]
        if both:
            gaps = [100 * (o - b) for b, o in both]
            average = sum(gaps) / len(gaps)
            print(f"{method} - {base}: {average:+.2f} on average over {len(gaps)} pairs, lowest {min(gaps):+.2f}")
        times = [(mean(p, base, "seconds"), mean(p, method, "seconds")) for p in pairs]
        if times and all(b and o for b, o in times):
            print(f"time {method} / {base}: {sum(o for _, o in times) / sum(b for b, _ in times):.2f}x")


if __name__ == "__main__":
    main()
