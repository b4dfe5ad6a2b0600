"""The servable variant of an exported classifier: an MLflow pyfunc wrapping onnxruntime and the tokenizer.

The registry serves a version's torch model (the transformers flavor). The export step also logs
this model, `servable`, in its run: the fastest ONNX file that passed parity (INT8 before fp32),
the tokenizer, the labels, the text length and the temperature, behind MLflow's pyfunc interface.
The version's tag `servable_model_uri` points at it, so either form serves with MLflow's own server:

    mlflow models serve -m models:/graftline-demo-student@production --env-manager local     # torch
    mlflow models serve -m runs:/<export run>/servable --env-manager local                   # ONNX
    graftline serve graftline-demo-student@production                                        # the ONNX one

Input: a DataFrame with a `text` column (or one column of strings), or a list of strings. Output:
one row per text with `label`, `score` (its calibrated probability) and `score_<label>` per class.

This file is the model's code (MLflow "models from code"): the export step logs the file itself and,
beside it, onnx_pyfunc.py (the predict body both ONNX pyfuncs share), so the model imports nothing of
graftline, and a serving machine needs only the model's pip requirements (onnxruntime, transformers,
tokenizers, numpy, pandas). graftline never imports it.
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

SETTINGS = "servable.json"


class OnnxClassifier(mlflow.pyfunc.PythonModel):
    """Tokenise, run the ONNX graph, divide the logits by the temperature, softmax."""

    def load_context(self, context) -> None:
        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        self.labels, self.max_length = settings["labels"], settings["max_length"]
        self.temperature = settings["temperature"]
        # transformers' tokenizer imports torch, which this model does not need (nor declare)
        folder = context.artifacts["tokenizer"]
        self.tokenizer = onnx_pyfunc.fast_tokenizer(Path(folder))
        if self.tokenizer is None:  # a slow tokenizer (no tokenizer.json)
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.session = onnx_pyfunc.session(context.artifacts["onnx"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return onnx_pyfunc.predict(onnx_pyfunc.texts(model_input), self._logits, self.labels, self.temperature, params)

    def _logits(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return self.session.run(["logits"], {k: batch[k].astype(np.int64) for k in self.inputs})[0]


mlflow.models.set_model(OnnxClassifier())  # this file is the logged model's code (MLflow "models from code")
