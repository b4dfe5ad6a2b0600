"""`python -m graftline.flows.deploy_cli`: register the deployments on the API in PREFECT_API_URL
(what `graftline up` and `deployments/deploy.py` run).

On a process pool (the default) the pool must exist (`graftline up` creates it). With
`--pool-type kubernetes` the pool is created or updated from `--job-template` first, and the
deployments run in `--image`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graftline.flows.deploy import RETRAIN_CRON, WORK_POOL, deploy_all, kubernetes_pool
from graftline.tasks.errors import GraftlineError


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        job_variables = _job_variables(args)
        if args.pool_type == "kubernetes":
            kubernetes_pool(args.pool, args.job_template)
        deployment_ids = deploy_all(args.pool, args.cron, args.params, job_variables)
    except GraftlineError as exc:
        print(f"graftline: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for deployment_id in deployment_ids:
        print(deployment_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=WORK_POOL, help="work pool the deployments run on")
    parser.add_argument(
        "--pool-type",
        choices=["process", "kubernetes"],
        default="process",
        help="process: an existing pool (graftline up makes one); kubernetes: create or update it",
    )
    parser.add_argument("--cron", default=RETRAIN_CRON, help="schedule of the retrain deployment")
    parser.add_argument("--params", type=Path, help="YAML of transfer/retrain default parameters")
    kubernetes = parser.add_argument_group("kubernetes pools")
    kubernetes.add_argument(
        "--job-template", type=Path, help="base job template, e.g. deployments/kubernetes-gpu-job-template.json"
    )
    kubernetes.add_argument(
        "--image", help="container image with graftline installed, e.g. registry.example.com/graftline:0.1.0"
    )
    kubernetes.add_argument(
        "--mlflow-uri", help="MLflow tracking URI as seen from the cluster (default: the template's)"
    )
    return parser


def _job_variables(args: argparse.Namespace) -> dict:
    """The Kubernetes options as the deployments' job variables; refused for a process pool,
    whose worker would silently ignore them."""
    given = {"image": args.image, "mlflow_tracking_uri": args.mlflow_uri}
    given = {name: value for name, value in given.items() if value}
    if args.pool_type == "process":
        if given or args.job_template:
            raise GraftlineError("--job-template, --image and --mlflow-uri need --pool-type kubernetes")
        return {}
    if not args.job_template or not args.image:
        raise GraftlineError("--pool-type kubernetes needs --job-template and --image")
    return given


if __name__ == "__main__":
    main()
