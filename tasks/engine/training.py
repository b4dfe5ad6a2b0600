"""The training engine shared by fine-tuning and distillation.

One loop, with the loss injected (fine-tuning: cross-entropy; distillation: soft targets):

- Speed. Rows are tokenised once (and cached on disk by text digest and tokenizer fingerprint),
  kept unpadded, and batched by length: each epoch shuffles the rows, sorts them by length within
  megabatches of 50 batches and shuffles the resulting batches, so a batch is padded only to its own
  longest row (the scheme of the Trainer's `group_by_length`). The hot loop never waits on the
  device: losses stay on it and are read once per epoch. AdamW is the fused kernel where the
  parameters' device has one. bf16 autocast (default on GPUs, optional on CPUs with bf16 units),
  TF32 matmuls on GPUs, pinned host memory and non-blocking copies, gradient accumulation and
  optional `torch.compile`. On CPUs, dropout draws its masks four to a random word and vocabulary
  gradients are added into a buffer kept for the run (engine/kernels.py).
  Every epoch reports examples/s, tokens/s and, on GPUs with a known peak, the model-FLOPs
  utilisation.
- Resumability. With a checkpoint folder, the loop saves everything the next step depends on every
  `checkpoint_every` optimizer steps and at each epoch's end (see tasks.checkpoints), unless the last
  checkpoint is less than `checkpoint_seconds` old: a checkpoint of a small model costs about half a
  second of a 2-core CPU, which short epochs would pay again and again for little to resume. A new
  call with the same folder continues from the newest checkpoint: same batches, same dropout masks,
  same final weights as a run that was never interrupted.
- Several processes. Under torch.distributed (torchrun; see tasks.distributed) the model is wrapped
  in DistributedDataParallel and every global batch is split across the processes; losses are
  weighted so the averaged gradient equals the single-process one.
- Reports for a search. With `on_report`, the validation macro-F1 is also measured
  `reports_per_epoch` times per epoch, at evenly spaced steps (the last at the epoch's end), and passed
  on: what a hyper-parameter search's pruner reads (tasks/train/search.py). `on_report` may raise to stop
  the training there.
- Early stopping on validation macro-F1, with the best epoch's weights restored at the end. An
  epoch that ties the best macro-F1 counts as better when its validation loss is lower: on a small
  validation set macro-F1 takes few values (24 images: steps of about 4 points) and often reaches
  its ceiling in the first epoch, after which no epoch could be strictly better, and the first
  epoch's barely trained weights would be kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from graftline.tasks import progress
from graftline.tasks.engine import kernels
from graftline.tasks.engine.checkpoints import Checkpoints, LoopState
from graftline.tasks.engine.image_inputs import DecodedImages
from graftline.tasks.modality.base import InputPreparer
from graftline.tasks.progress import TrainingProgress

log = logging.getLogger(__name__)

# The loss sees the model's whole output (logits, and hidden states when the model returns them).
LossFn = Callable[[object, dict[str, torch.Tensor]], torch.Tensor]
Auxiliary = Callable[
    [object, int, int, int, int, torch.device], torch.Tensor
]  # model, epoch, step, micro, rows, device
Precision = Literal["auto", "fp32", "bf16"]
MEGABATCH = 50  # batches sorted together by length; the Trainer's LengthGroupedSampler uses 50 too
# Grouping by length makes batches less random (on data where length goes with the label, a batch
# can end up nearly one class), so by default it is used only where it saves much: when random
# batches would be more than this share padding.
GROUPING_PAYS_ABOVE = 0.2
# Reading the step losses off the device is a host sync: it drains the GPU's queue of work. Progress
# reports carry them every this many optimizer steps (and at each epoch's end), never every step.
PROGRESS_EVERY = 20


@dataclass(frozen=True)
class TrainConfig:
    """What one call of `train` does. The settings a user chooses have no defaults here: their one home
    is tasks/settings.py (`TrainingParams.train_config` builds this); the rest are the engine's own."""

    epochs: int
    batch_size: int  # rows per optimizer step and micro-batch, summed over processes
    learning_rate: float
    weight_decay: float
    warmup_ratio: float  # share of all steps spent ramping the learning rate up
    patience: int  # epochs without a better validation macro-F1 before stopping
    seed: int
    device: str  # auto | cpu | cuda
    precision: Precision  # auto: bf16 autocast on CUDA, fp32 on CPU
    grad_accumulation: int  # micro-batches of `batch_size` rows per optimizer step
    group_by_length: bool | None  # batch rows of similar length together; None: when it pays (see below)
    compile: bool  # torch.compile the model (dynamic shapes); pays a compile once
    fast_cpu_dropout: bool  # on CPUs, dropout masks from 64-bit random words (engine/kernels.py)
    layer_decay: float  # layer-wise LR decay: layer i of L trains at lr * decay**(L + 1 - i)
    backbone_rate: float  # everything below the head trains at this share of the rate
    checkpoint_every: int  # optimizer steps between checkpoints (0: only at each epoch's end)
    checkpoint_seconds: float  # a due checkpoint is skipped when the last one is younger than this
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64


