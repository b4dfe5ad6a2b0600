"""A registered text version as MLflow loads it: its classifier's logits divided by its temperature.

The lifecycle logs each text model with the transformers flavor when it is trained, before its
temperature is fitted (tasks/evaluate/calibration.py). The register step then logs this pyfunc as
the version's model: it loads that transformers model by its URI (referenced, not copied: the
weights are stored once), runs it, divides the logits by the version's temperature and applies the
softmax. So `mlflow.pyfunc.load_model("models:/NAME@ALIAS")`, `mlflow models serve` and `graftline
predict` / `graftline serve` give a version the same labels and scores. The version's
`classifier_uri` tag names the transformers model, which graftline trains and re-scores from.

Input: a DataFrame with a `text` column (or one column of strings), or a list of strings. Output:
one row per text with `label`, `score` (its calibrated probability) and `score_<label>` per class.

This file is the model's code (MLflow "models from code"), logged with onnx_pyfunc.py (the predict
body every graftline pyfunc shares), so the model imports nothing of graftline: loading it needs
MLflow, torch and transformers, and a tracking URI under which the classifier's URI resolves.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

try:  # a loaded model: MLflow put its code/ folder, which holds onnx_pyfunc.py, on sys.path
    import onnx_pyfunc
except ModuleNotFoundError:  # graftline logging the model (MLflow runs this file then as well)
    from graftline.tasks.export import onnx_pyfunc

SETTINGS = "calibrated.json"  # classifier (URI), labels, max_length, temperature


class CalibratedClassifier(mlflow.pyfunc.PythonModel):
    """Tokenise, run the transformers classifier, divide the logits by the temperature, softmax."""

    def load_context(self, context) -> None:
        import mlflow.transformers

        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        self.labels, self.max_length = settings["labels"], settings["max_length"]
        self.temperature = settings["temperature"]
        parts = mlflow.transformers.load_model(settings["classifier"], return_type="components")
        self.model, self.tokenizer = parts["model"].eval(), parts["tokenizer"]

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return onnx_pyfunc.predict(onnx_pyfunc.texts(model_input), self._logits, self.labels, self.temperature, params)

    def _logits(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            return self.model(**batch).logits.float().numpy()


mlflow.models.set_model(CalibratedClassifier())  # this file is the logged model's code (MLflow "models from code")
