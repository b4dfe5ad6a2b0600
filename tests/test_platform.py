"""End to end against real servers: `graftline up` starts a Prefect server, an MLflow server and a
process worker on free localhost ports and registers the deployments; runs go through the Prefect
API and the worker; what they register is read back from the MLflow server. The fixture stops
everything it started, also when a test fails.

Where PostgreSQL's server programs are installed (`.ci/run` installs them) both servers keep their
state in a throw-away PostgreSQL server (`up --database`), as a team runs them; elsewhere in SQLite
files, the one-person default, which tests/test_access.py's servers also use."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

pytestmark = pytest.mark.slow

TRAIN = 120  # seconds a tiny lifecycle may take on the worker (imports included) before the test gives up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_backbone, postgres_if_installed):
    from graftline.flows import servers

    database = postgres_if_installed

    home = tmp_path_factory.mktemp("platform")
    params = home / "params.yaml"  # the deployments' defaults: a tiny backbone, so runs take seconds
    params.write_text(
        yaml.safe_dump(
            {
                "model": {"max_length": 32},
                "finetune": {"backbone": str(tiny_backbone), "epochs": 2, "learning_rate": 3e-3},
                "distill": {"enabled": False, "student": "teacher-layers:1", "epochs": 1},  # the first run turns it on
                "export": {"enabled": False},
                "registry": {
                    "model_name": "platform-demo",
                    "experiment": "platform",
                    "gates": {"retention_floor": 0.0},
                },
            }
        )
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = servers.up(home, prefect_port=free_port(), mlflow_port=free_port(), params_file=params, database=database)
    try:
        # Prefect reads its settings once per process: point this one at the new server explicitly.
        with temporary_settings({PREFECT_API_URL: started.prefect_api_url}):
            yield started
    finally:
        servers.down(home)


def run(deployment: str, parameters: dict):
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=TRAIN * 3, poll_interval=1)


def postgres_url(platform) -> str | None:
    """The database URL the fixture started the platform with (platform.json keeps it without its password)."""
    return platform.database and platform.database.replace("pg@", "pg:pg-secret@", 1)


def client(platform):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=platform.mlflow_url, registry_uri=platform.mlflow_url)


def aliases(platform, name):
    return {a: str(v) for a, v in client(platform).get_registered_model(name).aliases.items()}


def test_servers_bind_to_localhost_and_up_is_idempotent(platform):
    from prefect.client.orchestration import get_client

    from graftline.flows import servers

    def deployments() -> dict[str, object]:
        with get_client(sync_client=True) as prefect:
            return {d.name: d.updated for d in prefect.read_deployments()}

    assert platform.host == "127.0.0.1" and set(platform.pids) == {"prefect", "mlflow", "worker"}
    registered = deployments()
    assert set(servers.DEPLOYMENTS) <= set(registered)
    again = servers.up(Path(platform.home), prefect_port=platform.prefect_port, mlflow_port=platform.mlflow_port)
    assert again.pids == platform.pids  # nothing new started
    assert deployments() == registered  # nor registered again: made from the same settings, all still there
    assert servers._registered(again) >= set(servers.DEPLOYMENTS)


def test_transfer_through_the_api_keeps_the_deployments_nested_defaults(platform):
    # Only finetune.epochs and distill.enabled are sent: Prefect alone would replace the deployment's
    # whole `finetune` (backbone included) and `distill` (the student's shape) with model defaults;
    # graftline merges the deployment's values back. Three epochs (the deployment says two) also lift
    # the tiny model above chance, for the drift check below. The other runs here train no student.
    flow_run = run("transfer/transfer", {"finetune": {"epochs": 3}, "distill": {"enabled": True}})
    assert flow_run.state.is_completed(), flow_run.state.message
    mlflow = client(platform)
    version = mlflow.get_model_version_by_alias("platform-demo", "production")
    training = mlflow.get_run(version.tags["training_run_id"])
    assert training.data.params["finetune.epochs"] == "3"  # the run's value
    assert training.data.params["finetune.backbone"].endswith("tiny-bert0")  # the deployment's value, kept
    assert version.tags["prefect_flow_run_id"] == str(flow_run.id)
    assert aliases(platform, "platform-demo") == {"candidate": "1", "production": "1"}
    assert aliases(platform, "platform-demo-student") == {"candidate": "1", "production": "1"}


def test_a_harmful_drift_retrains_on_the_team_servers_and_proposes_a_candidate(platform, tmp_path, monkeypatch):
    """The monitor -> retrain loop on the platform's own servers (on PostgreSQL where installed): a window
    of another domain that the production version is least sure of is found harmful; the check starts
    the `retrain` deployment that `up` registered; the worker runs it with the window as its target and
    evaluation set, and it registers a new version as the candidate without moving production."""
    import time

    import mlflow
    import pandas as pd
    from prefect.client.orchestration import get_client

    from graftline.flows.params import MonitorParams, PredictParams
    from graftline.flows.serving import monitor, predict
    from graftline.tasks.data.splits import resolve_source

    before = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", platform.mlflow_url)  # this process's flows, on the platform's store
    mlflow.set_tracking_uri(platform.mlflow_url)
    try:
        home = pd.read_csv(resolve_source("demo:home"))
        texts = tmp_path / "home.csv"
        home[["text"]].to_csv(texts, index=False)
        model = "platform-demo@production"
        predict(PredictParams(model=model, input_path=str(texts), output_path=str(tmp_path / "scored.csv")))
        confidence = pd.read_csv(tmp_path / "scored.csv").filter(like="score_").max(axis=1)
        window = tmp_path / "window.csv"  # a shift that costs this tiny model accuracy by construction
        home.loc[confidence.nsmallest(150).index, ["text", "label"]].to_csv(window, index=False)
        checked = monitor(MonitorParams(model=model, input_path=str(window), max_accuracy_drop=0.0, retrain=True))
    finally:
        mlflow.set_tracking_uri(before)
    assert checked.verdict == "harmful drift", checked
    with get_client(sync_client=True) as prefect:
        deadline = time.monotonic() + TRAIN * 2
        while not (retrain := prefect.read_flow_run(checked.retrain_flow_run_id)).state.is_final():
            assert time.monotonic() < deadline, f"the retrain run did not finish: {retrain.state}"
            time.sleep(1)
        deployment = prefect.read_deployment(retrain.deployment_id)
    assert deployment.name == "retrain" and retrain.state.is_completed(), retrain.state.message
    assert retrain.parameters["adapt"]["method"] == "auto"
    assert any(name.startswith("drift_") for name in retrain.parameters["data"]["target_sets"])
    mlflow_client = client(platform)
    candidate = mlflow_client.get_model_version_by_alias("platform-demo", "candidate")
    assert candidate.tags["prefect_flow_run_id"] == str(retrain.id)
    assert candidate.version == "2" and aliases(platform, "platform-demo")["production"] == "1"  # proposed only


def test_promote_with_a_failing_gate_then_roll_back(platform):
    """The retrained candidate (v2, the test above) through the promote and rollback deployments."""
    from graftline.tasks.registry.promotion import history

    refused = run(
        "promote/promote",
        {
            "params": {
                "model_name": "platform-demo",
                "to": "staging",
                "experiment": "platform",
                "gates": {"min_accuracy": 0.99},
            }
        },
    )  # a tiny model is far from it
    assert refused.state.is_completed()
    assert "staging" not in aliases(platform, "platform-demo")  # the gate held

    promoted = run(
        "promote/promote", {"params": {"model_name": "platform-demo", "to": "staging", "experiment": "platform"}}
    )
    assert promoted.state.is_completed() and aliases(platform, "platform-demo")["staging"] == "2"
    # production next, accepting any score (min_improvement -1): the gates' arithmetic is test_promotion's;
    # this is about the aliases the deployments move and the history they leave
    anyway = {
        "model_name": "platform-demo",
        "to": "production",
        "experiment": "platform",
        "gates": {"min_improvement": -1},
    }
    promoted = run("promote/promote", {"params": anyway})
    assert promoted.state.is_completed() and aliases(platform, "platform-demo")["production"] == "2"

    rolled = run("rollback/rollback", {"model_name": "platform-demo", "alias": "production", "experiment": "platform"})
    assert rolled.state.is_completed(), rolled.state.message
    assert aliases(platform, "platform-demo")["production"] == "1"
    records = history(client(platform), "platform-demo")
    assert [(r["action"], r["verdict"]) for r in records if r["action"] == "monitor"] == [("monitor", "harmful drift")]
    records = [r for r in records if r["action"] != "monitor"]
    assert [(r["action"], r["alias"], r["from_version"], r["to_version"]) for r in records] == [
        ("promote", "production", None, "1"),
        ("promote", "staging", None, "2"),
        ("promote", "production", "1", "2"),
        ("rollback", "production", "2", "1"),
    ]
    assert "of deployment rollback" in records[-1]["triggered_by"]


def test_the_servers_keep_their_state_where_they_were_told(platform):
    home = Path(platform.home)
    if platform.database is None:
        assert (home / "mlflow.db").is_file() and (home / "prefect" / "prefect.db").is_file()
        return
    import psycopg2

    assert "pg-secret" not in (home / "platform.json").read_text()  # the password is never written down
    assert not (home / "mlflow.db").exists() and not (home / "prefect" / "prefect.db").exists()
    server = urlparse(platform.database)

    def rows(database: str, query: str) -> list:
        with psycopg2.connect(dbname=database, user="pg", password="pg-secret", host=server.hostname,
                              port=server.port) as connection, connection.cursor() as cursor:  # fmt: skip
            cursor.execute(query)
            return cursor.fetchall()

    name = server.path.lstrip("/")
    assert ("platform-demo",) in rows(f"{name}_mlflow", "SELECT name FROM registered_models")
    deployments = {name for (name,) in rows(f"{name}_prefect", "SELECT name FROM deployment")}
    assert {"transfer", "promote", "rollback"} <= deployments
    assert rows(f"{name}_prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")[0][0] >= 2


def test_with_a_prefect_server_the_registry_lock_is_its_concurrency_limit(platform):
    """The worker's promotions above locked through the server (the limit exists, no lock model was
    registered); a second holder waits, then gets a one-line refusal; after release the lock is free."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    from graftline.tasks.registry import locks
    from graftline.tasks.registry.promotion import PromotionError, registry_lock

    with get_client(sync_client=True) as prefect:
        limit = prefect.read_global_concurrency_limit_by_name(locks.limit_name("platform-demo"))
    assert limit.limit == 1 and limit.active_slots == 0
    registry = MlflowClient(tracking_uri=platform.mlflow_url, registry_uri=platform.mlflow_url)
    assert not any(m.name.endswith(".graftline-lock") for m in registry.search_registered_models())
    with registry_lock(registry, "platform-demo", "first"):
        with pytest.raises(PromotionError, match="Prefect concurrency limit 'graftline-registry:platform-demo'"):
            with registry_lock(registry, "platform-demo", "second", wait=2.0):
                pass
    with registry_lock(registry, "platform-demo", "third", wait=5.0):
        pass