@dataclass(frozen=True)
class TrainingIO:
    """What a training step reads and writes besides its model folder: the tokenisation cache, its
    resumable checkpoints (removed once the model is saved), who hears of each finished epoch, and
    who hears of each optimizer step (with the step losses read every `progress_every` steps), and who
    hears the validation macro-F1 `reports_per_epoch` times per epoch (a search's pruner)."""

    cache_dir: Path | None = None
    checkpoint_dir: Path | None = None
    on_epoch: Callable[[EpochRecord], None] | None = None
    on_progress: Callable[[TrainingProgress], None] | None = None
    progress_every: int = PROGRESS_EVERY
    on_report: Callable[[float], None] | None = None
    reports_per_epoch: int = 1

    def listeners(self) -> dict:
        """The keyword arguments of `train` that report progress."""
        return {
            "on_epoch": self.on_epoch,
            "on_progress": self.on_progress,
            "progress_every": self.progress_every,
            "on_report": self.on_report,
            "reports_per_epoch": self.reports_per_epoch,
        }

    def unheard(self) -> TrainingIO:
        """The same without listeners (for processes that cannot reach the caller's)."""
        return replace(self, on_epoch=None, on_progress=None, on_report=None)


UNLABELED = -100  # the label id of a row trained on a soft label only (no cross-entropy)


@dataclass
class EncodedSplit:
    """Token ids per row, unpadded; batches are padded on the fly to their own longest row."""

    ids: list[np.ndarray]
    labels: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. teacher logits per row

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(row) for row in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float
    val_macro_f1: float
    learning_rate: float
    seconds: float
    examples_per_second: float
    tokens_per_second: float  # real (unpadded) tokens
    padding_share: float  # share of the processed positions that were padding
    mfu: float | None = None  # model-FLOPs utilisation against the GPU's peak; None on CPUs
    val_loss: float | None = None  # mean validation cross-entropy: the tie-break between equal macro-F1


@dataclass
class TrainResult:
    history: list[EpochRecord]
    best_epoch: int
    best_val_macro_f1: float
    device: str
    stopped_early: bool
    step_losses: list[float] = field(default_factory=list)  # the mean loss of every optimizer step
    resumed_from_step: int | None = None  # the checkpoint this call started from, if any


# -- tokenisation -----------------------------------------------------------------------------


def encode(
    tokenizer, texts: list[str], labels: list[int], max_length: int, cache_dir: Path | None = None
) -> EncodedSplit:
    """Tokenise `texts` (truncated to `max_length`), reusing the on-disk cache when given one.

    The cache key is (digest of the texts, fingerprint of the tokenizer, max_length): a changed
    vocabulary, normaliser or truncation length never reuses stale ids."""
    if isinstance(tokenizer, InputPreparer):  # a preparer that encodes its own rows (images: `texts` are paths)
        return tokenizer.encode(list(texts), labels, cache_dir)
    texts = list(texts)
    path = None
    if cache_dir is not None:
        key = _digest([tokenizer_fingerprint(tokenizer), str(max_length), *texts])
        path = Path(cache_dir) / f"{key}.npz"
        if path.is_file():
            with np.load(path) as saved:
                flat, offsets = saved["flat"], saved["offsets"]
            log.info("tokenisation: %d rows from the cache (%s)", len(texts), path.name)
            return EncodedSplit(_rows(flat, offsets), np.asarray(labels, dtype=np.int64))
    flat, offsets = _tokenize(tokenizer, texts, max_length)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, flat=flat, offsets=offsets)
        partial.replace(path)
    return EncodedSplit(_rows(flat, offsets), np.asarray(labels, dtype=np.int64))


