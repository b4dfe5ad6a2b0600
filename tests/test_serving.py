"""Using a registered version: `predict`, MLflow's scoring server, explanations, and the drift monitor
closing the loop.

One lifecycle run (the tiny random BERT on the demo data, exported, explained; conftest's
`exported_run`, shared with the flow tests) registers the versions every test here uses, on a real
temporary Prefect API and a real sqlite MLflow store. The tiny model's numbers are not judged, only
what is written, logged and decided.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from graftline.flows.cli.app import app
from graftline.flows.params import MonitorParams, PredictParams
from graftline.flows.serving import monitor, predict
from graftline.tasks.data.splits import resolve_source
from graftline.tasks.errors import GraftlineError
from graftline.tasks.registry.promotion import history

DEMO = Path(resolve_source("demo:home")).parent


@pytest.fixture(scope="module")
def served(exported_run) -> str:
    """The registered model name of the shared exported and explained lifecycle run (conftest)."""
    return exported_run[0]


def _input(tmp_path: Path, suffix: str, rows: int = 40) -> Path:
    frame = pd.read_csv(DEMO / "home.csv").head(rows).assign(ticket=lambda f: range(len(f)))
    path = tmp_path / f"new{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def test_predict_scores_every_format_with_the_fastest_passing_export(served, tmp_path):
    """The flow on CSV (what it tracks), then the same scorer on JSONL and Parquet (what it writes)."""
    from graftline.tasks.serve.predict import ModelReference, load_scorer, predict_frame, read_input

    student = f"{served}-student@production"
    labels = ["billing", "defect", "delivery", "praise"]
    done = predict(
        PredictParams(
            model=student, input_path=str(_input(tmp_path, ".csv")), output_path=str(tmp_path / "s.csv"), batch_size=16
        )
    )
    assert done.form == "onnx-int8" and done.predictions.rows == 40
    run = MlflowClient().get_run(done.run_id)
    assert run.data.tags["graftline.form"] == "onnx-int8" and run.data.tags["graftline.model_version"] == "1"
    assert run.data.metrics["rows"] == 40 and sum(run.data.metrics[f"predicted_{label}"] for label in labels) == 40
    assert "predict/confidence.png" in {f.path for f in MlflowClient().list_artifacts(done.run_id, "predict")}
    pd.DataFrame({"text": ["a parcel", "a refund", "a crack"]}).to_csv(tmp_path / "three.csv", index=False)
    few = predict(
        PredictParams(model=student, input_path=str(tmp_path / "three.csv"), output_path=str(tmp_path / "t.csv"))
    )
    assert few.predictions.rows == 3 and not MlflowClient().list_artifacts(few.run_id, "predict")  # no histogram
    scorer = load_scorer(MlflowClient(), ModelReference.parse(student))
    readers = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}
    for suffix, read in readers.items():
        if suffix != ".csv":
            predict_frame(
                scorer, read_input(str(_input(tmp_path, suffix)), "text"), "text", tmp_path / f"s{suffix}", 16
            )
        scored = read(tmp_path / f"s{suffix}")
        columns = [
            "text",
            "label",
            "ticket",
            "predicted_label",
            *[f"score_{label}" for label in labels],
            "model_version",
        ]
        assert list(scored.columns) == columns, suffix
        assert scored["ticket"].tolist() == list(range(40))  # every input column kept, in order
        scores = scored[[f"score_{label}" for label in labels]].to_numpy()
        assert abs(scores.sum(1) - 1).max() < 1e-5
        assert (scored["predicted_label"] == [labels[i] for i in scores.argmax(1)]).all()
        assert set(scored["model_version"]) == {f"{served}-student/1"}


def test_the_calibrated_temperature_travels_with_the_version(served):
    """Loaded from the registry by MLflow alone, a version gives the scores `graftline predict` gives:
    its temperature is in the registered model, not only in graftline's own scorer."""
    import mlflow.pyfunc
    import numpy as np

    from graftline.tasks.serve.predict import ModelReference, load_scorer

    client = MlflowClient()
    texts = pd.read_csv(DEMO / "home.csv")["text"].head(9).tolist()
    for name in (served, f"{served}-student"):
        tagged = float(client.get_model_version(name, "1").tags["temperature"])
        scorer = load_scorer(client, ModelReference.parse(f"{name}/1"), "torch")
        assert scorer.temperature == tagged
        ours = scorer.probabilities(texts)
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@production").predict(pd.DataFrame({"text": texts}))
        assert loaded["label"].tolist() == [scorer.labels[i] for i in ours.argmax(-1)]
        np.testing.assert_allclose(loaded[[f"score_{label}" for label in scorer.labels]], ours, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "make", "message"),
    [
        (
            "{name}@production",
            lambda p: pd.DataFrame({"body": ["a"]}).to_csv(p, index=False),
            r"missing column\(s\) 'text'",
        ),
        ("{name}@production", lambda p: p.write_text("text,label\n"), "the dataset is empty"),
        ("nobody-{name}@production", None, "not found"),
        ("{name}@nightly", None, "no such version"),
        ("{name}/99", None, "no such version"),
    ],
)
def test_predict_refuses_bad_input_with_one_line_and_writes_nothing(served, tmp_path, model, make, message):
    source = tmp_path / "in.csv"
    make(source) if make else _input(tmp_path, ".csv").rename(source)
    output = tmp_path / "out.csv"
    with pytest.raises(GraftlineError, match=message) as raised:
        predict(PredictParams(model=model.format(name=served), input_path=str(source), output_path=str(output)))
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == [source]  # no output, no partial file


