"""`graftline run` as a user types it: every bad input ends in one line, status 2, no registry change."""

import contextlib
import io
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from graftline.flows.cli.app import app
from graftline.flows.cli.lifecycle import build_params
from graftline.tasks.settings import DEMO_EVAL_SETS
from tests.conftest import toy_frame


def test_parameters_merge_config_options_and_set(tmp_path):
    config = tmp_path / "params.yaml"
    config.write_text("finetune:\n  epochs: 7\n  batch_size: 8\nregistry:\n  model_name: from-file\n")
    params = build_params(config, {"finetune.epochs": 2, "registry.model_name": None}, [], ["distill.alpha=0.3"])
    assert params.finetune.epochs == 2  # an option beats the file
    assert params.finetune.batch_size == 8  # the file's other values stay
    assert params.registry.model_name == "from-file"
    assert params.distill.alpha == 0.3
    assert params.data.eval_sets == DEMO_EVAL_SETS  # demo data keeps its second domain


def test_own_training_data_drops_the_demo_evaluation_set():
    params = build_params(None, {"data.train_path": "mine.csv"}, [], [])
    assert params.data.eval_sets == {}
    params = build_params(None, {"data.train_path": "mine.csv"}, ["other=theirs.csv"], [])
    assert params.data.eval_sets == {"other": "theirs.csv"}


@pytest.fixture
def files(tmp_path, tiny_backbone):
    """One file (or folder) per bad input."""
    import shutil

    good = toy_frame(20)
    paths = {}
    paths["missing"] = tmp_path / "missing.csv"
    paths["format"] = tmp_path / "data.parquet"
    paths["format"].write_text("text,label\nnot,parquet\n")
    paths["columns"] = tmp_path / "columns.csv"
    good.rename(columns={"text": "body"}).to_csv(paths["columns"], index=False)
    paths["empty"] = tmp_path / "empty.csv"
    paths["empty"].write_text("text,label\n")
    paths["single"] = tmp_path / "single.csv"
    good.assign(label="good").drop_duplicates("text").to_csv(paths["single"], index=False)
    paths["train"] = tmp_path / "train.csv"
    good.to_csv(paths["train"], index=False)
    paths["unknown_labels"] = tmp_path / "test.csv"
    toy_frame(5, 3).assign(label=["good", "bad", "spam"] * 3 + ["good"]).to_csv(paths["unknown_labels"], index=False)
    paths["empty_labels"] = tmp_path / "empty_labels.csv"
    good.assign(label=good["label"].where(good.index % 7 != 3)).to_csv(paths["empty_labels"], index=False)
    paths["broken_jsonl"] = tmp_path / "broken.jsonl"
    good.head(4).to_json(paths["broken_jsonl"], orient="records", lines=True)
    paths["broken_jsonl"].write_text(paths["broken_jsonl"].read_text() + '{"text": "cut off", "label": \n')
    paths["repeated_columns"] = tmp_path / "repeated.csv"
    paths["repeated_columns"].write_text("text,label,text\n" + "".join(f"t{i},x,y\n" for i in range(10)))
    paths["two_vocabularies"] = tmp_path / "vocabularies.csv"
    mixed = pd.concat([toy_frame(20), toy_frame(10, 5).assign(label=["0", "1"] * 10)], ignore_index=True)
    mixed.drop_duplicates("text").to_csv(paths["two_vocabularies"], index=False)
    paths["bad_config"] = tmp_path / "bad-config-backbone"
    shutil.copytree(tiny_backbone, paths["bad_config"])
    (paths["bad_config"] / "config.json").write_text('{"model_type": "bert",\n  "hidden_size": 32,,\n}')
    paths["pickled_weights"] = tmp_path / "pickled-backbone"
    shutil.copytree(tiny_backbone, paths["pickled_weights"])
    (paths["pickled_weights"] / "model.safetensors").rename(paths["pickled_weights"] / "pytorch_model.bin")
    return {k: str(v) for k, v in paths.items()}


