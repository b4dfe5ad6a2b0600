"""`graftline up` / `graftline down`: the local platform on 127.0.0.1.

`up` starts a Prefect server, an MLflow tracking server (sqlite backend and a local artifact folder
by default; any backend store URI and artifact destination MLflow accepts, e.g. S3), and a worker
on a process work pool; registers the deployments; prints the two UI addresses. What it started
is written to `<home>/platform.json`; running `up` again finds it healthy and registers the
deployments again only when what they were registered with changed (graftline's version, the
parameter file's contents, the schedule, the pool) or one of them is missing from Prefect. `down`
stops exactly the processes that file names, and removes it.

`up --database postgresql://USER@HOST/NAME` puts both servers' state in PostgreSQL instead of
SQLite (flows/database.py: a database each, checked and created before anything starts), which is
what a team with several writers at once runs; SQLite stays the default for one person.

`up --auth` puts both servers behind authentication (flows/access.py): MLflow's basic-auth app
with generated users, Prefect's auth string; the worker and the deployments run as graftline's
service user. Without it the servers bind to loopback only, unless `--unauthenticated` says the
network is the user's alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from graftline.flows import access
from graftline.flows import database as dbs
from graftline.tasks import environment
from graftline.tasks.errors import GraftlineError
from graftline.tasks.settings import PlatformParams

PLATFORM = PlatformParams()  # the defaults of `graftline up`

STATE_FILE = "platform.json"


@dataclass
class Platform:
    home: str
    host: str
    prefect_port: int
    mlflow_port: int
    work_pool: str
    pids: dict[str, int] = field(default_factory=dict)  # prefect | mlflow | worker -> process id
    retrain_cron: str | None = None  # what the deployments were registered with, reused by a later `up`
    params_file: str | None = None
    auth: bool = False  # servers behind authentication (flows/access.py)
    database: str | None = None  # the PostgreSQL server both keep their state in (no password); None: SQLite
    store: str | None = None  # --backend-store-uri, its password shown as *** (a restart asks for it again)
    artifacts: str | None = None  # --artifacts-destination
    deployed: str | None = None  # digest of what the deployments were last registered with (`_deploy`)

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        """Where a client finds this platform (its credentials: `client_env`)."""
        return {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_url}

    def client_env(self) -> dict[str, str]:
        """What graftline's own processes (the worker, the deployments) need: where, and as whom."""
        return {**self.env(), **(access.credentials(Path(self.home)).client_env() if self.auth else {})}