def test_the_command_line_exits_2_on_an_unknown_output_format(served, tmp_path):
    source = _input(tmp_path, ".csv")
    result = CliRunner().invoke(
        app, ["predict", f"{served}@production", "--input", str(source), "--output", str(tmp_path / "out.xlsx")]
    )
    assert result.exit_code == 2 and "unknown output format" in result.output
    missing = CliRunner().invoke(
        app,
        ["predict", f"{served}@production", "--input", str(tmp_path / "none.csv"), "--output", str(tmp_path / "o.csv")],
    )
    assert (
        missing.exit_code == 2
        and missing.output.strip() == f"graftline: error: {tmp_path / 'none.csv'}: file not found"
    )


# fmt: off
FRONT_DOOR = {
    "predict without the text column": (["predict", "{name}@production", "--input", "{columns}", "--output", "{out}"],
                                        r"columns\.csv: missing column\(s\) 'text'; found 'body'"),
    "predict of an empty file": (["predict", "{name}@production", "--input", "{empty}", "--output", "{out}"],
                                 r"empty\.csv: the dataset is empty"),
    "predict of a .parquet that is not Parquet": (["predict", "{name}@production", "--input", "{fake}", "--output",
                                                   "{out}"], r"cannot read .*fake\.parquet as parquet"),
    "predict with an unknown model": (["predict", "nobody-{name}@production", "--input", "{good}", "--output", "{out}"],
                                      r"registered model 'nobody-t-\w+' not found"),
    "predict with an unknown alias": (["predict", "{name}@nightly", "--input", "{good}", "--output", "{out}"],
                                      r"t-\w+@nightly: no such version"),
    "monitor without the text column": (["monitor", "{name}@production", "--input", "{columns}"],
                                        r"columns\.csv: missing column\(s\) 'text'"),
    "promote of an unknown model": (["promote", "nobody-{name}", "--to", "production"],
                                    r"no registered model named 'nobody-t-\w+'"),
    "promote with an unreadable evaluation set": (["promote", "{name}", "--to", "production", "--eval", "test={fake}"],
                                                  r"cannot read .*fake\.parquet as parquet"),
    "rollback with nothing to roll back": (["rollback", "{name}", "--alias", "staging"],
                                           r"t-\w+: no version holds staging; nothing to roll back"),
}
# fmt: on


@pytest.mark.parametrize("case", FRONT_DOOR)
def test_serving_commands_refuse_bad_input_in_one_line_before_any_flow_starts(served, tmp_path, monkeypatch, case):
    from graftline.flows import operations, serving

    def started(*args, **kwargs):
        raise AssertionError("the flow started: its Prefect server would have started first")

    for module, flow in ((serving, "predict"), (serving, "monitor"), (operations, "promote"), (operations, "rollback")):
        monkeypatch.setattr(module, flow, started)
    files = {"columns": tmp_path / "columns.csv", "empty": tmp_path / "empty.csv", "fake": tmp_path / "fake.parquet"}
    pd.DataFrame({"body": ["a"]}).to_csv(files["columns"], index=False)
    files["empty"].write_text("text\n")
    files["fake"].write_text("text\nnot parquet\n")
    files["good"] = _input(tmp_path, ".csv")
    written = sorted(tmp_path.iterdir())
    args, pattern = FRONT_DOOR[case]
    result = CliRunner().invoke(app, [a.format(name=served, out=tmp_path / "out.csv", **files) for a in args])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("graftline: error: ") and pd.Series([line]).str.contains(pattern).all(), line
    assert sorted(tmp_path.iterdir()) == written  # no output, no partial file


def test_a_yaml_word_reaches_a_string_setting_as_written():
    from graftline.flows.cli.lifecycle import build_params

    params = build_params(None, {}, [], ["validation.pii=off", "export.quantize=off", "registry.model_name=no"])
    assert params.validation.pii == "off" and params.export.quantize is False and params.registry.model_name == "no"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _invoke(port: int, texts: list[str], process, timeout: float = 120) -> list:
    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}).encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())["predictions"]
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"scoring server on port {port} did not answer: {process.stdout.read()}") from None
            time.sleep(0.5)


