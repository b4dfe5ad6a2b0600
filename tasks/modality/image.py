"""Images: folders of class folders or tables of image paths, EfficientNet-Lite backbones
(engine/vision.py) and their ImageProcessor (engine/image_inputs.py).

What differs from text: training crops and flips the images and may keep BatchNorm statistics fixed;
a `teacher-layers:` student keeps teacher blocks; a static INT8 export calibrates on training images;
the servable and the logged model are the ONNX pyfunc of export/image_servable.py (with the
safetensors folder beside it, to train or re-evaluate from); a set's errors are pictured. What it
refuses is in `refused`: the methods written for transformer layers or token streams.
"""

from __future__ import annotations

from pathlib import Path

from graftline.tasks import settings
from graftline.tasks.data import hf, images
from graftline.tasks.data.images import ImageSplit, image_splits
from graftline.tasks.data.splits import Splits, resolve_source
from graftline.tasks.engine import backbones
from graftline.tasks.errors import BackboneError, DataError
from graftline.tasks.modality.base import (
    ADAPTATION,
    EXPLAIN,
    HIDDEN_MATCHING,
    LORA,
    PRIVACY,
    REINIT,
    TEXT_SCORING,
    TRANSFER_ROWS,
    Modality,
)
from graftline.tasks.registry import contract

TEXT_ONLY = "train text models only"