def require_loopback(host: str, unauthenticated: bool = False) -> None:
    """Refuse a network address for servers without authentication (see `up`); `unauthenticated`:
    the user said the network is theirs alone, or the servers have authentication."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name: it may resolve to anything
    if not loopback and not unauthenticated:
        raise GraftlineError(
            f"refusing to serve MLflow and Prefect on {host}: they have no authentication, so anyone who can "
            "reach the ports could move the production alias or delete versions; pass --auth to put them behind "
            "passwords, serve on 127.0.0.1 (reach it through an SSH tunnel), or pass --unauthenticated if the "
            "network is yours alone"
        )


def up(
    home: Path,
    host: str = PLATFORM.host,
    prefect_port: int = PLATFORM.prefect_port,
    mlflow_port: int = PLATFORM.mlflow_port,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    work_pool: str = PLATFORM.work_pool,
    retrain_cron: str | None = None,
    params_file: Path | None = None,
    timeout: float = 120.0,
    unauthenticated: bool = False,
    auth: bool = False,
    database: str | None = None,
) -> Platform:
    """Start what is not running yet, wait until healthy, register the deployments. With `auth`
    the servers ask for passwords (flows/access.py). Without it, a host other than this machine's
    loopback is refused unless `unauthenticated` says the user means it: anyone who reaches the
    ports could move aliases past every gate or delete versions."""
    require_loopback(host, unauthenticated or auth)
    if database and backend_store_uri:
        raise GraftlineError("--database and --backend-store-uri both name MLflow's store: give one")
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    platform = load(home)
    if platform is not None and auth and not platform.auth:
        raise GraftlineError(
            f"the platform in {home} runs without authentication; stop it (graftline down --home {home}) "
            "and start it again with --auth"
        )
    wanted = dbs.parse(database).shown if database else None
    if platform is not None and wanted and platform.database != wanted:
        raise GraftlineError(
            f"the platform in {home} keeps its state in {platform.database or 'SQLite'}; stop it "
            f"(graftline down --home {home}) before starting it on {wanted}"
        )
    if platform is not None:
        dead = {name for name, pid in platform.pids.items() if not _alive(pid)}
        if dead:  # a server or the worker died (killed, crashed, machine restarted): start those again
            _restart(platform, dead, backend_store_uri, artifacts_destination, timeout, database)
    else:
        platform = Platform(str(home), host, prefect_port, mlflow_port, work_pool, auth=auth)
        for port in (prefect_port, mlflow_port):
            if _healthy(f"http://{host}:{port}/") or _taken(host, port):
                raise GraftlineError(f"port {port} on {host} is already in use by another program; choose another")
        prepared = dbs.prepare(database) if database else None
        platform.database = prepared.shown if prepared else None
        platform.store = dbs.hide_password(backend_store_uri) if backend_store_uri else None
        platform.artifacts = artifacts_destination
        try:
            _start(platform, PROCESSES, backend_store_uri, artifacts_destination, timeout, prepared)
        except BaseException:
            stop(platform)
            raise
    # A later `up` without them keeps what the deployments were registered with.
    platform.retrain_cron = retrain_cron or platform.retrain_cron
    platform.params_file = str(params_file.resolve()) if params_file else platform.params_file
    save(platform)
    _deploy(platform)
    return platform


def down(home: Path, timeout: float = 30.0) -> Platform | None:
    """Stop what `up` started (and nothing else); None when nothing was running."""
    platform = load(home.resolve())
    if platform is None:
        return None
    stop(platform, timeout)
    (Path(platform.home) / STATE_FILE).unlink(missing_ok=True)
    return platform


def load(home: Path) -> Platform | None:
    path = home / STATE_FILE
    return Platform(**json.loads(path.read_text())) if path.is_file() else None


def save(platform: Platform) -> None:
    (Path(platform.home) / STATE_FILE).write_text(json.dumps(asdict(platform), indent=1))


def stop(platform: Platform, timeout: float = 30.0) -> None:
    """SIGTERM each process group `up` started (worker first), then SIGKILL what is left.

    An idle Prefect worker takes the first SIGTERM as "finish what you run" and keeps polling; a
    second one stops it. So whatever still runs after a short grace gets the signal again."""
    order = [platform.pids[name] for name in ("worker", "mlflow", "prefect") if name in platform.pids]
    for wait in (GRACE_SECONDS, timeout):
        for pid in order:
            if _alive(pid) or _group_alive(pid):  # a leader killed alone leaves its children in its group
                _signal_group(pid, signal.SIGTERM)
        _wait_gone(order, wait)
    for pid in platform.pids.values():
        _signal_group(pid, signal.SIGKILL)
    # A killed process is gone only once the kernel has torn it down: on a loaded machine that
    # takes a moment, and `down` must not return while any of them still runs.
    _wait_gone(platform.pids.values(), 10.0)  # `_alive` reaps our own exited children as it checks


GRACE_SECONDS = 3.0  # before the second SIGTERM


def _wait_gone(pids, timeout: float) -> None:
    """Until neither the processes `pids` nor anything left in their process groups runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) or _group_alive(p) for p in pids):
        time.sleep(0.2)


PROCESSES = ("prefect", "mlflow", "worker")


