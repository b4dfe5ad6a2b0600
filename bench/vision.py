"""Image transfer on a small set: how accurate, how fast, and does INT8 keep it?

`hymenoptera_ants_bees` in the datasets folder (--data DIR, else $GRAFTLINE_DATA, else the
development datasets next to the repository): 245 training images of ants and bees, 153 for
validation. Its own split is used: the validation folder is the test set, and graftline's early-
stopping validation split is carved from the training folder (10%, seeded, stratified).

Rows, per backbone (EfficientNet-Lite0, Lite2) and strategy (linear-probe, full, lp-ft), over seeds:
test accuracy (mean, min, max) and training seconds on this machine. Then, per seed, the Lite2 lp-ft
teacher distilled into Lite0. Then the Lite0 lp-ft model of the first seed exported to ONNX and INT8
(static, calibrated on training images): accuracy, images that change class, speed. The peer in the
same run: the same Lite0 fine-tuned in full by a plain PyTorch loop as the PyTorch transfer-learning
tutorial writes it (DataLoader workers decoding and augmenting each image every epoch, SGD with
momentum 0.9 at 0.001), for the same epochs: its test accuracy and training seconds against graftline's.

    .venv/bin/python bench/vision.py                          # everything, ~90 min on 2 CPU cores
    .venv/bin/python bench/vision.py --backbones efficientnet-lite0 --seeds 1   # a quick look
    .venv/bin/python bench/vision.py --data DIR               # the datasets from another folder
Results also go to bench/results/vision.json (--out: another file; rewritten after every row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import MEASURED_WITH, add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

import pandas as pd  # noqa: E402

from graftline.tasks import modality as modalities  # noqa: E402
from graftline.tasks.engine.training import TrainingIO  # noqa: E402
from graftline.tasks.evaluate.scores import evaluate_sets  # noqa: E402
from graftline.tasks.export.onnx import export_and_measure  # noqa: E402
from graftline.tasks.settings import (  # noqa: E402
    DataParams,
    DistillParams,
    ExportParams,
    FinetuneParams,
    ImageTrainingParams,
    ModelParams,
)
from graftline.tasks.train.distill import distill  # noqa: E402
from graftline.tasks.train.finetune import finetune  # noqa: E402

# Every optimisation setting spelt out (graftline's image defaults when this was written), so the
# measured work does not move with the project's defaults.
IMAGES = ImageTrainingParams(crop_scale_min=0.25, flip=True, freeze_batchnorm="auto")
BUDGET = MEASURED_WITH | dict(epochs=8, batch_size=16, patience=2, images=IMAGES)
STRATEGIES = {  # strategy -> its settings
    "linear-probe": dict(learning_rate=1e-3),
    "full": dict(learning_rate=3e-4),
    "lp-ft": dict(learning_rate=3e-4, probe_epochs=3, probe_learning_rate=1e-3, backbone_rate=0.1),
}
STUDENT = BUDGET | dict(student="efficientnet-lite0", alpha=0.5, temperature=2.0, learning_rate=3e-4)
SEEDS = (13, 14, 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet-lite0", "efficientnet-lite2"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=len(SEEDS), choices=range(1, len(SEEDS) + 1))
    parser.add_argument("--epochs", type=int, default=BUDGET["epochs"], help="most epochs of every training")
    parser.add_argument("--no-peer", action="store_true", help="skip the plain PyTorch loop")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vision.json")
    add_data_option(parser, "holding hymenoptera_ants_bees/")
    args = parser.parse_args()
    folder = args.data / "hymenoptera_ants_bees"
    require_folders(folder / "train", folder / "val")
    data = DataParams(train_path=str(folder / "train"), test_path=str(folder / "val"), eval_sets={})
    splits = modalities.of_data(data).read_splits(data)  # a folder of class folders: images
    report = {
        "dataset": str(folder.name),
        "rows": splits.row_counts(),
        "split": "the set's own train/val folders; validation carved from train",
        "runs": [],
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[: args.seeds]
    BUDGET["epochs"] = STUDENT["epochs"] = args.epochs

    def save() -> None:
        out.write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory(prefix="graftline-bench-") as tmp:
        root = Path(tmp)
        io = TrainingIO(cache_dir=root / "cache")
        teachers = {}
        for backbone in args.backbones:
            for strategy in args.strategies:
                for seed in seeds:
                    model = ModelParams(seed=seed)
                    params = FinetuneParams(backbone=backbone, strategy=strategy, **BUDGET | STRATEGIES[strategy])
                    folder_out = root / f"{backbone}-{strategy}-{seed}"
                    started = time.perf_counter()
                    result = finetune(splits, params, model, folder_out, io)
                    seconds = time.perf_counter() - started
                    accuracy = _accuracy(folder_out, splits, model)
                    report["runs"].append(
                        {
                            "backbone": backbone,
                            "strategy": strategy,
                            "seed": seed,
                            "accuracy": accuracy,
                            "train_seconds": seconds,
                            "epochs": len(result.training.history),
                            "best_epoch": result.training.best_epoch,
                        }
                    )
                    log(f"{backbone} {strategy} seed {seed}: accuracy {accuracy:.4f} in {seconds:.0f} s")
                    save()
                    if strategy == "lp-ft":
                        teachers[(backbone, seed)] = folder_out
        report["students"] = []
        for seed in seeds:
            teacher = teachers.get(("efficientnet-lite2", seed))
            if teacher is None:
                continue
            model = ModelParams(seed=seed)
            started = time.perf_counter()
            student = distill(teacher, splits, DistillParams(**STUDENT), model, root / f"student-{seed}", io)
            seconds = time.perf_counter() - started
            accuracy = _accuracy(student.model_dir, splits, model)
            teacher_accuracy = _accuracy(teacher, splits, model)
            report["students"].append(
                {"seed": seed, "accuracy": accuracy, "teacher_accuracy": teacher_accuracy, "train_seconds": seconds}
            )
            log(f"student seed {seed}: accuracy {accuracy:.4f} (teacher {teacher_accuracy:.4f}) in {seconds:.0f} s")
            save()
        served = teachers.get(("efficientnet-lite0", seeds[0]))
        if served is not None:
            params = ExportParams(quantize=True, min_agreement=0.95, max_accuracy_drop=0.02, latency_rows=64)
            measured = export_and_measure(
                served, None, splits.test, params, 0, root / "export", calibration=splits.train.inputs
            )
            report["export"] = measured.table()
            save()
        if not args.no_peer and "efficientnet-lite0" in args.backbones:
            report["peer"] = plain_pytorch(splits, BUDGET["epochs"], seeds[0])
            ours = next(
                (r for r in report["runs"] if r["backbone"] == "efficientnet-lite0" and r["strategy"] == "full"), None
            )
            report["peer"]["graftline_full"] = ours
            save()
    print_table(report)


def _accuracy(model_dir: Path, splits, model: ModelParams) -> float:
    evaluations, _ = evaluate_sets(model_dir, splits, model)
    return evaluations["test"].accuracy


def plain_pytorch(splits, epochs: int, seed: int) -> dict:
    """The tutorial's loop on graftline's Lite0 network: per-epoch decoding in DataLoader workers."""
    import numpy as np
    import torch

    from graftline.tasks.engine import backbones
    from graftline.tasks.engine.image_inputs import stored_square

    torch.manual_seed(seed)
    labels = splits.labels
    model = backbones.load_classifier("efficientnet-lite0", labels)
    processor = backbones.load_tokenizer("efficientnet-lite0")
    size = processor.image_size

    class Images(torch.utils.data.Dataset):
        def __init__(self, split, train: bool):
            self.paths, self.train = split.inputs, train
            self.labels = [labels.index(label) for label in split.frame["label"]]

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            from PIL import Image

            picture = Image.open(self.paths[i]).convert("RGB")
            if self.train:  # RandomResizedCrop(size) + RandomHorizontalFlip, as the tutorial
                rng = np.random.default_rng([seed, i, int(torch.randint(1 << 30, ()))])
                crop = picture.crop(_tutorial_box(rng, *picture.size)).resize((size, size), Image.BILINEAR)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                pixels = np.asarray(crop)[None]
            else:
                pixels = stored_square(picture, processor.stored_size)[None]
                offset = (processor.stored_size - size) // 2
                pixels = pixels[:, offset : offset + size, offset : offset + size]
            return processor.pixel_values(torch.from_numpy(np.ascontiguousarray(pixels)))[0], self.labels[i]

    train = torch.utils.data.DataLoader(Images(splits.train, True), batch_size=16, shuffle=True, num_workers=2)
    test = torch.utils.data.DataLoader(Images(splits.test, False), batch_size=64, num_workers=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for pixels, target in train:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, target).backward()
            optimizer.step()
        scheduler.step()
    seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for pixels, target in test:
            correct += int((model(pixel_values=pixels).logits.argmax(-1) == target).sum())
    accuracy = correct / len(splits.test.frame)
    log(f"plain PyTorch loop: accuracy {accuracy:.4f} in {seconds:.0f} s")
    return {"accuracy": accuracy, "train_seconds": seconds, "epochs": epochs}


def _tutorial_box(rng, width: int, height: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (scale 0.08-1, ratio 3/4-4/3) as (left, top, right, bottom)."""
    import math

    for _ in range(10):
        area = width * height * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def print_table(report: dict) -> None:
    print(f"{report['dataset']}: {report['rows']} ({report['split']})")
    groups: dict[tuple, list] = {}
    for run in report["runs"]:
        groups.setdefault((run["backbone"], run["strategy"]), []).append(run)
    rows = [
        {
            "backbone": backbone,
            "strategy": strategy,
            "seeds": len(runs),
            "accuracy mean": f"{statistics.mean(r['accuracy'] for r in runs):.4f}",
            "min": f"{min(r['accuracy'] for r in runs):.4f}",
            "max": f"{max(r['accuracy'] for r in runs):.4f}",
            "train s (mean)": f"{statistics.mean(r['train_seconds'] for r in runs):.0f}",
            "epochs run": "/".join(str(r["epochs"]) for r in runs),
        }
        for (backbone, strategy), runs in groups.items()
    ]
    show(pd.DataFrame(rows))
    if report.get("students"):
        students = report["students"]
        print(
            f"Lite2 lp-ft -> Lite0 student: accuracy mean {statistics.mean(s['accuracy'] for s in students):.4f} "
            f"(teachers {statistics.mean(s['teacher_accuracy'] for s in students):.4f}), "
            f"{statistics.mean(s['train_seconds'] for s in students):.0f} s"
        )
    if report.get("export"):
        show(
            pd.DataFrame(report["export"])[
                ["name", "accuracy", "agreement", "ms_batch_1", "examples_per_second_batch_32"]
            ]
        )
        rows = {r["name"]: r for r in report["export"]}
        fp32, int8 = rows["teacher-onnx"], rows["teacher-onnx-int8"]
        changed = round((1 - int8["agreement"]) * report["rows"]["test_rows"])
        gap = round(abs(fp32["accuracy"] - int8["accuracy"]) * report["rows"]["test_rows"])
        print(f"INT8 vs fp32 ONNX: {changed} test images change class, accuracy differs by {gap} image(s)")
    if report.get("peer"):
        peer, ours = report["peer"], report["peer"].get("graftline_full")
        line = f"plain PyTorch loop (full, {peer['epochs']} epochs): accuracy {peer['accuracy']:.4f}"
        line += f" in {peer['train_seconds']:.0f} s"
        if ours:  # per epoch: early stopping may end graftline's run sooner
            per_epoch = ours["train_seconds"] / ours["epochs"], peer["train_seconds"] / peer["epochs"]
            line += f"; graftline full seed {ours['seed']}: {ours['accuracy']:.4f} in {ours['train_seconds']:.0f} s"
            line += f" ({ours['epochs']} epochs); {per_epoch[1]:.1f} s against {per_epoch[0]:.1f} s an epoch"
            line += f" ({per_epoch[1] / per_epoch[0]:.2f}x)"
        print(line)


def show(table: pd.DataFrame) -> None:
    try:
        print(table.to_markdown(index=False))
    except ImportError:
        print(table.to_string(index=False))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
