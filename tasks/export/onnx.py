"""ONNX export of a classifier, dynamic INT8 quantisation, a parity check and CPU latency.

- `export_onnx`: torch.onnx's dynamo exporter, dynamic batch and sequence axes, inputs
  `input_ids` + `attention_mask` (an image classifier: `pixel_values`, dynamic batch axis), outputs
  `logits` and `pooled`, weights inside the one .onnx file.
- `quantize_int8`: onnxruntime's dynamic quantisation (int8 weights, activations quantised at run
  time): no calibration data needed. A convolutional network is quantised statically instead (QDQ,
  per-channel weights, activation ranges calibrated on up to 128 training images): dynamic
  quantisation turns its convolutions into ConvInteger, slower than fp32 and less accurate.
- parity (in `export_and_measure`): an export must predict the same class as the torch model on
  at least `min_agreement` of the test rows and lose at most `max_accuracy_drop` of its accuracy;
  its largest logit difference is reported too.
- `latency`: every model (teacher, student in torch fp32, ONNX fp32, ONNX INT8) timed on the same
  texts, tokenisation included, at batch 1 (median milliseconds per call) and batch 32 (examples
  per second), with the same number of CPU threads.
"""

from __future__ import annotations

import logging
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from graftline.tasks import plots, progress
from graftline.tasks.data.splits import Split, encode_labels
from graftline.tasks.engine import backbones
from graftline.tasks.errors import GraftlineError
from graftline.tasks.export.predictors import INPUTS, Predict, model_inputs, onnx_predictor, torch_predictor
from graftline.tasks.modality.base import InputPreparer
from graftline.tasks.settings import ExportParams


@dataclass
class Measured:
    """One model as served: its accuracy, agreement with the torch model, and speed."""

    name: str  # teacher | student | student-onnx | student-onnx-int8
    accuracy: float
    agreement: float  # share of test predictions equal to the torch model's (1.0 for torch itself)
    max_logit_diff: float
    ms_batch_1: float  # median milliseconds per single-text call
    examples_per_second_batch_32: float
    size_mb: float
    file: str | None = None  # the exported file, for ONNX rows
    passed: bool = True  # parity met; a failed export is reported but not logged as a model file


