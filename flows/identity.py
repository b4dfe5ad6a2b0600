"""Who or what triggered an operation: the one wording of the history records' `triggered_by`."""

from __future__ import annotations

import getpass
import socket


def triggered_by(command: str | None = None) -> str:
    """Inside a Prefect flow run: the flow run (and its deployment); outside one: the user at this
    machine, after the `command` they typed when there is one."""
    from prefect.runtime import deployment, flow_run

    if flow_run.id:
        via = f" of deployment {deployment.name}" if deployment.id else ""
        return f"{flow_run.flow_name} flow run {flow_run.name} ({flow_run.id}){via}"
    user = f"{getpass.getuser()}@{socket.gethostname()}"
    return f"{command} ({user})" if command else user
