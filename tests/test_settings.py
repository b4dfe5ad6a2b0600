"""One definition per setting: every default lives in tasks/settings.py, and nothing else that
states a default may disagree with it (the flow's form, the documented parameter file, the
engine's config, the command line's options)."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from graftline.flows.cli.app import app
from graftline.flows.params import TransferParams
from graftline.tasks import settings
from graftline.tasks.engine.training import TrainConfig
from graftline.tasks.settings import (
    DEMO_MODEL,
    EXPERIMENT,
    DistillParams,
    ExplainParams,
    FinetuneParams,
    ModelParams,
    MonitorParams,
    PredictParams,
    PromoteParams,
    RegistryParams,
    RollbackParams,
    ServeParams,
    TrainingParams,
    default_of,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_parameter_file_is_exactly_the_defaults():
    from graftline.flows.cli.lifecycle import build_params

    documented = build_params(ROOT / "deployments" / "transfer.params.yaml", {}, [], [])
    assert documented == TransferParams()


def test_the_flow_form_shows_the_defaults_of_the_groups():
    from graftline.flows.lifecycle import transfer

    defaults = {name: p.default for name, p in inspect.signature(transfer.fn).parameters.items()}
    assert defaults == TransferParams().groups()


def test_the_engine_config_has_no_defaults_of_its_own_for_user_settings():
    user_settings = set(TrainingParams.model_fields) | set(ModelParams.model_fields)
    own = {f.name for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    assert not own & user_settings, f"TrainConfig defines defaults for {sorted(own & user_settings)}"
    assert own == {"max_grad_norm", "eval_batch_size"}  # the engine's own constants


@pytest.mark.parametrize("group", [FinetuneParams, DistillParams])
def test_train_config_carries_every_setting_of_the_group(group):
    changed = {
        "epochs": 7,
        "batch_size": 3,
        "learning_rate": 0.123,
        "weight_decay": 0.2,
        "warmup_ratio": 0.3,
        "patience": 5,
        "grad_accumulation": 2,
        "group_by_length": "on",
        "compile": True,
        "fast_cpu_dropout": False,
        "layer_decay": 0.5,
        "backbone_rate": 0.25,
        "checkpoint_every": 11,
        "checkpoint_seconds": 5.0,
    }
    model = ModelParams(seed=99, device="cpu", precision="bf16")
    config = group(**changed).train_config(model)
    assert {k: getattr(config, k) for k in changed} == {**changed, "group_by_length": True}
    assert (config.seed, config.device, config.precision) == (99, "cpu", "bf16")
    assert set(changed) | {"seed", "device", "precision"} == {
        f.name for f in dataclasses.fields(TrainConfig) if f.default is dataclasses.MISSING
    }


def _commands(typer_app, prefix: str = "") -> dict:
    """Every command of a typer app, sub-apps included: its full name -> the function it runs."""
    commands = {f"{prefix}{c.name or c.callback.__name__}": c.callback for c in typer_app.registered_commands}
    for group in typer_app.registered_groups:
        commands |= _commands(group.typer_instance, f"{prefix}{group.name} ")
    return commands


def _options(command) -> dict:
    """A command's parameters -> their typer OptionInfo / ArgumentInfo."""
    return {name: p.default for name, p in inspect.signature(command).parameters.items()}


COMMANDS = _commands(app)


