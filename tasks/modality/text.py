"""Text: tables of texts and labels, transformers backbones and their tokenizers.

The modality every other capability was first written for, so it refuses nothing; it is also the one
`data.modality: auto` falls back to (a table with a text column, a hub id, a version registered
before the modality tag was).
"""

from __future__ import annotations

from pathlib import Path

from graftline.tasks.data.splits import Split, Splits, load_splits
from graftline.tasks.engine import backbones
from graftline.tasks.modality.base import Modality
from graftline.tasks.registry import contract


class Text(Modality):
    name = contract.TEXT
    described_as = "the data"
    scans_personal_data = True  # free text may name people, addresses, accounts
    refused = {}

    def claims(self, data) -> bool:
        return True  # the fallback: whatever no other modality claims is read as text

    def read_splits(self, data, unlabeled: list[str] | tuple[str, ...] = ()) -> Splits:
        return load_splits(data, unlabeled)

    def read_to_check(self, data, preflight) -> tuple[Splits, str]:
        checked = preflight()
        return checked.splits, checked.line()

    def validate(self, splits: Splits, params, folder: Path):
        from graftline.tasks.data.validate import validate_splits

        return validate_splits(splits, params, folder)

    def kept_split(self, name: str, frame, source: str) -> Split:
        return Split(name, frame, source)

    def default_settings(self, data, given_train_path: bool) -> dict:
        return {}  # the settings' own defaults are the text ones

    def require_backbone(self, spec: str, role: str = "backbone") -> None:
        backbones.require_kind(spec, self.name, role)

    def require_student(self, spec: str) -> None:
        backbones.require_student_kind(spec, self.name)

    def prepare_training(self, model, train_split, params, seed: int, processes: int = 1):
        return train_split  # texts train as tokenised, unchanged

    def build_student(self, teacher, teacher_tokenizer, params, model, labels: list[str]):
        """`teacher-layers:` keeps some of the teacher's encoder layers (and its tokenizer); any other
        backbone gets a new head and its own tokenizer."""
        kept = backbones.student_layers(params.student, teacher.config.num_hidden_layers)
        if kept is not None:
            return backbones.layer_student(teacher, kept), teacher_tokenizer, kept
        tokenizer = backbones.load_tokenizer(params.student, model.trust_remote_code, model.image_size)
        student = backbones.load_classifier(params.student, labels, model.trust_remote_code, model.image_size)
        return student, tokenizer, None

    def example_plots(self, evaluation, split: Split, folder: Path, name: str) -> list[Path]:
        return []  # the confusion matrix and the report say it; texts are not pictured

    def export_calibration(self, splits: Splits) -> None:
        return None  # dynamic INT8: activations are quantised per call

    def log_servable(
        self, model_dir: Path, onnx: Path, labels: list[str], temperature: float, max_length: int, folder: Path
    ) -> str:
        """export/servable.py's pyfunc: the ONNX file and the tokenizer's files (the torch weights stay out)."""
        from graftline.tasks.export.onnx import log_servable

        tokenizer = folder / "tokenizer"
        backbones.load_tokenizer(str(model_dir)).save_pretrained(str(tokenizer))
        return log_servable(onnx, tokenizer, labels, max_length, temperature, folder).model_uri

    def log_model(self, model_dir: Path, input_example: list[str]):
        """The transformers flavor (safetensors, signature, example): loads back as a model to train on."""
        import logging

        import mlflow.models
        import mlflow.transformers
        import pandas as pd
        from transformers import pipeline

        # A local folder has no hub model card or licence to fetch; MLflow warns about both.
        logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)

        classifier = pipeline(
            "text-classification",
            model=backbones.load_classifier(str(model_dir)),
            tokenizer=backbones.load_tokenizer(str(model_dir)),
        )
        # The params schema lets a caller (and MLflow's scoring server) pass batch_size; without one MLflow
        # drops it and the pipeline scores one text at a time.
        signature = mlflow.models.infer_signature(
            input_example, pd.DataFrame(classifier(input_example)), params={"batch_size": 1}
        )
        return mlflow.transformers.log_model(
            classifier,
            name="model",
            task="text-classification",
            pip_requirements=pip_requirements(),
            input_example=input_example,
            signature=signature,
        )

    def log_registered(self, model_uri: str, model_dir: Path, temperature: float, max_length: int) -> str:
        """export/calibrated.py's pyfunc over the transformers model at `model_uri` (referenced, not
        copied) with the version's temperature: every route to the version gives the same scores."""
        import json
        import tempfile

        import mlflow.models
        import mlflow.pyfunc
        import pandas as pd

        from graftline.tasks.export.onnx import CALIBRATED_MODEL, PYFUNC_BODY, output_example

        config = json.loads((model_dir / "config.json").read_text())
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        written = {"classifier": model_uri, "labels": labels, "max_length": max_length, "temperature": temperature}
        example = pd.DataFrame({"text": contract.INPUT_EXAMPLE})
        signature = mlflow.models.infer_signature(example, output_example(labels), params={"batch_size": 32})
        with tempfile.TemporaryDirectory() as folder:  # MLflow copies the settings file into the model
            settings = Path(folder) / "calibrated.json"
            settings.write_text(json.dumps(written))
            return mlflow.pyfunc.log_model(
                name="registered",
                python_model=str(CALIBRATED_MODEL),
                code_paths=[str(PYFUNC_BODY)],
                artifacts={"settings": str(settings)},
                pip_requirements=pip_requirements(),
                signature=signature,
            ).model_uri

    def load_version(self, model_uri: str):
        import mlflow.transformers

        components = mlflow.transformers.load_model(model_uri, return_type="components")
        return components["model"], components["tokenizer"]


def pip_requirements() -> list[str]:
    """What a logged text model needs, at the installed versions."""
    from graftline.tasks.export.onnx import pinned

    return pinned(["torch", "transformers", "tokenizers", "safetensors", "numpy"])


TEXT = Text()
