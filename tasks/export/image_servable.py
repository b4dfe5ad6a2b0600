"""A registered image classifier as MLflow serves it: a pyfunc wrapping onnxruntime and the framing.

An image classifier's version is logged as this model (an image model has no transformers flavor):
the ONNX graph of the network (fp32; or the INT8 file the export step checked), its settings
(labels, input size, normalisation, temperature) and, for graftline to train or re-evaluate from,
the safetensors folder it was exported from. Loaded with `mlflow.pyfunc.load_model`, it predicts
from image paths or URLs, raw bytes, or Pillow images:

    model = mlflow.pyfunc.load_model("models:/graftline-images@production")
    model.predict(pd.DataFrame({"image": ["ant.jpg", "bee.png"]}))         # paths or URLs
    model.predict(pd.DataFrame({"image_bytes": [open("ant.jpg", "rb").read()]}))  # encoded bytes
    mlflow models serve -m models:/graftline-images@production --env-manager local

Output: one row per image with `label`, `score` (its calibrated probability) and `score_<label>`.

This file is the model's code (MLflow "models from code"), logged with onnx_pyfunc.py beside it (the
predict body both ONNX pyfuncs share): it imports nothing of graftline, so the image framing
(shorter side to size / 0.875, centre square, bilinear, then normalised) is written again here; it
must stay what engine/image_inputs.py does for evaluation. A serving machine needs only onnxruntime,
Pillow, numpy and pandas.
"""

from __future__ import annotations

import io
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

SETTINGS = "image_servable.json"
CENTRE_SHARE = 0.875


class OnnxImageClassifier(mlflow.pyfunc.PythonModel):
    """Decode and frame each image, run the ONNX graph, divide the logits by the temperature, softmax."""

    def load_context(self, context) -> None:
        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        self.labels, self.temperature = settings["labels"], settings["temperature"]
        self.size = int(settings["image_size"])
        self.mean = np.asarray(settings["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(settings["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.session = onnx_pyfunc.session(context.artifacts["onnx"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return onnx_pyfunc.predict(_images(model_input), self._logits, self.labels, self.temperature, params)

    def _logits(self, images: list) -> np.ndarray:
        squares = np.stack([self._framed(image) for image in images]).astype(np.float32) / 255
        pixels = (squares.transpose(0, 3, 1, 2) - self.mean) / self.std
        return self.session.run(["logits"], {"pixel_values": pixels.astype(np.float32)})[0]

    def _framed(self, image) -> np.ndarray:
        from PIL import Image

        picture = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(_bytes(image)))
        picture = picture.convert("RGB")
        stored = round(self.size / CENTRE_SHARE)
        width, height = picture.size
        scale = stored / min(width, height)
        picture = picture.resize(
            (max(stored, round(width * scale)), max(stored, round(height * scale))), Image.BILINEAR
        )
        width, height = picture.size
        left, top = (
            (width - stored) // 2 + (stored - self.size) // 2,
            (height - stored) // 2 + (stored - self.size) // 2,
        )
        return np.asarray(picture.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)


def _bytes(image) -> bytes:
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    import fsspec

    with fsspec.open(str(image), "rb") as handle:  # a local path or any fsspec URL
        return handle.read()


def _images(model_input) -> list:
    if isinstance(model_input, pd.DataFrame):
        present = [c for c in ("image", "image_bytes") if c in model_input.columns and model_input[c].notna().any()]
        column = present[0] if present else model_input.columns[0]
        return model_input[column].tolist()
    if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        return list(model_input)
    if isinstance(model_input, str | bytes | bytearray):
        return [model_input]
    raise TypeError(f"expected a DataFrame with an image column, or a list of paths or bytes, got {type(model_input)}")


mlflow.models.set_model(OnnxImageClassifier())  # this file is the logged model's code (MLflow "models from code")