# One case a line or two: it reads as the table it is. Every case but the last fails before any
# server starts (test_preflight_errors_come_back_before_any_server_starts shows it).
# fmt: off
CASES = {
    "missing file": (["--train", "{missing}"], r"missing\.csv: file not found"),
    "missing test file": (["--train", "{train}", "--test", "{missing}"], r"missing\.csv: file not found"),
    "missing evaluation set": (["--train", "{train}", "--eval", "other={missing}"], r"missing\.csv: file not found"),
    "missing config file": (["--config", "{missing}"], r"missing\.csv: config file not found"),
    "unreadable format": (["--train", "{format}"], r"cannot read .*data\.parquet as parquet"),
    "missing columns": (["--train", "{columns}"], r"missing column\(s\) 'text'"),
    "column named twice": (["--train", "{repeated_columns}"],
                           r"repeated\.csv: column name\(s\) 'text' appear more than once"),
    "empty dataset": (["--train", "{empty}"], r"the dataset is empty"),
    "single class": (["--train", "{single}"], r"at least 2 classes, found only 'good'"),
    "empty labels": (["--train", "{empty_labels}"],
                     r"empty_labels\.csv: 6 of 40 rows have no 'label' \(rows 4, 11, 18, 25, 32, \.\.\.\)"),
    "broken JSON line": (["--train", "{broken_jsonl}"],
                         r"broken\.jsonl: line 5, column 30: not valid JSON \(Expecting value\)"),
    "labels absent from train": (["--train", "{train}", "--test", "{unknown_labels}"],
                                 r"test\.csv \(test\): label\(s\) 'spam' \(3 rows\) do not occur in the training"),
    "unknown backbone": (["--train", "{train}", "--backbone", "no-such-org/no-such-model"],
                         r"unknown backbone 'no-such-org/no-such-model'"),
    "backbone folder with a broken config": (["--train", "{train}", "--backbone", "{bad_config}"],
                                             r"bad-config-backbone/config\.json: not valid JSON \(.*line 2 column"),
    "backbone folder without safetensors": (["--train", "{train}", "--backbone", "{pickled_weights}"],
                                            r"pickled-backbone: no safetensors weights"),
    "student deeper than its teacher": (["--train", "{train}", "--student", "teacher-layers:9"],
                                        r"student 'teacher-layers:9': expected teacher-layers:N with 1 <= N <= 6"),
    "missing unlabeled distillation file": (["--train", "{train}", "--set", "distill.unlabeled_paths=[{missing}]"],
                                            r"missing\.csv: file not found"),
    "unlabeled file without its text column": (["--train", "{train}", "--set", "distill.unlabeled_paths=[{columns}]"],
                                               r"columns\.csv: missing column\(s\) 'text'"),
    "missing target file": (["--train", "{train}", "--target", "books={missing}"], r"missing\.csv: file not found"),
    "empty target file": (["--train", "{train}", "--target", "books={empty}"], r"empty\.csv: the dataset is empty"),
    "target set with a reserved name": (["--train", "{train}", "--target", "test={train}"],
                                        r"data.target_sets: Value error, set names \['test'\] are reserved"),
    "adaptation without target texts": (["--train", "{train}", "--set", "adapt.method=mlm"],
                                        r"adapt.method 'mlm' needs unlabeled target texts"),
    "invalid parameter": (["--train", "{train}", "--set", "finetune.epochs=0"],
                          r"invalid parameters: finetune.epochs: Input should be greater than or equal to 1"),
    "search range upside down": (["--train", "{train}", "--set", "finetune.search.enabled=true", "--set",
                                  "finetune.search.space={{learning_rate: {{low: 1e-3, high: 1e-5}}}}"],
                                 r"finetune.search.space.learning_rate: Value error, low 0.001 is above high 1e-05"),
    "unknown search setting": (["--train", "{train}", "--set", "finetune.search.space={{lr: {{low: 0, high: 1}}}}"],
                               r"finetune.search.space: Value error, cannot search lr: searchable settings are"),
    "empty search choices": (["--train", "{train}", "--set", "finetune.search.space={{batch_size: {{choices: []}}}}"],
                             r"finetune.search.space.batch_size: Value error, choices is empty"),
    "re-initialising more layers than the backbone has": (
        ["--train", "{train}", "--backbone", "minilm-l6", "--set", "finetune.reinit_layers=7"],
        r"reinit_layers 7: backbone 'minilm-l6' has only 6 layers"),
    "two label vocabularies (validation, in the flow)": (
        ["--train", "{two_vocabularies}"], r"data validation failed: 1 expectation on 1 split; see the report"),
}
# fmt: on
IN_THE_FLOW = [case for case in CASES if "in the flow" in case]