def _restart(
    platform: Platform,
    dead: set[str],
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    timeout: float,
    database: str | None,
) -> None:
    """Start the `dead` processes of a running platform again, with what they were started with;
    the live ones (and the flow runs the worker runs) are left alone."""
    if platform.database and not database:  # never restart a team's platform on fresh SQLite files
        raise GraftlineError(
            f"the {' and '.join(sorted(dead))} of the platform in {platform.home} stopped; its state is in "
            f"{platform.database}: run up again with --database {platform.database} (and its password, if any)"
        )
    store = backend_store_uri or platform.store
    if "mlflow" in dead and store and "***" in store:  # never restart MLflow on a store it cannot log in to
        raise GraftlineError(
            f"the MLflow server of the platform in {platform.home} stopped; its store is {platform.store}: "
            "run up again with --backend-store-uri and its password"
        )
    prepared = dbs.prepare(database) if database and dead & {"prefect", "mlflow"} else None
    for name in dead:  # what is left of a process killed alone (its children, holding its port) goes first
        _signal_group(platform.pids[name], signal.SIGKILL)
    _wait_gone([platform.pids[name] for name in dead], 10.0)
    try:
        _start(platform, dead, store, artifacts_destination or platform.artifacts, timeout, prepared)
    except BaseException:
        stop(platform)
        raise


def _start(
    platform: Platform,
    which,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    timeout: float,
    database: dbs.Database | None = None,
) -> None:
    """Start the processes named in `which` (prefect, mlflow, worker), each waited for until healthy."""
    home = Path(platform.home)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    base_env = environment.apply_defaults({**os.environ, "PREFECT_HOME": str(home / "prefect")})
    base_env.pop("PREFECT_API_URL", None)
    made = access.credentials(home) if platform.auth else None
    if "prefect" in which:
        _spawn_prefect(platform, base_env, made, database, logs)
    if "mlflow" in which:
        _spawn_mlflow(platform, base_env, made, database, backend_store_uri, artifacts_destination, logs)
    for name, url in (("prefect", f"{platform.prefect_api_url}/health"), ("mlflow", f"{platform.mlflow_url}/health")):
        if name in which:  # both start at once; then each is waited for
            what = "Prefect server" if name == "prefect" else "MLflow server"
            _wait(url, timeout, what, logs / f"{name}.log", platform.pids[name])
    if made and {"prefect", "mlflow"} <= set(which):
        access.provision(platform.mlflow_url, made)
        access.write_service_env(home, made, platform.env())
    if "worker" in which:
        _start_worker(platform, base_env, timeout)


def _spawn_prefect(platform: Platform, base_env: dict, made, database, logs: Path) -> None:
    bin_dir = Path(sys.executable).parent
    platform.pids["prefect"] = _spawn(
        [str(bin_dir / "prefect"), "server", "start", "--host", platform.host, "--port", str(platform.prefect_port)],
        {
            **base_env,
            "PREFECT_UI_API_URL": platform.prefect_api_url,  # the UI's browser side calls this
            **({"PREFECT_SERVER_DATABASE_CONNECTION_URL": database.prefect_uri} if database else {}),
            **(access.prefect_server_env(made) if made else {}),
        },
        logs / "prefect.log",
        Path(platform.home),
    )


# MLflow's server also starts a job runner (Huey consumers) for its GenAI features: online scoring of
# traces, trace archival. graftline uses none of them; on 2 cores the runner's processes, importing
# MLflow while the server answers its first requests, made each of those requests take ~2.5 s
# instead of ~0.3 s. Off unless the environment says otherwise.
MLFLOW_SERVER_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _spawn_mlflow(
    platform: Platform, base_env: dict, made, database, backend_store_uri, artifacts_destination, logs
) -> None:
    bin_dir, home = Path(sys.executable).parent, Path(platform.home)
    store = database.mlflow_uri if database else backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    artifacts = artifacts_destination or (home / "artifacts").as_uri()
    platform.pids["mlflow"] = _spawn(
        [
            str(bin_dir / "mlflow"),
            "server",
            "--backend-store-uri",
            store,
            "--artifacts-destination",
            artifacts,
            "--host",
            platform.host,
            "--port",
            str(platform.mlflow_port),
            "--workers",
            "1",
            *(["--app-name", "basic-auth"] if made else []),
        ],
        {**MLFLOW_SERVER_DEFAULTS, **base_env, **(access.mlflow_server_env(home, made) if made else {})},
        logs / "mlflow.log",
        home,
    )


