"""What differential privacy costs: SST-2 accuracy against epsilon, with graftline's fine-tuning step.

A seeded, stratified sample of SST-2's train file (`sst2` in the datasets folder: --data DIR, else
$GRAFTLINE_DATA, else the development datasets next to the repository) is fine-tuned once per
epsilon with `finetune.privacy` (DP-SGD through Opacus; delta = 1 / training rows) and once without
(epsilon = inf: graftline's ordinary engine, every weight trained). The non-private run is the peer
every ratio is measured against, in the same run. Accuracy is on SST-2's dev file.

The private runs use graftline's private defaults (`finetune.privacy`: the large-batch recipe of
Li et al., ICLR 2022: about a thousand rows a step, learning rate 5e-4, clipping norm 0.1, three
epochs) unless an option below changes them. Nothing is tuned on the dev file.

    .venv/bin/python bench/private.py --rows 100000 --strategy linear-probe     # every row: the fast probe
    .venv/bin/python bench/private.py --rows 100000 --epsilons 8 inf            # full fine-tuning: hours on 2 cores
    .venv/bin/python bench/private.py --rows 4000                               # a small sample
Results also go to bench/results/private.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from common import MEASURED_WITH, add_data_option, require_folders, sst2_splits  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.evaluate.scores import evaluate_model  # noqa: E402
from graftline.tasks.settings import FinetuneParams, ModelParams, PrivacyParams  # noqa: E402
from graftline.tasks.train.finetune import finetune  # noqa: E402

SEED, VALIDATION_ROWS = 13, 500


def run(splits, epsilon: float, args, work: Path) -> dict:
    private = math.isfinite(epsilon)
    settings = dict(
        MEASURED_WITH,
        backbone=args.backbone,
        strategy=args.strategy,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.epochs,
        learning_rate=args.lr,
    )
    if private:
        chosen = {"max_grad_norm": args.max_grad_norm, "logical_batch_size": args.logical_batch,
                  "learning_rate": args.private_lr, "epochs": args.private_epochs}  # fmt: skip
        settings["privacy"] = PrivacyParams(
            enabled=True, epsilon=epsilon, **{k: v for k, v in chosen.items() if v is not None}
        )
    model = ModelParams(max_length=args.max_length, seed=SEED)
    started = time.perf_counter()
    result = finetune(splits, FinetuneParams(**settings), model, work / f"eps-{epsilon}")
    seconds = time.perf_counter() - started
    classifier, tokenizer = (
        backbones.load_classifier(str(result.model_dir)),
        backbones.load_tokenizer(str(result.model_dir)),
    )
    evaluation = evaluate_model(classifier, tokenizer, splits.test, args.max_length)
    spent = result.privacy
    return {
        "target_epsilon": epsilon,
        "epsilon": spent.epsilon if spent else math.inf,
        "delta": spent.delta if spent else 0.0,
        "noise_multiplier": spent.noise_multiplier if spent else 0.0,
        "private_steps": spent.steps if spent else None,
        "accuracy": evaluation.accuracy,
        "macro_f1": evaluation.macro_f1,
        "seconds": seconds,
        "best_epoch": result.training.best_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_option(parser, "holding sst2/")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument(
        "--rows", type=int, default=4000, help="training rows sampled from SST-2's train file (more than it holds: all)"
    )
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--strategy", default="full", choices=["full", "linear-probe"], help="what trains (every run)")
    parser.add_argument("--epochs", type=int, default=3, help="the non-private run's epochs")
    parser.add_argument("--batch-size", type=int, default=32, help="rows computed at a time")
    parser.add_argument("--logical-batch", type=int, help="private runs: rows per private step (default: graftline's)")
    parser.add_argument("--max-grad-norm", type=float, help="private runs: the clipping norm (default: graftline's)")
    parser.add_argument("--private-lr", type=float, help="private runs: the learning rate (default: graftline's)")
    parser.add_argument("--private-epochs", type=int, help="private runs: epochs (default: graftline's)")
    parser.add_argument("--lr", type=float, default=8e-5, help="the non-private run's learning rate")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "private.json")
    args = parser.parse_args()
    folder = args.data / "sst2"
    require_folders(folder)
    splits = sst2_splits(folder, args.rows, VALIDATION_ROWS, SEED)
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graftline-private-") as tmp:
        for epsilon in sorted(args.epsilons, key=lambda e: (math.isfinite(e), e), reverse=False):
            rows.append(run(splits, epsilon, args, Path(tmp)))
            print(f"epsilon {epsilon}: {rows[-1]}", flush=True)
            args.out.write_text(json.dumps({"setting": setting, "rows": rows}, indent=1, default=str))  # as they finish
    report(rows, args, len(splits.train.frame))


def report(rows: list[dict], args, train_rows: int) -> None:
    peer = next((r for r in rows if not math.isfinite(r["target_epsilon"])), None)
    print(f"\nSST-2 dev accuracy against epsilon: {args.backbone} ({args.strategy}), {train_rows} rows, "
          f"max length {args.max_length}")  # fmt: skip
    print("| epsilon (target) | epsilon spent | delta | noise multiplier | private steps | dev accuracy | "
          "vs non-private | seconds | time vs non-private |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["target_epsilon"]):
        ratio = f"{r['accuracy'] / peer['accuracy']:.3f}" if peer else "-"
        slower = f"{r['seconds'] / peer['seconds']:.2f}x" if peer else "-"
        print(
            f"| {r['target_epsilon']:g} | {r['epsilon']:.3g} | {r['delta']:.2g} | {r['noise_multiplier']:.3f} | "
            f"{r['private_steps'] if r['private_steps'] is not None else '-'} | {r['accuracy']:.4f} | {ratio} | "
            f"{r['seconds']:.0f} | {slower} |"
        )


if __name__ == "__main__":
    main()