def run_cli(args: list[str]) -> tuple[int, str]:
    """The app in-process, as the console script calls it. Only sys.stderr is swapped (not pytest's
    capsys/CliRunner streams, which close after each test while Prefect's log handler keeps writing
    to them)."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(stderr):
        app(args)
    return exited.value.code, stderr.getvalue()


@pytest.mark.parametrize("case", [c for c in CASES if c not in IN_THE_FLOW])
def test_bad_input_is_one_line_first_and_exit_2(case, files, mlflow_store, unique_name):
    args, pattern = CASES[case]
    code, stderr = run_cli(["run", *[a.format(**files) for a in args], "--model-name", unique_name])
    assert code == 2
    first, *rest = stderr.strip().splitlines()
    assert first.startswith("graftline: error: ") and not rest, stderr
    assert pd.Series([first]).str.contains(pattern).all(), first
    assert not MlflowClient().search_registered_models(f"name='{unique_name}'")


@pytest.mark.parametrize("case", IN_THE_FLOW)
def test_a_validation_failure_is_one_line_then_its_table(case, files, prefect_harness, mlflow_store, unique_name):
    args, pattern = CASES[case]
    args = [a.format(**files) for a in args] + ["--set", f"registry.experiment={unique_name}"]
    code, stderr = run_cli(["run", *args, "--model-name", unique_name])
    assert code == 2 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("graftline: error: ")]
    assert len(errors) == 1, stderr  # printed once, the Prefect log above it aside
    error, table = lines[errors[0]], lines[errors[0] + 1 :]
    assert pd.Series([error]).str.contains(pattern).all(), error
    assert table[0].split()[:2] == ["split", "check"] and table[1].split()[:3] == ["train", "label", "vocabulary"]
    assert "numbers '0', '1'; words 'bad', 'good'" in table[1]
    report = next(line.removeprefix("report: ") for line in table if line.startswith("report: "))
    assert "| train | label vocabulary |" in Path(report).read_text()  # the report is where the line says
    assert any(line.startswith("Data Docs: ") and line.endswith("index.html") for line in table)
    assert not MlflowClient().search_registered_models(f"name='{unique_name}'")


@pytest.mark.parametrize("case", ["unreadable format", "unknown backbone"])
def test_preflight_errors_come_back_before_any_server_starts(case, files, tmp_path):
    """In a fresh process, as a user runs it: the error comes back with Prefect (whose first flow
    starts a temporary server), torch and MLflow never imported, and nothing written."""
    import subprocess
    import sys

    args, pattern = CASES[case]
    probe = (
        "import sys\n"
        "from graftline.flows.cli.app import app\n"
        "try:\n    app(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    heavy = ('prefect', 'mlflow', 'torch', 'transformers', 'great_expectations')\n"
        "    print(exit.code, [m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "run", *[a.format(**files) for a in args]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "GRAFTLINE_HOME": str(tmp_path / "home")},
    )
    assert done.stdout.split("\n")[0] == "2 []", done.stdout + done.stderr
    assert pd.Series([done.stderr.strip()]).str.contains(pattern).all() and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home").exists()  # no store, no run folder


def test_check_validates_without_training_or_tracking(files, tmp_path, capsys):
    leaking = toy_frame(20).head(6)  # every test text is a training text
    leaking.to_csv(tmp_path / "leaking.csv", index=False)
    code, stderr = run_cli(["check", "--train", files["train"], "--test", str(tmp_path / "leaking.csv"),
                            "--out", str(tmp_path / "report")])  # fmt: skip
    assert code == 2
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("checked in ") and lines[1].startswith("graftline: error: data validation failed")
    assert lines[3].split()[:5] == ["test", "leakage:", "texts", "also", "in"] and " of 6 rows " in lines[3]
    assert "validation.max_overlap_fraction=" in lines[3] and lines[-1].startswith("relax a check with --set")
    assert (tmp_path / "report" / "report.md").is_file() and (
        tmp_path / "report" / "data_docs" / "index.html"
    ).is_file()
    app(["check", "--train", files["train"], "--out", str(tmp_path / "clean")], standalone_mode=False)
    assert "data validation passed" in capsys.readouterr().out


def test_errors_keep_their_details_across_processes():
    import pickle

    from graftline.tasks.errors import ValidationFailed

    error = pickle.loads(pickle.dumps(ValidationFailed("one line", "a table")))
    assert (str(error), error.details, repr(error)) == ("one line", "a table", "ValidationFailed('one line')")


def test_up_on_a_port_another_program_holds_is_refused_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as other:  # listening, but no HTTP server
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        code, stderr = run_cli(["up", "--prefect-port", str(port), "--home", str(tmp_path / "platform")])
    assert (
        code == 2
        and stderr
        == f"graftline: error: port {port} on 127.0.0.1 is already in use by another program; choose another\n"
    )
    assert not (tmp_path / "platform" / "platform.json").exists()  # nothing started, nothing recorded


def test_up_on_a_network_address_is_refused_before_anything_starts(tmp_path):
    from graftline.flows.servers import require_loopback

    for host in ("0.0.0.0", "192.168.1.5", "platform.example.org"):
        code, stderr = run_cli(["up", "--host", host, "--home", str(tmp_path / "platform")])
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith(f"graftline: error: refusing to serve MLflow and Prefect on {host}")
        assert "--unauthenticated" in stderr
    assert not (tmp_path / "platform").exists()  # no folder, no server
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        require_loopback(host)  # this machine: allowed
    require_loopback("0.0.0.0", unauthenticated=True)  # the user said so


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "m@production", "--port", "99999"], "port: Input should be less than or equal to 65535"),
        (["serve", "m@production", "--form", "tflite"], "form: Input should be 'onnx' or 'torch'"),
        (["explain", "m@production", "hello", "--steps", "0"], "n_steps: Input should be greater than or equal to 2"),
    ],
)
def test_serving_options_out_of_their_groups_bounds_stop_before_any_store(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFTLINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, stderr = run_cli(args)
    assert code == 2 and stderr.strip() == f"graftline: error: invalid parameters: {message}"
    assert not (tmp_path / "home").exists()  # no store was opened


def test_a_registered_name_holds_one_kind_of_model(exported_run, files, tmp_path):
    """The shared run registered the text demo (its ticket queues) under its name: another label set
    or an image model under that name is refused in one line, in the store, before anything starts."""
    from mlflow.tracking import MlflowClient

    name, _ = exported_run
    client = MlflowClient()
    before = len(client.search_model_versions(f"name = '{name}'"))
    code, stderr = run_cli(["run", "--train", files["train"], "--model-name", name])
    first, *_ = stderr.strip().splitlines()[1:]  # after the pre-flight line
    assert code == 2 and first.startswith(f"graftline: error: {name} v1 predicts [")
    assert 'this run\'s labels are ["bad", "good"]' in first and "give this model a name of its own" in first
    code, stderr = run_cli(["run", "--modality", "image", "--model-name", name])
    assert code == 2 and f"{name} holds text models (v1), not image ones" in stderr
    assert len(client.search_model_versions(f"name = '{name}'")) == before


def test_sigterm_stops_a_run_as_ctrl_c_does_and_leaves_no_process(files, tmp_path, tiny_backbone):
    """What a scheduler, systemd or Kubernetes sends: the command and Prefect's temporary server it
    started both end, and the command says how to resume."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    import psutil

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env |= {"GRAFTLINE_HOME": str(tmp_path / "home"), "GRAFTLINE_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri()}
    env["PYTHONUNBUFFERED"] = "1"  # its log lines as they happen, not when a pipe's buffer fills
    command = [sys.executable, "-m", "graftline.flows.cli.app", "run", "--train", files["train"], "--backbone",
               str(tiny_backbone), "--epochs", "50", "--no-distill", "--model-name", "sigterm"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []  # what the command printed so far, read as it comes
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    started, descendants = time.monotonic(), []
    while time.monotonic() - started < 120 and process.poll() is None:
        plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]  # without the log's colours
        if any("'validate-" in line and "Finished in state" in line for line in plain):  # fine-tuning next
            descendants = psutil.Process(process.pid).children(recursive=True)  # Prefect's temporary server
            break
        time.sleep(0.25)
    try:
        assert descendants, f"the run started no server process: {''.join(lines)[-2000:]}"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
        reader.join(timeout=10)
        output = "".join(lines)
        deadline = time.monotonic() + 10
        while (alive := [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        left = [p.cmdline() for p in alive]  # read before anything below kills them
    finally:  # a failed test leaves nothing running either
        for leftover in [process, *descendants]:
            with contextlib.suppress(Exception):
                leftover.kill()
    assert process.returncode == 130, output[-2000:]
    assert "graftline: interrupted; `graftline resume` continues it from its last checkpoint" in output
    assert not left, left
