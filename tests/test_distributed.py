"""Data-parallel training: two CPU processes (torchrun, gloo) reach what one process reaches.

Real torch.distributed processes on the CPU; on GPU machines the same code runs one process per
GPU over NCCL (not exercised here: these machines have no GPU)."""

import torch

from graftline.tasks.engine import backbones
from graftline.tasks.engine.training import TrainingIO
from graftline.tasks.settings import FinetuneParams
from graftline.tasks.train.finetune import finetune
from tests.conftest import short_texts


def test_two_gloo_processes_match_one_process(still_backbone, toy_splits, tmp_path):
    # No length grouping: the two runs then cut the same permutation into the same 8-row batches,
    # which the two processes split 4 + 4.
    config = FinetuneParams(
        backbone=str(still_backbone), epochs=2, batch_size=8, learning_rate=3e-3, group_by_length="off", patience=5
    )
    single = finetune(toy_splits, config, short_texts(), tmp_path / "one")
    seen = []
    double = finetune(
        toy_splits,
        config.model_copy(update={"processes": 2}),
        short_texts(),
        tmp_path / "two",
        TrainingIO(on_epoch=seen.append),
    )

    assert [r.epoch for r in seen] == [1, 2]  # epoch records come back from the processes
    assert len(double.training.step_losses) == len(single.training.step_losses) == 20
    assert torch.allclose(
        torch.tensor(double.training.step_losses), torch.tensor(single.training.step_losses), atol=1e-5
    )
    one = backbones.load_classifier(str(tmp_path / "one")).state_dict()
    two = backbones.load_classifier(str(tmp_path / "two")).state_dict()
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
    untrained = backbones.load_classifier(str(still_backbone), toy_splits.labels).state_dict()
    assert not torch.allclose(
        one["bert.encoder.layer.0.attention.self.query.weight"],
        untrained["bert.encoder.layer.0.attention.self.query.weight"],
        atol=1e-4,
    )
