"""Work fanned out over Dask: backbone scoring (`select.runner: dask`) and search trials
(`finetune.search.runner: dask`).

Each candidate becomes one Prefect task run of `score_candidate`, mapped over the candidates on a
prefect-dask `DaskTaskRunner`: a temporary local cluster (one single-threaded worker process per
candidate, at most one per CPU core, listening on 127.0.0.1 only) or an existing cluster whose
scheduler address the user gives. The select step gathers the reports and logs them: MLflow's
active run belongs to the step's thread, so the fanned-out tasks log nothing.

Limits: a worker is its own process. It must have graftline (and the catalog backbones) installed,
and reads HF_HUB_OFFLINE, GRAFTLINE_CACHE, HF_HOME etc. from its own environment (a local
cluster's workers inherit this process's; on a remote cluster set them on the workers).
Latency is measured where a candidate ran: a local cluster's workers use one CPU thread each, so
`cpu_ms_per_example` there is single-thread latency, higher than the in-process runner measures.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import unmapped

from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import ModelParams, SelectParams
from graftline.tasks.train import selection
from graftline.tasks.train.selection import CandidateReport, ScoreAll


@task(name="score-candidate", task_run_name="score {spec}", cache_policy=NO_CACHE, persist_result=False)
def score_candidate(
    spec: str, texts: list[str], labels: np.ndarray, params: SelectParams, model: ModelParams
) -> CandidateReport:
    """The plain scoring function as a task: its own run in Prefect's UI, on whichever worker takes it."""
    return selection.score_candidate(spec, texts, labels, params, model)


def scorer(params: SelectParams) -> ScoreAll:
    """Where the select step scores the candidates: one after the other here, or each as a task on Dask."""
    return selection.score_candidates if params.runner == "local" else dask_scorer(params.dask_address)


def dask_scorer(address: str | None = None) -> ScoreAll:
    """A `ScoreAll` for `select_backbone` that scores every candidate as its own task on Dask:
    on the cluster whose scheduler is at `address` (e.g. tcp://dask-scheduler:8786), or on a
    temporary local cluster started for the call and stopped after it."""

    def score_on_dask(
        texts: list[str], labels: np.ndarray, params: SelectParams, model: ModelParams
    ) -> list[CandidateReport]:
        with _task_runner(address, len(params.candidates)) as runner:
            futures = runner.map(
                score_candidate,
                {
                    "spec": list(params.candidates),
                    "texts": unmapped(texts),
                    "labels": unmapped(labels),
                    "params": unmapped(params),
                    "model": unmapped(model),
                },
            )
            return [future.result() for future in futures]  # candidate order, whatever finished first

    return score_on_dask


@task(name="search-worker", task_run_name="search worker {copy}", cache_policy=NO_CACHE, persist_result=False)
def search_worker(work: Callable[[int, int], None], copy: int, copies: int) -> None:
    """One worker of a parallel search (tasks/train/search.py's Worker): its share of the trials of the
    shared study."""
    work(copy, copies)


def dask_launcher(address: str | None = None) -> Callable[[Callable[[int, int], None], int], None]:
    """A `Launch` for the search (tasks/train/search.py): `copies` search workers as tasks on Dask (0:
    one per worker of the cluster, or per CPU core of a temporary local cluster), returning when all
    have stopped. The finetune step hands this factory to `finetune(dask_launcher=...)`; the search
    recipe calls it with `finetune.search.dask_address` when `finetune.search.runner` is dask."""

    def launch(work: Callable[[int, int], None], copies: int) -> None:
        copies = copies or (_cluster_workers(address) if address else os.cpu_count() or 1)
        with _task_runner(address, copies, "finetune.search.runner") as runner:
            parameters = {"work": unmapped(work), "copy": list(range(copies)), "copies": unmapped(copies)}
            futures = runner.map(search_worker, parameters)
            for future in futures:
                future.result()

    return launch


def _cluster_workers(address: str) -> int:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return max(1, len(client.scheduler_info()["workers"]))


def _task_runner(address: str | None, candidates: int, setting: str = "select.runner"):
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise GraftlineError(f"{setting} 'dask' needs prefect-dask: pip install 'graftline[cluster]'") from None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": max(1, min(candidates, os.cpu_count() or 1)),
            # Dask also sets OMP_NUM_THREADS=1: torch takes one core per worker, no oversubscription
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            # no dashboard: its HTTP endpoint then stays on 127.0.0.1 (the default ":8787" is every interface)
            "dashboard_address": None,
            "env": {"PREFECT_API_URL": _api_url()},
        }
    )


def _api_url() -> str:
    """The Prefect API of this process. Without PREFECT_API_URL that is a temporary local server,
    which each worker process would otherwise start again for itself (seconds each, on one sqlite file)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")
