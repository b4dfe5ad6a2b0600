"""Fine-tuning on a tiny random BERT: it learns, strategies freeze what they should, files are safe."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graftline.tasks.engine import backbones
from graftline.tasks.engine.training import TrainingIO, predict_logits
from graftline.tasks.errors import BackboneError
from graftline.tasks.settings import FinetuneParams
from graftline.tasks.train.finetune import apply_strategy, encode_split, finetune
from tests.conftest import short_texts


def accuracy(model_dir, split):
    model = backbones.load_classifier(str(model_dir))
    tokenizer = backbones.load_tokenizer(str(model_dir))
    encoded = encode_split(tokenizer, split, backbones.labels_of(model), 32)
    return float((predict_logits(model, encoded, 64, tokenizer.pad_token_id).argmax(-1) == encoded.labels).mean())


def test_full_finetuning_learns_a_separable_task(tiny_backbone, toy_splits, tmp_path):
    config = FinetuneParams(backbone=str(tiny_backbone), epochs=6, batch_size=8, learning_rate=3e-3, patience=6)
    epochs = []
    result = finetune(toy_splits, config, short_texts(), tmp_path / "model", TrainingIO(on_epoch=epochs.append))
    assert [e.epoch for e in epochs] == list(range(1, 7))
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert result.training.best_val_macro_f1 >= 0.9
    assert accuracy(result.model_dir, toy_splits.test) >= 0.9
    assert result.trainable_parameters == result.parameters


def test_saved_model_is_safetensors_with_label_names(tiny_backbone, toy_splits, tmp_path):
    config = FinetuneParams(backbone=str(tiny_backbone), epochs=1, learning_rate=5e-5)
    result = finetune(toy_splits, config, short_texts(), tmp_path / "model")
    files = {p.name for p in result.model_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["id2label"] == {"0": "bad", "1": "good"}


def test_linear_probe_leaves_the_encoder_untouched(tiny_backbone, toy_splits, tmp_path):
    before = backbones.load_classifier(str(tiny_backbone), ["bad", "good"])
    config = FinetuneParams(backbone=str(tiny_backbone), strategy="linear-probe", epochs=2, learning_rate=1e-2)
    result = finetune(toy_splits, config, short_texts(), tmp_path / "probe")
    after = backbones.load_classifier(str(result.model_dir))
    old, new = before.state_dict(), after.state_dict()
    encoder = [k for k in old if k.startswith("bert.") and ".pooler." not in k]
    assert encoder and all(torch.equal(old[k], new[k]) for k in encoder)
    assert not torch.equal(old["classifier.weight"], new["classifier.weight"])
    assert result.trainable_parameters < result.parameters / 2


def test_apply_strategy_rejects_unknown(tiny_backbone):
    with pytest.raises(ValueError, match="unknown strategy"):
        apply_strategy(
            backbones.load_classifier(str(tiny_backbone), ["a", "b"]), FinetuneParams.model_construct(strategy="half")
        )


def test_early_stopping_restores_the_best_epoch(tiny_backbone, toy_splits, tmp_path):
    # A learning rate this high diverges after the first epochs; patience 1 stops at the first miss.
    config = FinetuneParams(backbone=str(tiny_backbone), epochs=8, learning_rate=3e-3, patience=1, warmup_ratio=0)
    history = []
    result = finetune(toy_splits, config, short_texts(), tmp_path / "m", TrainingIO(on_epoch=history.append))
    best = max(history, key=lambda r: (r.val_macro_f1, -r.val_loss))  # a tie goes to the lower loss
    assert result.training.best_epoch == best.epoch
    if result.training.stopped_early:
        assert history[-1].val_macro_f1 <= best.val_macro_f1


def test_unknown_backbone_is_one_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone 'no-such-org/no-such-model'"):
        backbones.load_config("no-such-org/no-such-model")
    with pytest.raises(BackboneError, match="no such folder"):
        backbones.load_config(str(tmp_path / "missing"))


def test_corrupt_weights_are_refused(tiny_backbone, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_backbone, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneError, match="cannot load weights"):
        backbones.load_classifier(str(broken), ["a", "b"])


def test_pickled_weights_are_never_loaded(tiny_backbone, tmp_path):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_backbone, pickled)
    model = backbones.load_classifier(str(tiny_backbone), ["a", "b"])
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(BackboneError, match="cannot load weights"):
        backbones.load_classifier(str(pickled), ["a", "b"])


def test_same_seed_gives_identical_weights_whatever_ran_before(tiny_backbone, toy_splits, tmp_path):
    # The new head is initialised from the run's seed, not from whatever the process's RNG was left at.
    from safetensors.torch import load_file

    config = FinetuneParams(backbone=str(tiny_backbone), epochs=1, batch_size=8, learning_rate=5e-5)
    weights = []
    for i, rng_state in enumerate((1, 999)):
        torch.manual_seed(rng_state)
        torch.rand(7)
        result = finetune(toy_splits, config, short_texts(), tmp_path / f"model{i}")
        weights.append(load_file(result.model_dir / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# -- the dispatcher: which recipe trains which settings (tasks/train/finetune.py's table) -------------


def chosen(backbone, adapt=None, **settings):
    """The recipe the table picks for these settings (nothing is loaded or trained)."""
    from graftline.tasks.settings import AdaptParams
    from graftline.tasks.train.finetune import RECIPES
    from graftline.tasks.train.recipes.base import Job

    job = Job(toy(), FinetuneParams(backbone=str(backbone), **settings), short_texts(), Path("unused"))
    return RECIPES.choose(replace(job, adapt=adapt or AdaptParams()))


def toy():
    from graftline.tasks.data.splits import Split, Splits
    from tests.conftest import toy_frame

    names = ("train", "validation", "test")
    return Splits(*(Split(name, toy_frame(4, seed), "toy") for seed, name in enumerate(names)))


def test_the_settings_choose_the_recipe(tiny_backbone):
    from graftline.tasks.settings import AdaptParams
    from graftline.tasks.train.recipes.adaptation import Adaptation
    from graftline.tasks.train.recipes.distributed import Distributed
    from graftline.tasks.train.recipes.lp_ft import ProbeThenTune
    from graftline.tasks.train.recipes.private import Private
    from graftline.tasks.train.recipes.search import Search
    from graftline.tasks.train.recipes.supervised import Supervised

    for strategy in ("full", "linear-probe", "lora"):
        assert type(chosen(tiny_backbone, strategy=strategy)) is Supervised  # the strategy only wraps the model
    assert type(chosen(tiny_backbone, strategy="lp-ft")) is ProbeThenTune
    assert type(chosen(tiny_backbone, privacy={"enabled": True})) is Private
    assert type(chosen(tiny_backbone, processes=2)) is Distributed
    assert type(chosen(tiny_backbone, strategy="lp-ft", search={"enabled": True})) is Search
    # adaptation trains its source model by the recipe that would train it without adaptation
    adapted = chosen(tiny_backbone, AdaptParams(method="mlm"), strategy="lp-ft")
    assert type(adapted) is Adaptation and type(adapted.source) is ProbeThenTune
    assert type(chosen(tiny_backbone, AdaptParams(method="self-training"), strategy="lora").source) is Supervised


@pytest.mark.parametrize(
    ("settings", "method", "message"),
    [
        ({"processes": 2}, "mlm", "adapt.method 'mlm' trains in one process; set finetune.processes=1"),
        (
            {"privacy": {"enabled": True}},
            "self-training",
            "adapt.method 'self-training' is not available with finetune",
        ),
    ],
)
def test_a_combination_no_recipe_trains_is_refused_in_one_line_before_any_work(
    tiny_backbone, tmp_path, settings, method, message
):
    from graftline.tasks.errors import GraftlineError
    from graftline.tasks.settings import AdaptParams

    params = FinetuneParams(backbone=str(tiny_backbone), **settings)
    with pytest.raises(GraftlineError, match=message):
        finetune(toy(), params, short_texts(), tmp_path / "m", adapt=AdaptParams(method=method))
    assert not (tmp_path / "m").exists()


def test_a_new_method_is_one_recipe_and_one_table_entry(tiny_backbone, tmp_path):
    from graftline.tasks.train.finetune import RECIPES
    from graftline.tasks.train.recipes.base import Job, Recipe, Recipes
    from graftline.tasks.train.recipes.supervised import Supervised

    class Frozen(Recipe):
        """A stand-in method: picked for linear probes only, it trains nothing and reports so."""

        @classmethod
        def applies(cls, job):
            return job.params.strategy == "linear-probe"

        def run(self):
            return "frozen"

    table = Recipes((Frozen, *RECIPES.table))
    probe = Job(toy(), FinetuneParams(backbone=str(tiny_backbone), strategy="linear-probe"), short_texts(), tmp_path)
    assert table(probe) == "frozen"
    assert type(table.choose(replace(probe, params=FinetuneParams(backbone=str(tiny_backbone))))) is Supervised
