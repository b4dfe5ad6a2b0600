"""`python -m graftline.flows.deploy_cli`: register the deployments on the API in PREFECT_API_URL
(what `graftline up` and `deployments/deploy.py` run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from graftline.flows.deploy import RETRAIN_CRON, WORK_POOL, deploy_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=WORK_POOL, help="process work pool the deployments run on")
    parser.add_argument("--cron", default=RETRAIN_CRON, help="schedule of the retrain deployment")
    parser.add_argument("--params", type=Path, help="YAML of transfer/retrain default parameters")
    args = parser.parse_args()
    for deployment_id in deploy_all(args.pool, args.cron, args.params):
        print(deployment_id)


if __name__ == "__main__":
    main()