class Image(Modality):
    name = contract.IMAGE
    described_as = "the images"
    scans_personal_data = False  # pictures hold no text to scan
    refused = {
        LORA: TEXT_ONLY,
        PRIVACY: TEXT_ONLY,
        ADAPTATION: TEXT_ONLY,
        REINIT: "re-initialises transformer layers; image backbones have none",
        EXPLAIN: "token attributions are for text",
        HIDDEN_MATCHING: "matches transformer layers; set it to 0 for image models",
        TRANSFER_ROWS: "unlabeled distillation files and target sets are read for text only",
        TEXT_SCORING: "classifies images; predict, monitor and explain read texts "
        "(score images with mlflow.pyfunc.load_model('{uri}') or graftline serve)",
    }

    def claims(self, data) -> bool:
        """A training folder of class folders, or a table with `data.image_column` and without
        `data.text_column`."""
        source = resolve_source(data.train_path)
        if Path(source).is_dir() and hf.parse(source) is None:  # a dataset's folder holds tables: text
            return True
        columns = images.column_names(source, data.format)
        return data.image_column in columns and data.text_column not in columns

    def read_splits(self, data, unlabeled: list[str] | tuple[str, ...] = ()) -> Splits:
        if unlabeled or data.target_sets:
            raise DataError(f"{data.train_path}: {self.name} data; {self.refusal(TRANSFER_ROWS)}")
        return image_splits(data)

    def read_to_check(self, data, preflight) -> tuple[Splits, str]:
        """The splits read (or carved) and counted; the backbones are checked when the run starts."""
        splits = image_splits(data, check_labels=False)  # the validation suite reports unknown labels
        sets = [splits.train, splits.validation, *splits.evaluation_sets().values()]
        counts = ", ".join(f"{s.name} {len(s.frame)}" for s in sets)
        return splits, f"image data: {counts} images, {splits.train.frame['label'].nunique()} classes"

    def validate(self, splits: Splits, params, folder: Path):
        from graftline.tasks.data.image_validation import validate_images

        frames = {s.name: s.frame for s in (splits.train, splits.validation, *splits.evaluation_sets().values())}
        return validate_images(frames, params, folder)

    def kept_split(self, name: str, frame, source: str) -> ImageSplit:
        return ImageSplit(name, frame, source)

    def default_settings(self, data, given_train_path: bool) -> dict:
        """settings.IMAGE_DEFAULTS, and the demo's picture size when the data is the drawn demo."""
        if not given_train_path or data.train_path == settings.IMAGE_DEMO_TRAIN:
            return settings.IMAGE_DEFAULTS | settings.IMAGE_DEMO_DEFAULTS
        return settings.IMAGE_DEFAULTS

    def require_backbone(self, spec: str, role: str = "backbone") -> None:
        backbones.require_kind(spec, self.name, role)

    def require_student(self, spec: str) -> None:
        backbones.require_student_kind(spec, self.name)

    def prepare_training(self, model, train_split, params, seed: int, processes: int = 1):
        """Random crops and flips of the training images (`params.images`), and BatchNorm statistics
        kept fixed when a process sees few images a batch."""
        from graftline.tasks.engine.image_inputs import Augmentation

        augmented = train_split.augmented(Augmentation(seed, params.images.crop_scale_min, params.images.flip))
        model.freeze_batchnorm(params.images.freezes_batchnorm(params.batch_size, processes))
        return augmented

    def build_student(self, teacher, teacher_tokenizer, params, model, labels: list[str]):
        """Another image backbone with a new head and its own input size, or `teacher-layers:` blocks
        of the teacher (engine/vision.py)."""
        self.require_student(params.student)
        if params.hidden_weight > 0:
            raise BackboneError(f"distill.hidden_weight {self.refusal(HIDDEN_MATCHING)}")
        if params.student.startswith(backbones.LAYER_PREFIX):
            from graftline.tasks.engine import vision

            kept = student_blocks(params.student, teacher.config)
            return vision.layer_student(teacher, kept), teacher_tokenizer, kept
        tokenizer = backbones.load_tokenizer(params.student, model.trust_remote_code, model.image_size)
        student = backbones.load_classifier(params.student, labels, model.trust_remote_code, model.image_size)
        return student, tokenizer, None

    def example_plots(self, evaluation, split, folder: Path, name: str) -> list[Path]:
        """A grid of the most confident errors (none when there are none)."""
        from graftline.tasks.evaluate.scores import plot_misclassified

        grid = plot_misclassified(evaluation, split.inputs, folder / f"{name}_misclassified.png")
        return [grid] if grid is not None else []

    def export_calibration(self, splits: Splits) -> list[str]:
        return splits.train.inputs  # static INT8: activation ranges measured on training images

    def log_servable(
        self, model_dir: Path, onnx: Path, labels: list[str], temperature: float, max_length: int, folder: Path
    ) -> str:
        """export/image_servable.py's pyfunc: the ONNX file and the preprocessing settings."""
        from graftline.tasks.export.onnx import log_image_model

        processor = backbones.load_tokenizer(str(model_dir))
        return log_image_model(onnx, None, labels, processor, temperature, folder, "servable").model_uri

    def log_model(self, model_dir: Path, input_example: list[str]):
        """The ONNX pyfunc of image_servable.py, its safetensors folder beside it (`input_example`,
        texts, does not apply)."""
        import tempfile

        from graftline.tasks.export.onnx import export_onnx, log_image_model

        classifier, processor = backbones.load_classifier(str(model_dir)), backbones.load_tokenizer(str(model_dir))
        with tempfile.TemporaryDirectory(prefix="graftline-image-model-") as tmp:
            onnx = export_onnx(classifier.eval(), processor, Path(tmp) / "model.onnx")
            labels = backbones.labels_of(classifier)
            return log_image_model(onnx, model_dir, labels, processor, 1.0, Path(tmp), "model")

    def load_version(self, model_uri: str):
        """The classifier from the safetensors folder logged beside the ONNX graph, and its ImageProcessor."""
        folder = image_weights(model_uri)
        return backbones.load_classifier(str(folder)), backbones.load_tokenizer(str(folder))


def image_weights(model_uri: str) -> Path:
    """The safetensors classifier folder inside a logged image model (downloaded)."""
    import mlflow.artifacts
    from mlflow.models import Model

    root = Path(mlflow.artifacts.download_artifacts(model_uri))
    artifacts = Model.load(str(root / "MLmodel")).flavors["python_function"].get("artifacts", {})
    if contract.IMAGE_WEIGHTS not in artifacts:
        raise FileNotFoundError(f"{model_uri}: no {contract.IMAGE_WEIGHTS} artifact (not an image classifier)")
    return root / artifacts[contract.IMAGE_WEIGHTS]["path"]


def student_blocks(spec: str, config) -> list[int]:
    """The teacher blocks an image `teacher-layers:N` (or `teacher-layers:0,1,3,...`) student keeps."""
    from graftline.tasks.engine import vision

    value = spec.removeprefix(backbones.LAYER_PREFIX)
    try:
        if "," in value:
            return vision.kept_blocks(config, named=[int(v) for v in value.split(",")])
        return vision.kept_blocks(config, count=int(value))
    except ValueError as exc:
        detail = str(exc) if not str(exc).startswith("invalid literal") else "expected a number or a list of blocks"
        raise BackboneError(f"distill.student {spec!r}: {detail}") from None


IMAGE = Image()
