"""Data-parallel training over several processes: one per GPU, or several CPU processes (gloo).

The training loop (tasks.training) is the same code for one process and for many: it asks this
module for its rank and the number of processes, and under torch.distributed it wraps the model in
DistributedDataParallel and splits every global batch across the processes. `launch` starts the
processes with torchrun (`torch.distributed.run`): `finetune(...)` with `processes=N` (the
distributed recipe, tasks/train/recipes/distributed.py) gets back the same result object as a
single-process run; rank 0 writes the model.

`launch` starts the processes on this machine (`--standalone`). The loop itself only asks
torch.distributed for rank and world size, so it also runs under a multi-node torchrun launch; the
lifecycle flow does not start one.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device_for(device: torch.device) -> torch.device:
    """Under torchrun each process drives the GPU of its local rank."""
    if device.type == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def wrap(model, device: torch.device):
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def launch(function, args: tuple, processes: int, timeout: float | None = None):
    """Run `function(*args)` in `processes` torchrun processes; return rank 0's return value.

    `function` must pickle by reference (a module-level function, or an instance of a module-level
    class such as the recipes' table): the job travels pickled through a private temporary folder,
    and each process imports graftline afresh."""
    from graftline.tasks.errors import GraftlineError

    with tempfile.TemporaryDirectory(prefix="graftline-ddp-") as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((function, args)))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "graftline.tasks.engine.distributed",
            str(job),
            str(result),
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes))),
        }
        finished = subprocess.run(command, env=env, timeout=timeout, capture_output=True, text=True)
        if finished.returncode != 0 or not result.is_file():
            last = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            raise GraftlineError(f"distributed training with {processes} processes failed: {last}")
        return pickle.loads(result.read_bytes())


def _worker(job: Path, result: Path) -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        function, args = pickle.loads(job.read_bytes())
        value = function(*args)
        if dist.get_rank() == 0:
            result.write_bytes(pickle.dumps(value))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