def test_the_walk_finds_every_command():
    assert {"run", "check", "predict", "monitor", "serve", "explain", "promote", "rollback", "up", "deploy"} <= set(
        COMMANDS
    )
    assert {"zoo list", "zoo install", "zoo verify"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_command_line_states_no_default_of_its_own(name):
    """An option that mirrors a settings field carries that field's default; any other option defaults
    to "not given" (None, False, empty, or required), so the setting's own default applies."""
    from graftline.flows.cli.options import MIRRORS

    for option, info in _options(COMMANDS[name]).items():
        mirrored = getattr(info, MIRRORS, None)
        if mirrored:
            group, field = mirrored
            assert info.default == default_of(group, field), f"{name} --{option}: not {group.__name__}.{field}"
        else:
            assert info.default in (None, False, [], ...), f"{name} --{option} states a default of its own"


def test_the_serving_options_mirror_their_groups():
    """The serving commands' options are the fields of their groups, not look-alikes."""
    from graftline.flows.cli.options import MIRRORS

    expected = {
        "predict": (PredictParams, {"text_column", "encoding", "batch_size", "form", "explain", "experiment"}),
        "monitor": (
            MonitorParams,
            {"input_path", "text_column", "encoding", "alpha", "max_accuracy_drop", "accuracy_estimate", "min_rows"}
            | {"retrain"}
            | {"experiment"},
        ),
        "serve": (ServeParams, {"form", "host", "port"}),
        "explain": (ExplainParams, {"n_steps"}),
        "promote": (PromoteParams, {"to", "version"}),
        "rollback": (RollbackParams, {"alias", "experiment"}),
    }
    for name, (group, fields) in expected.items():
        mirrored = {getattr(i, MIRRORS) for i in _options(COMMANDS[name]).values() if hasattr(i, MIRRORS)}
        assert mirrored == {(group, field) for field in fields}, name


def test_the_flows_of_the_commands_take_the_groups():
    from graftline.flows.operations import promote, rollback
    from graftline.flows.serving import monitor, predict

    for flow, group in ((promote, PromoteParams), (predict, PredictParams), (monitor, MonitorParams)):
        assert inspect.signature(flow.fn).parameters["params"].annotation in (group, group.__name__)
    rollback_flow = {name: p.default for name, p in inspect.signature(rollback.fn).parameters.items()}
    assert {k: rollback_flow[k] for k in RollbackParams.model_fields} == RollbackParams().model_dump()


def test_names_are_defined_once():
    from graftline.tasks.registry.contract import PRODUCTION, STUDENT_SUFFIX

    assert RegistryParams().experiment == PromoteParams().experiment == MonitorParams().experiment == EXPERIMENT
    assert PromoteParams().model_name == RollbackParams().model_name == DEMO_MODEL
    assert TransferParams().for_modality().registry.model_name == DEMO_MODEL  # the text demo's default
    assert MonitorParams().model == ServeParams().model == f"{DEMO_MODEL}{STUDENT_SUFFIX}@{PRODUCTION}"
    literal = re.compile(r"""(["'])(graftline|graftline-demo[^"']*)\1""")
    quoted = {
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "flows").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]
        if path != ROOT / "tasks" / "settings.py" and literal.search(path.read_text())
    }
    # elsewhere "graftline" names other things: the service user, Prefect tags, a data source, the cache folder
    others = {"flows/access.py", "flows/serving.py", "flows/deploy.py", "tasks/data/validate.py"}
    assert quoted <= others | {"tasks/environment.py"}, quoted


def test_the_monitor_deployment_retrains_and_the_command_does_only_when_asked():
    from graftline.flows.deploy import build
    from graftline.flows.servers import DEPLOYMENTS

    deployments = build()
    assert tuple(d.name for d in deployments) == DEPLOYMENTS  # what `up` checks are still registered
    [monitor] = [d for d in deployments if d.name == "monitor"]
    assert monitor.parameters["params"]["retrain"] is True
    assert MonitorParams().retrain is False and _options(COMMANDS["monitor"])["retrain"].default is False


def test_a_step_function_called_with_defaults_trains_what_the_lifecycle_trains():
    """The step functions take the groups themselves: their defaults are the flow's by construction."""
    from graftline.tasks.train.distill import distill
    from graftline.tasks.train.finetune import finetune

    for function, group in ((finetune, FinetuneParams), (distill, DistillParams)):
        parameters = inspect.signature(function).parameters
        assert parameters["params"].annotation in (group, group.__name__)
        assert parameters["model"].annotation in (ModelParams, "ModelParams")


def test_the_stage_choices_of_the_forms_are_the_contracts_stages():
    from typing import get_args, get_type_hints

    from graftline.flows.operations import rollback
    from graftline.tasks.registry import contract

    assert set(get_args(PromoteParams.model_fields["to"].annotation)) == set(contract.PROMOTABLE)
    assert set(get_args(RegistryParams.model_fields["promote_to"].annotation)) == {"none", *contract.PROMOTABLE}
    assert set(get_args(get_type_hints(rollback.fn)["alias"])) == set(contract.PROMOTABLE)


