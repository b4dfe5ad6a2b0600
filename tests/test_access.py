"""`graftline up --auth` against real servers: MLflow's basic-auth app and Prefect's auth string,
the generated credentials, and who may do what. The fixture stops everything it started.

Nothing here leaves this process's MLflow settings changed: the service user's registration points
the tracking URI at the secured server and back (it names its experiment rather than setting an
active one), and the checks use clients bound to the secured server, so the tests after these still
reach the suite's own store."""

import base64
import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.conftest import toy_frame
from tests.test_platform import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from graftline.flows import servers

    home = tmp_path_factory.mktemp("secured")
    started = servers.up(home, prefect_port=free_port(), mlflow_port=free_port(), auth=True)
    try:
        yield started
    finally:
        servers.down(home)


def passwords(platform) -> dict:
    return json.loads((Path(platform.home) / "auth" / "credentials.json").read_text())


def status_of(url: str, method: str = "GET", user: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    request.add_header("Content-Type", "application/json")
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_credentials_are_generated_private_and_never_logged(secured):
    folder = Path(secured.home) / "auth"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("credentials.json", "service.env", "basic_auth.ini"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    secrets = list(passwords(secured).values())
    assert len(set(secrets)) == 4 and all(len(s) >= 32 for s in secrets)
    written = [p for p in Path(secured.home).rglob("*") if p.is_file() and folder not in p.parents]
    leaked = [p.name for p in written if any(s.encode() in p.read_bytes() for s in secrets)]
    assert written and not leaked  # server, worker logs, platform.json, databases: no password anywhere


def test_without_the_password_both_servers_answer_401(secured):
    search = f"{secured.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert status_of(search) == 401
    assert status_of(search, user=("admin", "wrong")) == 401
    assert status_of(search, user=("admin", passwords(secured)["admin_password"])) == 200
    assert status_of(f"{secured.prefect_api_url}/deployments/filter", "POST") == 401
    assert status_of(f"{secured.prefect_api_url}/health") == 200  # probes stay open


def register_as_service(secured, service: dict, backbone, work: Path, monkeypatch) -> None:
    """What graftline's service user does in a run: train, log and register a model (`secured-demo`)."""
    import mlflow

    from graftline.tasks.data.splits import Split, Splits
    from graftline.tasks.registry.versions import Candidate, log_classifier, register_all
    from graftline.tasks.settings import FinetuneParams
    from graftline.tasks.train.finetune import finetune
    from tests.conftest import short_texts

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, service[key])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secured.mlflow_url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)  # the registry follows the tracking URI
    splits = Splits(*(Split(n, toy_frame(20, i), "toy") for i, n in enumerate(["train", "validation", "test"])))
    trained = finetune(splits, FinetuneParams(backbone=str(backbone), epochs=1), short_texts(), work / "m")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(secured.mlflow_url)
    try:
        experiment = MlflowClient(secured.mlflow_url).create_experiment("secured")
        with mlflow.start_run(experiment_id=experiment):
            uri = log_classifier(trained.model_dir, ["hello"]).model_uri
        candidate = Candidate("secured-demo", uri, {"validation_success": "true", "max_length": "32"})
        register_all(MlflowClient(secured.mlflow_url, secured.mlflow_url), [candidate])
    finally:
        mlflow.set_tracking_uri(before)


def test_only_graftline_moves_aliases_the_reader_only_reads(secured, tiny_backbone, monkeypatch, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    service = dict(line.removeprefix("export ").split("=", 1) for line in _lines(secured, "service.env"))
    register_as_service(secured, service, tiny_backbone, tmp_path, monkeypatch)
    client = MlflowClient(tracking_uri=secured.mlflow_url, registry_uri=secured.mlflow_url)

    # the promote deployment, run by the worker as graftline's service user
    toy_frame(10, 7).to_csv(tmp_path / "test.csv", index=False)
    params = {"model_name": "secured-demo", "to": "staging", "experiment": "secured"}
    params["eval_sets"] = {"test": str(tmp_path / "test.csv")}
    with temporary_settings(
        {PREFECT_API_URL: secured.prefect_api_url, PREFECT_API_AUTH_STRING: service["PREFECT_API_AUTH_STRING"]}
    ):
        promoted = run_deployment("promote/promote", parameters={"params": params}, timeout=360, poll_interval=1)
    assert promoted.state.is_completed(), promoted.state.message
    assert {a: str(v) for a, v in client.get_registered_model("secured-demo").aliases.items()} == {
        "candidate": "1",
        "staging": "1",
    }

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", passwords(secured)["reader_password"])
    reader = MlflowClient(tracking_uri=secured.mlflow_url, registry_uri=secured.mlflow_url)
    assert reader.get_model_version_by_alias("secured-demo", "staging").version == "1"  # may read
    for change in (
        lambda: reader.set_registered_model_alias("secured-demo", "production", "1"),
        lambda: reader.delete_registered_model_alias("secured-demo", "staging"),
        lambda: reader.delete_model_version("secured-demo", "1"),
    ):
        with pytest.raises(MlflowException, match="error code 403"):
            change()
    assert "production" not in reader.get_registered_model("secured-demo").aliases


def _lines(platform, name: str) -> list[str]:
    return (Path(platform.home) / "auth" / name).read_text().split("\n")[:-1]


def test_a_running_platform_without_auth_is_not_silently_secured(tmp_path):
    from graftline.flows import servers
    from graftline.tasks.errors import GraftlineError

    (tmp_path / "platform.json").write_text(
        json.dumps({"home": str(tmp_path), "host": "127.0.0.1", "prefect_port": 1, "mlflow_port": 2,
                    "work_pool": "p", "pids": {"self": os.getpid()}})
    )  # fmt: skip
    with pytest.raises(GraftlineError, match="runs without authentication; stop it"):
        servers.up(tmp_path, auth=True)
