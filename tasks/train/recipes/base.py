"""What every recipe shares: the job it trains, the life cycle it follows, and the table that picks it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from graftline.tasks import modality as modalities
from graftline.tasks.data.splits import Splits
from graftline.tasks.engine.training import TrainingIO
from graftline.tasks.settings import AdaptParams, FinetuneParams, ModelParams
from graftline.tasks.train.recipes.result import FinetuneResult


@dataclass(frozen=True)
class Job:
    """One fine-tuning as the caller asked for it: the data, the settings, where the model goes, and who
    hears of it. `on_trial` and `dask_launcher` matter to a search only (recipes/search.py)."""

    splits: Splits
    params: FinetuneParams
    model: ModelParams
    out_dir: Path
    io: TrainingIO = field(default_factory=TrainingIO)
    adapt: AdaptParams = field(default_factory=AdaptParams)
    source_dir: Path | None = None  # self-training: the source model (before the rounds) is saved here too
    on_trial: Callable[[object], None] | None = None  # hears each search trial as it ends (a TrialRecord)
    dask_launcher: Callable[[str | None], Callable] | None = None  # search.runner dask: the launcher's factory

    def unheard(self) -> Job:
        """The same job without listeners: what travels to other processes, which cannot reach them."""
        return replace(self, io=self.io.unheard(), on_trial=None, dask_launcher=None)


class Recipe:
    """The life cycle of every recipe: `run` sets up, trains and saves. A recipe says when the table
    picks it (`applies`) and what it refuses (`refuse`: one-line GraftlineErrors, raised before any
    work). By default a recipe refuses what the backbone's modality cannot train with (LoRA, DP-SGD and
    adaptation on an image backbone: tasks/modality/)."""

    def __init__(self, job: Job, recipes: Recipes) -> None:
        self.job = job
        self.recipes = recipes  # the whole table: for recipes that run another recipe (trials, processes)

    @classmethod
    def applies(cls, job: Job) -> bool:
        raise NotImplementedError

    @classmethod
    def refuse(cls, job: Job) -> None:
        modalities.of_backbone(job.params.backbone).refuse_unsupported(job.params, job.adapt)

    def run(self) -> FinetuneResult:
        raise NotImplementedError


@dataclass(frozen=True)
class Recipes:
    """The table of recipes, most specific first: the first whose `applies` holds trains a job.
    Picklable (the recipes travel as classes), so torchrun processes and Dask workers run it too."""

    table: tuple[type[Recipe], ...]

    def choose(self, job: Job) -> Recipe:
        recipe = next(recipe for recipe in self.table if recipe.applies(job))
        recipe.refuse(job)
        return recipe(job, self)

    def __call__(self, job: Job) -> FinetuneResult:
        return self.choose(job).run()
