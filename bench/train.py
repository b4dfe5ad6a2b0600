"""graftline's training engine against the Hugging Face Trainer on the same model, data, hyper-parameters
and number of steps.

MiniLM-L6 (or --backbone) on SST-2 (`sst2` in the datasets folder: --data DIR, else $GRAFTLINE_DATA,
else the development datasets next to the repository; a stratified training sample, the dev split
scores all runs), batch 32, lr 5e-5, warmup 10%, weight decay 0.01, one epoch, max length 128, the
same seed. Four runs in one process:
- graftline fp32: `tasks.finetune.finetune` with the engine's defaults (on a CPU: fp32; batches
  grouped by length because random ones would be mostly padding; fused AdamW);
- graftline bf16: the same with bf16 autocast (`precision="bf16"`; the default on GPUs);
- Trainer, defaults (padding to the longest row of each random batch; fp32);
- Trainer at its best: length-grouped sampling (transformers 5 spells `group_by_length=True` as
  `train_sampling_strategy="group_by_length"`), fused AdamW, bf16 autocast (these CPUs report
  avx512_bf16). With torch >= 2.8 the Trainer's default optimiser is already fused AdamW.
Reports training examples/s and tokens/s of each (training loop only, no evaluation), the ratios
against both Trainer runs, graftline's model-FLOPs utilisation on a GPU, padding share and dev accuracy.

    .venv/bin/python bench/train.py                  # 4 000 rows, ~6 min on 2 cores
    .venv/bin/python bench/train.py --rows 1000      # a quick look
    .venv/bin/python bench/train.py --data DIR       # the datasets from another folder
    python bench/train.py --rows 20000 --batch 64 --backbone mpnet-base   # on a GPU (bench/gpu.sh)
Results also go to bench/results/train[-<backbone>].json.
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
import torch  # noqa: E402

from graftline.tasks.data import Split, Splits, encode_labels, read_table  # noqa: E402
from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.engine.training import batch_plan, encode  # noqa: E402
from graftline.tasks.engine.training import padding_share as training_padding_share  # noqa: E402
from graftline.tasks.evaluate import evaluate_model  # noqa: E402
from graftline.tasks.finetune import finetune  # noqa: E402
from graftline.tasks.selection import stratified_sample  # noqa: E402
from graftline.tasks.settings import FinetuneParams, ModelParams  # noqa: E402

LR, MAX_LENGTH, SEED = 5e-5, 128, 13
BACKBONE, BATCH = "minilm-l6", 32  # --backbone, --batch


def splits(folder: Path, rows: int) -> Splits:
    pool = read_table(str(folder / "train.csv"), "text", "label").drop_duplicates("text")
    dev = read_table(str(folder / "dev.csv"), "text", "label")
    train = stratified_sample(pool[~pool["text"].isin(dev["text"])], rows, SEED)
    # the engine needs a validation split for early stopping; one epoch never stops early
    return Splits(Split("train", train, "sst2"), Split("validation", dev.head(64), "sst2"), Split("test", dev, "sst2"))


def run_graftline(data: Splits, out: Path, precision: str) -> dict:
    budget = dict(strategy="full", epochs=1, batch_size=BATCH, learning_rate=LR, patience=1, **MEASURED_WITH)
    params = FinetuneParams(backbone=BACKBONE, **budget)
    model = ModelParams(max_length=MAX_LENGTH, device="auto", precision=precision, seed=SEED)
    result = finetune(data, params, model, out)
    record = result.training.history[0]
    classifier = backbones.load_classifier(str(out))
    accuracy = evaluate_model(classifier, backbones.load_tokenizer(str(out)), data.test, MAX_LENGTH).accuracy
    return {
        "run": f"graftline {precision}",
        "examples_per_second": record.examples_per_second,
        "tokens_per_second": record.tokens_per_second,
        "mfu": record.mfu,
        "train_seconds": record.seconds,
        "dev_accuracy": accuracy,
    }


def run_trainer(data: Splits, out: Path, best: bool) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    labels = data.labels
    tokenizer = backbones.load_tokenizer(BACKBONE)
    torch.manual_seed(SEED)
    model = backbones.load_classifier(BACKBONE, labels)
    encoded = tokenizer(data.train.frame["text"].tolist(), truncation=True, max_length=MAX_LENGTH)
    ids = encode_labels(data.train.frame["label"], labels, "train")
    rows = [
        {"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": ids[i]}
        for i in range(len(ids))
    ]
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        num_train_epochs=1,
        warmup_steps=0.1,  # transformers 5: a float below 1 is a share of the steps
        weight_decay=0.01,
        seed=SEED,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False,
        **(dict(train_sampling_strategy="group_by_length", optim="adamw_torch_fused", bf16=True) if best else {}),
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
    metrics = trainer.train().metrics
    model.eval()
    accuracy = evaluate_model(model.float(), tokenizer, data.test, MAX_LENGTH).accuracy
    tokens = sum(len(row["input_ids"]) for row in rows)
    return {
        "run": "trainer best" if best else "trainer defaults",
        "examples_per_second": metrics["train_samples_per_second"],
        "tokens_per_second": tokens / metrics["train_runtime"],
        "train_seconds": metrics["train_runtime"],
        "dev_accuracy": accuracy,
    }


def padding_share(data: Splits, grouped: bool) -> float:
    """Share of padded positions in the training batches (random order vs grouped by length; the
    engine's grouping is the Trainer's scheme: megabatches of 50 batches, each sorted by length)."""
    tokenizer = backbones.load_tokenizer(BACKBONE)
    lengths = encode(tokenizer, data.train.frame["text"].tolist(), [0] * len(data.train.frame), MAX_LENGTH).lengths
    return training_padding_share(lengths, batch_plan(lengths, BATCH, SEED, 1, grouped))


def main() -> None:
    global BACKBONE, BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--backbone", default=BACKBONE)
    add_data_option(parser, "holding sst2/")
    args = parser.parse_args()
    BACKBONE, BATCH = args.backbone, args.batch
    folder = args.data / "sst2"
    require_folders(folder)
    data = splits(folder, args.rows)
    results = []
    with tempfile.TemporaryDirectory(prefix="graftline-bench-") as tmp:
        for name, call in (
            ("graftline fp32", lambda: run_graftline(data, Path(tmp) / "g", "fp32")),
            ("graftline bf16", lambda: run_graftline(data, Path(tmp) / "g16", "bf16")),
            ("trainer defaults", lambda: run_trainer(data, Path(tmp) / "t", best=False)),
            ("trainer best", lambda: run_trainer(data, Path(tmp) / "b", best=True)),
        ):
            started = time.perf_counter()
            results.append(call())
            print(f"{name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    by = {r["run"]: r for r in results}
    for r in results:
        r["x_trainer_defaults"] = r["examples_per_second"] / by["trainer defaults"]["examples_per_second"]
        r["x_trainer_best"] = r["examples_per_second"] / by["trainer best"]["examples_per_second"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    report = {
        "backbone": BACKBONE,
        "device": device,
        "rows": args.rows,
        "batch": BATCH,
        "max_length": MAX_LENGTH,
        "padding_random": padding_share(data, False),
        "padding_grouped": padding_share(data, True),
        "runs": results,
    }
    out = Path(__file__).parent / "results" / ("train.json" if BACKBONE == "minilm-l6" else f"train-{BACKBONE}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    table = pd.DataFrame(results)[
        [
            "run",
            "examples_per_second",
            "tokens_per_second",
            "x_trainer_defaults",
            "x_trainer_best",
            "train_seconds",
            "dev_accuracy",
        ]
        + (["mfu"] if torch.cuda.is_available() else [])
    ]
    print(f"{BACKBONE} on {device}, {args.rows} rows, batch {BATCH}")
    try:
        print(table.to_markdown(index=False, floatfmt=".3f"))
    except ImportError:
        print(table.to_string(index=False))
    print(
        f"padding share: random batches {report['padding_random']:.1%}, "
        f"grouped by length {report['padding_grouped']:.1%}"
    )


if __name__ == "__main__":
    main()
