"""Are the explanations faithful? Integrated Gradients against attention and random attributions on SST-2.

A MiniLM-L6 classifier is fine-tuned by graftline's fine-tuning step on a seeded sample of SST-2's
train file (`sst2` in the datasets folder: --data DIR, else $GRAFTLINE_DATA, else the development
datasets next to the repository) and distilled into a 3-layer student by graftline's distillation
step. --texts texts of SST-2's dev file are then explained by both with the explain step's code
(tasks/evaluate/explain.py): Integrated Gradients on the embeddings (--steps points), and ERASER's
comprehensiveness and sufficiency (AOPC over the top 1/5/10/20/50% of tokens, deletion variant) for
IG, for attention (last layer, [CLS] row, heads averaged) and for a random ranking: the peers IG must
beat in the same run. Also the teacher-student agreement of the attributions and the seconds per
explained text (IG only; the faithfulness passes are not timed).

    .venv/bin/python bench/explain.py                # ~10 min on 2 cores
    .venv/bin/python bench/explain.py --work /tmp/e  # keeps the models there; a rerun reuses them
Results also go to bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import MEASURED_WITH, add_data_option, require_folders, sst2_splits  # noqa: E402

from graftline.tasks.environment import apply_defaults

apply_defaults(HF_HUB_OFFLINE="1")

from graftline.tasks.engine import backbones  # noqa: E402
from graftline.tasks.evaluate import explain as ex  # noqa: E402
from graftline.tasks.settings import DistillParams, FinetuneParams, ModelParams  # noqa: E402

SEED, VALIDATION_ROWS = 13, 500


def trained(splits, args, work: Path) -> tuple[Path, Path]:
    from graftline.tasks.train.distill import distill
    from graftline.tasks.train.finetune import finetune

    model = ModelParams(max_length=args.max_length, seed=SEED)
    teacher, student = work / "teacher", work / "student"
    if not (teacher / "config.json").is_file():
        settings = dict(MEASURED_WITH, backbone="minilm-l6", epochs=args.epochs, batch_size=32, patience=args.epochs)
        teacher = finetune(splits, FinetuneParams(**settings), model, teacher).model_dir
    if not (student / "config.json").is_file():
        params = DistillParams(student="teacher-layers:3", epochs=args.epochs, batch_size=32, patience=args.epochs)
        student = distill(teacher, splits, params, model, student).model_dir
    return teacher, student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_option(parser, "holding sst2/")
    parser.add_argument("--rows", type=int, default=4000, help="training rows sampled from SST-2's train file")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--texts", type=int, default=100, help="dev texts explained")
    parser.add_argument("--steps", type=int, default=32, help="Integrated Gradients path points (the step's default)")
    parser.add_argument("--work", type=Path, help="keep the trained models here (reused when present)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "explain.json")
    args = parser.parse_args()
    folder = args.data / "sst2"
    require_folders(folder)
    splits = sst2_splits(folder, args.rows, VALIDATION_ROWS, SEED)
    sample = splits.test.frame.sample(n=min(args.texts, len(splits.test.frame)), random_state=SEED)
    texts, truths = sample["text"].tolist(), sample["label"].tolist()
    results, explained = {}, {}
    with tempfile.TemporaryDirectory(prefix="graftline-explain-") as tmp:
        work = args.work or Path(tmp)
        for role, folder_ in zip(("teacher", "student"), trained(splits, args, work), strict=True):
            model, tokenizer = backbones.load_classifier(str(folder_)).eval(), backbones.load_tokenizer(str(folder_))
            started = time.perf_counter()
            explained[role] = ex.explain(model, tokenizer, texts, args.max_length, args.steps, 64, truths)
            seconds = (time.perf_counter() - started) / len(texts)
            scores = {
                "ig": ex.faithfulness(model, explained[role]),
                "attention": ex.faithfulness(
                    model, explained[role], [ex.attention_scores(model, e) for e in explained[role]]
                ),
                "random": ex.faithfulness(model, explained[role], ex.random_scores(explained[role], SEED)),
            }
            accuracy = sum(e.label == e.true_label for e in explained[role]) / len(texts)
            results[role] = {"seconds_per_example": seconds, "accuracy_on_sample": accuracy,
                             **{f"{m}_{k}": getattr(f, k) for m, f in scores.items()
                                for k in ("comprehensiveness", "sufficiency")}}  # fmt: skip
            print(f"{role}: {results[role]}", flush=True)
    paired = ex.agreement(explained["teacher"], explained["student"])
    print(f"\nSST-2 dev, {len(texts)} texts, MiniLM-L6 teacher ({args.rows} rows, {args.epochs} epochs) and its "
          f"3-layer student; IG with {args.steps} steps; AOPC over 1/5/10/20/50% of tokens, deletion")  # fmt: skip
    print("| model | method | comprehensiveness (higher better) | × random | sufficiency (lower better) | × random |")
    print("|:--|:--|--:|--:|--:|--:|")
    for role, r in results.items():
        for method in ("ig", "attention", "random"):
            c, s = r[f"{method}_comprehensiveness"], r[f"{method}_sufficiency"]
            cr, sr = r["random_comprehensiveness"], r["random_sufficiency"]
            print(f"| {role} | {method} | {c:.4f} | {c / cr:.2f}× | {s:.4f} | {s / sr:.2f}× |")
    print("\n| model | seconds per explained text (IG) | accuracy on the sample |")
    print("|:--|--:|--:|")
    for role, r in results.items():
        print(f"| {role} | {r['seconds_per_example']:.3f} | {r['accuracy_on_sample']:.3f} |")
    print(
        f"\nteacher-student agreement: Kendall tau {paired.kendall_tau:.3f}, top-20% overlap {paired.top_overlap:.3f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "work")}
    agreement = {"kendall_tau": paired.kendall_tau, "top20_overlap": paired.top_overlap}
    args.out.write_text(json.dumps({"setting": setting, "results": results, "agreement": agreement}, indent=1))


if __name__ == "__main__":
    main()
