"""Fine-tuning a sequence-classification head on a pretrained backbone.

Strategies:
- `full`: every weight trains.
- `linear-probe`: the backbone is frozen; only the head trains. For BERT-style models the head is
  the pooler plus the classifier, because `*ForSequenceClassification` classifies the pooled
  [CLS] state and sentence-embedding checkpoints never trained that pooler.
- `lora`: low-rank adapters (peft) on the attention projections, plus the head; the adapters are
  merged into the weights before saving, so the result is an ordinary checkpoint again.
The saved folder is a standard transformers checkpoint (safetensors) with the label names in its
config, so anything that loads transformers models can use it.

With `processes` > 1 the same function runs data-parallel in that many torchrun processes (one per
GPU, or gloo CPU processes); with `checkpoint_dir` a killed run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from graftline.tasks.engine import backbones, distributed
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.data import Splits, encode_labels
from graftline.tasks.engine.training import EpochRecord, TrainConfig, TrainResult, encode, seed_everything, train

Strategy = Literal["full", "linear-probe", "lora"]


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1


@dataclass(frozen=True)
class FinetuneConfig:
    backbone: str = "minilm-l6"
    strategy: Strategy = "full"
    max_length: int = 128  # tokens; longer texts are truncated
    train: TrainConfig = field(default_factory=TrainConfig)
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    processes: int = 1  # data-parallel processes (torchrun): GPUs to use, or CPU processes
    cache_dir: Path | None = None  # tokenisation cache
    checkpoint_dir: Path | None = None  # resumable checkpoints; removed once the model is saved


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
    if config.processes > 1 and distributed.rank_and_size()[1] == 1:
        result = distributed.launch(finetune, (splits, config, out_dir), config.processes)
        if on_epoch:  # the processes cannot reach the caller's tracking run; replay their epochs here
            for record in result.training.history:
                on_epoch(record)
        return result
    labels = splits.labels
    tokenizer = backbones.load_tokenizer(config.backbone, config.trust_remote_code)
    seed_everything(config.train.seed)  # the new classification head is initialised from this seed
    model = backbones.load_classifier(config.backbone, labels, config.trust_remote_code)
    model = apply_strategy(model, config.strategy, config.lora)
    trainable = backbones.count_parameters(model, trainable_only=True)

    train_split = encode_split(tokenizer, splits.train, labels, config.max_length, config.cache_dir)
    val_split = encode_split(tokenizer, splits.validation, labels, config.max_length, config.cache_dir)
    result = train(
        model,
        train_split,
        val_split,
        config.train,
        tokenizer.pad_token_id,
        on_epoch=on_epoch,
        checkpoint_dir=config.checkpoint_dir,
    )

    if config.strategy == "lora":
        model = model.merge_and_unload()  # plain weights again: exports and loads like any checkpoint
    if distributed.rank_and_size()[0] == 0:
        save_model(model, tokenizer, out_dir)
    distributed.barrier()
    if config.checkpoint_dir is not None and distributed.rank_and_size()[0] == 0:
        Checkpoints(config.checkpoint_dir).clear()  # the saved model supersedes them
    return FinetuneResult(
        model_dir=out_dir,
        labels=labels,
        training=result,
        parameters=backbones.count_parameters(model),
        trainable_parameters=trainable,
    )


def apply_strategy(model, strategy: Strategy, lora: LoraConfig = LoraConfig()):
    """The model to train: `model` with what the strategy keeps fixed frozen, or wrapped in LoRA adapters."""
    if strategy == "full":
        return model
    if strategy == "lora":
        return _with_lora(model, lora)
    if strategy != "linear-probe":
        raise ValueError(f"unknown strategy {strategy!r}")
    prefix = model.base_model_prefix + "."
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(prefix) or ".pooler." in name
    return model


def _with_lora(model, settings: LoraConfig):
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
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        modules_to_save=heads,
    )
    return get_peft_model(model, config)


def encode_split(tokenizer, split, labels: list[str], max_length: int, cache_dir: Path | None = None):
    ids = encode_labels(split.frame["label"], labels, split.name)
    return encode(tokenizer, split.frame["text"].tolist(), ids, max_length, cache_dir)


def save_model(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
