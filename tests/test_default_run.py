"""`graftline run` with no arguments, as a new user runs it: real MiniLM-L6, real ephemeral
Prefect API, the default local MLflow store under the working directory. About 1.5-3 minutes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_default_run_ends_with_production_models_and_the_ui_command(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING_URI", "GRAFTLINE_", "PREFECT_API_URL"))
    }
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # a fresh Prefect database, as on a new machine
    graftline = shutil.which("graftline", path=str(Path(sys.executable).parent))
    done = subprocess.run([graftline, "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout

    assert re.search(r"teacher\s+test_accuracy\s+0\.\d+", out) and re.search(r"student\s+home_accuracy\s+0\.\d+", out)
    assert "graftline-demo v1  aliases: candidate, production" in out
    assert "graftline-demo-student v1  aliases: candidate, production" in out
    store = tmp_path / "graftline-runs" / "mlflow.db"
    assert f"mlflow ui --backend-store-uri sqlite:///{store}" in out

    client = MlflowClient(tracking_uri=f"sqlite:///{store}", registry_uri=f"sqlite:///{store}")
    production = client.get_model_version_by_alias("graftline-demo", "production")
    accuracy = float(production.tags["test_accuracy"])
    assert accuracy > 0.8, "a pretrained MiniLM should route the demo tickets well above chance (0.25)"
    artifacts = list((tmp_path / "graftline-runs" / "artifacts").rglob("model.safetensors"))
    assert len(artifacts) == 2 and not list(tmp_path.rglob("mlruns"))
