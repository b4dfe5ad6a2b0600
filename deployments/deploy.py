"""Register graftline's deployments (transfer, retrain, promote, rollback) on the Prefect API in
PREFECT_API_URL. `graftline up` does this for you on its process work pool; run it yourself against
another server:

    PREFECT_API_URL=http://prefect.internal:4200/api python deployments/deploy.py \
        --pool graftline --cron "0 2 * * *" --params deployments/transfer.params.yaml

or onto a Kubernetes work pool whose jobs request a GPU (the pool is created or updated from the
template; a worker in the cluster runs the jobs, see docs/operating.md):

    PREFECT_API_URL=http://prefect.internal:4200/api python deployments/deploy.py \
        --pool graftline-k8s --pool-type kubernetes \
        --job-template deployments/kubernetes-gpu-job-template.json \
        --image registry.example.com/graftline:0.1.0 --mlflow-uri http://mlflow.mlops:5000
"""

import sys

from graftline.flows.cli.app import app

if __name__ == "__main__":
    app(["deploy", *sys.argv[1:]])
