"""The training engine's CPU kernels: dropout and embedding gradients, the same maths as PyTorch's,
put back after training."""

import pytest
import torch
from torch import nn

from graftline.tasks.engine import backbones, kernels


def test_masks_drop_the_asked_share_and_scale_the_rest():
    torch.manual_seed(0)
    multiplier = kernels.keep_multiplier(torch.Size([1000, 1000]), 0.1, torch.float32, torch.device("cpu"))
    assert multiplier.unique().tolist() == pytest.approx([0.0, 1 / 0.9])
    assert (multiplier == 0).float().mean().item() == pytest.approx(0.1, abs=0.002)
    torch.manual_seed(0)
    again = kernels.keep_multiplier(torch.Size([1000, 1000]), 0.1, torch.float32, torch.device("cpu"))
    assert torch.equal(multiplier, again)  # the seeded default generator decides
    assert not torch.equal(multiplier, kernels.keep_multiplier(multiplier.shape, 0.1, torch.float32, multiplier.device))


def test_the_gradient_passes_exactly_where_the_mask_kept():
    x = torch.randn(64, 33, requires_grad=True)
    y = kernels.dropout(x, 0.3)
    y.sum().backward()
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)
    assert torch.allclose(x.grad, kept.float() / 0.7)
    assert kernels.dropout(x, 0.3, training=False) is x
    with pytest.raises(ValueError, match="dropout probability"):
        kernels.dropout(x, 1.0)


def test_attention_is_sdpa_when_nothing_is_dropped():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False  # the second row's last two tokens are padding
    module = nn.Module()
    # a probability below half of 1/65536 drops nothing: the written-out path without any drop
    ours, _ = kernels.attention(module, q, k, v, mask, dropout=1e-7)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_a_model_trains_with_it_and_gets_its_own_dropout_back(tiny_backbone):
    model = backbones.load_classifier(str(tiny_backbone), ["a", "b"])
    ids = torch.randint(5, 90, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    model.eval()
    before = model(input_ids=ids, attention_mask=mask).logits
    with kernels.cpu_dropout(model) as (modules, attention):
        assert modules > 0 and attention
        assert all(type(m) is not nn.Dropout for m in model.modules())
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, before, atol=1e-6)  # eval: no dropout
        model.train()
        outputs = []
        for _ in range(2):
            torch.manual_seed(5)
            outputs.append(model(input_ids=ids, attention_mask=mask).logits)
        assert torch.equal(*outputs) and not torch.allclose(outputs[0], before)
        outputs[0].sum().backward()
        assert model.classifier.weight.grad is not None
    assert any(type(m) is nn.Dropout for m in model.modules())
    assert not any(isinstance(m, kernels.CPUDropout) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


def test_it_is_put_back_after_an_error(tiny_backbone):
    model = backbones.load_classifier(str(tiny_backbone), ["a", "b"])
    with pytest.raises(RuntimeError, match="boom"), kernels.cpu_dropout(model):
        raise RuntimeError("boom")
    assert not any(isinstance(m, kernels.CPUDropout) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


def test_kept_embedding_gradients_equal_the_dense_ones_in_one_buffer():
    torch.manual_seed(3)
    table = nn.Embedding(5000, 8, padding_idx=0)  # a vocabulary: long enough to be kept
    small = nn.Embedding(10, 8)  # a position table: left dense
    model = nn.ModuleDict({"table": table, "small": small})
    optimizer = torch.optim.AdamW(model.parameters())
    batches = [torch.tensor([[5, 7, 5, 0], [4999, 7, 0, 0]]), torch.tensor([[1, 2, 3, 3]])]

    def loss(ids):
        return (table(ids) * torch.arange(8.0)).sum() + small(ids % 10).pow(2).sum()

    dense = []
    for ids in batches:
        loss(ids).backward()
        dense.append(table.weight.grad.clone())
        optimizer.zero_grad(set_to_none=True)
    with kernels.kept_embedding_grads(model) as kept:
        assert kept == [table.weight] and table.sparse and not small.sparse
        buffer = table.weight.grad
        for ids, expected in zip(batches, dense, strict=True):
            loss(ids).backward()
            assert table.weight.grad is buffer and not buffer.is_sparse
            assert torch.allclose(buffer, expected) and buffer[0].abs().sum() == 0  # padding row: no gradient
            kernels.zero_grads(optimizer, kept)
            assert table.weight.grad is buffer and small.weight.grad is None
    assert not table.sparse and table.weight.grad is None