# -- image defaults, visible wherever the defaults are shown --------------------------------------


def test_every_image_default_is_noted_in_the_form():
    from graftline.tasks.settings import image_notes

    groups = TransferParams().groups()
    for (group, field), note in image_notes().items():
        described = type(groups[group]).model_json_schema()["properties"][field]["description"]
        assert described.endswith(f"; {note}."), (group, field, described)
    assert "image data" not in TrainingParams.model_fields["epochs"].description  # the groups' own copies only


def test_every_image_default_is_noted_in_the_parameter_file():
    from graftline.tasks.settings import image_notes

    comments, group = {}, None
    for line in (ROOT / "deployments" / "transfer.params.yaml").read_text().splitlines():
        if re.match(r"^\w+:", line):
            group = line.split(":")[0]
        elif match := re.match(r"^  (\w+):[^#]*#?(.*)$", line):
            comments[group, match.group(1)] = match.group(2)
    notes = image_notes()
    assert {key: note for key, note in notes.items() if note not in comments[key]} == {}
    noted = {key for key, comment in comments.items() if "image data:" in comment or "image demo:" in comment}
    assert noted == set(notes)  # nothing noted that image data does not change


def test_every_image_default_is_in_the_docs_table():
    from graftline.tasks.settings import image_notes

    table = (ROOT / "docs" / "images.md").read_text()
    for (group, field), note in image_notes().items():
        value = re.escape(note.split(": ", 1)[1])
        row = rf"\| `{group}\.{field}` \|[^\n]*\| `?{value}`?( \([^|]*\))? \|"  # the image column, a remark allowed
        assert re.search(row, table), (group, field)


# -- the commands' defaults reach the task functions unchanged -------------------------------------


def _invoke(*args: str) -> str:
    from typer.testing import CliRunner

    done = CliRunner().invoke(app, list(args))
    assert done.exit_code in (0, 1), done.output
    return done.output


def test_predict_and_monitor_hand_the_flows_their_groups_defaults(monkeypatch, tmp_path):
    import numpy as np

    from graftline.flows import serving
    from graftline.tasks.serve.monitor import MonitorOutcome
    from graftline.tasks.serve.predict import PredictionRun, Predictions

    texts = tmp_path / "new.csv"
    texts.write_text("text\nhello\n")
    received = {}

    def predicted(params):
        received["predict"] = params
        return PredictionRun(Predictions(1, 1.0, {"a": 1}, np.ones(1)), "1", "onnx", "run")

    def monitored(params):
        received["monitor"] = params
        return MonitorOutcome("waiting", 0)

    monkeypatch.setattr(serving, "predict", predicted)
    monkeypatch.setattr(serving, "monitor", monitored)
    # no store here: the registry lookups before the flows (tests/test_serving.py covers them) pass
    monkeypatch.setattr("graftline.flows.cli.serving.check_before_starting", lambda *args: None)
    output = str((tmp_path / "out.csv").resolve())
    _invoke("predict", "m@production", "--input", str(texts), "--output", output)
    _invoke("monitor", "m@production", "--input", str(texts))
    assert received["predict"] == PredictParams(model="m@production", input_path=str(texts), output_path=output)
    assert received["monitor"] == MonitorParams(model="m@production", input_path=str(texts))


def test_promote_and_rollback_hand_the_flows_their_groups_defaults(monkeypatch):
    from graftline.flows import operations
    from graftline.tasks.registry.promotion import Outcome

    received = {}

    def promoted(params, triggered_by):
        received["promote"] = params
        return Outcome(params.model_name, params.to, "1", None, moved=False, action="promote")

    def rolled_back(model_name, alias, experiment, triggered_by):
        received["rollback"] = RollbackParams(model_name=model_name, alias=alias, experiment=experiment)
        return Outcome(model_name, alias, "1", "2", moved=True, action="rollback")

    monkeypatch.setattr(operations, "promote", promoted)
    monkeypatch.setattr(operations, "rollback", rolled_back)
    # no store here: the registry lookups before the flows (tests/test_serving.py covers them) pass
    from graftline.tasks.registry import stages, tracking

    monkeypatch.setattr(tracking, "registry_client", lambda: None)
    monkeypatch.setattr(stages, "promotion_target", lambda client, name, alias, version: "1")
    monkeypatch.setattr(stages, "rollback_target", lambda client, name, alias: ("2", "1"))
    _invoke("promote", "m")
    _invoke("rollback", "m")
    assert received == {"promote": PromoteParams(model_name="m"), "rollback": RollbackParams(model_name="m")}


