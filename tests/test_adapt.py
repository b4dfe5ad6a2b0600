"""Domain adaptation by masked-language modelling on target texts (engine/mlm.py, adapt.method mlm):
the head, the masking, the mixed loss computed by hand, resume, and target labels never read."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from graftline.tasks.data.splits import Split, load_splits
from graftline.tasks.engine import backbones, mlm
from graftline.tasks.engine.checkpoints import Checkpoints
from graftline.tasks.engine.training import batch_plan, collate, encode, train
from graftline.tasks.settings import AdaptParams, DataParams, FinetuneParams
from graftline.tasks.train.finetune import encode_split, finetune
from tests.conftest import short_texts, toy_frame

TARGET_TEXTS = [f"the novel's plot in chapter {i} twists and turns" for i in range(24)]


@pytest.fixture
def adapted_splits(toy_splits):
    target = Split("books", pd.DataFrame({"text": TARGET_TEXTS, "row": range(1, 25)}), "mem")
    return replace(toy_splits, targets={"books": target})


def setup(backbone, splits, weight=0.5):
    tokenizer = backbones.load_tokenizer(str(backbone))
    torch.manual_seed(0)
    model = backbones.load_classifier(str(backbone), splits.labels)
    target = encode(tokenizer, splits.target_texts(), [0] * len(splits.target_texts()), 32)
    objective = mlm.TargetMlm(target, tokenizer, weight, 0.15, seed=13)
    mlm.attach(model)
    return model, tokenizer, objective


def test_the_head_starts_from_the_tied_input_embeddings(still_backbone, adapted_splits):
    model, tokenizer, _ = setup(still_backbone, adapted_splits)
    head = getattr(model, mlm.HEAD)
    assert head.decoder_weight is model.get_input_embeddings().weight  # tied, not copied
    assert torch.equal(head.dense.weight, torch.eye(32)) and not head.bias.any()
    names = [n for n, _ in model.named_parameters()]
    assert names.count("bert.embeddings.word_embeddings.weight") == 1  # one parameter, trained once
    mlm.detach(model)
    assert not hasattr(model, mlm.HEAD)


def test_masking_spares_special_tokens_and_is_seeded(still_backbone, adapted_splits):
    _, tokenizer, objective = setup(still_backbone, adapted_splits)
    ids, labels = objective.batch(epoch=1, step=3, micro=0, rows=24)
    again_ids, again_labels = objective.batch(epoch=1, step=3, micro=0, rows=24)
    assert torch.equal(ids["input_ids"], again_ids["input_ids"]) and torch.equal(labels, again_labels)
    predicted = labels != -100
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    original = torch.where(predicted, labels, ids["input_ids"])
    assert not torch.isin(original[predicted], special).any()  # CLS, SEP, PAD never predicted
    share = predicted.sum() / (ids["attention_mask"].sum() - 2 * 24)
    assert 0.05 < share < 0.3  # about 15% of the real tokens
    assert (ids["input_ids"][predicted] == tokenizer.mask_token_id).float().mean() > 0.6  # mostly [MASK]
    other, _ = objective.batch(epoch=2, step=3, micro=0, rows=24)
    assert not torch.equal(other["input_ids"], ids["input_ids"])  # another epoch, other masks


def test_the_first_step_loss_is_cross_entropy_plus_weight_times_mlm(still_backbone, adapted_splits):
    weight = 0.5
    model, tokenizer, objective = setup(still_backbone, adapted_splits, weight)
    config = FinetuneParams(epochs=1, batch_size=8, group_by_length="off", learning_rate=1e-3).train_config(
        short_texts()
    )
    train_split = encode_split(tokenizer, adapted_splits.train, adapted_splits.labels, 32)
    val_split = encode_split(tokenizer, adapted_splits.validation, adapted_splits.labels, 32)
    rows = batch_plan(train_split.lengths, 8, config.seed, 1, False)[0]

    with torch.no_grad():  # by hand, before any update: CE on the first batch + weight x MLM on its target batch
        model.train()
        batch = collate(train_split, rows, tokenizer.pad_token_id)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        ce = torch.nn.functional.cross_entropy(model(**inputs).logits, batch["labels"])
        masked, labels = objective.batch(epoch=1, step=0, micro=0, rows=len(rows))
        hidden = model.bert(**masked).last_hidden_state[labels != -100]
        head = getattr(model, mlm.HEAD)
        logits = head.norm(torch.nn.functional.gelu(head.dense(hidden))) @ model.get_input_embeddings().weight.T
        by_hand = ce + weight * torch.nn.functional.cross_entropy(logits + head.bias, labels[labels != -100])

    result = train(model, train_split, val_split, config, tokenizer.pad_token_id, auxiliary=objective)
    assert result.step_losses[0] == pytest.approx(float(by_hand), rel=1e-5)


def test_resume_mid_adaptation_matches_an_uninterrupted_run(still_backbone, adapted_splits, tmp_path):
    config = FinetuneParams(
        epochs=2, batch_size=8, learning_rate=3e-3, checkpoint_every=3, checkpoint_seconds=0, patience=5
    ).train_config(short_texts())
    model, tokenizer, objective = setup(still_backbone, adapted_splits)
    splits = [encode_split(tokenizer, adapted_splits.train, adapted_splits.labels, 32),
              encode_split(tokenizer, adapted_splits.validation, adapted_splits.labels, 32)]  # fmt: skip
    straight = train(model, *splits, config, tokenizer.pad_token_id, auxiliary=objective)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    calls = {"n": 0}

    def crashing(*args):  # the auxiliary loss fails in the middle of the second epoch
        calls["n"] += 1
        if calls["n"] == len(straight.step_losses) // 2 + 5:
            raise KeyboardInterrupt
        return objective(*args)

    folder = tmp_path / "checkpoints"
    model, _, _ = setup(still_backbone, adapted_splits)
    with pytest.raises(KeyboardInterrupt):
        train(model, *splits, config, tokenizer.pad_token_id, checkpoint_dir=folder, auxiliary=crashing)
    assert Checkpoints(folder).latest() is not None
    model, _, _ = setup(still_backbone, adapted_splits)
    resumed = train(model, *splits, config, tokenizer.pad_token_id, checkpoint_dir=folder, auxiliary=objective)
    assert resumed.resumed_from_step is not None and resumed.step_losses == straight.step_losses
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())


def test_finetune_with_mlm_adapts_and_saves_a_plain_classifier(tiny_backbone, adapted_splits, tmp_path):
    params = FinetuneParams(backbone=str(tiny_backbone), epochs=1, batch_size=8, learning_rate=3e-3)
    adapt = AdaptParams(method="mlm", head_warmup_steps=3)
    result = finetune(adapted_splits, params, short_texts(), tmp_path / "adapted", adapt=adapt)
    assert result.training.step_losses[0] > 3  # the mixed loss carries the MLM term (CE alone starts near ln 2)
    saved = backbones.load_classifier(str(result.model_dir))
    assert not any(mlm.HEAD in key for key in saved.state_dict())  # a plain classifier again


def test_target_labels_are_never_read(tmp_path):
    toy_frame(20).to_csv(tmp_path / "train.csv", index=False)
    poisoned = pd.DataFrame({"text": TARGET_TEXTS, "label": [None, {"x": 1}, "spam"] * 8})  # unusable as labels
    poisoned.to_json(tmp_path / "books.jsonl", orient="records", lines=True)
    splits = load_splits(DataParams(train_path=str(tmp_path / "train.csv"), eval_sets={},
                                    target_sets={"books": str(tmp_path / "books.jsonl")}))  # fmt: skip
    assert list(splits.targets["books"].frame.columns) == ["text", "row"]
    assert splits.target_texts() == TARGET_TEXTS


def test_adaptation_without_target_texts_is_refused():
    from pydantic import ValidationError

    from graftline.flows.params import TransferParams

    with pytest.raises(ValidationError, match="needs unlabeled target texts: data.target_sets"):
        TransferParams(adapt=AdaptParams(method="mlm"))
    with pytest.raises(ValidationError, match="trains in one process; set finetune.processes=1"):
        TransferParams(
            adapt=AdaptParams(method="self-training"),
            data=DataParams(target_sets={"books": "b.csv"}),
            finetune=FinetuneParams(processes=2),
        )
    with pytest.raises(ValidationError, match="reserved for the main splits"):
        DataParams(target_sets={"test": "x.csv"})
    with pytest.raises(ValidationError, match=r"retention_sets \['books'\] are not evaluation sets \(test, home\)"):
        TransferParams.model_validate({"registry": {"gates": {"retention_sets": ["test", "books"]}}})
