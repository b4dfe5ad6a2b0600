"""The deployments, registered in Python (the one way; `deployments/deploy.py` runs this):

    transfer  manual: the whole lifecycle, started from the UI's parameter form or the API
    retrain   a second deployment of `transfer`, on a cron schedule (nightly by default): the
              lifecycle on the data as it is at run time; its defaults register new versions as
              `candidate` only (`registry.promote_to: none`; set it to `staging` to move staging too)
    promote   manual: move staging or production behind the gates
    rollback  manual: return an alias to its previous holder
    predict   manual: score a file with a registered version
    monitor   hourly by default: check the rows `predict` scored since the last check for drift; on
              harmful drift it starts `retrain` with them (flows/serving.py)

Entrypoints are module paths (`graftline.flows.lifecycle.transfer`), so a worker runs the
installed graftline, not a copy of a source folder: on a process pool the worker's own, on a
Kubernetes pool the one inside the deployments' container image.

Work pools: `graftline up` creates the process pool `graftline` for its local worker;
`kubernetes_pool` creates or updates a Kubernetes pool from a base job template (the GPU template in
deployments/), whose worker runs in the cluster (`prefect worker start --type kubernetes`).
"""

from __future__ import annotations

import json
from pathlib import Path

from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import MONITOR_CRON, RETRAIN_CRON, WORK_POOL


def build(retrain_cron: str = RETRAIN_CRON, params_file: Path | None = None, job_variables: dict | None = None) -> list:
    """The six RunnerDeployments. `params_file` (YAML, as deployments/transfer.params.yaml)
    gives transfer's and retrain's default parameters; every group is written out in full, so a
    run that overrides one field keeps the deployment's other values (see lifecycle.transfer).
    `job_variables` fill the work pool's base job template (a Kubernetes pool: `image`, ...)."""
    from prefect.types.entrypoint import EntrypointType

    from graftline.flows.lifecycle import transfer
    from graftline.flows.operations import promote, rollback
    from graftline.flows.params import MonitorParams, PromoteParams, TransferParams
    from graftline.flows.serving import monitor, predict

    defaults = _transfer_defaults(params_file)
    retrain_defaults = {**defaults, "registry": {**defaults["registry"], "promote_to": "none"}}
    common = dict(entrypoint_type=EntrypointType.MODULE_PATH, tags=["graftline"], job_variables=job_variables or {})
    return [
        transfer.to_deployment(name="transfer", parameters=defaults, description=TransferParams.__doc__, **common),
        transfer.to_deployment(
            name="retrain",
            cron=retrain_cron,
            parameters=retrain_defaults,
            description=f"Nightly retraining ({retrain_cron}); proposes its result for promotion.",
            **common,
        ),
        promote.to_deployment(
            name="promote",
            parameters={"params": PromoteParams().model_dump(mode="json")},
            description="Move staging or production to a version behind the gates.",
            **common,
        ),
        rollback.to_deployment(name="rollback", description="Return an alias to its previous holder.", **common),
        predict.to_deployment(name="predict", description="Score a file with a registered version.", **common),
        monitor.to_deployment(
            name="monitor",
            cron=MONITOR_CRON,
            # the scheduled check closes the loop: on harmful drift it starts `retrain` (a command-line
            # check only when asked, `graftline monitor --retrain`)
            parameters={"params": MonitorParams(retrain=True).model_dump(mode="json")},
            description="Check the rows predict scored for drift; on harmful drift, start retraining.",
            **common,
        ),
    ]


def deploy_all(
    work_pool: str = WORK_POOL,
    retrain_cron: str = RETRAIN_CRON,
    params_file: Path | None = None,
    job_variables: dict | None = None,
) -> list[str]:
    """Create or update the deployments on the Prefect API in PREFECT_API_URL; returns their ids.
    The image of a Kubernetes pool goes in `job_variables` (not prefect.deploy's `image`, which
    would invent a tag for an untagged name): graftline never builds or pushes images."""
    from prefect import deploy

    ids = deploy(
        *build(retrain_cron, params_file, job_variables), work_pool_name=work_pool, print_next_steps_message=False
    )
    return [str(i) for i in ids]


def kubernetes_pool(name: str, job_template: Path) -> None:
    """Create the Kubernetes work pool `name` with `job_template` as its base job template, or
    update an existing one to it. The Prefect server checks that every placeholder is declared;
    prefect-kubernetes is needed only by the worker that turns flow runs into Jobs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    template = _read_template(job_template)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            existing = None
        if existing is not None and existing.type != "kubernetes":  # Prefect would keep its type and swap the template
            raise GraftlineError(
                f"work pool {name!r} exists with type {existing.type!r}, not 'kubernetes'; choose another pool name"
            )
        client.create_work_pool(
            WorkPoolCreate(name=name, type="kubernetes", base_job_template=template), overwrite=True
        )


def _read_template(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GraftlineError(f"{path}: base job template not found") from None
    except json.JSONDecodeError as exc:
        raise GraftlineError(f"{path}: not a JSON base job template ({exc})") from None


def _transfer_defaults(params_file: Path | None) -> dict:
    from graftline.flows.params import TransferParams
    from graftline.tasks.settings import load_yaml

    values = load_yaml(params_file.read_text(), str(params_file)) if params_file else {}
    return TransferParams.model_validate(values or {}).model_dump(mode="json")
