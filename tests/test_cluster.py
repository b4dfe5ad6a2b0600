"""Beyond one machine: backbone scoring fanned out on Dask, and the Kubernetes GPU work pool.

What runs here and what cannot: the Dask test starts a real local Dask cluster with the production
settings of flows.fanout (`processes=True`: 2 worker processes on a 2-core machine); it takes about
15 s there, most of it the workers starting and importing torch. The Kubernetes tests need no
cluster and have none: the template is checked on its own, rendered into a Job manifest by
prefect-kubernetes' own worker configuration (the code a Kubernetes worker runs), and registered
with the deployments on a real temporary Prefect API. Whether a cluster schedules the Job onto a
GPU node is not tested here.
"""

import asyncio
import json
import re
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect import flow

from graftline.flows import steps
from graftline.flows.cli.app import app
from graftline.tasks.records import StepContext
from graftline.tasks.registry import tracking
from graftline.tasks.settings import ModelParams, SelectParams

TEMPLATE = Path(__file__).resolve().parents[1] / "deployments" / "kubernetes-gpu-job-template.json"
IMAGE = "registry.example.com/graftline:0.1.0"


def deploy_main(args: list[str]) -> None:
    """`graftline deploy ARGS` in-process, as the console script calls it: returns on success, exits otherwise."""
    try:
        app(["deploy", *args])
    except SystemExit as exited:
        if exited.code:
            raise


@flow(name="select-with-both-runners")
def select_with_both_runners(splits, candidates: list[str], experiment: str) -> str:
    """The real select step once per runner, each in its own nested MLflow run; returns the flow run id."""
    from prefect.runtime import flow_run

    tracking.configure(experiment)
    with tempfile.TemporaryDirectory() as tmp, tracking.lifecycle_run("select-with-both-runners") as parent:
        for runner in ("local", "dask"):
            context = StepContext(parent.info.run_id, Path(tmp) / runner, ModelParams(max_length=32))
            steps.select(splits, "auto", None, SelectParams(candidates=candidates, runner=runner), context)
    return str(flow_run.id)


def test_dask_runner_logs_the_leaderboard_of_the_in_process_runner(
    prefect_harness, mlflow_store, tiny_backbone, narrow_backbone, dead_backbone, toy_splits, unique_name
):
    candidates = [str(dead_backbone), str(narrow_backbone), str(tiny_backbone)]
    flow_run_id = select_with_both_runners(toy_splits, candidates, unique_name)

    client = MlflowClient()
    experiment = client.get_experiment_by_name(unique_name)
    runs = {
        r.data.params["select.runner"]: r
        for r in client.search_runs([experiment.experiment_id], "attributes.run_name = 'select'")
    }
    local, dask = (_leaderboard(client, runs[name].info.run_id) for name in ("local", "dask"))
    assert list(dask["backbone"]) == list(local["backbone"])  # same ranking
    assert local["backbone"].iloc[-1] == str(dead_backbone) and np.isnan(
        local["logme"].iloc[-1]
    )  # constant features: last
    np.testing.assert_allclose(
        dask[["logme", "hscore", "knn"]], local[["logme", "hscore", "knn"]], rtol=1e-4, equal_nan=True
    )
    pd.testing.assert_frame_equal(
        dask[["parameters", "layers", "width", "chosen", "within_budget"]],
        local[["parameters", "layers", "width", "chosen", "within_budget"]],
    )
    assert (
        runs["dask"].data.tags["graftline.selection"].split(":")[0]
        == runs["local"].data.tags["graftline.selection"].split(":")[0]
    )

    # each candidate was its own Prefect task run, and they finished
    states = _score_task_states(flow_run_id, len(candidates))
    assert sorted(states) == sorted(f"score {c}" for c in candidates) and set(states.values()) == {"COMPLETED"}, states


@flow(name="search-on-dask")
def search_on_dask(backbone: str, folder: Path):
    from graftline.flows.fanout import dask_launcher
    from graftline.tasks.train.finetune import RECIPES
    from graftline.tasks.train.search import Study, search
    from tests.test_search import MODEL, searching, splits

    params = searching(backbone)
    params = params.model_copy(update={"search": params.search.model_copy(update={"trials": 4, "runner": "dask"})})
    return search(
        splits(), params, MODEL, folder / "teacher", Study.beside(folder, "s"), RECIPES, launch=dask_launcher()
    )