def test_explain_hands_integrated_gradients_the_groups_steps(monkeypatch):
    """`graftline explain`, `predict --explain` and the lifecycle's explain step share one number of steps."""
    from types import SimpleNamespace

    from graftline.flows.serving import _explainer
    from graftline.tasks.evaluate import explain
    from graftline.tasks.serve import predict

    steps = []

    def explained(model, tokenizer, texts, max_length, n_steps=explain.DEFAULTS.n_steps, **kwargs):
        steps.append(n_steps)
        return [SimpleNamespace(text=t, label="x", probability=1.0, words=list, top_words=lambda n: []) for t in texts]

    version = SimpleNamespace(name="m", version="1", max_length=8, classifier=lambda: None, tokenizer=lambda: None)
    monkeypatch.setattr(explain, "explain", explained)
    monkeypatch.setattr(predict, "fetch_version", lambda client, reference: version)
    _invoke("explain", "m@production", "why")
    _explainer(version)(["why"])
    assert steps == [ExplainParams().n_steps] * 2
    assert inspect.signature(explain.explain).parameters["n_steps"].default == ExplainParams().n_steps


def test_the_monitor_judges_by_the_groups_thresholds():
    """compare() takes the settings group itself: alpha split over the detectors, the estimate, the drop."""
    import numpy as np

    from graftline.tasks.serve.monitor import DETECTORS, Profile, Reference, compare

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1, 1], 60)
    profile = Profile(probabilities, rng.normal(size=(60, 4)))
    report = compare(Reference(profile, probabilities.argmax(-1)), profile, ["a", "b"], MonitorParams())
    assert report.settings == MonitorParams()
    assert {d.alpha for d in report.detections.values()} == {MonitorParams().alpha / len(DETECTORS)}


def test_the_predict_task_functions_default_to_the_group():
    from graftline.tasks.serve.predict import load_scorer, predict_frame, read_input

    defaults = {
        name: p.default
        for function in (load_scorer, predict_frame, read_input)
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty and name in PredictParams.model_fields
    }
    shared = ("form", "batch_size", "text_column", "encoding")
    assert defaults == {name: default_of(PredictParams, name) for name in shared}


@pytest.mark.parametrize(
    "train_path, name",
    [
        ("tickets.csv", "tickets"),
        ("s3://bucket/exports/Support Tickets 2026.parquet", "Support-Tickets-2026"),
        ("reviews/books/train.csv.gz", "books-train"),
        ("hf://datasets/stanfordnlp/imdb@main?split=test", "imdb"),
        ("./saved_dataset/", "saved_dataset"),
        ("C:\\data\\emails.jsonl", "emails"),
    ],
)
def test_a_run_without_a_model_name_is_named_after_its_data(train_path, name):
    from graftline.tasks.settings import DataParams, model_name_of

    assert model_name_of(train_path) == name
    assert re.match(settings.MODEL_NAME, name)
    given = TransferParams(data=DataParams(train_path=train_path, modality="text"))
    assert given.for_modality().registry.model_name == name
    named = TransferParams(data=DataParams(train_path=train_path, modality="text"), registry={"model_name": "mine"})
    assert named.for_modality().registry.model_name == "mine"  # a name given is kept


def test_the_image_demo_is_named_apart_from_the_text_demo():
    from graftline.tasks.settings import DataParams

    image = TransferParams(data=DataParams(modality="image")).for_modality()
    assert image.registry.model_name == settings.IMAGE_DEMO_MODEL != DEMO_MODEL
