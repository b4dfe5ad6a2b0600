"""The model and data steps the recipes share: strategies, encoding, saving, and the image-backbone bits.

Strategies (`apply_strategy`):
- `full`: every weight trains.
- `linear-probe`: the backbone is frozen; only the head trains. For BERT-style models the head is
  the pooler plus the classifier, because `*ForSequenceClassification` classifies the pooled
  [CLS] state and sentence-embedding checkpoints never trained that pooler.
- `lora`: low-rank adapters (peft) on the attention projections, plus the head; the adapters are
  merged into the weights before saving (`plain_model`), so the result is an ordinary checkpoint again.
- `lp-ft` trains in full here; its recipe (lp_ft.py) freezes and unfreezes as it goes.

What differs by modality (an image backbone's crops and flips, its BatchNorm statistics, the
settings it refuses) is asked of the backbone's `Modality` (tasks/modality/), not decided here.
"""

from __future__ import annotations

from pathlib import Path

from graftline.tasks.data.splits import encode_labels
from graftline.tasks.engine.training import encode
from graftline.tasks.settings import FinetuneParams


def apply_strategy(model, params: FinetuneParams):
    """The model to train: `model` with what the strategy keeps fixed frozen, or wrapped in LoRA adapters."""
    if params.strategy in ("full", "lp-ft"):  # lp-ft freezes and unfreezes as it goes
        return model
    if params.strategy == "lora":
        return _with_lora(model, params)
    if params.strategy != "linear-probe":
        raise ValueError(f"unknown strategy {params.strategy!r}")
    set_backbone_frozen(model, True)
    return model


def plain_model(model, params: FinetuneParams):
    """`model` as an ordinary checkpoint: LoRA adapters merged into the weights, so it exports and loads
    like any other; other strategies' models as they are."""
    return model.merge_and_unload() if params.strategy == "lora" else model


def set_backbone_frozen(classifier, frozen: bool) -> None:
    """Freeze (or unfreeze) everything but the head: for a text model the head is the pooler and the
    classifier (see `apply_strategy`)."""
    if hasattr(classifier, "freeze_backbone"):
        classifier.freeze_backbone(frozen)
        return
    prefix = classifier.base_model_prefix + "."
    for name, param in classifier.named_parameters():
        param.requires_grad = not frozen or not name.startswith(prefix) or ".pooler." in name


def _with_lora(model, params: FinetuneParams):
    """LoRA on the attention query/value projections (peft's per-architecture default). The head
    trains in full, and so does a BERT pooler (sentence-embedding checkpoints never trained it)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    heads = [
        name
        for name in ("classifier", "score", "pooler")
        if hasattr(model, name) or hasattr(getattr(model, model.base_model_prefix, None), name)
    ]
    config = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        modules_to_save=heads,
    )
    return get_peft_model(model, config)


def encode_split(tokenizer, split, labels: list[str], max_length: int, cache_dir: Path | None = None):
    ids = encode_labels(split.frame["label"], labels, split.name)
    return encode(tokenizer, split.inputs, ids, max_length, cache_dir)


def save_model(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
