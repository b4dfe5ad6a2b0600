"""The domain-gap measures: they separate what differs and stay near zero for what does not."""

import numpy as np
import pytest

from graftline.tasks.evaluate import domain_gap


def test_proxy_a_distance_and_mmd_tell_apart_only_what_differs():
    rng = np.random.default_rng(0)
    source, same = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    shifted = rng.normal(size=(200, 8)) + np.r_[6.0, np.zeros(7)]  # 6 sigma apart on one axis
    assert domain_gap.proxy_a_distance(source, same) < 0.3 < 1.9 < domain_gap.proxy_a_distance(source, shifted)
    assert abs(domain_gap.mmd(source, same)) < 0.01 < 0.1 < domain_gap.mmd(source, shifted)


def test_a_classifier_gap_reports_confidence_and_label_shift(tiny_backbone):
    from graftline.tasks.engine.backbones import load_classifier, load_tokenizer

    classifier = load_classifier(str(tiny_backbone), ["bad", "good"])
    tokenizer = load_tokenizer(str(tiny_backbone))
    source = [f"great product works well {i}" for i in range(40)]
    target = [f"the novel's plot twists in chapter {i}" for i in range(30)]
    gaps, embedded = domain_gap.measure(classifier, tokenizer, source, {"books": target}, 32, seed=0)
    books = gaps["books"]
    assert books.rows == 30 and embedded["source"].pooled.shape == (40, 32)
    assert books.proxy_a_distance > 1.5  # different vocabularies: easy to tell apart
    assert 0 <= books.label_shift <= 1 and sum(books.predicted.values()) == pytest.approx(1)
    assert set(books.metrics()) == {f"books_{k}" for k in
                                    ("proxy_a_distance", "mmd", "confident_share", "source_confident_share",
                                     "label_shift")}  # fmt: skip


def test_a_bare_backbone_gap_has_distances_only(tiny_backbone, tmp_path):
    from graftline.tasks.engine.backbones import load_encoder, load_tokenizer

    encoder, tokenizer = load_encoder(str(tiny_backbone)), load_tokenizer(str(tiny_backbone))
    gaps, embedded = domain_gap.measure(encoder, tokenizer, ["a b c"] * 12, {"t": ["x y z"] * 12}, 16, seed=0)
    assert gaps["t"].confident_share is None and set(gaps["t"].metrics()) == {"t_proxy_a_distance", "t_mmd"}
    picture = domain_gap.plot({"backbone": embedded}, tmp_path / "gap.png")
    assert picture.stat().st_size > 1000