TOKENIZE_CHUNK = 8192  # texts per tokenizer call: it returns Python lists (~36 bytes a token), so a whole
# large set in one call would hold gigabytes (1.9 GB at 100,000 reviews) where its int32 ids take megabytes


def _tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every text's ids, end to end in one int32 array, and where each row starts (plus the end)."""
    import itertools

    pieces, lengths = [], []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        rows = tokenizer(texts[start : start + TOKENIZE_CHUNK], truncation=True, max_length=max_length)["input_ids"]
        lengths.append(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
        pieces.append(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32))
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1, np.int64)
    return flat, offsets


def _rows(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Each row's ids: views into `flat`, no copies."""
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of everything that decides a tokenizer's ids: its class and full serialised state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _digest([type(tokenizer).__name__, json.dumps(tokenizer.get_vocab(), sort_keys=True)])
    state = json.loads(backend.to_str())
    for per_call in ("truncation", "padding"):  # set by each call (max_length is part of the cache key)
        state.pop(per_call, None)
    return _digest([type(tokenizer).__name__, json.dumps(state, sort_keys=True)])


def _digest(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:24]


# -- batching ---------------------------------------------------------------------------------


def batch_plan(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, processes: int = 1
) -> list[np.ndarray]:
    """The row indices of every batch of one epoch: a pure function of its arguments, so a resumed
    run rebuilds the same plan from (seed, epoch) alone."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = batch_size * MEGABATCH
        order = (
            np.concatenate(
                [
                    chunk[np.argsort(-lengths[chunk], kind="stable")]
                    for chunk in np.split(order, range(mega, len(order), mega))
                ]
            )
            if len(order)
            else order
        )
    plan = np.split(order, range(batch_size, len(order), batch_size)) if len(order) else []
    if processes > 1 and len(plan) > 1 and len(plan[-1]) < processes:
        plan[-2:] = [np.concatenate(plan[-2:])]  # every process needs at least one row
    if group_by_length:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def padding_share(lengths: np.ndarray, plan: list[np.ndarray]) -> float:
    """Share of padded positions when batches are padded to their longest row."""
    positions = sum(int(lengths[rows].max()) * len(rows) for rows in plan)
    return 1 - int(lengths.sum()) / positions if positions else 0.0


def collate(split: EncodedSplit, rows: np.ndarray, pad_id: int, pin: bool = False) -> dict[str, torch.Tensor]:
    """Rows `rows` padded to their own longest row (images: cropped and normalised by their split)."""
    if isinstance(split, DecodedImages):
        return split.collate(rows, pin)
    lengths = np.fromiter((len(split.ids[i]) for i in rows), dtype=np.int64, count=len(rows))
    ids = np.full((len(rows), int(lengths.max(initial=1))), pad_id, dtype=np.int64)
    for j, i in enumerate(rows):
        ids[j, : lengths[j]] = split.ids[i]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy((np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)),
        "labels": torch.from_numpy(split.labels[rows]),
        **{key: torch.from_numpy(values[rows]) for key, values in split.extras.items()},
    }
    return {k: v.pin_memory() for k, v in batch.items()} if pin else batch


def batches(split: EncodedSplit, batch_size: int, pad_id: int, order=None) -> Iterator[dict[str, torch.Tensor]]:
    """Padded tensor batches in `order` (default: as stored)."""
    order = np.arange(len(split)) if order is None else np.asarray(order)
    for start in range(0, len(order), batch_size):
        yield collate(split, order[start : start + batch_size], pad_id)


# -- the loop ---------------------------------------------------------------------------------


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
    checkpoint_dir: Path | None = None,
    auxiliary: Auxiliary | None = None,
    on_progress: Callable[[TrainingProgress], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
    on_report: Callable[[float], None] | None = None,
    reports_per_epoch: int = 1,
) -> TrainResult:
    """Train `model` in place; on return it holds the weights of its best validation epoch.

    With `checkpoint_dir`, checkpoints go there and a call finding one there resumes from it. With
    `auxiliary` (e.g. masked-language modelling on target texts, engine/mlm.py), each micro-batch's
    loss is `loss_fn` plus what it returns for (model, epoch, step, micro-batch, rows, device).
    `on_progress` hears of every optimizer step; the losses come with every `progress_every`-th.
    `on_report` hears the validation macro-F1 `reports_per_epoch` times per epoch."""
    from graftline.tasks.engine import distributed

    if auxiliary is not None and distributed.rank_and_size()[1] > 1:
        raise NotImplementedError("an auxiliary loss is computed outside DDP's forward; train it in one process")
    listeners = (on_epoch, on_progress, max(1, progress_every), on_report, max(1, reports_per_epoch))
    return _Loop(model, train_split, val_split, config, pad_id, loss_fn, listeners, checkpoint_dir, auxiliary).run()


@dataclass
class _Seen:
    """What an epoch has processed, for its throughput numbers."""

    rows: int = 0
    tokens: int = 0  # real tokens
    positions: int = 0  # tokens plus padding

    def add(self, lengths: np.ndarray) -> None:
        self.rows += len(lengths)
        self.tokens += int(lengths.sum())
        self.positions += int(lengths.max()) * len(lengths)


class _Loop:
    """One call of `train`: the set-up (device, wrapping, optimizer, schedule, a checkpoint to resume
    from), then epochs of optimizer steps, each step one or more micro-batches split over processes."""

    def __init__(
        self, model, train_split, val_split, config: TrainConfig, pad_id, loss_fn, listeners, checkpoint_dir, auxiliary
    ):
        from transformers import get_linear_schedule_with_warmup

        from graftline.tasks.engine import distributed

        self.model, self.train_split, self.val_split, self.config = model, train_split, val_split, config
        self.pad_id, self.loss_fn, self.auxiliary = pad_id, loss_fn, auxiliary
        # on_epoch, on_progress (every n steps), on_report (n times an epoch)
        self.on_epoch, self.on_progress, self.progress_every, self.on_report, self.reports_per_epoch = listeners
        self.reported = 0  # step losses already passed to on_progress
        self.rank, self.processes = distributed.rank_and_size()
        seed_everything(config.seed)
        self.device = distributed.device_for(resolve_device(config.device))
        self.precision = resolve_precision(config.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        model.to(self.device)
        self.ddp = distributed.wrap(model, self.device) if self.processes > 1 else None
        self.net = self.ddp if self.ddp is not None else model
        if config.compile:
            self.net = torch.compile(self.net, dynamic=True)
        self.optimizer = make_optimizer(model, config, self.device)

        self.lengths = train_split.lengths
        self.grouped = config.group_by_length
        if self.grouped is None:
            random_plan = batch_plan(self.lengths, config.batch_size, config.seed, 1, False)
            self.grouped = padding_share(self.lengths, random_plan) > GROUPING_PAYS_ABOVE
        total_steps = len(self.steps_of(1)) * config.epochs
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * total_steps), total_steps
        )

        self.store = Checkpoints(checkpoint_dir) if checkpoint_dir is not None else None
        self.kept_grads: list[torch.nn.Parameter] = []  # gradients zeroed in place (engine/kernels.py)
        self.checkpointed_at = time.monotonic()  # the age of the newest checkpoint (or of the run)
        self.state, self.best_state, self.resumed_from = LoopState(), None, None
        if self.store is not None and self.store.latest() is not None:
            self.state, self.best_state = self.store.load(model, self.optimizer, self.scheduler)
            self.resumed_from = self.state.global_step
            log.info(
                "resuming from the checkpoint at step %d (epoch %d, step %d)",
                self.state.global_step,
                self.state.epoch,
                self.state.step_in_epoch,
            )
        self.flops_per_token = training_flops_per_token(model)
        self.peak = peak_flops(self.device, self.precision) if self.flops_per_token else None

    def steps_of(self, epoch: int) -> list[list[np.ndarray]]:
        """The optimizer steps of `epoch`, each a list of micro-batches (row indices)."""
        config = self.config
        plan = batch_plan(self.lengths, config.batch_size, config.seed, epoch, self.grouped, self.processes)
        return [plan[i : i + config.grad_accumulation] for i in range(0, len(plan), config.grad_accumulation)]

    def run(self) -> TrainResult:
        on_cpu = self.device.type == "cpu" and not self.config.compile
        fast_dropout = on_cpu and self.config.fast_cpu_dropout
        kept_grads = on_cpu and self.ddp is None  # DDP buckets dense gradients
        try:
            with (
                kernels.cpu_dropout(self.model) if fast_dropout else nullcontext(),
                kernels.kept_embedding_grads(self.model) if kept_grads else nullcontext([]) as kept,
            ):
                self.kept_grads = kept
                while not self.state.done and self.state.epoch <= self.config.epochs:
                    self._epoch()
        finally:
            if self.store is not None:
                self.store.wait()  # even after a crash: the last checkpoint lands whole before anyone reads it
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        history = [EpochRecord(**record) for record in self.state.history]
        return TrainResult(
            history,
            self.state.best_epoch,
            self.state.best_f1,
            str(self.device),
            len(history) < self.config.epochs,
            self.state.step_losses,
            self.resumed_from,
        )

    def _epoch(self) -> None:
        state, every = self.state, self.config.checkpoint_every
        self.net.train()
        steps, seen = self.steps_of(state.epoch), _Seen()
        # Losses stay on the device (one row-weighted sum per step): no host sync per step.
        step_sums = torch.zeros(len(steps), device=self.device)
        started, resumed_at = time.perf_counter(), state.step_in_epoch
        reports = self._report_steps(len(steps))
        for step in range(state.step_in_epoch, len(steps)):
            self._step(steps[step], step_sums, step, seen)
            state.step_in_epoch, state.global_step = step + 1, state.global_step + 1
            if every and state.global_step % every == 0 and step + 1 < len(steps):
                _close_steps(state, step_sums, steps)
                self._checkpoint()
            if self.on_progress is not None:
                self._report(steps, step_sums, time.perf_counter() - started, seen, resumed_at)
            if step + 1 in reports:
                self._report_validation()
        seconds = time.perf_counter() - started
        _close_steps(state, step_sums, steps)
        self._end_epoch(seconds, seen)

    def _step(self, micro_batches: list[np.ndarray], step_sums: torch.Tensor, step: int, seen: _Seen) -> None:
        """One optimizer step over `micro_batches`, each split across the processes."""
        rows_in_step = sum(len(rows) for rows in micro_batches)
        pin = self.device.type == "cuda"
        for index, rows in enumerate(micro_batches):
            local = rows[self.rank :: self.processes]
            batch = {
                k: v.to(self.device, non_blocking=True)
                for k, v in collate(self.train_split, local, self.pad_id, pin).items()
            }
            syncing = self.ddp is None or index == len(micro_batches) - 1  # DDP all-reduces on the last micro-batch
            with nullcontext() if syncing else self.ddp.no_sync(), autocast(self.device, self.precision):
                loss = self.loss_fn(self.net(**model_inputs(batch)), batch)
                if self.auxiliary is not None:
                    loss = loss + self.auxiliary(self.model, self.state.epoch, step, index, len(local), self.device)
            # Weighted so that the gradient, averaged over processes and summed over micro-batches,
            # is the mean over the step's rows however they were split.
            (loss * (len(local) * self.processes / rows_in_step)).backward()
            step_sums[step] += loss.detach() * len(local)
            seen.add(self.lengths[rows])
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        kernels.zero_grads(self.optimizer, self.kept_grads)

    def _report_steps(self, steps: int) -> set[int]:
        """The steps within an epoch after which `on_report` hears the validation score (the epoch's
        end reports separately)."""
        if self.on_report is None:
            return set()
        n = self.reports_per_epoch
        return {round(steps * k / n) for k in range(1, n)} - {0, steps}

    def _report_validation(self) -> None:
        config = self.config
        _, macro_f1, _ = _score(
            self.model, self.val_split, config.eval_batch_size, self.pad_id, self.device, self.precision
        )
        self.net.train()  # scoring switched the model to evaluation mode
        if self.rank == 0:
            self.on_report(macro_f1)

    def _report(self, steps: list, step_sums: torch.Tensor, seconds: float, seen: _Seen, resumed_at: int) -> None:
        """Tell `on_progress` of the step just taken; every `progress_every` steps and at the epoch's
        end, read the losses of the steps since the last read (one host sync) and pass them on."""
        state, losses = self.state, ()
        if state.global_step % self.progress_every == 0 or state.step_in_epoch == len(steps):
            if len(state.step_losses) < state.global_step:
                _close_steps(state, step_sums, steps)
            losses, self.reported = tuple(state.step_losses[self.reported :]), len(state.step_losses)
        if self.rank == 0:
            self.on_progress(
                TrainingProgress(
                    epoch=state.epoch,
                    epochs=self.config.epochs,
                    step=state.step_in_epoch,
                    steps=len(steps),
                    seconds=seconds,
                    rows=seen.rows,
                    losses=losses,
                    steps_done_before=resumed_at,
                )
            )

    def _end_epoch(self, seconds: float, seen: _Seen) -> None:
        """Score on validation, record the epoch, keep the best weights, decide on stopping, checkpoint."""
        state = self.state
        accuracy, macro_f1, val_loss = _score(
            self.model, self.val_split, self.config.eval_batch_size, self.pad_id, self.device, self.precision
        )
        record = EpochRecord(
            epoch=state.epoch,
            train_loss=state.epoch_loss_sum / len(self.train_split),
            val_accuracy=accuracy,
            val_macro_f1=macro_f1,
            learning_rate=self.scheduler.get_last_lr()[0],
            seconds=seconds,
            examples_per_second=seen.rows / seconds if seconds else 0.0,
            tokens_per_second=seen.tokens / seconds if seconds else 0.0,
            padding_share=1 - seen.tokens / seen.positions if seen.positions else 0.0,
            mfu=self.flops_per_token * seen.tokens / seconds / self.peak if self.peak and seconds else None,
            val_loss=val_loss,
        )
        state.history.append(asdict(record))
        if self.on_epoch and self.rank == 0:
            self.on_epoch(record)
        if self.on_report and self.rank == 0:
            self.on_report(macro_f1)
        improved = macro_f1 > state.best_f1 or (macro_f1 == state.best_f1 and val_loss < state.best_loss)
        if improved:
            state.best_f1, state.best_loss, state.best_epoch, state.stale = macro_f1, val_loss, state.epoch, 0
            self.best_state = {
                k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()
            }
        else:
            state.stale += 1
        state.done = state.stale >= self.config.patience or state.epoch == self.config.epochs
        state.epoch, state.step_in_epoch, state.epoch_loss_sum = state.epoch + 1, 0, 0.0
        self._checkpoint(best_is_model=improved)

    def _checkpoint(self, best_is_model: bool = False) -> None:
        from graftline.tasks.engine import distributed

        recent = time.monotonic() - self.checkpointed_at < self.config.checkpoint_seconds
        if self.store is not None and self.rank == 0 and not recent:  # written in the background
            self.store.save(self.state, self.model, self.optimizer, self.scheduler, self.best_state, best_is_model)
            self.checkpointed_at = time.monotonic()
        distributed.barrier()


def _close_steps(state: LoopState, step_sums: torch.Tensor, groups: list) -> None:
    """Move the losses of this epoch's steps taken since the last read from the device into
    `state`: one host sync (and one all-reduce over processes) per call, not per step."""
    from graftline.tasks.engine import distributed

    first = state.step_in_epoch - (state.global_step - len(state.step_losses))
    sums = distributed.all_reduce_sum(step_sums[first : state.step_in_epoch].clone()).tolist()
    for step, total in enumerate(sums, start=first):
        state.step_losses.append(total / sum(len(rows) for rows in groups[step]))
        state.epoch_loss_sum += total


# -- optimiser, precision, throughput -----------------------------------------------------------


def make_optimizer(model, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused kernel where the device has one). Biases and LayerNorm weights are not decayed;
    with `layer_decay` < 1 every transformer layer gets its own learning rate, and with
    `backbone_rate` < 1 everything below the head trains slower than the head."""
    depth_of, layers = _layer_depths(model)
    if config.layer_decay == 1:  # one rate per side of the head: few groups (few fused kernel calls a step)
        exact = depth_of
        depth_of = lambda name: layers + 1 if config.backbone_rate == 1 or exact(name) > layers else 0  # noqa: E731
    groups: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((depth_of(name), param.ndim >= 2), []).append(param)
    param_groups = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decayed else 0.0,
            "lr": config.learning_rate
            * config.layer_decay ** (layers + 1 - depth)
            * (config.backbone_rate if depth <= layers else 1.0),
        }
        for (depth, decayed), params in sorted(groups.items())
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups, lr=config.learning_rate, fused=fused)


