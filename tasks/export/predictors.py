"""Texts (or image inputs) in, logits out: the predictors `graftline predict`, the drift monitor and
the export step's measurements run, for torch models and ONNX files alike.

Kept apart from onnx.py (the export, which needs torch) so that scoring with an ONNX file loads
onnxruntime and the tokenizer but never torch: torch's import alone takes seconds on 2 cores, more
than scoring a small file. For the same reason a saved tokenizer's tokenizer.json runs on the
`tokenizers` library itself (`fast_tokenizer`, in onnx_pyfunc.py so the logged ONNX models use it
too): transformers' AutoTokenizer imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graftline.tasks.export import onnx_pyfunc
from graftline.tasks.modality.base import InputPreparer

Predict = Callable[[list[str]], np.ndarray]  # texts (or image paths) -> logits
INPUTS = ("input_ids", "attention_mask")


def model_inputs(tokenizer, inputs: list, max_length: int, tensors: str = "pt") -> dict:
    """What an exported or torch classifier reads for `inputs`: token ids and mask for texts, pixel values
    for images (the tokenizer is then an InputPreparer, image_inputs.ImageProcessor, which makes its own)."""
    if isinstance(tokenizer, InputPreparer):
        return tokenizer.model_inputs(inputs, tensors)
    batch = tokenizer(inputs, padding=True, truncation=True, max_length=max_length, return_tensors=tensors)
    return {k: batch[k] if tensors == "pt" else batch[k].astype(np.int64) for k in INPUTS}


def torch_predictor(model, tokenizer, max_length: int) -> Predict:
    import torch

    threads = torch.get_num_threads()

    @torch.inference_mode()
    def predict(texts: list[str]) -> np.ndarray:
        torch.set_num_threads(threads)
        return model(**model_inputs(tokenizer, texts, max_length)).logits.float().numpy()

    return predict


def onnx_profiler(path: Path, tokenizer, max_length: int, batch_size: int = 64):
    """texts -> (logits, pooled states) from an exported file with a `pooled` output, else None
    (files exported before it had one): the drift monitor's forward pass at the export's speed."""
    session = _session(path)
    if "pooled" not in {o.name for o in session.get_outputs()}:
        return None

    def profile(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: little padding
        logits, pooled = [None] * len(texts), [None] * len(texts)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out = session.run(["logits", "pooled"], model_inputs(tokenizer, [texts[i] for i in rows], max_length, "np"))
            for j, i in enumerate(rows):
                logits[i], pooled[i] = out[0][j], out[1][j]
        return np.stack(logits), np.stack(pooled).astype(np.float32)

    return profile


def _session(path: Path):
    # torch loaded already: the same CPU threads as torch gets (else ORT's default, the physical cores,
    # as torch's is); torch is never imported here just to ask
    torch = sys.modules.get("torch")
    return onnx_pyfunc.session(str(path), torch.get_num_threads() if torch is not None else None)


def onnx_predictor(path: Path, tokenizer, max_length: int) -> Predict:
    session = _session(path)

    def predict(texts: list[str]) -> np.ndarray:
        return session.run(["logits"], model_inputs(tokenizer, texts, max_length, "np"))[0]

    return predict
