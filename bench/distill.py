"""Does distillation keep 97% of the teacher with a student that is really faster on the CPU?

SST-2 (`sst2` in the datasets folder: --data DIR, else $GRAFTLINE_DATA, else the development datasets
next to the repository; its dev split as the test set): fine-tune a teacher, then distil it into
students with graftline's distillation step, export each student to ONNX fp32 and dynamic INT8 and
time teacher, student and exports on the same texts and threads (graftline's export step). Reports
per student: accuracy, retention (student / teacher accuracy), parameter ratio, and speed-ups over
the teacher in torch fp32 at batch 32 and batch 1, with the INT8 model's agreement with its torch
student. The teacher is the peer every ratio is measured against, in the same run.

    .venv/bin/python bench/distill.py                       # MiniLM-L6 teacher, ~25 min on 2 CPU cores
    .venv/bin/python bench/distill.py --train-rows 2000     # a quick look
    .venv/bin/python bench/distill.py --data DIR            # the datasets from another folder
    .venv/bin/python bench/distill.py --teacher mpnet-base --students minilm-l6 teacher-layers:6   # with time or a GPU
Results also go to bench/results/distill.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import MEASURED_WITH, add_data_option, require_folders, sst2_splits  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

import pandas as pd  # noqa: E402

from graftline.tasks.data.splits import Splits  # noqa: E402
from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.evaluate.scores import evaluate_model  # noqa: E402
from graftline.tasks.export.onnx import export_and_measure  # noqa: E402
from graftline.tasks.settings import DistillParams, ExportParams, FinetuneParams, ModelParams  # noqa: E402
from graftline.tasks.train.distill import distill  # noqa: E402
from graftline.tasks.train.finetune import finetune  # noqa: E402

SEED, MAX_LENGTH, VALIDATION_ROWS = 13, 64, 500
MODEL = ModelParams(max_length=MAX_LENGTH, device="auto", precision="auto", seed=SEED)
# Every optimisation setting spelt out, so the measured work does not move with the project's defaults.
TEACHER_BUDGET = dict(epochs=2, batch_size=32, learning_rate=5e-5, patience=2, **MEASURED_WITH)
STUDENT_BUDGET = dict(epochs=3, batch_size=32, learning_rate=1e-4, patience=3, **MEASURED_WITH)
# Student variants: name -> (student spec, hidden-state weight, augmented copies per training text)
VARIANTS = {
    "layers:3 logits": ("teacher-layers:3", 0.0, 0),
    "layers:3 logits+hidden+aug": ("teacher-layers:3", 1.0, 1),
    "layers:2 logits+hidden+aug": ("teacher-layers:2", 1.0, 1),
}


def run(folder: Path, teacher_spec: str, variants: dict[str, tuple[str, float, int]], train_rows: int) -> dict:
    splits = sst2_splits(folder, train_rows, VALIDATION_ROWS, SEED)
    report = {
        "teacher": teacher_spec,
        "train_rows": len(splits.train.frame),
        "test_rows": len(splits.test.frame),
        "students": [],
    }
    with tempfile.TemporaryDirectory(prefix="graftline-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        teacher = finetune(
            splits, FinetuneParams(backbone=teacher_spec, strategy="full", **TEACHER_BUDGET), MODEL, root / "teacher"
        )
        report["teacher_train_seconds"] = time.perf_counter() - started
        report["teacher_accuracy"] = _accuracy(teacher.model_dir, splits)
        log(
            f"teacher {teacher_spec}: accuracy {report['teacher_accuracy']:.4f} "
            f"in {report['teacher_train_seconds']:.0f} s"
        )
        for i, (name, (student, hidden, copies)) in enumerate(variants.items()):
            params = DistillParams(
                student=student,
                alpha=0.5,
                temperature=2.0,
                hidden_weight=hidden,
                augment_copies=copies,
                **STUDENT_BUDGET,
            )
            started = time.perf_counter()
            result = distill(teacher.model_dir, splits, params, MODEL, root / f"student{i}")
            seconds = time.perf_counter() - started
            measured = export_and_measure(
                result.model_dir,
                teacher.model_dir,
                splits.test,
                ExportParams(
                    quantize=True, min_agreement=0.95, max_accuracy_drop=0.02, latency_rows=len(splits.test.frame)
                ),
                MAX_LENGTH,
                root / f"export{i}",
            )
            rows = {r.name: r for r in measured.rows}
            t, s, int8 = rows["teacher"], rows["student"], rows["student-onnx-int8"]
            entry = {
                "student": name,
                "spec": student,
                "hidden_weight": hidden,
                "augment_copies": copies,
                "distill_seconds": seconds,
                "parameter_ratio": result.parameter_ratio,
                "accuracy": s.accuracy,
                "retention": s.accuracy / t.accuracy,
                "speedup_batch_32": s.examples_per_second_batch_32 / t.examples_per_second_batch_32,
                "speedup_batch_1": t.ms_batch_1 / s.ms_batch_1,
                "onnx_speedup_batch_32": rows["student-onnx"].examples_per_second_batch_32
                / t.examples_per_second_batch_32,
                "int8_accuracy": int8.accuracy,
                "int8_agreement": int8.agreement,
                "int8_speedup_batch_32": int8.examples_per_second_batch_32 / t.examples_per_second_batch_32,
                "int8_speedup_batch_1": t.ms_batch_1 / int8.ms_batch_1,
                "latency": measured.table(),
            }
            report["students"].append(entry)
            log(
                f"{name}: accuracy {s.accuracy:.4f} (retention {entry['retention']:.3f}), "
                f"{entry['speedup_batch_32']:.2f}x torch, {entry['int8_speedup_batch_32']:.2f}x int8 at batch 32"
            )
    return report


def _accuracy(model_dir: Path, splits: Splits) -> float:
    model = backbones.load_classifier(str(model_dir))
    return evaluate_model(model, backbones.load_tokenizer(str(model_dir)), splits.test, MAX_LENGTH).accuracy


def print_table(report: dict) -> None:
    print(
        f"teacher {report['teacher']}: test accuracy {report['teacher_accuracy']:.4f} "
        f"({report['train_rows']} training rows, {report['test_rows']} test rows)"
    )
    rows = [
        {
            "student": s["student"],
            "params": f"{s['parameter_ratio']:.2f}",
            "accuracy": f"{s['accuracy']:.4f}",
            "retention": f"{s['retention']:.3f}",
            "torch x (b32)": f"{s['speedup_batch_32']:.2f}",
            "torch x (b1)": f"{s['speedup_batch_1']:.2f}",
            "onnx x (b32)": f"{s['onnx_speedup_batch_32']:.2f}",
            "int8 x (b32)": f"{s['int8_speedup_batch_32']:.2f}",
            "int8 x (b1)": f"{s['int8_speedup_batch_1']:.2f}",
            "int8 acc": f"{s['int8_accuracy']:.4f}",
            "int8 agree": f"{s['int8_agreement']:.3f}",
            "distill s": f"{s['distill_seconds']:.0f}",
        }
        for s in report["students"]
    ]
    table = pd.DataFrame(rows)
    try:
        print(table.to_markdown(index=False))
    except ImportError:
        print(table.to_string(index=False))
    for s in report["students"]:
        met = s["retention"] >= 0.97 and s["speedup_batch_32"] >= 2 and s["int8_speedup_batch_32"] >= 3
        print(
            f"{s['student']}: retention >= 0.97, >= 2x torch and >= 3x int8 at batch 32: {'met' if met else 'not met'}"
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="minilm-l6")
    parser.add_argument("--train-rows", type=int, default=8000)
    parser.add_argument(
        "--students",
        nargs="+",
        help="student specs (logits + hidden + 1 augmented copy each); default: the three variants in VARIANTS",
    )
    add_data_option(parser, "holding sst2/")
    args = parser.parse_args()
    folder = args.data / "sst2"
    require_folders(folder)
    variants = {f"{s} logits+hidden+aug": (s, 1.0, 1) for s in args.students} if args.students else VARIANTS
    report = run(folder, args.teacher, variants, args.train_rows)
    out = Path(__file__).parent / "results" / "distill.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_table(report)


if __name__ == "__main__":
    main()