def test_search_trials_run_in_parallel_dask_workers_sharing_one_study(prefect_harness, tiny_backbone, tmp_path):
    import os

    result = search_on_dask(str(tiny_backbone), tmp_path)
    assert len(result.trials) == 4  # the budget, shared by the two workers (one per core here)
    workers = {t.worker for t in result.trials}
    assert all(w and not w.endswith(f":{os.getpid()}") for w in workers), workers  # none ran in this process
    assert not result.retrained and (tmp_path / "teacher" / "model.safetensors").is_file()  # the same disk


def _leaderboard(client: MlflowClient, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_csv(client.download_artifacts(run_id, "selection/leaderboard.csv", tmp))


def _score_task_states(flow_run_id: str, expected: int, timeout: float = 30) -> dict[str, str]:
    """Name -> state of the flow run's scoring task runs; the server records task states from
    events, a moment after they happen, so this waits for all of them to be final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
            )
        states = {r.name: r.state_type.value for r in runs if r.name.startswith("score ")}
        if (
            len(states) == expected and all(s in ("COMPLETED", "FAILED", "CRASHED") for s in states.values())
        ) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_the_kubernetes_template_declares_what_it_uses_and_uses_what_it_declares():
    template = json.loads(TEMPLATE.read_text())
    assert set(template) == {"job_configuration", "variables"}
    used = set(re.findall(r"\{\{\s*([\w.-]+)\s*\}\}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used - declared == set(), "placeholders without a variable"
    assert declared - used == set(), "variables no placeholder reads (they would have no effect)"
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1
    assert "image" in template["variables"]["required"]  # no silent fallback to an image without graftline


def test_a_kubernetes_worker_renders_a_gpu_job_from_the_template(prefect_harness):
    """prefect-kubernetes' own job configuration, as its worker builds it for a flow run."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    values = {
        "image": IMAGE,
        "gpu_count": 2,
        "mlflow_tracking_uri": "http://mlflow.mlops:5000",
        "env": {"HF_HUB_OFFLINE": "0"},
    }
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="gentle-run"))

    pod = config.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops:5000"
    assert (
        env["HF_HUB_OFFLINE"] == "0" and [e["name"] for e in container["env"]].count("HF_HUB_OFFLINE") == 1
    )  # the run's value wins
    assert "PREFECT__FLOW_RUN_ID" in env  # Prefect's own variables are merged in, not replaced
    assert container["envFrom"] == [{"secretRef": {"name": "graftline-env", "optional": True}}]
    assert container["args"] == ["prefect", "flow-run", "execute"]


def test_deploy_registers_the_deployments_on_a_new_kubernetes_pool(prefect_harness, capsys):
    from prefect.client.orchestration import get_client

    pool = f"graftline-k8s-{uuid.uuid4().hex[:8]}"
    deploy_main(
        [
            "--pool",
            pool,
            "--pool-type",
            "kubernetes",
            "--job-template",
            str(TEMPLATE),
            "--image",
            IMAGE,
            "--mlflow-uri",
            "http://mlflow.mlops:5000",
            "--cron",
            "0 3 * * *",
        ]
    )
    ids = re.findall(r"^[0-9a-f-]{36}$", capsys.readouterr().out, re.MULTILINE)  # after Prefect's own summary
    with get_client(sync_client=True) as client:
        work_pool = client.read_work_pool(pool)
        deployments = [client.read_deployment(uuid.UUID(i)) for i in ids]
    assert work_pool.type == "kubernetes" and work_pool.base_job_template == json.loads(TEMPLATE.read_text())
    assert sorted(d.name for d in deployments) == ["monitor", "predict", "promote", "retrain", "rollback", "transfer"]
    for deployment in deployments:
        assert deployment.work_pool_name == pool
        assert deployment.job_variables == {"image": IMAGE, "mlflow_tracking_uri": "http://mlflow.mlops:5000"}


def test_deploy_leaves_a_process_pool_of_the_same_name_alone(prefect_harness, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"graftline-process-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        before = client.create_work_pool(WorkPoolCreate(name=pool, type="process")).base_job_template
    with pytest.raises(SystemExit) as exit_:
        deploy_main(["--pool", pool, "--pool-type", "kubernetes", "--job-template", str(TEMPLATE), "--image", IMAGE])
    assert exit_.value.code == 2
    assert f"work pool {pool!r} exists with type 'process'" in capsys.readouterr().err
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).base_job_template == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", IMAGE], "need --pool-type kubernetes"),
        (["--pool-type", "kubernetes", "--job-template", str(TEMPLATE)], "needs --job-template and --image"),
        (
            ["--pool-type", "kubernetes", "--image", IMAGE, "--job-template", "/nonexistent.json"],
            "base job template not found",
        ),
    ],
)
def test_deploy_refuses_incomplete_kubernetes_options(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        deploy_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graftline: error: ") and message in err and "\n" not in err
