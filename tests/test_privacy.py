"""Differentially private fine-tuning (Opacus) on the tiny model, the accountant, and the privacy gate."""

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from graftline.flows.params import TransferParams
from graftline.tasks.data.splits import Split, Splits
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


def private(tiny_backbone, **privacy) -> FinetuneParams:
    settings = {"enabled": True, "epsilon": 8.0, "logical_batch_size": 64, **privacy}
    return FinetuneParams(backbone=str(tiny_backbone), epochs=1, batch_size=16, learning_rate=1e-2, privacy=settings)


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


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"finetune": {"strategy": "lora", "privacy": {"enabled": True}}}, "not with strategy lora"),
        ({"finetune": {"processes": 2, "privacy": {"enabled": True}}}, "not with processes > 1"),
        ({"finetune": {"privacy": {"enabled": True, "epsilon": 0}}}, "greater than 0"),
        ({"finetune": {"privacy": {"enabled": True, "delta": 1.5}}}, "less than 1"),
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
