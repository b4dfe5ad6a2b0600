"""Masked-language modelling on target-domain texts: the auxiliary loss of `adapt.method: mlm`.

Fine-tuning then minimises one mixed loss per step, source cross-entropy + weight x MLM loss on a
batch of target texts of the same size (UDALM, Karouzos et al., 2021): the encoder keeps modelling
the target domain's language while it learns the source task.

The packaged sentence-embedding backbones ship without an MLM head, so one is built here as BERT's
prediction head: a transform (dense, GELU, LayerNorm) then a decoder whose weight *is* the input
embedding matrix (tied, as in BERT pre-training) with a zero bias. The transform starts as the
identity map (dense = I, bias 0), so the untrained head already scores each hidden state against
every input embedding; `warm_up` then trains the transform and bias alone, encoder frozen, before
the mixed loss starts. The head is attached to the classifier as the submodule `HEAD` while it
trains (so the optimizer, checkpoints and resume see it) and removed before the model is saved.

Masking follows BERT: `probability` of the non-special tokens are chosen; of those 80% become
[MASK], 10% a random token, 10% stay. Masks and target batches are drawn from generators seeded by
(seed, epoch, step, micro-batch), so a resumed run draws exactly what the uninterrupted one drew.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from graftline.tasks.engine.training import EncodedSplit, collate

HEAD = "graftline_mlm_head"


class MlmHead(nn.Module):
    def __init__(self, embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        width = embeddings.weight.shape[1]
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.decoder_weight = embeddings.weight  # tied: the same Parameter as the input embeddings
        self.bias = nn.Parameter(torch.zeros(embeddings.weight.shape[0]))
        with torch.no_grad():
            self.dense.weight.copy_(torch.eye(width))
            self.dense.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(nn.functional.gelu(self.dense(hidden))) @ self.decoder_weight.T + self.bias


def attach(model) -> MlmHead:
    """Build the head on `model`'s input embeddings and register it as `model.<HEAD>`."""
    head = MlmHead(model.get_input_embeddings(), getattr(model.config, "layer_norm_eps", 1e-12))
    model.add_module(HEAD, head)
    return head


def detach(model) -> None:
    if hasattr(model, HEAD):
        delattr(model, HEAD)


def mask(
    ids: torch.Tensor, attention: torch.Tensor, special: torch.Tensor, vocab: int, mask_id: int, p: float, g
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a padded batch: the corrupted ids and the labels (-100 where not predicted)."""
    candidates = attention.bool() & ~torch.isin(ids, special)
    chosen = (torch.rand(ids.shape, generator=g) < p) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=g)
    corrupted = ids.clone()
    corrupted[chosen & (roll < 0.8)] = mask_id
    randomised = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[randomised] = torch.randint(vocab, ids.shape, generator=g)[randomised]
    return corrupted, labels


def loss(model, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's predictions at the masked positions only (the vocabulary projection
    of every position would cost far more)."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    where = labels != -100
    if not where.any():
        return hidden.sum() * 0.0  # keeps the graph; nothing was masked in this batch
    logits = getattr(model, HEAD)(hidden[where])
    return nn.functional.cross_entropy(logits.float(), labels[where])


class TargetMlm:
    """The auxiliary objective the training loop adds to each micro-batch's loss."""

    def __init__(self, target: EncodedSplit, tokenizer, weight: float, probability: float, seed: int) -> None:
        if len(target) == 0:
            raise ValueError("masked-language modelling needs at least one target text")
        self.target, self.weight, self.probability, self.seed = target, weight, probability, seed
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab = len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def batch(self, epoch: int, step: int, micro: int, rows: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The masked target batch of (epoch, step, micro-batch): `rows` texts drawn without replacement
        from a permutation of the target texts fixed per epoch."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.target))
        start = ((step * 7919 + micro) * rows) % len(self.target)  # a prime stride: batches cycle through all
        picked = np.take(order, range(start, start + rows), mode="wrap")
        batch = collate(self.target, picked, self.pad_id)
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch, step, micro]).generate_state(1)[0])
        )
        ids, labels = mask(batch["input_ids"], batch["attention_mask"], self.special, self.vocab, self.mask_id,
                           self.probability, g)  # fmt: skip
        return {"input_ids": ids, "attention_mask": batch["attention_mask"]}, labels

    def __call__(self, model, epoch: int, step: int, micro: int, rows: int, device) -> torch.Tensor:
        inputs, labels = self.batch(epoch, step, micro, rows)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return self.weight * loss(model, inputs, labels.to(device))


def warm_up(model, objective: TargetMlm, steps: int, batch_size: int, device, learning_rate: float = 1e-3) -> float:
    """Train the head's transform and bias alone (encoder and embeddings frozen) for `steps` steps;
    returns the last MLM loss."""
    head = getattr(model, HEAD)
    trainable = [p for name, p in head.named_parameters() if name != "decoder_weight"]
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad = False
    for p in trainable:
        p.requires_grad = True
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
    model.to(device).train()
    last = float("nan")
    try:
        for step in range(steps):
            value = objective(model, epoch=0, step=step, micro=0, rows=batch_size, device=device) / objective.weight
            value.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last = float(value.detach())
    finally:
        for p, requires in frozen.items():
            p.requires_grad = requires
    return last
