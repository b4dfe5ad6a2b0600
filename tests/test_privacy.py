"""Differentially private fine-tuning (Opacus) on the tiny model, the accountant, and the privacy gate."""

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from graftline.flows.params import TransferParams
from graftline.tasks.data.splits import Split, Splits
from graftline.tasks.engine import private as private_engine
from graftline.tasks.registry import contract
from graftline.tasks.registry.promotion import privacy_check
from graftline.tasks.settings import FinetuneParams, PrivacyParams
from graftline.tasks.train.finetune import finetune
from tests.conftest import short_texts, toy_frame


@pytest.fixture(scope="module")
def rows_64():
    return Splits(
        Split("train", toy_frame(32, 0), "toy"),
        Split("validation", toy_frame(8, 1), "toy"),
        Split("test", toy_frame(8, 2), "toy"),
    )


def private(tiny_backbone, strategy: str = "full", **privacy) -> FinetuneParams:
    settings = {
        "enabled": True,
        "epsilon": 8.0,
        "logical_batch_size": 64,
        "epochs": 1,
        "learning_rate": 1e-2,
        **privacy,
    }
    return FinetuneParams(backbone=str(tiny_backbone), strategy=strategy, batch_size=16, privacy=settings)


def test_the_default_private_settings_are_the_large_batch_recipe_and_one_step_spends_within_the_budget(
    tiny_backbone, rows_64, tmp_path
):
    defaults = PrivacyParams()
    assert (defaults.logical_batch_size, defaults.max_grad_norm) == (1024, 0.1)
    assert defaults.recipe("full") == (5e-4, 3) and defaults.recipe("linear-probe") == (5e-3, 10)
    assert PrivacyParams(learning_rate=1e-3, epochs=2).recipe("linear-probe") == (1e-3, 2)  # a user's own
    params = FinetuneParams(backbone=str(tiny_backbone), epochs=4, privacy={"enabled": True, "epochs": 1})
    result = finetune(rows_64, params, short_texts(), tmp_path / "dp")
    spent = result.privacy
    # 1 024 rows a step on average from 64: every row, once; privacy.epochs replaced finetune.epochs
    assert spent.steps == 1 and len(result.training.history) == 1
    assert spent.max_grad_norm == 0.1 and 0 < spent.epsilon <= 8.0 * 1.001


def test_one_private_step_on_64_rows_spends_within_the_budget_and_keeps_the_embeddings(
    tiny_backbone, rows_64, tmp_path
):
    result = finetune(rows_64, private(tiny_backbone), short_texts(), tmp_path / "dp")
    spent = result.privacy
    assert spent.steps == 1 and spent.sample_rate == 1.0  # the whole set, once: one private step
    assert spent.delta == 1 / 64  # default: 1 / training rows
    assert 0 < spent.epsilon <= 8.0 * 1.001 and spent.noise_multiplier > 0
    assert result.metrics()["privacy_epsilon"] == spent.epsilon
    before, after = load_file(tiny_backbone / "model.safetensors"), load_file(tmp_path / "dp" / "model.safetensors")
    embedding = next(k for k in after if k.endswith("word_embeddings.weight"))
    assert torch.equal(after[embedding], before[embedding.removeprefix("bert.")])  # frozen
    layer = next(k for k in after if k.endswith("layer.0.output.dense.weight"))
    assert not torch.equal(after[layer], before[layer.removeprefix("bert.")])  # trained, noise and all
    assert not [k for k in after if "_module" in k or "grad_sample" in k]  # a plain checkpoint, no Opacus wrapper
    logged = result.logged()  # what the finetune step logs: the guarantee as registry tags, the spending as a line
    assert (
        logged.tags[contract.PRIVACY_EPSILON]
        == f"{spent.epsilon:.4g}"
        == result.privacy_tags()[contract.PRIVACY_EPSILON]
    )
    assert logged.lines[-1].startswith(f"differential privacy: epsilon {spent.epsilon:.3g} spent (budget 8)")


