"""Fine-tuning a sequence-classification head on a pretrained backbone.

Strategies:
- `full`: every weight trains.
- `linear-probe`: the backbone is frozen; only the head trains. For BERT-style models the head is
  the pooler plus the classifier, because `*ForSequenceClassification` classifies the pooled
  [CLS] state and sentence-embedding checkpoints never trained that pooler.
The saved folder is a standard transformers checkpoint (safetensors) with the label names in its
config, so anything that loads transformers models can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from graftline.tasks import backbones
from graftline.tasks.data import Splits, encode_labels
from graftline.tasks.training import EpochRecord, TrainConfig, TrainResult, encode, seed_everything, train

Strategy = Literal["full", "linear-probe"]


@dataclass(frozen=True)
class FinetuneConfig:
    backbone: str = "minilm-l6"
    strategy: Strategy = "full"
    max_length: int = 128  # tokens; longer texts are truncated
    train: TrainConfig = field(default_factory=TrainConfig)
    trust_remote_code: bool = False


@dataclass
class FinetuneResult:
    model_dir: Path
    labels: list[str]
    training: TrainResult
    parameters: int
    trainable_parameters: int


def finetune(
    splits: Splits,
    config: FinetuneConfig,
    out_dir: Path,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FinetuneResult:
    """Fine-tune `config.backbone` on `splits.train`, early-stopping on `splits.validation`."""
    labels = splits.labels
    tokenizer = backbones.load_tokenizer(config.backbone, config.trust_remote_code)
    seed_everything(config.train.seed)  # the new classification head is initialised from this seed
    model = backbones.load_classifier(config.backbone, labels, config.trust_remote_code)
    apply_strategy(model, config.strategy)

    train_split = encode_split(tokenizer, splits.train, labels, config.max_length)
    val_split = encode_split(tokenizer, splits.validation, labels, config.max_length)
    result = train(model, train_split, val_split, config.train, tokenizer.pad_token_id, on_epoch=on_epoch)

    save_model(model, tokenizer, out_dir)
    return FinetuneResult(
        model_dir=out_dir,
        labels=labels,
        training=result,
        parameters=backbones.count_parameters(model),
        trainable_parameters=backbones.count_parameters(model, trainable_only=True),
    )


def apply_strategy(model, strategy: Strategy) -> None:
    """Freeze what the strategy keeps fixed (requires_grad=False)."""
    if strategy == "full":
        return
    if strategy != "linear-probe":
        raise ValueError(f"unknown strategy {strategy!r}")
    prefix = model.base_model_prefix + "."
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(prefix) or ".pooler." in name


def encode_split(tokenizer, split, labels: list[str], max_length: int):
    ids = encode_labels(split.frame["label"], labels, split.name)
    return encode(tokenizer, split.frame["text"].tolist(), ids, max_length)


def save_model(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