def test_mlflow_models_serve_serves_the_registered_version_and_its_onnx_servable(served, tmp_path):
    """The scoring server MLflow ships, started as a user would (`mlflow models serve`), on both forms."""
    import os

    client = MlflowClient()
    student = client.get_model_version_by_alias(f"{served}-student", "production")
    servable = student.tags["servable_model_uri"]
    texts = pd.read_csv(DEMO / "home.csv")["text"].head(12).tolist()
    expected = pd.read_csv(_predicted(served, texts, tmp_path))["predicted_label"].tolist()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    # as in an activated environment: MLflow starts its server as `uvicorn` from PATH
    env = {**os.environ, "PATH": f"{Path(mlflow).parent}{os.pathsep}{os.environ['PATH']}"}
    servers = {}
    try:
        for form, uri in (("onnx", servable), ("torch", f"models:/{served}-student/{student.version}")):
            port = _free_port()
            command = [
                mlflow,
                "models",
                "serve",
                "-m",
                uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ]
            servers[form] = (
                port,
                subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            )
        onnx = _invoke(servers["onnx"][0], texts, servers["onnx"][1])
        torch = _invoke(servers["torch"][0], texts, servers["torch"][1])
    finally:
        for _, process in servers.values():
            process.terminate()
            process.wait(30)
    assert [row["label"] for row in onnx] == expected  # the same INT8 file predict used, the same answers
    assert all(abs(sum(v for k, v in row.items() if k.startswith("score_")) - 1) < 1e-5 for row in onnx)
    # the registered version itself: the torch classifier with the version's temperature, as predict scores it
    from graftline.tasks.serve.predict import ModelReference, load_scorer

    scorer = load_scorer(client, ModelReference.parse(f"{served}-student/{student.version}"), "torch")
    ours = scorer.probabilities(texts)
    assert [row["label"] for row in torch] == [scorer.labels[i] for i in ours.argmax(-1)]
    assert max(abs(row["score"] - p) for row, p in zip(torch, ours.max(-1), strict=True)) < 1e-5


def _predicted(served: str, texts: list[str], folder: Path) -> Path:
    source, output = folder / "serve-in.csv", folder / "serve-out.csv"
    pd.DataFrame({"text": texts}).to_csv(source, index=False)
    predict(PredictParams(model=f"{served}-student@production", input_path=str(source), output_path=str(output)))
    return output


