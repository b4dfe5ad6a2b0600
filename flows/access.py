"""Access control for `graftline up --auth`: credentials, MLflow's basic-auth app, Prefect's auth string.

Three accounts, generated once per platform folder and kept in `<home>/auth/credentials.json`
(mode 0600 in a 0700 folder; never printed, never logged, never passed on a command line):

    admin      MLflow's administrator: manages users and permissions (the MLflow UI's admin pages)
    graftline  the service user: the worker, the deployments and graftline's own commands run as it;
               it creates graftline's experiments and registered models, so it alone may write to
               them, move their aliases (promote, roll back) and delete their versions
    reader     may read every experiment, run, model and artifact (MLflow's default permission
               READ), and change none of graftline's

MLflow's basic-auth app lets any signed-in user create experiments and models of its own; the
reader can do that, but not touch what graftline made. Prefect's open-source server knows one
credential (`PREFECT_SERVER_API_AUTH_STRING`): it is the service user's. `<home>/auth/service.env`
(0600) holds the exports a shell needs to act as the service user (`source` it).

Written here rather than taken from a library: it is configuration of the two servers' own auth
features (MLflow's `basic-auth` app and REST user API, Prefect's auth string), not an auth system.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from graftline.tasks.errors import GraftlineError

FOLDER = "auth"
ADMIN, SERVICE, READER = "admin", "graftline", "reader"


@dataclass(frozen=True)
class Credentials:
    admin_password: str
    service_password: str
    reader_password: str
    flask_secret: str  # MLflow's CSRF key: stable across restarts, or signed-in browser sessions break

    def user(self, name: str) -> tuple[str, str]:
        passwords = {ADMIN: self.admin_password, SERVICE: self.service_password, READER: self.reader_password}
        return name, passwords[name]

    def client_env(self, name: str = SERVICE) -> dict[str, str]:
        """What a client needs to act as `name` (the Prefect credential exists for the service user only)."""
        user, password = self.user(name)
        env = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
        if name == SERVICE:
            env["PREFECT_API_AUTH_STRING"] = f"{user}:{password}"
        return env


def credentials(home: Path) -> Credentials:
    """The platform's credentials, generated (and written 0600) on first use."""
    folder = home / FOLDER
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / "credentials.json"
    if path.is_file():
        return Credentials(**json.loads(path.read_text()))
    made = Credentials(*(secrets.token_urlsafe(24) for _ in range(4)))
    _write_private(path, json.dumps(asdict(made), indent=1))
    return made


def write_service_env(home: Path, made: Credentials, platform_env: dict[str, str]) -> Path:
    """`<home>/auth/service.env`: `source` it to run graftline's commands against the platform."""
    lines = [f"export {key}={value}" for key, value in {**platform_env, **made.client_env()}.items()]
    path = home / FOLDER / "service.env"
    _write_private(path, "\n".join(lines) + "\n")
    return path


def mlflow_server_env(home: Path, made: Credentials) -> dict[str, str]:
    """The MLflow server's environment for `--app-name basic-auth`: its config file (users database
    in the auth folder, default permission READ) and the admin's first password."""
    config = home / FOLDER / "basic_auth.ini"
    _write_private(
        config,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{home / FOLDER / 'users.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": made.admin_password,  # read on the first start only
        "MLFLOW_FLASK_SERVER_SECRET_KEY": made.flask_secret,
    }


def prefect_server_env(made: Credentials) -> dict[str, str]:
    user, password = made.user(SERVICE)
    return {"PREFECT_SERVER_API_AUTH_STRING": f"{user}:{password}"}


def provision(mlflow_url: str, made: Credentials) -> None:
    """As MLflow's admin: create the service and reader users if missing, and give the service user
    MANAGE on the experiments and registered models that exist already (a store first served
    without auth, or made by the admin): what it creates from now on is its own."""
    for name in (SERVICE, READER):
        user, password = made.user(name)
        status, body = _call(mlflow_url, "/api/2.0/mlflow/users/create", made, {"username": user, "password": password})
        if status != 200 and b"RESOURCE_ALREADY_EXISTS" not in body:
            raise GraftlineError(f"MLflow refused to create the user {user!r}: HTTP {status}")
    for resource, path, key in (
        ("experiment", "/api/2.0/mlflow/experiments/search", "experiments"),
        ("registered_model", "/api/2.0/mlflow/registered-models/search", "registered_models"),
    ):
        for item in _all(mlflow_url, path, key, made):
            resource_id = item["experiment_id"] if resource == "experiment" else item["name"]
            grant = {"username": SERVICE, "resource_type": resource, "resource_id": resource_id, "permission": "MANAGE"}
            status, _ = _call(mlflow_url, "/api/3.0/mlflow/users/permissions/grant", made, grant)
            if status != 200:
                raise GraftlineError(
                    f"MLflow refused to let {SERVICE!r} manage {resource} {resource_id!r}: HTTP {status}"
                )


def _all(mlflow_url: str, path: str, key: str, made: Credentials) -> list[dict]:
    items, token = [], None
    while True:
        query = {"max_results": 1000, **({"page_token": token} if token else {})}
        status, body = _call(mlflow_url, path, made, query, method="GET")
        if status != 200:
            raise GraftlineError(f"MLflow refused to list {key} to its admin: HTTP {status}")
        page = json.loads(body or b"{}")
        items += page.get(key, [])
        token = page.get("next_page_token")
        if not token:
            return items


def _call(mlflow_url: str, path: str, made: Credentials, payload: dict, method: str = "POST") -> tuple[int, bytes]:
    """One REST call as MLflow's admin: `payload` as the JSON body, or as the query of a GET."""
    from urllib.parse import urlencode

    user, password = made.user(ADMIN)
    get = method == "GET"
    request = urllib.request.Request(
        mlflow_url + path + (f"?{urlencode(payload)}" if get else ""),
        data=None if get else json.dumps(payload).encode(),
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)
