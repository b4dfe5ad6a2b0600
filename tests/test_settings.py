"""One definition per setting: every default lives in tasks/settings.py, and nothing else that
states a default may disagree with it (the flow's form, the documented parameter file, the
engine's config, the command line's options)."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from graftline.flows.params import PromoteParams, TransferParams
from graftline.tasks.engine.training import TrainConfig
from graftline.tasks.settings import DistillParams, FinetuneParams, ModelParams, RegistryParams, TrainingParams

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


def test_the_command_line_states_no_default_of_its_own():
    """Options that mirror a parameter carry its default (or none: then the parameter's applies)."""
    from graftline.flows import deploy
    from graftline.flows.cli import lifecycle, platform, registry
    from graftline.flows.operations import rollback

    def defaults(function):
        return {name: p.default.default for name, p in inspect.signature(function).parameters.items()}

    assert all(value in (None, False, []) for value in defaults(lifecycle.run).values())
    assert defaults(registry.promote)["to"] == PromoteParams().to
    assert defaults(registry.rollback)["experiment"] == RegistryParams().experiment
    rollback_flow = {name: p.default for name, p in inspect.signature(rollback.fn).parameters.items()}
    assert (rollback_flow["model_name"], rollback_flow["experiment"]) == (
        RegistryParams().model_name,
        RegistryParams().experiment,
    )
    assert (defaults(platform.deploy)["cron"], defaults(platform.deploy)["pool"]) == (
        deploy.RETRAIN_CRON,
        deploy.WORK_POOL,
    )
    assert defaults(platform.up)["work_pool"] == deploy.WORK_POOL


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
