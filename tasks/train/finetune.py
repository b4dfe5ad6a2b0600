"""Fine-tuning a classification head on a pretrained backbone: `finetune` picks the recipe.

Each training method is one recipe (tasks/train/recipes/): supervised (strategies full,
linear-probe, lora), lp-ft, private (DP-SGD), adaptation (target MLM and self-training rounds),
distributed (several torchrun processes) and search (the best trial is the teacher). `RECIPES`
lists them most specific first; the first whose `applies` holds for the settings trains the job,
after refusing what it cannot honour (one-line GraftlineErrors, before any work). A new method is
one recipe module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from graftline.tasks.data.splits import Splits
from graftline.tasks.engine.training import TrainingIO
from graftline.tasks.settings import AdaptParams, FinetuneParams, ModelParams
from graftline.tasks.train.recipes.adaptation import Adaptation
from graftline.tasks.train.recipes.base import Job, Recipes
from graftline.tasks.train.recipes.common import (
    apply_strategy,
    encode_split,
    save_model,
    set_backbone_frozen,
)
from graftline.tasks.train.recipes.distributed import Distributed
from graftline.tasks.train.recipes.lp_ft import ProbeThenTune
from graftline.tasks.train.recipes.private import Private
from graftline.tasks.train.recipes.result import FinetuneResult
from graftline.tasks.train.recipes.search import Search
from graftline.tasks.train.recipes.supervised import Supervised

__all__ = [  # the shared steps, for distillation and the tests
    "RECIPES",
    "FinetuneResult",
    "apply_strategy",
    "encode_split",
    "finetune",
    "save_model",
    "set_backbone_frozen",
]

# Most specific first: a search runs the others as its trials, the distributed recipe runs a one-process
# recipe in each process, the private one refuses adaptation, and adaptation trains its source model by
# lp-ft or supervised, whichever the table then picks.
RECIPES = Recipes((Search, Distributed, Private, Adaptation, ProbeThenTune, Supervised))


def finetune(
    splits: Splits,
    params: FinetuneParams,
    model: ModelParams,
    out_dir: Path,
    io: TrainingIO = TrainingIO(),
    adapt: AdaptParams = AdaptParams(),
    source_dir: Path | None = None,
    on_trial: Callable[[object], None] | None = None,
    dask_launcher: Callable[[str | None], Callable] | None = None,
) -> FinetuneResult:
    """Fine-tune `params.backbone` on `splits.train` into `out_dir`, early-stopping on
    `splits.validation`, by the recipe the settings choose. With self-training and `source_dir`, the
    source model (before the rounds) is saved there too. A search tells each trial to `on_trial` as it
    ends, and runs its trials on Dask through `dask_launcher(address)` (flows.fanout.dask_launcher)."""
    return RECIPES(Job(splits, params, model, out_dir, io, adapt, source_dir, on_trial, dask_launcher))
