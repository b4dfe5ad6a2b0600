"""Differentially private fine-tuning: DP-SGD (Abadi et al., 2016) through Opacus.

Each private step takes a Poisson sample of the training rows (each row is in it with probability
q = 1 / ceil(rows / logical_batch_size)), clips every row's gradient to `max_grad_norm` (Opacus's
ghost clipping: the per-row norms without materialising per-row gradients), adds Gaussian noise of
standard deviation `noise_multiplier x max_grad_norm`, and takes one AdamW step. The noise
multiplier is the smallest with which Opacus's PRV accountant keeps `epochs` epochs within
(epsilon, delta); early stopping spends less, and the epsilon reported is the one actually spent. A
sample is computed `batch_size` rows at a time (Opacus's BatchMemoryManager), so the logical batch
can be far larger than what fits in memory; it must be large for DP-SGD to learn well.

The word, position and token-type embeddings are frozen: per-row gradient norms of a
vocabulary-sized embedding cost the most memory and time, and full private fine-tuning of
BERT-family embeddings does not work in Opacus; pretrained embeddings also transfer well.

A linear probe (only the pooler and classifier train) is private on frozen features: the backbone
reads every training and validation row once, its first-token states are kept, and the private
steps run the head alone on them. Each step then costs microseconds instead of a forward pass
through the backbone, so the probe is the fast private option. It is used where the head's logits
on the kept states equal the model's own on the first rows (BERT-family classifiers, every packaged
text backbone among them); elsewhere the probe trains through the whole model, as full training does.

What the guarantee covers: the training split. The validation split chooses the best epoch and is
not protected; evaluation sets are not trained on. The noise comes from torch's seeded generator,
not a cryptographic one (Opacus's `secure_mode` needs `torchcsprng`, which is not installed): fine
for measuring what privacy costs, weaker than the bound for an adversary who can predict the
generator. Not available with DP: several processes, adaptation to target texts, LoRA,
`torch.compile`, resumable checkpoints (the accountant's history would have to be in them; a
crashed private training starts again).

A training loop of its own rather than the engine's: DP-SGD changes what a step is (Poisson
sampled, clipped per row, noised), and none of the engine's speed-ups (length-grouped fixed batches,
accumulation, kept embedding gradients) survives that.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from graftline.tasks.engine import kernels
from graftline.tasks.engine.training import (
    EncodedSplit,
    EpochRecord,
    TrainConfig,
    TrainResult,
    _score,
    collate,
    model_inputs,
    resolve_device,
    scores_of,
    seed_everything,
)

ACCOUNTANT = "prv"  # Opacus's tightest accountant (Gopi et al., 2021)


@dataclass(frozen=True)
class PrivacySpent:
    epsilon: float  # spent over the steps taken
    delta: float
    target_epsilon: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int  # private (logical) steps taken

    def metrics(self) -> dict[str, float]:
        return {f"privacy_{k}": float(v) for k, v in vars(self).items()}


class _Rows(torch.utils.data.Dataset):
    """Row numbers, each as a 1-tuple (Opacus's loader takes the shape of an empty batch from item 0)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int]:
        return (i,)


def frozen_embeddings(model) -> None:
    """Freeze the input embeddings (words, positions, token types) of a transformers classifier."""
    for parameter in model.get_input_embeddings().parameters():
        parameter.requires_grad = False
    base = getattr(model, model.base_model_prefix, model)
    for parameter in getattr(base, "embeddings", torch.nn.Module()).parameters():
        parameter.requires_grad = False


def train_private(
    model,
    train_split: EncodedSplit,
    val_split: EncodedSplit,
    config: TrainConfig,
    pad_id: int,
    epsilon: float,
    delta: float,
    max_grad_norm: float,
    logical_batch_size: int,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> tuple[TrainResult, PrivacySpent]:
    """DP-SGD on `train_split` within (epsilon, delta); on return `model` holds the weights of its best
    validation epoch, without Opacus's hooks."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    frozen_embeddings(model)
    head = FrozenFeatures.of(model, train_split, val_split, config.eval_batch_size, pad_id, device)
    if head is not None:
        train_split, score = head.train, lambda: head.score(config.eval_batch_size)
    else:
        score = lambda: _score(model, val_split, config.eval_batch_size, pad_id, device, "fp32")  # noqa: E731
    loop = _PrivateLoop(
        model, train_split, config, pad_id, epsilon, delta, max_grad_norm, logical_batch_size, device, head
    )
    history, best, best_state = [], (-1.0, 0), None
    # On CPUs, SDPA attention with dropout falls back to a slow unfused path; the engine's dropout avoids it.
    fast_dropout = device.type == "cpu" and config.fast_cpu_dropout
    try:
        with kernels.cpu_dropout(model) if fast_dropout else nullcontext():
            for epoch in range(1, config.epochs + 1):
                loss, seen, seconds = loop.epoch()
                accuracy, f1, val_loss = score()
                record = EpochRecord(
                    epoch=epoch,
                    train_loss=loss,
                    val_accuracy=accuracy,
                    val_macro_f1=f1,
                    learning_rate=loop.scheduler.get_last_lr()[0],
                    seconds=seconds,
                    examples_per_second=seen / seconds if seconds else 0.0,
                    tokens_per_second=0.0,  # not counted: Poisson samples are computed as they come
                    padding_share=0.0,
                    val_loss=val_loss,
                )
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
                if f1 > best[0]:
                    best, best_state = (f1, epoch), copy.deepcopy(model.state_dict())
                elif epoch - best[1] >= config.patience:
                    break
    finally:
        loop.hooks.cleanup()
    model.load_state_dict(best_state)
    result = TrainResult(history, best[1], best[0], str(device), len(history) < config.epochs)
    return result, loop.spent()


class FrozenFeatures:
    """A linear probe's frozen part computed once: the first-token states of every training and
    validation row, and the head (pooler, dropout, classifier) that turns them into logits."""

    CHECKED_ROWS = 8  # rows on which the head's logits must equal the whole model's

    def __init__(self, model, train: EncodedSplit, val: EncodedSplit, train_states, val_states):
        self.model = model
        self.train = _Features(train_states, train.labels)
        self.val = _Features(val_states, val.labels)

    @classmethod
    def of(cls, model, train: EncodedSplit, val: EncodedSplit, batch_size: int, pad_id: int, device):
        """The kept features, or None where the model trains more than its head or its head is not
        the pooler-dropout-classifier of a BERT-family classifier (then the probe trains through
        the whole model)."""
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        base = getattr(model, model.base_model_prefix, None)
        if (
            base is None
            or getattr(base, "pooler", None) is None
            or not isinstance(getattr(model, "classifier", None), torch.nn.Linear)
            or not isinstance(getattr(model, "dropout", None), torch.nn.Dropout)
            or any(".pooler." not in name and not name.startswith("classifier.") for name in trainable)
        ):
            return None
        model.eval()
        checked = np.arange(min(cls.CHECKED_ROWS, len(train)))
        with torch.no_grad():
            batch = {k: v.to(device) for k, v in collate(train, checked, pad_id).items()}
            whole = model(**model_inputs(batch)).logits
            states = base(**model_inputs(batch)).last_hidden_state[:, 0]
            if not torch.allclose(head_logits(model, states), whole, atol=1e-4, rtol=1e-4):
                return None
        return cls(model, train, val, *(first_token_states(base, s, batch_size, pad_id, device) for s in (train, val)))

    def score(self, batch_size: int) -> tuple[float, float, float]:
        """Accuracy, macro-F1 and mean cross-entropy of the head on the validation states."""
        self.model.eval()
        with torch.no_grad():
            logits = [
                head_logits(self.model, self.val.states[i : i + batch_size])
                for i in range(0, len(self.val), batch_size)
            ]
        return scores_of(torch.cat(logits).float().cpu().numpy(), self.val.labels)


@dataclass(frozen=True)
class _Features:
    states: torch.Tensor  # [rows, hidden]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def collate(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {"states": self.states[rows], "labels": torch.from_numpy(self.labels[rows])}


def head_logits(model, states: torch.Tensor) -> torch.Tensor:
    """A BERT-family classifier's logits from its first-token states: pooler, dropout, classifier."""
    pooler = getattr(model, model.base_model_prefix).pooler
    return model.classifier(model.dropout(pooler(states[:, None])))


def first_token_states(base, split: EncodedSplit, batch_size: int, pad_id: int, device) -> torch.Tensor:
    """The backbone's last-layer state of every row's first token, in the split's order (one pass,
    longest rows first to pad little)."""
    order = np.argsort(-split.lengths, kind="stable")
    states = torch.empty(len(split), base.config.hidden_size)
    base.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(split, rows, pad_id).items()}
            states[torch.from_numpy(rows)] = base(**model_inputs(batch)).last_hidden_state[:, 0].float().cpu()
    return states.to(device)


class _PrivateLoop:
    """Opacus's pieces around one model: the Poisson-sampling loader, the clipping hooks and loss, the
    noising optimizer (AdamW inside), the accountant; `epoch` runs one epoch of private steps (on
    the kept features of `head` when it is given)."""

    def __init__(self, model, split, config, pad_id, epsilon, delta, max_grad_norm, logical_batch_size, device, head):
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from transformers import get_linear_schedule_with_warmup

        self.model, self.config, self.device, self.head = model, config, device, head
        self.epsilon, self.delta, self.max_grad_norm = epsilon, delta, max_grad_norm
        rows_of = lambda items: np.array([i for (i,) in items], dtype=np.int64)  # noqa: E731
        loader = torch.utils.data.DataLoader(
            _Rows(len(split)),
            batch_size=min(logical_batch_size, len(split)),
            collate_fn=(
                (lambda items: split.collate(rows_of(items)))
                if head is not None
                else (lambda items: collate(split, rows_of(items), pad_id))
            ),
        )
        self.sample_rate = 1 / len(loader)
        with _quiet():
            self.noise = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=self.sample_rate,
                epochs=config.epochs,
                accountant=ACCOUNTANT,
            )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        model.train()  # Opacus checks it
        with _quiet():
            self.engine = PrivacyEngine(accountant=ACCOUNTANT)
            self.hooks, self.optimizer, self.criterion, self.loader = self.engine.make_private(
                module=model,
                optimizer=optimizer,
                criterion=torch.nn.CrossEntropyLoss(),
                data_loader=loader,
                noise_multiplier=self.noise,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
                grad_sample_mode="ghost",
                wrap_model=False,  # train the model itself; the hooks come off with hooks.cleanup()
                noise_generator=torch.Generator(device=device).manual_seed(config.seed),
            )
        total = len(self.loader) * config.epochs
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(config.warmup_ratio * total), total)
        self.steps = 0

    def epoch(self) -> tuple[float, int, float]:
        """One epoch of private steps: (mean loss, rows seen, seconds)."""
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        started, losses, seen = time.perf_counter(), [], 0
        self.model.train()
        # kept features are small: a whole sample (never more than every row) at once
        physical_size = len(self.head.train) if self.head is not None else self.config.batch_size
        with (
            BatchMemoryManager(data_loader=self.loader, max_physical_batch_size=physical_size, optimizer=self.optimizer)
            as physical,
            _quiet(),
        ):  # fmt: skip
            for batch in physical:
                if isinstance(batch, dict) and len(batch["labels"]):
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    if self.head is not None:
                        logits = head_logits(self.model, batch["states"])
                    else:
                        logits = self.model(**model_inputs(batch)).logits
                    loss = self.criterion(logits.float(), batch["labels"])
                    loss.backward()  # ghost clipping's two passes
                    losses.append(float(loss.item()))
                    seen += len(batch["labels"])
                else:  # an empty Poisson sample (Opacus hands empty tensors): still a step, of noise alone
                    for parameter in self.optimizer.params:
                        parameter.grad = torch.zeros_like(parameter)
                self.optimizer.step()  # clips, and on a sample's last physical batch adds noise and steps
                self.optimizer.zero_grad()
                if not self.optimizer._is_last_step_skipped:
                    self.scheduler.step()
                    self.steps += 1
        return (float(np.mean(losses)) if losses else math.nan), seen, time.perf_counter() - started

    def spent(self) -> PrivacySpent:
        return PrivacySpent(
            epsilon=_spent(self.engine, self.delta),
            delta=self.delta,
            target_epsilon=self.epsilon,
            noise_multiplier=float(self.noise),
            max_grad_norm=self.max_grad_norm,
            sample_rate=self.sample_rate,
            steps=self.steps,
        )


def _spent(engine, delta: float) -> float:
    with _quiet():
        return float(engine.get_epsilon(delta)) if engine.accountant.history else 0.0


@contextmanager
def _quiet():
    """Without Opacus's warnings that say nothing to a graftline user: the generator is not
    cryptographic (documented above), an RDP order hint, a hook notice for frozen inputs."""
    with warnings.catch_warnings():
        for message in ("Secure RNG turned off", "Optimal order is the largest alpha", "Full backward hook is firing"):
            warnings.filterwarnings("ignore", message=message)
        # PRV takes log(1 - q): at q = 1 (a logical batch of every row) numpy warns, the bound is right
        warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning)
        yield
