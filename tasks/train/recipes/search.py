"""The search recipe: a hyper-parameter search whose best trial is the teacher (tasks/train/search.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from graftline.tasks.errors import GraftlineError
from graftline.tasks.registry import tracking
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.train.recipes.base import Job, Recipe
from graftline.tasks.train.recipes.result import FinetuneResult
from graftline.tasks.train.search import Launch, SearchResult, Study, plot_search, search


class Search(Recipe):
    """`finetune.search.enabled`: an Optuna study over `finetune.search.space`; every trial is one
    fine-tuning by the recipe its settings choose (the table, the search off), the best trial's model
    is moved to the model folder and becomes the teacher: nothing is trained twice.

    The study is kept in `search.storage`, or in `<home>/search/studies.db` beside the tracking store,
    named by the checkpoint folder (the finetune step's fingerprint), whose sibling `<name>-trials`
    holds the finished trials' models: the same search run again after a crash, or by `graftline
    resume`, continues that study. (Called without a checkpoint folder, the study is named by the
    model folder's path.) Each trial is told to `job.on_trial` as it ends.

    Supports: every recipe one process runs (supervised, lp-ft, adaptation), text and image
    backbones (re-initialising layers is searched for text backbones only), trials in parallel on
    Dask (`search.runner: dask`, through `job.dask_launcher`, which the lifecycle gives).
    Refuses: runner dask without a launcher; an image backbone with text-only settings; and, in the
    settings already, privacy (choosing among trials spends budget no trial accounts for) and
    several processes.
    """

    @classmethod
    def applies(cls, job: Job) -> bool:
        return job.params.search.enabled

    def run(self) -> FinetuneResult:
        job = self.job
        found = search(
            job.splits,
            job.params,
            job.model,
            job.out_dir,
            self._study(),
            self.recipes,
            job.io.cache_dir,
            job.adapt,
            job.on_trial,
            self._launcher(),
            self._trials_folder(),
        )
        found.picture = plot_search(found, job.out_dir.parent / "search" / "search.png")
        return Searched(**{f.name: getattr(found.finetune, f.name) for f in fields(FinetuneResult)}, search=found)

    def _study(self) -> Study:
        settings, folder = self.job.params.search, self.job.io.checkpoint_dir
        name = folder.name if folder is not None else str(self.job.out_dir.resolve())
        return Study(settings.storage, name) if settings.storage else Study.beside(tracking.home(), name)

    def _trials_folder(self):
        """Beside the checkpoints, so a resumed search finds the finished trials' models again."""
        folder = self.job.io.checkpoint_dir
        return None if folder is None else folder.with_name(f"{folder.name}-trials")

    def _launcher(self) -> Launch | None:
        settings = self.job.params.search
        if settings.runner == "local":
            return None
        if self.job.dask_launcher is None:
            raise GraftlineError(
                "finetune.search.runner 'dask' needs the lifecycle's Dask launcher: run it with `graftline run`"
            )
        return self.job.dask_launcher(settings.dask_address)


@dataclass
class Searched(FinetuneResult):
    """The teacher (the best trial's fine-tuning) with the search that found it."""

    search: SearchResult | None = None

    def logged(self) -> StepLog:
        """The search's log, then the teacher's, with the best trial's epochs as the teacher's curves
        (its training ran inside the trial, where nobody listened)."""
        return self.search.logged() + StepLog(epochs=list(self.training.history)) + super().logged()
