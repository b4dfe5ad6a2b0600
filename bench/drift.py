"""Does the drift monitor notice a new domain, and can it tell what the domain costs without labels?

For each domain of `amazon_multidomain` (books, dvd, electronics, kitchen; --data DIR, else
$GRAFTLINE_DATA, else the development datasets next to the repository) a classifier is fine-tuned
on that domain's train file by graftline's fine-tuning step and calibrated on a validation split
carved from it (temperature scaling, as the evaluate step does). Its reference is a held-out test
split of the same file, as a registered version's is.

Windows of --window texts (200) are then drawn:
    same domain    from the domain's dev file (never trained or calibrated on): a flag is a false alarm
    other domain   from each other domain's rows: a flag is a detection
and every detector of the monitor (tasks/serve/monitor.py) is run on each at the level it votes with
(alpha / 4), plus the verdict. Rows are profiled once per model and windows are sampled from the
profiles (one forward pass per text either way).

The label-free accuracy estimate (ATC, and mean calibrated confidence as its peer) is compared with
the true accuracy on each of the 12 (source, target) pairs, over the target's whole pool. The
decision time is the monitor's whole check on 2 000 texts: profile them, then every test, against a
cached reference; it is timed on the fine-tuned model, on a copy keeping 3 of its 6 layers (the
shape of the distilled student a lifecycle serves; its predictions are not used), and on that copy's
INT8 export (what the monitor runs when a version has one).

    .venv/bin/python bench/drift.py                 # ~20 min on 2 cores (4 fine-tunings)
    .venv/bin/python bench/drift.py --work /tmp/d   # keeps the models there; a rerun reuses them
Results also go to bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MEASURED_WITH, add_data_option, require_folders  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

from graftline.tasks.data.splits import Split, Splits, encode_labels, read_table, stratified_split  # noqa: E402
from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.engine.backbones import layer_student as make_layer_student  # noqa: E402
from graftline.tasks.engine.backbones import student_layers  # noqa: E402
from graftline.tasks.evaluate import drift  # noqa: E402
from graftline.tasks.evaluate.calibration import (  # noqa: E402
    expected_calibration_error,
    fit_temperature,
    guarded_temperature,
    softmax,
)
from graftline.tasks.serve.monitor import (  # noqa: E402
    DETECTORS,
    Profile,
    Reference,
    compare,
    profile,
    profile_with,
)
from graftline.tasks.settings import FinetuneParams, ModelParams, MonitorParams  # noqa: E402

DOMAINS = ("books", "dvd", "electronics", "kitchen")
SEED = 13


def train_domain(folder: Path, domain: str, args, work: Path):
    """(model folder, reference split, validation split) of a classifier fine-tuned on `domain`."""
    from graftline.tasks.train.finetune import finetune

    pool = read_table(str(folder / domain / "train.csv"), "text", "label")
    rest, test = stratified_split(pool, args.reference_rows / len(pool), SEED, domain)
    train, validation = stratified_split(rest, args.validation_rows / len(rest), SEED, domain)
    splits = Splits(
        Split("train", train.reset_index(drop=True), domain),
        Split("validation", validation.reset_index(drop=True), domain),
        Split("test", test.reset_index(drop=True), domain),
    )
    out = work / domain
    if not (out / "config.json").is_file():
        settings = dict(MEASURED_WITH, backbone=args.backbone, epochs=args.epochs, batch_size=16, patience=args.epochs)
        finetune(splits, FinetuneParams(**settings), ModelParams(max_length=args.max_length, seed=SEED), out)
    return out, splits


def profiled(model, tokenizer, frame, labels, max_length: int, temperature: float) -> tuple[Profile, np.ndarray]:
    texts = frame["text"].fillna("").astype(str).tolist()
    return profile(model, tokenizer, texts, max_length, temperature), np.asarray(
        encode_labels(frame["label"], labels, "")
    )


def decision_seconds(model, tokenizer, texts, reference, labels, thresholds, args, forward=None) -> float:
    """Wall time of one monitor check of `texts`: profile them (with the torch model, or `forward`:
    the INT8 export's), then every test and the estimate."""
    started = time.perf_counter()
    window = profile_with(forward, texts, 1.0) if forward else profile(model, tokenizer, texts, args.max_length, 1.0)
    compare(reference, window, labels, thresholds)
    return time.perf_counter() - started


def int8_forward(model, tokenizer, max_length: int, folder: Path):
    """The monitor's forward pass through an INT8 export of `model`, as the export step writes it."""
    from graftline.tasks.export.onnx import export_onnx, quantize_int8
    from graftline.tasks.export.predictors import onnx_profiler

    folder.mkdir(parents=True, exist_ok=True)
    int8 = quantize_int8(export_onnx(model, tokenizer, folder / "model.onnx"), folder / "model.int8.onnx")
    return onnx_profiler(int8, tokenizer, max_length)


def subset(p: Profile, rows: np.ndarray) -> Profile:
    return Profile(p.probabilities[rows], p.embeddings[rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_option(parser, "holding amazon_multidomain/")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--reference-rows", type=int, default=400, help="held-out rows per domain: the reference")
    parser.add_argument("--validation-rows", type=int, default=300, help="rows the temperature is fitted on")
    parser.add_argument("--window", type=int, default=200, help="texts per window")
    parser.add_argument("--windows", type=int, default=20, help="windows per (source, target) pair")
    parser.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate of the verdict")
    parser.add_argument(
        "--student-layers", type=int, default=3, help="also time the check on a copy keeping this many layers (0: no)"
    )
    parser.add_argument("--work", type=Path, help="keep the fine-tuned models here (reused when present)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "drift.json")
    args = parser.parse_args()
    folder = args.data / "amazon_multidomain"
    require_folders(*(folder / d for d in DOMAINS))
    rng = np.random.default_rng(SEED)
    thresholds = MonitorParams(alpha=args.alpha, seed=SEED)
    flags: dict[tuple[str, str], dict[str, list[bool]]] = {}
    accuracy: dict[tuple[str, str], dict[str, float]] = {}
    timing = {}
    ece: dict[tuple[str, str], tuple[float, float, float]] = {}  # raw, fitted T, guarded T (what graftline uses)
    with tempfile.TemporaryDirectory(prefix="graftline-drift-") as tmp:
        work = args.work or Path(tmp)
        for source in DOMAINS:
            model_dir, splits = train_domain(folder, source, args, work)
            model, tokenizer = (
                backbones.load_classifier(str(model_dir)).eval(),
                backbones.load_tokenizer(str(model_dir)),
            )
            labels = backbones.labels_of(model)
            validation, validation_truth = profiled(
                model, tokenizer, splits.validation.frame, labels, args.max_length, 1
            )
            fitted = fit_temperature(np.log(validation.probabilities), validation_truth)
            temperature, why = guarded_temperature(np.log(validation.probabilities), validation_truth)
            print(f"{source}: fitted temperature {fitted:.2f}; graftline's: {why}", flush=True)
            ref_profile, ref_truth = profiled(model, tokenizer, splits.test.frame, labels, args.max_length, temperature)
            reference = Reference(ref_profile, ref_truth)
            print(f"{source}: temperature {temperature:.2f}, reference accuracy {reference.accuracy:.3f}", flush=True)
            for target in DOMAINS:
                file = "dev.csv" if target == source else "all.csv"
                frame = read_table(str(folder / target / file), "text", "label")
                raw, truth = profiled(model, tokenizer, frame, labels, args.max_length, 1.0)
                pool = Profile(softmax(np.log(raw.probabilities), temperature), raw.embeddings)
                ece[source, target] = (
                    expected_calibration_error(raw.probabilities, truth),
                    expected_calibration_error(softmax(np.log(raw.probabilities), fitted), truth),
                    expected_calibration_error(pool.probabilities, truth),
                )
                if target != source and len(frame) >= 2000 and source not in timing:
                    texts = frame["text"].fillna("").astype(str).tolist()[:2000]
                    timing[source] = decision_seconds(model, tokenizer, texts, reference, labels, thresholds, args)
                    if args.student_layers:  # the served model's shape: a distilled student keeps fewer layers
                        kept = student_layers(f"teacher-layers:{args.student_layers}", model.config.num_hidden_layers)
                        student = make_layer_student(model, kept).eval()
                        timing[f"{source} ({args.student_layers}-layer student)"] = decision_seconds(
                            student, tokenizer, texts, reference, labels, thresholds, args
                        )
                        forward = int8_forward(student, tokenizer, args.max_length, work / f"{source}-student-onnx")
                        timing[f"{source} ({args.student_layers}-layer student, INT8 export)"] = decision_seconds(
                            student, tokenizer, texts, reference, labels, thresholds, args, forward
                        )
                correct = pool.predicted == truth
                accuracy[source, target] = {
                    "true": float(correct.mean()),
                    "atc": drift.estimate_accuracy(pool.confidence, reference.atc_threshold),
                    "confidence": drift.estimate_accuracy(pool.confidence),
                    "raw_confidence": drift.estimate_accuracy(raw.confidence),
                }
                votes: dict[str, list[bool]] = {name: [] for name in (*DETECTORS, "verdict")}
                for _ in range(args.windows):
                    rows = rng.choice(len(frame), size=min(args.window, len(frame)), replace=False)
                    report = compare(reference, subset(pool, rows), labels, thresholds)
                    for name, detection in report.detections.items():
                        votes[name].append(detection.detected)
                    votes["verdict"].append(report.verdict != "no drift")
                flags[source, target] = votes
                a = accuracy[source, target]
                print(
                    f"  {target}: accuracy {a['true']:.3f} (ATC {a['atc']:.3f}, confidence {a['confidence']:.3f}); "
                    "flagged " + ", ".join(f"{n} {np.mean(v):.2f}" for n, v in votes.items()),
                    flush=True,
                )
    print_results(flags, accuracy, timing, ece, args)


def print_results(flags, accuracy, timing, ece, args) -> None:
    names = (*DETECTORS, "verdict")
    same = [pair for pair in flags if pair[0] == pair[1]]
    cross = [pair for pair in flags if pair[0] != pair[1]]
    print(f"\nDrift detection, windows of {args.window} texts, {args.windows} windows per pair; each detector at "
          f"alpha/{len(DETECTORS)} = {args.alpha / len(DETECTORS):.4f}, the verdict at alpha {args.alpha}")  # fmt: skip
    print("| detector | power (cross-domain windows flagged) | false alarms (same-domain windows flagged) |")
    print("|---|---|---|")
    for name in names:
        power = np.mean([f for pair in cross for f in flags[pair][name]])
        false = np.mean([f for pair in same for f in flags[pair][name]])
        print(f"| {name} | {power:.3f} | {false:.3f} |")
    print("\nPower per pair (verdict), rows: model trained on; columns: windows from")
    print("| trained on | " + " | ".join(DOMAINS) + " |")
    print("|---|" + "---|" * len(DOMAINS))
    for source in DOMAINS:
        print(f"| {source} | " + " | ".join(f"{np.mean(flags[source, t]['verdict']):.2f}" for t in DOMAINS) + " |")
    print("\nLabel-free accuracy estimate on each cross-domain pair (the target's 2 000 rows)")
    print("| pair | true accuracy | ATC estimate | error | mean-confidence estimate | error | uncalibrated | error |")
    print("|---|---|---|---|---|---|---|---|")
    errors = {"atc": [], "confidence": [], "raw_confidence": []}
    for source, target in cross:
        a = accuracy[source, target]
        for method in errors:
            errors[method].append(a[method] - a["true"])
        print(
            f"| {source} -> {target} | {a['true']:.3f} | {a['atc']:.3f} | {a['atc'] - a['true']:+.3f} | "
            f"{a['confidence']:.3f} | {a['confidence'] - a['true']:+.3f} | "
            f"{a['raw_confidence']:.3f} | {a['raw_confidence'] - a['true']:+.3f} |"
        )
    for method, e in errors.items():
        print(f"{method}: mean absolute error {np.mean(np.abs(e)):.4f}, mean error {np.mean(e):+.4f}")
    print("\nExpected calibration error (15 bins) before and after temperature scaling, per (model, set):")
    print("the temperature as fitted, and as graftline keeps it (guarded: T = 1 unless it earns its place)")
    print("| trained on | set | ECE before | after (fitted T) | after (guarded T) | guarded worse? |")
    print("|---|---|---|---|---|---|")
    for (source, target), (before, fitted, guarded) in ece.items():
        where = "dev (same domain)" if source == target else f"{target} (all)"
        worse = "yes" if guarded > before + 1e-9 else "no"
        print(f"| {source} | {where} | {before:.4f} | {fitted:.4f} | {guarded:.4f} | {worse} |")
    print("\nDecision time for 2 000 texts (profile + every test, cached reference): "
          + ", ".join(f"{s} {t:.1f} s" for s, t in timing.items()))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "work")}
    args.out.write_text(
        json.dumps(
            {
                "setting": setting,
                "flags": {
                    f"{s}->{t}": {n: float(np.mean(v)) for n, v in votes.items()} for (s, t), votes in flags.items()
                },
                "accuracy": {f"{s}->{t}": a for (s, t), a in accuracy.items()},
                "decision_seconds_2000": timing,
                "ece": {f"{s}->{t}": {"before": b, "after_fitted": f, "after": g} for (s, t), (b, f, g) in ece.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