def _layer_depths(model) -> tuple[Callable[[str], int], int]:
    """Depth of a parameter: 0 for embeddings, i + 1 for transformer layer i, L + 1 for the rest
    (pooler, classifier head)."""
    pattern = re.compile(r"\.layers?\.(\d+)\.")
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0
    own = getattr(model, "layer_depth", None)  # a model may state its own layers' depths (vision.EfficientNetLite)
    if own is not None:
        return own, layers

    def depth_of(name: str) -> int:
        found = pattern.search(name)
        if found:
            return int(found.group(1)) + 1
        return 0 if "embeddings" in name else layers + 1

    return depth_of, layers


def resolve_precision(requested: Precision, device: torch.device) -> Precision:
    if requested == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return requested


def autocast(device: torch.device, precision: Precision = "auto"):
    """bf16 autocast when `precision` says so (auto: on GPUs only; on CPUs without bf16 units it is
    slower and it changes numerics, so CPUs stay in fp32 unless asked)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def training_flops_per_token(model) -> float:
    """Model FLOPs of one training token: 6 per non-embedding weight (forward 2, backward 4), the
    usual estimate (Kaplan et al.); attention's sequence-length term is left out (short texts). A
    convolutional network reuses each weight at every position, so the estimate does not hold: 0 (no
    utilisation reported)."""
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        return 0.0
    weights = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 6.0 * weights


# Dense bf16 peak FLOP/s of common GPUs (vendor data sheets); GRAFTLINE_PEAK_FLOPS overrides.
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "A6000": 155e12,
    "4090": 165e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device, precision: Precision) -> float | None:
    if device.type != "cuda":
        return None
    if os.environ.get("GRAFTLINE_PEAK_FLOPS"):
        return float(os.environ["GRAFTLINE_PEAK_FLOPS"])
    name = torch.cuda.get_device_name(device)
    peak = next((flops for key, flops in PEAK_BF16.items() if key in name), None)
    return peak if peak is None or precision == "bf16" else peak / 2  # TF32 runs at about half bf16


# -- inference ----------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(
    model, split: EncodedSplit, batch_size: int, pad_id: int, device=None, precision: Precision = "auto"
) -> np.ndarray:
    """Logits for every row, in the split's order (computed longest-first, to pad little)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    order = np.argsort(-split.lengths, kind="stable")
    out = []
    with progress.activity(f"predicting {len(split):,} rows", total=-(-len(split) // batch_size)) as shown:
        for batch in batches(split, batch_size, pad_id, order):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device, precision):
                out.append(model(**model_inputs(batch)).logits.float().cpu())
            shown.update(len(out))
    if not out:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    logits = np.empty((len(split), out[0].shape[1]), dtype=np.float32)
    logits[order] = torch.cat(out).numpy()
    return logits


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from graftline.tasks.errors import GraftlineError

        raise GraftlineError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _score(model, split, batch_size, pad_id, device, precision) -> tuple[float, float, float]:
    """Accuracy, macro-F1 and mean cross-entropy on a labeled split."""
    return scores_of(predict_logits(model, split, batch_size, pad_id, device, precision), split.labels)


def scores_of(logits: np.ndarray, labels) -> tuple[float, float, float]:
    """Accuracy, macro-F1 and mean cross-entropy of `logits` against class ids `labels`."""
    from sklearn.metrics import accuracy_score, f1_score

    predictions = logits.argmax(-1)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(np.asarray(labels)))
    return (
        float(accuracy_score(labels, predictions)),
        float(f1_score(labels, predictions, average="macro")),
        float(loss),
    )


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