def _start_worker(platform: Platform, base_env: dict, timeout: float) -> None:
    bin_dir, home = Path(sys.executable).parent, Path(platform.home)
    client_env = {**base_env, **platform.client_env()}
    subprocess.run(
        [str(bin_dir / "prefect"), "work-pool", "create", platform.work_pool, "--type", "process", "--overwrite"],
        env=client_env,
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    flows_dir = home / "flow-runs"  # flow runs start here: their relative paths land in the platform's home
    flows_dir.mkdir(exist_ok=True)
    platform.pids["worker"] = _spawn(
        [
            str(bin_dir / "prefect"),
            "worker",
            "start",
            "--pool",
            platform.work_pool,
            "--type",
            "process",
            "--name",
            f"graftline-{platform.prefect_port}",
            "--install-policy",
            "never",
        ],
        client_env,
        home / "logs" / "worker.log",
        flows_dir,
    )


DEPLOYMENTS = ("transfer", "retrain", "promote", "rollback", "predict", "monitor")  # flows/deploy.py's


def _deploy(platform: Platform) -> None:
    """Register the deployments in a child process pointed at this platform's API, unless the ones
    registered last were made from the same settings and are all still there."""
    wanted = _deployment_digest(platform)
    if platform.deployed == wanted and set(DEPLOYMENTS) <= _registered(platform):
        return
    args = [sys.executable, "-m", "graftline.flows.cli.app", "deploy", "--pool", platform.work_pool]
    if platform.retrain_cron:
        args += ["--cron", platform.retrain_cron]
    if platform.params_file:
        args += ["--params", platform.params_file]
    done = subprocess.run(
        args, env={**os.environ, **platform.client_env()}, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise GraftlineError(f"registering the deployments failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    platform.deployed = wanted
    save(platform)


def _deployment_digest(platform: Platform) -> str:
    """What the deployments are made from: graftline's version (their flows' parameters), the
    parameter file's contents, the retrain schedule and the pool."""
    import contextlib
    import hashlib
    from importlib.metadata import version

    params = None
    if platform.params_file:
        params = "unreadable"  # the deployment step then says why
        with contextlib.suppress(OSError):
            params = hashlib.sha256(Path(platform.params_file).read_bytes()).hexdigest()
    made_from = [version(__name__.split(".")[0]), params, platform.retrain_cron, platform.work_pool]
    return hashlib.sha256(json.dumps(made_from).encode()).hexdigest()


def _registered(platform: Platform) -> set[str]:
    """The names of the deployments on the platform's pool, as its Prefect API lists them (none
    when it cannot be asked)."""
    import base64

    body = json.dumps({"work_pools": {"name": {"any_": [platform.work_pool]}}}).encode()
    request = urllib.request.Request(f"{platform.prefect_api_url}/deployments/filter", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    auth = platform.client_env().get("PREFECT_API_AUTH_STRING")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {deployment["name"] for deployment in json.loads(response.read())}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _spawn(args: list[str], env: dict, log: Path, cwd: Path) -> int:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )  # its own process group: `down` stops all of it
    return process.pid


def _wait(url: str, timeout: float, what: str, log: Path, pid: int) -> None:
    """Until `url` answers; an error with the log's last line when `pid` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        if not _alive(pid):
            raise GraftlineError(f"{what} exited while starting; the last line of {log}: {_last_line(log)}")
        time.sleep(0.5)
    raise GraftlineError(
        f"{what} did not become healthy at {url} within {timeout:.0f} s; last log line: {_last_line(log)}"
    )


def _last_line(log: Path) -> list[str]:
    return log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


def _taken(host: str, port: int) -> bool:
    """Whether a program listens on `port` of `host`, HTTP or not: binding it fails. (SO_REUSEADDR, so
    the closing connections of servers just stopped do not count.)"""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is not alive
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _group_alive(pid: int) -> bool:
    """Whether any process is left in the process group `pid` led (the MLflow server's uvicorn and
    job workers outlive a server process that was killed alone)."""
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
