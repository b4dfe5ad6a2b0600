"""graftline's training engine against the Hugging Face Trainer on the same model, data, hyper-parameters
and number of steps.

MiniLM-L6 (or --backbone) on SST-2 (`sst2` in the datasets folder: --data DIR, else $GRAFTLINE_DATA,
else the development datasets next to the repository; a stratified training sample, the dev split
scores all runs), batch 32, lr 5e-5, warmup 10%, weight decay 0.01, one epoch, max length 128, the
same seed. Four runs in one process by default:
- graftline fp32: `tasks.finetune.finetune` with the engine's defaults (on a CPU: fp32; batches
  grouped by length because random ones would be mostly padding; fused AdamW; dropout masks drawn
  four to a random word, `fast_cpu_dropout`);
- graftline bf16: the same with bf16 autocast (`precision="bf16"`; the default on GPUs);
- Trainer, defaults (padding to the longest row of each random batch; fp32);
- Trainer at its best: length-grouped sampling (transformers 5 spells `group_by_length=True` as
  `train_sampling_strategy="group_by_length"`), fused AdamW, bf16 autocast (these CPUs report
  avx512_bf16). With torch >= 2.8 the Trainer's default optimiser is already fused AdamW.
Also by name (--runs): "graftline fp32/bf16 torch dropout" (PyTorch's own dropout: what the CPU
dropout buys) and the compiled runs of both engines.
Reports training examples/s and tokens/s of each (training loop only, no evaluation), the ratios
against both Trainer runs, graftline's model-FLOPs utilisation on a GPU, padding share and dev accuracy.

    .venv/bin/python bench/train.py                  # 4 000 rows, ~6 min on 2 cores
    .venv/bin/python bench/train.py --rows 1000      # a quick look
    .venv/bin/python bench/train.py --repeat 2       # every run twice, in alternating order; medians
    .venv/bin/python bench/train.py --data DIR       # the datasets from another folder
    .venv/bin/python bench/train.py --dataset amazon_multidomain/dvd --max-length 256 --batch 16 --rows 800
    .venv/bin/python bench/train.py --runs "graftline bf16" "graftline bf16 compiled" "trainer best"
    python bench/train.py --backbone CONFIG_DIR --random-init ...   # a model of that shape, random weights
Also: --epochs, --device; a run that fails is a row with its error. On a GPU (bench/gpu.sh) the table
adds MFU and peak GPU memory. Results also go to bench/results/train[-<backbone>][-<dataset>].json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import MEASURED_WITH, add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from graftline.tasks.data.splits import Split, Splits, encode_labels, read_table  # noqa: E402
from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.engine.training import batch_plan, encode  # noqa: E402
from graftline.tasks.engine.training import padding_share as training_padding_share  # noqa: E402
from graftline.tasks.evaluate.scores import evaluate_model  # noqa: E402
from graftline.tasks.settings import FinetuneParams, ModelParams  # noqa: E402
from graftline.tasks.train.finetune import finetune  # noqa: E402
from graftline.tasks.train.selection import stratified_sample  # noqa: E402

LR, SEED = 5e-5, 13
BACKBONE, BATCH, MAX_LENGTH, EPOCHS, DEVICE = "minilm-l6", 32, 128, 1, "auto"  # set from the options
RUNS = {  # name: (engine, precision or Trainer at its best, torch.compile)
    "graftline fp32": ("graftline", "fp32", False),
    "graftline bf16": ("graftline", "bf16", False),
    "graftline bf16 compiled": ("graftline", "bf16", True),
    "graftline fp32 torch dropout": ("graftline", "fp32", False),  # fast_cpu_dropout off: what it buys
    "graftline bf16 torch dropout": ("graftline", "bf16", False),
    "trainer defaults": ("trainer", False, False),
    "trainer best": ("trainer", True, False),
    "trainer best compiled": ("trainer", True, True),
}
DEFAULT_RUNS = ["graftline fp32", "graftline bf16", "trainer defaults", "trainer best"]


def splits(folder: Path, rows: int) -> Splits:
    pool = read_table(str(folder / "train.csv"), "text", "label").drop_duplicates("text")
    dev = read_table(str(folder / "dev.csv"), "text", "label")
    train = stratified_sample(pool[~pool["text"].isin(dev["text"])], rows, SEED)
    # the engine needs a validation split for early stopping; these runs never stop early
    return Splits(Split("train", train, "data"), Split("validation", dev.head(64), "data"), Split("test", dev, "data"))


def run_graftline(data: Splits, out: Path, precision: str, compiled: bool, torch_dropout: bool = False) -> dict:
    settings = {**MEASURED_WITH, "compile": compiled, "fast_cpu_dropout": not torch_dropout}
    budget = dict(strategy="full", epochs=EPOCHS, batch_size=BATCH, learning_rate=LR, patience=EPOCHS, **settings)
    params = FinetuneParams(backbone=BACKBONE, **budget)
    model = ModelParams(max_length=MAX_LENGTH, device=DEVICE, precision=precision, seed=SEED)
    result = finetune(data, params, model, out)
    history = result.training.history
    seconds = sum(r.seconds for r in history)
    classifier = backbones.load_classifier(str(out))
    accuracy = evaluate_model(classifier, backbones.load_tokenizer(str(out)), data.test, MAX_LENGTH).accuracy
    return {
        "examples_per_second": sum(r.examples_per_second * r.seconds for r in history) / seconds,
        "tokens_per_second": sum(r.tokens_per_second * r.seconds for r in history) / seconds,
        "mfu": history[-1].mfu,
        "train_seconds": seconds,
        "dev_accuracy": accuracy,
    }


def run_trainer(data: Splits, out: Path, best: bool, compiled: bool) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from graftline.tasks.engine.training import peak_flops, resolve_device, training_flops_per_token

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
    device = resolve_device(DEVICE)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        num_train_epochs=EPOCHS,
        warmup_steps=0.1,  # transformers 5: a float below 1 is a share of the steps
        weight_decay=0.01,
        seed=SEED,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        use_cpu=device.type == "cpu",
        dataloader_pin_memory=device.type == "cuda",
        torch_compile=compiled,
        **(dict(train_sampling_strategy="group_by_length", optim="adamw_torch_fused", bf16=True) if best else {}),
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
    metrics = trainer.train().metrics
    model.eval()
    accuracy = evaluate_model(model.float(), tokenizer, data.test, MAX_LENGTH).accuracy
    tokens = EPOCHS * sum(len(row["input_ids"]) for row in rows)
    peak = peak_flops(device, "bf16" if best else "fp32")
    tokens_per_second = tokens / metrics["train_runtime"]
    return {
        "examples_per_second": metrics["train_samples_per_second"],
        "tokens_per_second": tokens_per_second,
        "mfu": training_flops_per_token(model) * tokens_per_second / peak if peak else None,
        "train_seconds": metrics["train_runtime"],
        "dev_accuracy": accuracy,
    }


def measure(name: str, data: Splits, out: Path) -> dict:
    """One run by name, with its peak GPU memory; a run that fails is reported, not fatal (a GPU
    machine's call is spent once)."""
    engine, setting, compiled = RUNS[name]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        if engine == "graftline":
            row = run_graftline(data, out, setting, compiled, torch_dropout=name.endswith("torch dropout"))
        else:
            row = run_trainer(data, out, setting, compiled)
    except Exception as error:  # noqa: BLE001  -- the table says which run failed and why
        print(f"{name}: failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return {"run": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"run": name, **row, "peak_gib": peak}


def median_row(rows: list[dict]) -> dict:
    """One run's rounds as one row: the median of each number, every round's examples/s kept."""
    good = [r for r in rows if "error" not in r]
    if not good:
        return rows[0]
    row = {k: statistics.median(r[k] for r in good) if isinstance(v, float) else v for k, v in good[0].items()}
    if len(rows) > 1:
        row["rounds_examples_per_second"] = [r.get("examples_per_second") for r in rows]
    return row


def random_weights(config_dir: Path, out: Path) -> Path:
    """A copy of `config_dir` (config and tokenizer) with random weights from the config, seeded."""
    from transformers import AutoConfig, AutoModel

    shutil.copytree(config_dir, out)
    torch.manual_seed(SEED)
    AutoModel.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(out, safe_serialization=True)
    return out


def padding_share(data: Splits, grouped: bool) -> float:
    """Share of padded positions in the training batches (random order vs grouped by length; the
    engine's grouping is the Trainer's scheme: megabatches of 50 batches, each sorted by length)."""
    tokenizer = backbones.load_tokenizer(BACKBONE)
    lengths = encode(tokenizer, data.train.frame["text"].tolist(), [0] * len(data.train.frame), MAX_LENGTH).lengths
    return training_padding_share(lengths, batch_plan(lengths, BATCH, SEED, 1, grouped))


def main() -> None:
    global BACKBONE, BATCH, MAX_LENGTH, EPOCHS, DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--random-init", action="store_true", help="--backbone is a config folder: random weights")
    parser.add_argument("--dataset", default="sst2", help="folder in the datasets folder with train.csv, dev.csv")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--device", default=DEVICE, choices=["auto", "cpu", "cuda"])
    parser.add_argument("--runs", nargs="*", default=DEFAULT_RUNS, choices=list(RUNS), metavar="RUN",
                        help=f"of: {', '.join(RUNS)}")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all runs, alternating order; medians reported")
    parser.add_argument("--results", type=Path, default=None, help="JSON file (default: bench/results/train*.json)")
    add_data_option(parser, "holding sst2/")
    args = parser.parse_args()
    BACKBONE, BATCH, MAX_LENGTH, EPOCHS, DEVICE = args.backbone, args.batch, args.max_length, args.epochs, args.device
    folder = args.data / args.dataset
    require_folders(folder)
    data = splits(folder, args.rows)
    with tempfile.TemporaryDirectory(prefix="graftline-bench-") as tmp:
        if args.random_init:
            BACKBONE = str(random_weights(Path(args.backbone), Path(tmp) / "random"))
        rounds: dict[str, list[dict]] = {name: [] for name in args.runs}
        for repeat in range(args.repeat):  # alternate the order, so a drifting machine hits every run alike
            for index, name in enumerate(args.runs if repeat % 2 == 0 else reversed(args.runs)):
                started = time.perf_counter()
                rounds[name].append(measure(name, data, Path(tmp) / f"run-{repeat}-{index}"))
                print(f"{name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        results = [median_row(rows) for rows in rounds.values()]
        padding = {"padding_random": padding_share(data, False), "padding_grouped": padding_share(data, True)}
    by = {r["run"]: r for r in results if "error" not in r}
    for r in results:
        for peer in ("trainer defaults", "trainer best"):
            if peer in by and "error" not in r:
                r[f"x_{peer.replace(' ', '_')}"] = r["examples_per_second"] / by[peer]["examples_per_second"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and DEVICE != "cpu" else "cpu"
    device += "" if "cpu" not in device else f" ({torch.get_num_threads()} threads)"
    name = Path(args.backbone).name if args.random_init else args.backbone
    report = {
        "backbone": name + (" (random weights)" if args.random_init else ""),
        "device": device,
        "dataset": args.dataset,
        "rows": args.rows,
        "batch": BATCH,
        "max_length": MAX_LENGTH,
        "epochs": EPOCHS,
        "repeat": args.repeat,
        **padding,
        "torch": torch.__version__,
        "runs": results,
    }
    unusual = [part for part, usual in ((name, "minilm-l6"), (args.dataset, "sst2")) if part != usual]
    stem = "-".join(["train", *unusual])
    out = args.results or Path(__file__).parent / "results" / (stem.replace("/", "-") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    columns = ["run", "examples_per_second", "tokens_per_second", "x_trainer_defaults", "x_trainer_best",
               "train_seconds", "dev_accuracy", "mfu", "peak_gib", "error"]  # fmt: skip
    table = pd.DataFrame(results)
    table = table[[c for c in columns if c in table and table[c].notna().any()]]
    print(f"{report['backbone']} on {device}, {args.dataset}, {args.rows} rows, batch {BATCH}, "
          f"max length {MAX_LENGTH}, {EPOCHS} epoch(s), torch {torch.__version__}")  # fmt: skip
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
