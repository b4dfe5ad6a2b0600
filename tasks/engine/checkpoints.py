"""Training checkpoints that a killed run resumes from, reaching the same result.

A checkpoint is one folder, written whole or not at all (written under a temporary name, then
renamed), holding everything the next optimizer step depends on:

    model.safetensors        the weights being trained (safetensors: no pickled code)
    best.safetensors         the best validation epoch's weights so far, when there is one
    state.pt                 optimizer and scheduler state, torch RNG states (tensors and numbers
                             only: read back with `torch.load(weights_only=True)`)
    loop.json                where the loop is (epoch, step in the epoch, global step), the loss
                             trajectory, the epoch history, early-stopping state, numpy/python RNG

The sampler position needs no state of its own: an epoch's batch order is a pure function of
(seed, epoch), so "epoch 2, step 37" is the position. Only the newest checkpoint is kept.

Writing is asynchronous: `save` snapshots everything (copies in host memory, so training can go on
changing the originals) and a background thread writes the snapshot while the next steps compute;
the next `save`, `load` and `wait` wait for it first. Unchanged best weights are hard-linked from the
previous checkpoint instead of being written again.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

LATEST = "latest"  # a file naming the newest complete checkpoint folder


@dataclass
class LoopState:
    """The training loop's position and bookkeeping, saved with every checkpoint."""

    epoch: int = 1  # the epoch in progress (or the next one, when step_in_epoch is 0)
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch`
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # row-weighted loss of the steps taken in `epoch`
    step_losses: list[float] = field(default_factory=list)  # every optimizer step's mean loss, all epochs
    history: list[dict] = field(default_factory=list)  # EpochRecord fields per finished epoch
    best_f1: float = -1.0
    best_loss: float = float("inf")  # the best epoch's validation loss: the tie-break between equal macro-F1
    best_epoch: int = 0
    stale: int = 0
    done: bool = False  # early stopping or the last epoch ended


class Checkpoints:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._written_best: tuple[int, Path] | None = None  # (id of the best-weights dict, its file)

    def latest(self) -> Path | None:
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        path = self.folder / pointer.read_text().strip()
        return path if path.is_dir() else None

    def save(
        self, state: LoopState, model, optimizer, scheduler, best_state: dict | None, best_is_model: bool = False
    ) -> None:
        """Snapshot now, write in the background. `best_is_model`: the best weights are the model's
        current ones (the epoch just improved), so one file serves both."""
        self.wait()
        snapshot = {
            "name": f"step-{state.global_step:08d}",
            "model": _to_host(model.state_dict()),
            "state": {
                "optimizer": _to_host(optimizer.state_dict()),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "loop": {**json.loads(json.dumps(vars(state))), "numpy_rng": _numpy_rng(), "python_rng": _python_rng()},
            "best": None if best_state is None or best_is_model else best_state,
            "best_is_model": best_is_model and best_state is not None,
        }
        self._writer = threading.Thread(target=self._write_guarded, args=(snapshot,), name="graftline-checkpoint")
        self._writer.start()

    def wait(self) -> None:
        """Block until the checkpoint being written is on disk; raise what writing it raised."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing a checkpoint to {self.folder} failed: {error}") from error

    def _write_guarded(self, snapshot: dict) -> None:
        try:
            self._write(snapshot)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def _write(self, snapshot: dict) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        name = snapshot["name"]
        partial = self.folder / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_file(snapshot["model"], str(partial / "model.safetensors"))
        best = snapshot["best"]
        if snapshot["best_is_model"]:
            os.link(partial / "model.safetensors", partial / "best.safetensors")
        elif (
            best is not None
            and self._written_best
            and self._written_best[0] == id(best)
            and self._written_best[1].is_file()
        ):
            os.link(self._written_best[1], partial / "best.safetensors")  # unchanged since the last checkpoint
        elif best is not None:
            save_file(best, str(partial / "best.safetensors"))
        torch.save(snapshot["state"], partial / "state.pt")
        (partial / "loop.json").write_text(json.dumps(snapshot["loop"]))
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        # Point at the new folder atomically, then drop the older ones.
        pointer = self.folder / f".{LATEST}.partial"
        pointer.write_text(name)
        pointer.replace(self.folder / LATEST)
        for old in self.folder.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        if best is not None:
            self._written_best = (id(best), final / "best.safetensors")
        elif snapshot["best_is_model"]:
            self._written_best = None  # the next checkpoint gets the best weights from the loop again

    def load(self, model, optimizer, scheduler) -> tuple[LoopState, dict | None]:
        """Restore the newest checkpoint into model, optimizer, scheduler and the RNGs."""
        from safetensors.torch import load_file

        self.wait()
        path = self.latest()
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {self.folder}")
        device = next(model.parameters()).device
        model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
        saved = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        loop = json.loads((path / "loop.json").read_text())
        _restore_numpy_rng(loop.pop("numpy_rng"))
        _restore_python_rng(loop.pop("python_rng"))
        best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
        return LoopState(**loop), best

    def clear(self) -> None:
        self.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _to_host(value):
    """A copy of every tensor in a (nested) state dict, in host memory: the snapshot the writer saves."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True).contiguous()
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_host(v) for v in value]
    return value


def _numpy_rng() -> list:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]


def _restore_numpy_rng(saved: list) -> None:
    kind, keys, position, has_gauss, cached = saved
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_python_rng(saved: list) -> None:
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))
