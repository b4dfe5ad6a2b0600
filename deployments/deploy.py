"""Register graftline's deployments (transfer, retrain, promote, rollback) on the Prefect API in
PREFECT_API_URL, on a process work pool. `graftline up` does this for you; run it yourself against
another server:

    PREFECT_API_URL=http://prefect.internal:4200/api python deployments/deploy.py \
        --pool graftline --cron "0 2 * * *" --params deployments/transfer.params.yaml
"""

from graftline.flows.deploy_cli import main

if __name__ == "__main__":
    main()