def test_a_smaller_budget_means_more_noise(tiny_backbone, rows_64, tmp_path):
    loose = finetune(rows_64, private(tiny_backbone, epsilon=8.0, logical_batch_size=16), short_texts(), tmp_path / "a")
    tight = finetune(rows_64, private(tiny_backbone, epsilon=1.0, logical_batch_size=16), short_texts(), tmp_path / "b")
    assert loose.privacy.steps == tight.privacy.steps == 4  # sample rate 1/4: four Poisson samples an epoch
    assert tight.privacy.noise_multiplier > 2 * loose.privacy.noise_multiplier
    assert tight.privacy.epsilon <= 1.0 * 1.001 < loose.privacy.epsilon <= 8.0 * 1.001


def test_empty_poisson_samples_are_noise_only_steps(tiny_backbone, rows_64, tmp_path):
    # two rows a step on average out of 64: about one sample in eight is empty
    result = finetune(rows_64, private(tiny_backbone, logical_batch_size=2), short_texts(), tmp_path / "dp")
    assert result.privacy.steps == 32 and result.privacy.sample_rate == 1 / 32  # every sample, empty or not
    assert result.privacy.epsilon <= 8.0 * 1.001


def test_a_private_linear_probe_on_kept_features_trains_what_the_probe_through_the_model_trains(
    still_backbone, rows_64, tmp_path, monkeypatch
):
    """The fast probe reads the backbone once and steps on the kept first-token states; without
    dropout (still_backbone) every step is the one the probe through the whole model takes."""
    passes = []
    first_token_states = private_engine.first_token_states
    monkeypatch.setattr(
        private_engine,
        "first_token_states",
        lambda base, split, *a: passes.append(len(split)) or first_token_states(base, split, *a),
    )
    settings = {"logical_batch_size": 16, "epochs": 2}
    fast = finetune(rows_64, private(still_backbone, "linear-probe", **settings), short_texts(), tmp_path / "fast")
    assert passes == [64, 16]  # the training and validation rows, read once for two epochs of eight steps
    assert fast.privacy.steps == 8 and fast.privacy.epsilon <= 8.0 * 1.001
    monkeypatch.setattr(private_engine.FrozenFeatures, "of", classmethod(lambda cls, *a: None))
    whole = finetune(rows_64, private(still_backbone, "linear-probe", **settings), short_texts(), tmp_path / "whole")
    assert passes == [64, 16]
    before, a, b = (load_file(folder / "model.safetensors") for folder in (still_backbone, tmp_path / "fast",
                                                                             tmp_path / "whole"))  # fmt: skip
    moved = [
        k for k in a if k.removeprefix("bert.") in before and not torch.equal(a[k], before[k.removeprefix("bert.")])
    ]
    assert moved and all(".pooler." in k for k in moved)  # the pooler learned; the backbone below it did not move
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert fast.training.history[-1].val_accuracy == whole.training.history[-1].val_accuracy


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"finetune": {"strategy": "lora", "privacy": {"enabled": True}}}, "not with strategy lora"),
        ({"finetune": {"processes": 2, "privacy": {"enabled": True}}}, "not with processes > 1"),
        ({"finetune": {"privacy": {"enabled": True, "epsilon": 0}}}, "greater than 0"),
        ({"finetune": {"privacy": {"enabled": True, "delta": 1.5}}}, "less than 1"),
        ({"finetune": {"privacy": {"enabled": True, "learning_rate": 0}}}, "greater than 0"),
        ({"finetune": {"privacy": {"enabled": True, "epochs": 0}}}, "greater than or equal to 1"),
        ({"finetune": {"privacy": {"enabled": True, "max_grad_norm": -1}}}, "greater than 0"),
        (
            {
                "finetune": {"privacy": {"enabled": True}},
                "adapt": {"method": "mlm"},
                "data": {"target_sets": {"t": "x.csv"}},
            },
            "outside the privacy accounting",
        ),
    ],
)
def test_settings_private_training_cannot_honour_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        TransferParams.model_validate(settings)
    assert PrivacyParams().enabled is False  # off unless asked for


def test_the_privacy_gate_refuses_larger_budgets_and_versions_without_one():
    assert privacy_check({"privacy_epsilon": "2.5"}, 3.0).passed
    refused = privacy_check({"privacy_epsilon": "7.9"}, 3.0)
    assert not refused.passed and "epsilon 7.9 > 3.0" in refused.detail
    untracked = privacy_check({}, 3.0)
    assert not untracked.passed and "without differential privacy" in untracked.detail
