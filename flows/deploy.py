"""The deployments, registered in Python (the one way; `deployments/deploy.py` runs this):

    transfer  manual: the whole lifecycle, started from the UI's parameter form or the API
    retrain   on a cron schedule (nightly by default): the lifecycle on the data as it is at run
              time, proposing the result for promotion (`auto_promote` moves staging too)
    promote   manual: move staging or production behind the gates
    rollback  manual: return an alias to its previous holder

Entrypoints are module paths (`graftline.flows.lifecycle.transfer`), so a worker runs the
installed graftline, not a copy of a source folder.
"""

from __future__ import annotations

from pathlib import Path

WORK_POOL = "graftline"
RETRAIN_CRON = "0 2 * * *"  # 02:00 every night, in the server's time zone (UTC unless told)


def build(retrain_cron: str = RETRAIN_CRON, params_file: Path | None = None) -> list:
    """The four RunnerDeployments. `params_file` (YAML, as deployments/transfer.params.yaml)
    gives transfer's and retrain's default parameters; every group is written out in full, so a
    run that overrides one field keeps the deployment's other values (see lifecycle.transfer)."""
    from prefect.types.entrypoint import EntrypointType

    from graftline.flows.lifecycle import transfer
    from graftline.flows.operations import promote, retrain, rollback
    from graftline.flows.params import PromoteParams, TransferParams

    defaults = _transfer_defaults(params_file)
    retrain_defaults = {**defaults, "registry": {**defaults["registry"], "promote_to": "none"}, "auto_promote": False}
    common = dict(entrypoint_type=EntrypointType.MODULE_PATH, tags=["graftline"])
    return [
        transfer.to_deployment(name="transfer", parameters=defaults, description=TransferParams.__doc__, **common),
        retrain.to_deployment(name="retrain", cron=retrain_cron, parameters=retrain_defaults,
                              description=f"Nightly retraining ({retrain_cron}); proposes its result for promotion.", **common),
        promote.to_deployment(name="promote", parameters={"params": PromoteParams().model_dump(mode="json")},
                              description="Move staging or production to a version behind the gates.", **common),
        rollback.to_deployment(name="rollback", description="Return an alias to its previous holder.", **common),
    ]


def deploy_all(work_pool: str = WORK_POOL, retrain_cron: str = RETRAIN_CRON, params_file: Path | None = None) -> list[str]:
    """Create or update the deployments on the Prefect API in PREFECT_API_URL; returns their ids."""
    from prefect import deploy

    ids = deploy(*build(retrain_cron, params_file), work_pool_name=work_pool, print_next_steps_message=False)
    return [str(i) for i in ids]


def _transfer_defaults(params_file: Path | None) -> dict:
    import yaml

    from graftline.flows.params import TransferParams

    values = yaml.safe_load(params_file.read_text()) if params_file else {}
    return TransferParams.model_validate(values or {}).model_dump(mode="json")