def test_a_killed_server_is_started_again_alone_with_the_registry_intact(platform):
    """SIGKILL the MLflow server (no cleanup of its own runs); `up` again starts only it, on the same
    store, and leaves the Prefect server and the worker (and any runs they hold) alone."""
    import signal
    import time

    from graftline.flows import servers

    before = aliases(platform, "platform-demo")
    killed = platform.pids["mlflow"]
    os.kill(killed, signal.SIGKILL)  # the server process alone: its uvicorn and job workers live on
    while servers._alive(killed):  # the kernel tears a killed process down in its own time
        time.sleep(0.1)
    assert servers._group_alive(killed)
    again = servers.up(Path(platform.home), database=postgres_url(platform))
    assert again.pids["mlflow"] != killed and not servers._group_alive(killed)  # the leftovers went first
    assert {k: again.pids[k] for k in ("prefect", "worker")} == {k: platform.pids[k] for k in ("prefect", "worker")}
    platform.pids.update(again.pids)  # what the module's last test and the fixture stop
    assert aliases(platform, "platform-demo") == before


def test_the_command_line_talks_to_the_same_servers(platform):
    env = {**os.environ, **platform.env()}
    graftline = str(Path(sys.executable).parent / "graftline")
    done = subprocess.run([graftline, "history", "platform-demo"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "candidate v2, staging v2, production v1" in done.stdout


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: never a downloaded browser
BROWSER_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # no calls home from a closed network


def _note_refusal(response, refused: list[str]) -> None:
    if response.status >= 400:
        try:
            body = response.text()[:300]
        except Exception as exc:  # a body the browser no longer holds
            body = f"<{exc}>"
        refused.append(f"{response.request.method} {response.url} {response.status}: {body}")


def _submitted(page, timeout_s: float = 90) -> bool:
    """True once the form's page (…/run) gives way to the deployment's; False when the UI shows its
    error toast (the create call failed) or nothing happens in `timeout_s`."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not urlparse(page.url).path.endswith("/run"):
            return True
        if page.get_by_text("Something went wrong").count():
            page.wait_for_timeout(2000)  # let the toast go before the next click
            return False
        page.wait_for_timeout(500)
    return False


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_a_run_started_from_the_prefect_ui_form_uses_the_changed_value(platform):
    import time
    import uuid

    from playwright.sync_api import sync_playwright
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    model_name = f"platform-ui-{uuid.uuid4().hex[:6]}"
    shots = Path(os.environ.get("GRAFTLINE_TEST_ARTIFACTS", "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            refused: list[str] = []  # the API calls the UI made that failed: what a failure message shows
            page.on("response", lambda response: _note_refusal(response, refused))
            page.goto(f"{platform.prefect_url}/deployments", wait_until="networkidle")
            page.locator('a[href^="/deployments/deployment/"]', has_text="transfer").click()  # the transfer deployment
            page.wait_for_url("**/deployments/deployment/**")
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").first.click()  # the parameter form
            page.wait_for_url("**/run**")
            page.wait_for_load_state("networkidle")
            name_box = None
            for _ in range(100):  # the form renders its fields again while its JSON editors load
                boxes = page.locator("textarea").all()
                name_box = next((el for el in boxes if el.input_value() == "platform-demo"), None)
                if name_box is not None:
                    break
                page.wait_for_timeout(200)
            assert name_box is not None, "no field of the form holds registry.model_name"
            name_box.fill(model_name)  # registry.model_name: the one value changed
            name_box.press("Tab")  # the form takes the value when the field loses focus
            page.screenshot(path=str(shots / "prefect-ui-parameter-form.png"), full_page=True)
            for attempt in range(3):  # a create call failed once on a busy machine (error toast): click again
                page.get_by_role("button", name="Submit").click()
                if _submitted(page):
                    break
                page.screenshot(path=str(shots / f"prefect-ui-after-submit-{attempt}.png"), full_page=True)
            else:
                shown = page.locator("[role=alert], .p-toast").all_inner_texts()
                pytest.fail(f"the form was not submitted; the page shows {shown}; failed API calls: {refused}")
        finally:
            browser.close()

    with get_client(sync_client=True) as prefect:
        deadline = time.monotonic() + TRAIN * 2
        while True:  # the run whose parameters carry the value typed into the form
            runs = [
                r
                for r in prefect.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
                if (r.parameters.get("registry") or {}).get("model_name") == model_name
            ]
            if runs and runs[0].state.is_final():
                break
            assert time.monotonic() < deadline, f"the run started from the UI did not finish: {runs and runs[0].state}"
            time.sleep(1)
    flow_run = runs[0]
    assert flow_run.state.is_completed(), flow_run.state.message
    assert flow_run.parameters["registry"]["model_name"] == model_name
    assert flow_run.parameters["finetune"]["backbone"].endswith("tiny-bert0")  # the form's other values stayed
    version = client(platform).get_model_version_by_alias(model_name, "candidate")
    assert version.tags["prefect_flow_run_id"] == str(flow_run.id)


def test_down_stops_exactly_what_up_started(platform):
    """The module's last test (it runs last: pytest keeps the file's order): `down` stops the servers and
    worker the fixture's `up` started, and nothing else; the fixture's own `down` then finds nothing."""
    from graftline.flows import servers

    home = Path(platform.home)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stopped = servers.down(home)
        assert stopped.pids == platform.pids
        assert not any(servers._alive(pid) for pid in platform.pids.values())
        assert bystander.poll() is None  # not ours: untouched
        assert servers.down(home) is None and not (home / "platform.json").exists()
    finally:
        bystander.kill()
