"""What the logged pyfuncs share: their predict body, their onnxruntime session, and the softmax.

servable.py (texts) and image_servable.py (images) differ only in how they turn inputs into the
graph's inputs; calibrated.py (a registered text version) runs its torch classifier instead of a
graph. Here too: the torch-free tokenizer (`fast_tokenizer`: transformers' AutoTokenizer imports
torch, which an ONNX model does not need). Everything after the logits is here: the inputs scored
`batch_size` at a time, the logits divided by the temperature, the softmax, one output row per input.

This module ships beside each logged model. The export step logs it with MLflow's `code_paths`,
which copies it into the model's `code/` folder; MLflow puts that folder on `sys.path` before it runs
the model's code, so a loaded model imports this copy as the top-level module `onnx_pyfunc` and
nothing of graftline. For that it imports only numpy and pandas (onnxruntime where a session opens,
`tokenizers` where a tokenizer is read),
never graftline.

Its `softmax` is the project's only one for numpy logits (graftline's evaluation, calibration,
`graftline predict` and the drift monitor take it through `graftline.tasks.evaluate.calibration`):
a served model's probabilities are computed exactly as the evaluation computes them.

Limit: Python keeps one module per name, so a process that loads several models (of different
graftline versions, say) runs the `onnx_pyfunc` of the first one it loaded for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

BATCH_SIZE = 32  # inputs per graph call unless the request's params say `batch_size`


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of (..., classes) `logits` divided by `temperature`, computed in float64;
    the largest logit is subtracted first, so large logits cannot overflow."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = np.exp(scaled - scaled.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def texts(model_input) -> list[str]:
    """The texts of a text pyfunc's input: a DataFrame's `text` column (or its only column), a list of
    strings, or one string."""
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[column].fillna("").astype(str).tolist()
    if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        return [str(t) for t in model_input]
    if isinstance(model_input, str):
        return [model_input]
    raise TypeError(f"expected a DataFrame with a text column or a list of texts, got {type(model_input).__name__}")


class FastTokenizer:
    """A saved fast tokenizer (its tokenizer.json) called as transformers calls one, for the two inputs
    a classifier reads: padded to the longest text, cut at `max_length` tokens, numpy arrays.
    Equal to transformers' output (tests/test_export.py), without importing transformers or torch."""

    def __init__(self, folder: Path) -> None:
        import json

        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        pad = config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = self._tokenizer.token_to_id(pad) if pad else None
        if self.pad_token_id is None:
            raise ValueError(f"{folder}: no pad token to pad a batch with")
        self._pad = pad
        self._sides = config.get("padding_side", "right"), config.get("truncation_side", "right")

    def __call__(self, texts: list[str], padding=True, truncation=True, max_length=None, return_tensors="np") -> dict:
        if return_tensors != "np" or not padding or not truncation or max_length is None:
            raise ValueError("FastTokenizer pads, truncates at max_length and returns numpy arrays only")
        padding_side, truncation_side = self._sides
        self._tokenizer.enable_truncation(max_length, direction=truncation_side)
        self._tokenizer.enable_padding(direction=padding_side, pad_id=self.pad_token_id, pad_token=self._pad)
        encoded = self._tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.asarray([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encoded], dtype=np.int64),
        }


def fast_tokenizer(folder: Path):
    """`folder`'s tokenizer without transformers when it is a fast one (tokenizer.json), else None."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return None
    try:
        return FastTokenizer(folder)
    except Exception:  # a file `tokenizers` cannot read: transformers' way instead
        return None


def session(path: str, threads: int | None = None):
    """An onnxruntime session on the CPU for the ONNX file at `path`, its warnings silenced; `threads`
    intra-op threads (None: onnxruntime's default, the physical cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def predict(
    inputs: Sequence,
    logits_of: Callable[[list], np.ndarray],
    labels: list[str],
    temperature: float,
    params: dict | None = None,
) -> pd.DataFrame:
    """One row per input: `label`, `score` (its calibrated probability) and `score_<label>` per class.

    `logits_of` runs the graph on a batch of inputs and returns its (batch, classes) logits."""
    batch_size = int((params or {}).get("batch_size", BATCH_SIZE))
    logits = [logits_of(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    probabilities = softmax(np.concatenate(logits) if logits else np.zeros((0, len(labels))), temperature)
    out = pd.DataFrame({"label": np.asarray(labels, dtype=object)[probabilities.argmax(-1)]})
    out["score"] = probabilities.max(-1)
    for i, label in enumerate(labels):
        out[f"score_{label}"] = probabilities[:, i]
    return out
