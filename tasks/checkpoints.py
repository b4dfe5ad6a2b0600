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
"""

from __future__ import annotations

import json
import random
import shutil
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
    best_epoch: int = 0
    stale: int = 0
    done: bool = False  # early stopping or the last epoch ended


class Checkpoints:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def latest(self) -> Path | None:
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        path = self.folder / pointer.read_text().strip()
        return path if path.is_dir() else None

    def save(self, state: LoopState, model, optimizer, scheduler, best_state: dict | None) -> Path:
        from safetensors.torch import save_file, save_model

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"step-{state.global_step:08d}"
        partial = self.folder / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_model(model, str(partial / "model.safetensors"))
        if best_state is not None:
            save_file(best_state, str(partial / "best.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   partial / "state.pt")
        loop = {**vars(state), "numpy_rng": _numpy_rng(), "python_rng": _python_rng()}
        (partial / "loop.json").write_text(json.dumps(loop))
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
        return final

    def load(self, model, optimizer, scheduler) -> tuple[LoopState, dict | None]:
        """Restore the newest checkpoint into model, optimizer, scheduler and the RNGs."""
        from safetensors.torch import load_file, load_model

        path = self.latest()
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {self.folder}")
        device = next(model.parameters()).device
        load_model(model, str(path / "model.safetensors"), device=str(device))
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
        shutil.rmtree(self.folder, ignore_errors=True)


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
