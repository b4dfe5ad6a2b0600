"""Integrated Gradients explanations and their faithfulness, on a tiny model that keys on one word."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from graftline.tasks.evaluate.explain import (
    ExplainError,
    agreement,
    attention_scores,
    class_cues,
    explain,
    faithfulness,
    html_report,
    random_scores,
)
from tests.conftest import short_texts

FILLER = "the a box came today with some paper and a note inside it was fine ok so then we".split()
TRIGGER = "zebra"


def _frame(rows: int, seed: int) -> pd.DataFrame:
    """Label `yes` exactly when the trigger word is in the text, anywhere."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        words = rng.choices(FILLER, k=8)
        label = "yes" if i % 2 else "no"
        if label == "yes":
            words.insert(rng.randrange(len(words)), TRIGGER)
        out.append((" ".join(words), label))
    return pd.DataFrame(out, columns=["text", "label"])


@pytest.fixture(scope="module")
def keyed(tiny_backbone, tmp_path_factory):
    """The tiny BERT fine-tuned until it keys on the trigger word (random weights otherwise)."""
    from graftline.tasks.data.splits import Split, Splits
    from graftline.tasks.engine import backbones
    from graftline.tasks.settings import FinetuneParams
    from graftline.tasks.train.finetune import finetune

    splits = Splits(
        *(
            Split(n, _frame(rows, i), "toy")
            for i, (n, rows) in enumerate([("train", 200), ("validation", 40), ("test", 40)])
        )
    )
    params = FinetuneParams(backbone=str(tiny_backbone), epochs=4, patience=4, learning_rate=3e-3)
    result = finetune(splits, params, short_texts(), tmp_path_factory.mktemp("keyed"))
    model = backbones.load_classifier(str(result.model_dir))
    return model.eval(), backbones.load_tokenizer(str(result.model_dir))


@pytest.fixture(scope="module")
def explained(keyed):
    model, tokenizer = keyed
    frame = _frame(24, seed=9)
    return explain(model, tokenizer, frame["text"].tolist(), 32, n_steps=64, true_labels=frame["label"].tolist())


def test_attributions_sum_to_the_change_in_probability_within_the_delta(keyed, explained):
    import torch

    model, tokenizer = keyed
    for e in explained[:4]:
        special = set(tokenizer.all_special_ids)
        baseline = torch.tensor([[t if t in special else tokenizer.pad_token_id for t in e.ids]])
        with torch.no_grad():
            p_baseline = torch.softmax(model(input_ids=baseline).logits, -1)[0]
        gap = e.probability - float(p_baseline[list(e.probabilities).index(e.label)])
        assert abs(float(e.attributions.sum()) - gap) == pytest.approx(e.delta, abs=1e-4)
        assert e.delta < 0.05 * max(abs(gap), 0.1)  # 64 steps: close to completeness


def test_the_planted_trigger_word_gets_the_top_attribution(explained):
    keyed_right = [e for e in explained if e.label == "yes" and TRIGGER in e.text]
    assert len(keyed_right) >= 8  # the model learned the trigger
    assert all(e.top_words(1) == [TRIGGER] for e in keyed_right)
    assert class_cues(keyed_right)["yes"][0][0] == TRIGGER


def test_integrated_gradients_is_more_faithful_than_random(keyed, explained):
    model, _ = keyed
    ig = faithfulness(model, explained)
    chance = faithfulness(model, explained, random_scores(explained, seed=1))
    assert ig.comprehensiveness > chance.comprehensiveness
    assert ig.sufficiency < chance.sufficiency


def test_the_attention_baseline_reads_the_last_layer_and_leaves_the_model_as_it_was(keyed, explained):
    model, _ = keyed
    before = model.config._attn_implementation
    scores = [attention_scores(model, e) for e in explained[:6]]
    assert all(len(s) == len(e.tokens) and (s >= 0).all() for s, e in zip(scores, explained, strict=False))
    assert model.config._attn_implementation == before
    assert 0 <= faithfulness(model, explained[:6], scores).comprehensiveness <= 1


def test_a_model_agrees_with_itself_and_less_with_noise(explained):
    same = agreement(explained, explained)
    assert same.kendall_tau == pytest.approx(1.0) and same.top_overlap == 1.0
    noisy = [
        e.__class__(**{**e.__dict__, "attributions": s})
        for e, s in zip(explained, random_scores(explained), strict=True)
    ]
    assert agreement(explained, noisy).kendall_tau < 0.5


def test_the_report_shows_markup_in_a_text_and_never_runs_it(keyed):
    model, tokenizer = keyed
    [e] = explain(model, tokenizer, ["<script>alert(1)</script> zebra"], 32, n_steps=8)
    page = html_report({"test": [e]}, "toy <b>model</b>")
    assert "<script>" not in page and "&lt;" in page and "toy &lt;b&gt;model&lt;/b&gt;" in page


def test_empty_text_and_bad_settings_are_refused(keyed):
    model, tokenizer = keyed
    with pytest.raises(ExplainError, match="empty text"):
        explain(model, tokenizer, ["  "], 32)
    with pytest.raises(ExplainError, match="n_steps 1"):
        explain(model, tokenizer, ["zebra"], 32, n_steps=1)
    assert np.isfinite(explain(model, tokenizer, ["zebra"], 32, n_steps=4)[0].attributions).all()