@dataclass
class ExportReport:
    served: str  # the torch model that was exported: student, or teacher without distillation
    rows: list[Measured] = field(default_factory=list)  # teacher first

    def row(self, name: str) -> Measured | None:
        return next((r for r in self.rows if r.name == name), None)

    def failures(self) -> list[str]:
        served = self.row(self.served)
        return [
            f"{r.name} agrees with torch on {r.agreement:.4f} of the test set, accuracy {r.accuracy:.4f} "
            f"vs {served.accuracy:.4f}"
            for r in self.rows
            if not r.passed
        ]

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics per model; speed-ups against the teacher (torch fp32) at batch 32
        and batch 1; for exports, the accuracy drop against the torch model they came from."""
        teacher, served = self.rows[0], self.row(self.served)
        out = {}
        for r in self.rows:
            key = r.name.replace("-", "_")
            out |= {
                f"{key}_test_accuracy": r.accuracy,
                f"{key}_ms_batch_1": r.ms_batch_1,
                f"{key}_examples_per_second_batch_32": r.examples_per_second_batch_32,
                f"{key}_size_mb": r.size_mb,
            }
            if r is not teacher:
                out[f"{key}_speedup_batch_32"] = r.examples_per_second_batch_32 / teacher.examples_per_second_batch_32
                out[f"{key}_speedup_batch_1"] = teacher.ms_batch_1 / r.ms_batch_1
            if r.file is not None:
                out |= {
                    f"{key}_agreement": r.agreement,
                    f"{key}_max_logit_diff": r.max_logit_diff,
                    f"{key}_accuracy_drop": served.accuracy - r.accuracy,
                    f"{key}_parity_passed": float(r.passed),
                }
        return out

    def headline(self) -> dict[str, float]:
        """The numbers a lifecycle summary shows: speed-ups, agreement, accuracy drop."""
        keep = ("speedup_batch_32", "speedup_batch_1", "_agreement", "accuracy_drop")
        return {k: v for k, v in self.metrics().items() if k.endswith(keep)}

    def table(self) -> list[dict]:
        return [asdict(r) for r in self.rows]


def export_and_measure(
    model_dir: Path,
    teacher_dir: Path | None,
    test: Split,
    params: ExportParams,
    max_length: int,
    out_dir: Path,
    calibration: list[str] | None = None,
) -> ExportReport:
    """Export the served model `model_dir` to ONNX (and INT8), check parity on `test`, time everything.

    The served model is the student, compared with `teacher_dir` for speed; or, without
    distillation, the teacher itself (`teacher_dir` None). An image model's INT8 file is calibrated
    on `calibration` (training image paths; never the test set it is then checked on)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    served = "student" if teacher_dir is not None else "teacher"
    model = backbones.load_classifier(str(model_dir)).eval()
    tokenizer = backbones.load_tokenizer(str(model_dir))
    texts = test.inputs
    if not texts:
        raise GraftlineError(f"{test.name}: no rows to check the exported model's parity on")
    truth = np.asarray(encode_labels(test.frame["label"], backbones.labels_of(model), test.name))

    with progress.activity("exporting to ONNX" + (" and INT8" if params.quantize else "")):
        exported = {f"{served}-onnx": export_onnx(model, tokenizer, out_dir / "model.onnx")}
        if params.quantize:
            exported[f"{served}-onnx-int8"] = quantize_int8(
                exported[f"{served}-onnx"], out_dir / "model.int8.onnx", _calibration(tokenizer, calibration)
            )

    models: dict[str, tuple[Predict, Path]] = {}  # name -> (predict, weights file)
    if teacher_dir is not None:
        teacher = backbones.load_classifier(str(teacher_dir)).eval()
        models["teacher"] = (
            torch_predictor(teacher, backbones.load_tokenizer(str(teacher_dir)), max_length),
            teacher_dir / "model.safetensors",
        )
    models[served] = (torch_predictor(model, tokenizer, max_length), model_dir / "model.safetensors")
    for name, path in exported.items():
        models[name] = (onnx_predictor(path, tokenizer, max_length), path)

    reference = predict_in_batches(models[served][0], texts)  # what every export must reproduce
    served_accuracy = float((reference.argmax(-1) == truth).mean())
    report = ExportReport(served)
    with progress.activity("checking and timing", total=len(models)) as shown:
        for done, (name, (predict, weights)) in enumerate(models.items()):
            shown.update(done, detail=name)
            logits = predict_in_batches(predict, texts)
            is_export = name in exported
            agreement = float((logits.argmax(-1) == reference.argmax(-1)).mean())
            accuracy = float((logits.argmax(-1) == truth).mean())
            speed = latency(predict, texts[: params.latency_rows])
            report.rows.append(
                Measured(
                    name=name,
                    accuracy=accuracy,
                    agreement=agreement,
                    max_logit_diff=float(np.abs(logits - reference).max())
                    if name != "teacher" or served == "teacher"
                    else float("nan"),
                    ms_batch_1=speed[1],
                    examples_per_second_batch_32=speed[32],
                    size_mb=weights.stat().st_size / 2**20,
                    file=str(weights) if is_export else None,
                    passed=not is_export
                    or (agreement >= params.min_agreement and accuracy >= served_accuracy - params.max_accuracy_drop),
                )
            )
    return report


