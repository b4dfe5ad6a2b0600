"""`graftline up | down | deploy`: the servers, the worker and the deployments."""

from __future__ import annotations

from pathlib import Path

import typer

from graftline.flows.cli.errors import command
from graftline.flows.cli.options import setting
from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import RETRAIN_CRON, DeployParams, PlatformParams


@command
def up(
    home: Path = setting(PlatformParams, "home"),
    host: str = setting(PlatformParams, "host"),
    prefect_port: int = setting(PlatformParams, "prefect_port"),
    mlflow_port: int = setting(PlatformParams, "mlflow_port"),
    database: str | None = typer.Option(
        None,
        help="PostgreSQL for both servers' state instead of SQLite files in HOME: postgresql://USER[:PASSWORD]@HOST"
        "[:PORT]/NAME (databases NAME_mlflow and NAME_prefect, created if missing).",
    ),
    backend_store_uri: str | None = typer.Option(
        None, help="MLflow backend store alone; default sqlite in HOME (--database moves both servers)."
    ),
    artifacts_destination: str | None = typer.Option(
        None, help="MLflow artifact root; default HOME/artifacts (e.g. s3://bucket/mlflow)."
    ),
    work_pool: str = setting(PlatformParams, "work_pool"),
    retrain_cron: str | None = typer.Option(
        None, help=f"Schedule of the retrain deployment (default: {RETRAIN_CRON})."
    ),
    params: Path | None = typer.Option(None, help="YAML of the transfer/retrain deployments' default parameters."),
    auth: bool = typer.Option(
        False,
        "--auth",
        help="Servers behind passwords: MLflow's basic-auth app (users admin, graftline, reader; only graftline "
        "moves aliases) and Prefect's auth string; credentials generated into HOME/auth, readable by you only.",
    ),
    unauthenticated: bool = typer.Option(
        False,
        "--unauthenticated",
        help="Allow a --host other than loopback without --auth "
        "(anyone who reaches the ports can change the registry).",
    ),
) -> None:
    """Start Prefect and MLflow servers and a worker, register the deployments (idempotent)."""
    from graftline.flows import servers

    platform = servers.up(
        home,
        host,
        prefect_port,
        mlflow_port,
        backend_store_uri,
        artifacts_destination,
        work_pool,
        retrain_cron,
        params,
        unauthenticated=unauthenticated,
        auth=auth,
        database=database,
    )
    print(f"Prefect UI:  {platform.prefect_url}")
    print(f"state in:    {platform.database or f'SQLite files in {platform.home}'}")
    print(f"MLflow UI:   {platform.mlflow_url}")
    print(f"deployments: transfer, retrain, promote, rollback on work pool {platform.work_pool!r}")
    if platform.auth:
        folder = Path(platform.home) / "auth"
        print(f"passwords:   {folder / 'credentials.json'} (users admin, graftline, reader; readable by you only)")
        print("point graftline at them, as its service user, with:")
        print(f"  source {folder / 'service.env'}")
    else:
        print("point graftline and other clients at them with:")
        for key, value in platform.env().items():
            print(f"  export {key}={value}")
    print(f"stop with:   graftline down --home {home}")


@command
def down(home: Path = setting(PlatformParams, "home", help="The folder given to `graftline up`.")) -> None:
    """Stop exactly what `graftline up` started."""
    from graftline.flows import servers

    platform = servers.down(home)
    print(
        "nothing was running"
        if platform is None
        else f"stopped {', '.join(f'{name} (pid {pid})' for name, pid in platform.pids.items())}"
    )


@command
def deploy(
    pool: str = setting(DeployParams, "pool"),
    pool_type: str = setting(DeployParams, "pool_type"),
    cron: str = setting(DeployParams, "cron"),
    params: Path | None = typer.Option(None, help="YAML of the transfer/retrain deployments' default parameters."),
    job_template: Path | None = typer.Option(
        None, help="Kubernetes pools: base job template, e.g. deployments/kubernetes-gpu-job-template.json."
    ),
    image: str | None = typer.Option(
        None, help="Kubernetes pools: image with graftline installed, e.g. registry.example.com/graftline:0.1.0."
    ),
    mlflow_uri: str | None = typer.Option(
        None, help="Kubernetes pools: MLflow tracking URI as seen from the cluster (default: the template's)."
    ),
) -> None:
    """Register the deployments (transfer, retrain, promote, rollback) on the Prefect API in PREFECT_API_URL.

    On a process pool the pool must exist (`graftline up` creates it). With `--pool-type kubernetes`
    the pool is created or updated from `--job-template` first, and the deployments run in `--image`."""
    from graftline.flows.deploy import deploy_all, kubernetes_pool

    if pool_type not in ("process", "kubernetes"):
        raise GraftlineError(f"--pool-type {pool_type!r}: expected process or kubernetes")
    job_variables = _job_variables(pool_type, job_template, image, mlflow_uri)
    if pool_type == "kubernetes":
        kubernetes_pool(pool, job_template)
    for deployment_id in deploy_all(pool, cron, params, job_variables):
        print(deployment_id)


def _job_variables(pool_type: str, job_template: Path | None, image: str | None, mlflow_uri: str | None) -> dict:
    """The Kubernetes options as the deployments' job variables; refused for a process pool,
    whose worker would silently ignore them."""
    given = {name: value for name, value in {"image": image, "mlflow_tracking_uri": mlflow_uri}.items() if value}
    if pool_type == "process":
        if given or job_template:
            raise GraftlineError("--job-template, --image and --mlflow-uri need --pool-type kubernetes")
        return {}
    if not job_template or not image:
        raise GraftlineError("--pool-type kubernetes needs --job-template and --image")
    return given