def test_a_harmful_drift_starts_retraining_and_same_domain_data_does_not(served, tmp_path):
    """End to end on the real servers: the retrain deployment is registered as `graftline up` does; a
    window of another domain that costs accuracy is found harmful and starts a retrain run with that
    window as its target and evaluation set; a window of the version's own held-out rows does not."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from graftline.flows.deploy import build
    from graftline.tasks.registry import evaluation_sets

    # on a process pool of its own: the shared API may hold a `retrain` on another pool (test_cluster's)
    with get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name="serving-tests", type="process"), overwrite=True)
    retrain = next(d for d in build() if d.name == "retrain")
    retrain.apply(work_pool_name="serving-tests")
    client = MlflowClient()
    model = f"{served}-student@production"
    own = evaluation_sets.of_version(client, f"{served}-student", "1")["test"].frame
    same = tmp_path / "same.csv"
    pd.concat([own] * 3, ignore_index=True)[["text"]].to_csv(same, index=False)  # the reference's own rows
    checked = monitor(MonitorParams(model=model, input_path=str(same), max_accuracy_drop=0.0, retrain=True))
    assert checked.verdict == "no drift" and checked.retrain_flow_run_id is None

    # Another domain, and the part of it this random tiny model is least sure of: a shift that costs
    # accuracy by construction (a trained model on a real new domain does that by itself: BENCHMARKS).
    home = pd.read_csv(_predicted(served, pd.read_csv(DEMO / "home.csv")["text"].tolist(), tmp_path))
    home["label"] = pd.read_csv(DEMO / "home.csv")["label"]
    confidence = home.filter(like="score_").max(axis=1)
    shifted = tmp_path / "shifted.csv"
    home.loc[confidence.nsmallest(150).index, ["text", "label"]].to_csv(shifted, index=False)
    checked = monitor(MonitorParams(model=model, input_path=str(shifted), max_accuracy_drop=0.0, retrain=True))
    assert checked.verdict == "harmful drift", checked
    detections = checked.report.detections
    assert detections["mmd"].p_value < 0.05 / 4 or detections["classifier"].p_value < 0.05 / 4
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(checked.retrain_flow_run_id)
    data = run.parameters["data"]
    [window] = [path for name, path in data["target_sets"].items() if name.startswith("drift_")]
    assert data["eval_sets"][next(n for n in data["target_sets"] if n.startswith("drift_"))] == window
    assert len(pd.read_parquet(window)) == 150 and run.parameters["adapt"]["method"] == "auto"
    records = [r for r in history(client, f"{served}-student") if r["action"] == "monitor"]
    assert [r["verdict"] for r in records] == ["no drift", "harmful drift"]
    assert records[-1]["retrain_flow_run_id"] == checked.retrain_flow_run_id
    files = {f.path for f in client.list_artifacts(checked.run_id, "drift")}
    assert files == {"drift/drift.png", "drift/drift.html"}
    assert client.get_run(checked.run_id).data.tags["graftline.form"] == "onnx-int8"  # the fast forward pass
    shown = CliRunner().invoke(app, ["history", f"{served}-student"]).output
    assert "monitor  v1: harmful drift" in shown and f"flow run {checked.retrain_flow_run_id}" in shown


def test_graftline_monitor_prints_the_verdict_and_refuses_a_missing_file_first(served, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["monitor", f"{served}@production", "--input", str(tmp_path / "nothing.csv")])
    assert missing.exit_code == 2 and "nothing.csv" in missing.output and len(missing.output.strip().splitlines()) == 1
    window = tmp_path / "window.csv"
    pd.read_csv(DEMO / "electronics.csv").head(120)[["text"]].to_csv(window, index=False)
    checked = runner.invoke(app, ["monitor", f"{served}@production", "--input", str(window)])
    assert checked.exit_code == 0, checked.output
    lines = checked.output.strip().splitlines()
    assert lines[0].split(" (")[0] in ("no drift", "drift", "harmful drift") and "120 new rows" in lines[0]
    assert [line.split()[0] for line in lines[1:5]] == ["bbsd_ks", "mmd", "classifier", "label_shift"]


def test_the_lifecycle_explains_both_models_on_the_same_texts(served):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(served)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    teacher, student = runs["explain_teacher"], runs["explain_student"]
    for run in (teacher, student):
        metrics = run.data.metrics
        assert metrics["explained_texts"] >= 2 * 4  # test and home: 4 drawn each, plus their confident errors
        assert {"ig_comprehensiveness", "random_comprehensiveness", "attention_sufficiency"} <= set(metrics)
        files = {f.path for f in client.list_artifacts(run.info.run_id, "explain")}
        assert files == {"explain/explanations.html", "explain/class_cues.json"}
    assert student.data.metrics["explained_texts"] == teacher.data.metrics["explained_texts"]
    assert -1 <= student.data.metrics["teacher_agreement_kendall_tau"] <= 1


def test_graftline_explain_shades_a_text_and_refuses_bad_input(served, tmp_path):
    runner = CliRunner()
    page = tmp_path / "why.html"
    done = runner.invoke(
        app, ["explain", f"{served}@production", "my <b>parcel</b> never arrived", "--html", str(page), "--steps", "8"]
    )
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"{served} v1: ") and "towards it:" in done.output
    assert "&lt;" in page.read_text() and "<b>parcel" not in page.read_text()  # shown, not rendered
    for args, message in (([f"nobody-{served}", "text"], "not found"), ([served, "  "], "text is empty")):
        refused = runner.invoke(app, ["explain", *args])
        assert refused.exit_code == 2 and message in refused.output and len(refused.output.strip().splitlines()) == 1


def test_predict_explain_adds_the_top_words_of_each_row(served, tmp_path):
    source, output = _input(tmp_path, ".csv", rows=6), tmp_path / "scored.csv"
    predict(PredictParams(model=f"{served}@production", input_path=str(source), output_path=str(output), explain=True))
    scored = pd.read_csv(output, keep_default_na=False)
    assert scored.columns[-1] == "top_words" and len(scored) == 6
    assert any(scored["top_words"])
    for text, words in zip(scored["text"], scored["top_words"], strict=True):
        assert len(words.split()) <= 5 and all(w in text.lower() for w in words.split())  # the row's own words


def test_graftline_serve_resolves_the_alias_to_the_servable_or_the_registered_model(served):
    runner, client = CliRunner(), MlflowClient()
    servable = client.get_model_version(f"{served}-student", "1").tags["servable_model_uri"]
    onnx = runner.invoke(app, ["serve", f"{served}-student@production", "--dry-run", "--port", "5077"])
    assert onnx.exit_code == 0 and f"models serve -m {servable} --env-manager local -h 127.0.0.1 -p 5077" in onnx.output
    torch = runner.invoke(app, ["serve", f"{served}@production", "--form", "torch", "--dry-run"])
    assert torch.exit_code == 0 and f"-m models:/{served}/1 " in torch.output
    teacher = runner.invoke(app, ["serve", f"{served}@production", "--dry-run"])  # the teacher was not exported
    assert teacher.exit_code == 2 and "has no servable ONNX export; use --form torch" in teacher.output