def export_onnx(model, tokenizer, path: Path) -> Path:
    """The classifier as one ONNX file with dynamic batch and sequence axes; outputs `logits` and `pooled`."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    if isinstance(tokenizer, InputPreparer):  # an image classifier's preparer
        wrapped = _ImageLogitsAndPooled(model).eval()
        size = tokenizer.image_size
        example = {"pixel_values": torch.randn(2, 3, size, size)}
        names, dynamic = ["pixel_values"], ({0: batch},)
    else:
        wrapped = _LogitsAndPooled(model).eval()
        example = tokenizer(
            ["an example input", "a second, somewhat longer example input"], padding=True, return_tensors="pt"
        )
        names, dynamic = list(INPUTS), tuple({0: batch, 1: sequence} for _ in INPUTS)
    try:
        with _quiet("torch.onnx", "onnxscript"):
            torch.onnx.export(
                wrapped,
                tuple(example[k] for k in names),
                str(path),
                input_names=names,
                output_names=["logits", "pooled"],
                dynamic_shapes=dynamic,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        raise GraftlineError(f"ONNX export of {type(model).__name__} failed: {str(exc).splitlines()[0]}") from exc
    return path


def quantize_int8(onnx_path: Path, path: Path, calibration: list[dict] | None = None) -> Path:
    """INT8 quantisation: dynamic (weights stored as int8, activations quantised per call), or, given
    `calibration` batches of model inputs, static QDQ with per-channel weights."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet("root"):  # onnxruntime suggests its pre-processing through the root logger
        if calibration is None:
            quantize_dynamic(str(onnx_path), str(path), weight_type=QuantType.QInt8)
            return path
        prepared = path.with_name(path.stem + ".prepared.onnx")
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        try:
            quantize_static(
                str(prepared),
                str(path),
                _Batches(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            prepared.unlink(missing_ok=True)
    return path


CALIBRATION_IMAGES = 128


def _calibration(tokenizer, inputs: list | None) -> list[dict] | None:
    """Batches of pixel values to calibrate an image model's activation ranges on; None for text."""
    if not isinstance(tokenizer, InputPreparer) or not inputs:
        return None
    step = max(1, len(inputs) // CALIBRATION_IMAGES)
    chosen = list(inputs)[::step][:CALIBRATION_IMAGES]
    return [model_inputs(tokenizer, chosen[i : i + 16], 0, "np") for i in range(0, len(chosen), 16)]


class _Batches:
    """onnxruntime's CalibrationDataReader over prepared batches."""

    def __init__(self, batches: list[dict]):
        self.batches = iter(batches)

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def predict_in_batches(predict: Predict, texts: list[str], batch_size: int = 64) -> np.ndarray:
    return np.concatenate([predict(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])


def latency(predict: Predict, texts: list[str]) -> dict[int, float]:
    """{1: median ms per single-text call, 32: examples per second in batches of 32}."""
    predict(texts[:32])  # warm-up: first-call allocations and graph preparation
    singles = []
    for text in texts[:64]:
        started = time.perf_counter()
        predict([text])
        singles.append((time.perf_counter() - started) * 1000)
    rows = texts if len(texts) >= 128 else (texts * (128 // len(texts) + 1))[:128]  # enough work to time
    started = time.perf_counter()
    for i in range(0, len(rows), 32):
        predict(rows[i : i + 32])
    return {1: statistics.median(singles), 32: len(rows) / (time.perf_counter() - started)}


def plot_tradeoff(report: ExportReport, path: Path, title: str = "accuracy against CPU latency") -> Path:
    """Test accuracy against milliseconds per example at batch 32, one point per served model."""
    with plots.figure(path, dpi=110, figsize=(6, 4)) as (fig, ax):
        for r in report.rows:
            ms = 1000 / r.examples_per_second_batch_32
            ax.scatter(ms, r.accuracy, s=40 + 4 * r.size_mb, alpha=0.7, marker="o" if r.passed else "x")
            ax.annotate(
                f"{r.name}\n{r.size_mb:.0f} MB", (ms, r.accuracy), textcoords="offset points", xytext=(6, 4), fontsize=8
            )
        ax.set_xlabel("CPU ms per example (batch 32, tokenisation included)")
        ax.set_ylabel("test accuracy")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    return path


class _LogitsAndPooled(torch.nn.Module):
    """The exported graph: (input_ids, attention_mask) -> logits, and `pooled`: the mean of the last
    hidden states over the real tokens (what the drift monitor compares; scoring reads only logits)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        mask = attention_mask.unsqueeze(-1).to(out.hidden_states[-1].dtype)
        pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1).clamp(min=1)
        return out.logits, pooled


class _ImageLogitsAndPooled(torch.nn.Module):
    """The exported graph of an image classifier: pixel_values -> logits, and `pooled` (its features)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.pooled


@contextmanager
def _quiet(*loggers: str):
    """Silence chatty exporters for the duration of a call."""
    import warnings

    saved = {name: logging.getLogger(None if name == "root" else name).level for name in loggers}
    for name in loggers:
        logging.getLogger(None if name == "root" else name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(None if name == "root" else name).setLevel(level)


# What the two ONNX pyfuncs share, shipped beside each logged model (MLflow puts a model's code_paths
# on sys.path when it loads it): a logged model imports nothing of graftline.
PYFUNC_BODY = Path(__file__).with_name("onnx_pyfunc.py")
CALIBRATED_MODEL = Path(__file__).with_name("calibrated.py")  # a registered text version's code (never imported)


def pinned(packages: list[str]) -> list[str]:
    """Exact installed versions of `packages`, as a logged model's pip requirements (explicit: MLflow's
    inference of them is slow and wrong); a local build suffix (`+cpu`) is dropped."""
    from importlib.metadata import version

    return [f"{p}=={version(p).split('+')[0]}" for p in packages]


def output_example(labels: list[str]):
    """What a pyfunc returns: the label, its score, and every label's score (for the signature)."""
    import pandas as pd

    return pd.DataFrame(
        {"label": labels[:2], "score": [0.5, 0.5], **{f"score_{label}": [0.5, 0.5] for label in labels}}
    )


def log_image_model(
    onnx: Path, model_dir: Path | None, labels: list[str], processor, temperature: float, folder: Path, name: str
):
    """Log an image classifier as the pyfunc of image_servable.py under `name` in the active run: the ONNX
    file, its settings and (for graftline to train or re-evaluate from) the safetensors folder."""
    import json

    import mlflow.models
    import mlflow.pyfunc
    import pandas as pd

    from graftline.tasks.registry import contract

    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "image_servable.json"
    settings.write_text(
        json.dumps(
            {
                "labels": labels,
                "temperature": temperature,
                "image_size": processor.image_size,
                "mean": list(processor.mean),
                "std": list(processor.std),
            }
        )
    )
    packages = ["onnxruntime", "pillow", "fsspec", "numpy", "pandas"]
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    output = output_example(labels)
    inferred = mlflow.models.infer_signature(pd.DataFrame({"image": ["a.jpg"]}), output, params={"batch_size": 32})
    # Images by path or URL (`image`) or as encoded bytes (`image_bytes`): one of the two columns per call.
    images = Schema([ColSpec("string", "image", required=False), ColSpec("binary", "image_bytes", required=False)])
    signature = ModelSignature(inputs=images, outputs=inferred.outputs, params=inferred.params)
    artifacts = {"onnx": str(onnx), "settings": str(settings)}
    if model_dir is not None:
        artifacts[contract.IMAGE_WEIGHTS] = str(model_dir)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("image_servable.py")),
        code_paths=[str(PYFUNC_BODY)],
        artifacts=artifacts,
        pip_requirements=pinned(packages),
        signature=signature,
    )


def log_servable(onnx: Path, tokenizer_dir: Path, labels: list[str], max_length: int, temperature: float, folder: Path):
    """Log the servable pyfunc (servable.py: ONNX and tokenizer) as `servable` in the active run."""
    import json

    import mlflow.models
    import mlflow.pyfunc
    import pandas as pd

    from graftline.tasks.registry import contract

    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "servable.json"
    settings.write_text(json.dumps({"labels": labels, "max_length": max_length, "temperature": temperature}))
    packages = ["onnxruntime", "transformers", "tokenizers", "numpy", "pandas"]
    example = pd.DataFrame({"text": contract.INPUT_EXAMPLE})
    output = output_example(labels)
    signature = mlflow.models.infer_signature(example, output, params={"batch_size": 32})
    return mlflow.pyfunc.log_model(
        name="servable",
        python_model=str(Path(__file__).with_name("servable.py")),
        code_paths=[str(PYFUNC_BODY)],
        artifacts={"onnx": str(onnx), "tokenizer": str(tokenizer_dir), "settings": str(settings)},
        pip_requirements=pinned(packages),
        input_example=example,
        signature=signature,
    )
