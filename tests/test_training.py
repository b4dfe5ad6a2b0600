"""The training engine: length-grouped batches, the tokenisation cache, gradient accumulation,
layer-wise learning rates, LoRA, and resuming from a checkpoint to the same result."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from graftline.tasks.engine import backbones
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import TrainConfig, batch_plan, encode, make_optimizer, padding_share, train
from graftline.tasks.settings import FinetuneParams, ModelParams
from graftline.tasks.train.finetune import encode_split, finetune
from tests.conftest import short_texts


def engine(**settings) -> TrainConfig:
    """The training loop's configuration as the lifecycle builds it, `settings` changed."""
    return FinetuneParams(**{"epochs": 3, "learning_rate": 5e-5, "checkpoint_every": 0, **settings}).train_config(
        ModelParams()
    )


def test_length_grouped_plan_covers_every_row_once_and_pads_less():
    lengths = np.random.default_rng(0).integers(4, 120, size=1000)
    grouped = batch_plan(lengths, 32, seed=13, epoch=1, group_by_length=True)
    random = batch_plan(lengths, 32, seed=13, epoch=1, group_by_length=False)
    for plan in (grouped, random):
        assert sorted(np.concatenate(plan).tolist()) == list(range(1000))
    assert padding_share(lengths, grouped) < 0.1 < 0.4 < padding_share(lengths, random)
    # a pure function of (seed, epoch): what a resumed run relies on
    assert all(np.array_equal(a, b) for a, b in zip(grouped, batch_plan(lengths, 32, 13, 1, True), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(grouped, batch_plan(lengths, 32, 13, 2, True), strict=True))


def test_tokenisation_is_cached_by_texts_tokenizer_and_length(tiny_backbone, tmp_path):
    tokenizer = backbones.load_tokenizer(str(tiny_backbone))
    texts = ["the screen cracked", "great battery life, love it", "late delivery"]
    first = encode(tokenizer, texts, [0, 1, 0], 16, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_tokenizing(self, *args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    # the same class and tokenizer state, but calling it is an error
    stand_in = type(
        type(tokenizer).__name__, (), {"backend_tokenizer": tokenizer.backend_tokenizer, "__call__": no_tokenizing}
    )
    again = encode(stand_in(), texts, [0, 1, 0], 16, cache_dir=tmp_path)
    assert [row.tolist() for row in again.ids] == [row.tolist() for row in first.ids]
    encode(tokenizer, texts, [0, 1, 0], 4, cache_dir=tmp_path)  # another truncation length: a new entry
    encode(tokenizer, texts[:2], [0, 1], 16, cache_dir=tmp_path)  # other texts: a new entry
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_tokenisation_in_chunks_gives_the_ids_of_one_call(tiny_backbone, monkeypatch):
    """Large sets are tokenised a chunk at a time (bounded memory): the ids are those of one call."""
    from graftline.tasks.engine import training

    tokenizer = backbones.load_tokenizer(str(tiny_backbone))
    texts = [f"review {i}: " + "good " * (i % 7) for i in range(10)] + [""]
    whole = tokenizer(texts, truncation=True, max_length=8)["input_ids"]
    monkeypatch.setattr(training, "TOKENIZE_CHUNK", 3)
    chunked = encode(tokenizer, texts, list(range(11)), 8)
    assert [row.tolist() for row in chunked.ids] == whole and chunked.labels.tolist() == list(range(11))
    assert len(encode(tokenizer, [], [], 8)) == 0


def test_gradient_accumulation_matches_one_large_batch(still_backbone, toy_splits):
    """Two micro-batches of 4 rows per step against one batch of 8: without length grouping both
    plans cut the same permutation, so every step sees the same rows and must reach the same weights."""

    def trained(batch_size: int, accumulation: int) -> dict:
        config = engine(
            epochs=1, batch_size=batch_size, grad_accumulation=accumulation, learning_rate=1e-3, group_by_length="off"
        )
        model, train_split, val_split, pad = _setup(still_backbone, toy_splits, config.seed)
        train(model, train_split, val_split, config, pad)
        return {k: v.clone() for k, v in model.state_dict().items()}

    large, accumulated = trained(8, 1), trained(4, 2)
    assert all(torch.allclose(large[k], accumulated[k], atol=1e-6) for k in large)
    untrained = _setup(still_backbone, toy_splits, 13)[0].state_dict()["classifier.weight"]
    assert not torch.allclose(large["classifier.weight"], untrained, atol=1e-4)


def test_layer_decay_gives_lower_layers_smaller_learning_rates(tiny_backbone):
    model = backbones.load_classifier(str(tiny_backbone), ["bad", "good"])
    optimizer = make_optimizer(model, engine(learning_rate=1e-3, layer_decay=0.5), torch.device("cpu"))
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1e-3)  # depth L + 1 = 3
    assert lr_of[id(named["bert.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(5e-4)
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(2.5e-4)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1.25e-4)


def test_resume_after_a_crash_mid_epoch_matches_an_uninterrupted_run(tiny_backbone, toy_splits, tmp_path):
    """torchtune's check: train two epochs; separately train, crash in the second epoch, resume from
    the checkpoint; the loss trajectories and final weights are identical (dropout included: the
    RNG states travel with the checkpoint)."""
    config = engine(epochs=2, batch_size=8, learning_rate=3e-3, checkpoint_every=3, checkpoint_seconds=0, patience=5)
    model, train_split, val_split, pad = _setup(tiny_backbone, toy_splits, config.seed)
    heard = []
    straight = train(model, train_split, val_split, config, pad, on_progress=heard.append, progress_every=4)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    steps_per_epoch = len(straight.step_losses) // 2
    # progress: every step heard, the losses read every 4th step and at each epoch's end only
    assert [(p.epoch, p.step) for p in heard] == [(e, s) for e in (1, 2) for s in range(1, steps_per_epoch + 1)]
    read_at = [(p.epoch - 1) * steps_per_epoch + p.step for p in heard if p.losses]
    assert read_at == sorted({*range(4, 2 * steps_per_epoch + 1, 4), steps_per_epoch, 2 * steps_per_epoch})
    assert [loss for p in heard for loss in p.losses] == straight.step_losses

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crashing_loss(outputs, batch):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 5:  # in the middle of epoch 2, two steps after a checkpoint
            raise Crash()
        return torch.nn.functional.cross_entropy(outputs.logits.float(), batch["labels"])

    folder = tmp_path / "checkpoints"
    model, train_split, val_split, pad = _setup(tiny_backbone, toy_splits, config.seed)
    with pytest.raises(Crash):
        train(model, train_split, val_split, config, pad, crashing_loss, checkpoint_dir=folder)
    assert Checkpoints(folder).latest().name == f"step-{12:08d}"  # every 3 steps; the crash came at step 14

    model, train_split, val_split, pad = _setup(tiny_backbone, toy_splits, seed=999)  # a fresh process would differ
    heard = []
    resumed = train(model, train_split, val_split, config, pad, checkpoint_dir=folder, on_progress=heard.append)
    assert resumed.resumed_from_step == 12
    assert resumed.step_losses == straight.step_losses
    # a resumed loop hears from its first new step, and its first losses include the restored ones
    assert heard[0].step == 12 - steps_per_epoch + 1 and heard[0].steps_done_before == 12 - steps_per_epoch
    assert [loss for p in heard for loss in p.losses] == straight.step_losses
    assert [r.val_macro_f1 for r in resumed.history] == [r.val_macro_f1 for r in straight.history]
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
    assert Checkpoints(folder).latest().name == f"step-{2 * steps_per_epoch:08d}"  # the last epoch's end

    # a due checkpoint is skipped while the newest one is younger than checkpoint_seconds
    quiet = tmp_path / "quiet"
    model, train_split, val_split, pad = _setup(tiny_backbone, toy_splits, config.seed)
    train(model, train_split, val_split, replace(config, checkpoint_seconds=3600), pad, checkpoint_dir=quiet)
    assert Checkpoints(quiet).latest() is None


def test_lora_trains_adapters_only_and_saves_merged_plain_weights(tiny_backbone, toy_splits, tmp_path):
    config = FinetuneParams(backbone=str(tiny_backbone), strategy="lora", epochs=2, batch_size=8, learning_rate=5e-3)
    result = finetune(toy_splits, config, short_texts(), tmp_path / "lora")
    assert result.trainable_parameters < result.parameters / 2
    saved = backbones.load_classifier(str(result.model_dir))
    keys = saved.state_dict().keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)  # merged: an ordinary checkpoint
    base = backbones.load_classifier(str(tiny_backbone), ["bad", "good"])
    query = "bert.encoder.layer.0.attention.self.query.weight"
    key = "bert.encoder.layer.0.attention.self.key.weight"
    assert not torch.equal(saved.state_dict()[query], base.state_dict()[query])  # adapters merged in
    assert torch.equal(saved.state_dict()[key], base.state_dict()[key])  # untouched by LoRA


def _setup(backbone, splits, seed: int):
    from graftline.tasks.engine.training import seed_everything

    tokenizer = backbones.load_tokenizer(str(backbone))
    seed_everything(seed)
    model = backbones.load_classifier(str(backbone), splits.labels)
    return (
        model,
        encode_split(tokenizer, splits.train, splits.labels, 32),
        encode_split(tokenizer, splits.validation, splits.labels, 32),
        tokenizer.pad_token_id,
    )


def test_an_epoch_tying_the_best_macro_f1_with_a_lower_validation_loss_is_the_better_one(
    tiny_backbone, toy_splits, monkeypatch
):
    """A small validation set reaches its macro-F1 ceiling early; the loss then decides (and patience
    counts from the last epoch that was better by it)."""
    from graftline.tasks.engine import training

    scores = iter([(1.0, 1.0, 0.50), (1.0, 1.0, 0.30), (1.0, 1.0, 0.40), (1.0, 1.0, 0.35), (0.9, 0.9, 0.1)])
    monkeypatch.setattr(training, "_score", lambda *args: next(scores))  # scripted validation: the rule under test
    model, train_split, val_split, pad = _setup(tiny_backbone, toy_splits, 13)
    result = train(model, train_split, val_split, engine(epochs=5, patience=2, checkpoint_every=0), pad)
    assert result.best_epoch == 2 and [r.val_loss for r in result.history] == [0.50, 0.30, 0.40, 0.35]
    assert result.stopped_early  # epochs 3 and 4 were no better: stopped before the fifth
