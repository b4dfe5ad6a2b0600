"""The training engine shared by fine-tuning and distillation.

Supports: AdamW with linear warmup and decay, dynamic padding (each batch padded to its own
longest row), early stopping on validation macro-F1 with the best weights restored, seeded
shuffling, CUDA with bf16 autocast when a GPU is present, CPU otherwise. The loss is injected,
so fine-tuning (cross-entropy) and distillation (soft targets) share one loop.
Not supported yet: gradient accumulation, checkpoints for resuming, multiple devices.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

# The loss sees the model's whole output (logits, and hidden states when the model returns them).
LossFn = Callable[[object, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of all steps spent ramping the learning rate up
    max_grad_norm: float = 1.0
    patience: int = 2  # epochs without a better validation macro-F1 before stopping
    seed: int = 13
    device: str = "auto"  # auto | cpu | cuda
    eval_batch_size: int = 64


@dataclass
class EncodedSplit:
    """Tokenised rows kept unpadded; batches are padded on the fly to their own longest row."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. teacher logits per row

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float
    val_macro_f1: float
    learning_rate: float
    seconds: float
    examples_per_second: float


@dataclass
class TrainResult:
    history: list[EpochRecord]
    best_epoch: int
    best_val_macro_f1: float
    device: str
    stopped_early: bool


def encode(tokenizer, texts: list[str], labels: list[int], max_length: int) -> EncodedSplit:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    features = [{k: encoded[k][i] for k in keys} for i in range(len(texts))]
    return EncodedSplit(features, np.asarray(labels, dtype=np.int64))


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from graftline.tasks.errors import GraftlineError

        raise GraftlineError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(requested)


def batches(
    split: EncodedSplit, batch_size: int, pad_id: int, order: list[int] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded tensor batches in `order` (default: as stored)."""
    order = order if order is not None else list(range(len(split)))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        longest = max(len(split.features[i]["input_ids"]) for i in rows)
        batch = {}
        for key in split.features[rows[0]]:
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor(
                [split.features[i][key] + [fill] * (longest - len(split.features[i][key])) for i in rows]
            )
        batch["labels"] = torch.from_numpy(split.labels[rows])
        for key, values in split.extras.items():
            batch[key] = torch.from_numpy(values[rows])
        yield batch


def cross_entropy(outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs.logits.float(), batch["labels"])


def train(
    model,
    train_split: EncodedSplit,
    val_split: EncodedSplit,
    config: TrainConfig,
    pad_id: int,
    loss_fn: LossFn = cross_entropy,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train `model` in place; on return it holds the weights of its best validation epoch."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps
    )
    shuffler = random.Random(config.seed)
    history: list[EpochRecord] = []
    best_f1, best_epoch, best_state, stale = -1.0, 0, None, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        order = list(range(len(train_split)))
        shuffler.shuffle(order)
        # Losses stay on the device and are summed once per epoch: no host sync per step.
        loss_sum = torch.zeros((), device=device)
        for batch in batches(train_split, config.batch_size, pad_id, order):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device):
                outputs = model(**model_inputs(batch))
            loss = loss_fn(outputs, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(batch["labels"])
        seconds = time.perf_counter() - started
        accuracy, macro_f1 = _score(model, val_split, config.eval_batch_size, pad_id, device)
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(loss_sum) / len(train_split),
            val_accuracy=accuracy,
            val_macro_f1=macro_f1,
            learning_rate=scheduler.get_last_lr()[0],
            seconds=seconds,
            examples_per_second=len(train_split) / seconds,
        )
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if macro_f1 > best_f1:
            best_f1, best_epoch, stale = macro_f1, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    stopped_early = len(history) < config.epochs
    return TrainResult(history, best_epoch, best_f1, str(device), stopped_early)


@torch.no_grad()
def predict_logits(model, split: EncodedSplit, batch_size: int, pad_id: int, device=None) -> np.ndarray:
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = []
    for batch in batches(split, batch_size, pad_id):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device):
            out.append(model(**model_inputs(batch)).logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _score(model, split, batch_size, pad_id, device) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predictions = predict_logits(model, split, batch_size, pad_id, device).argmax(-1)
    return (
        float(accuracy_score(split.labels, predictions)),
        float(f1_score(split.labels, predictions, average="macro")),
    )


def _optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights are not decayed (the usual BERT recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def autocast(device: torch.device):
    # bf16 autocast on GPUs only: on these CPUs it is slower for small models and changes numerics.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
