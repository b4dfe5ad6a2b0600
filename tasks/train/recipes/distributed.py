"""The distributed recipe: the same training data-parallel in several torchrun processes."""

from __future__ import annotations

from graftline.tasks.engine import distributed
from graftline.tasks.errors import GraftlineError
from graftline.tasks.train.recipes.base import Job, Recipe
from graftline.tasks.train.recipes.result import FinetuneResult


class Distributed(Recipe):
    """`finetune.processes` > 1: run the job in that many torchrun processes on this machine (one per
    GPU, or gloo CPU processes; engine/distributed.py). Each process runs the table again and gets
    the recipe one process would (supervised or lp-ft), whose loop splits every global batch across
    the processes; rank 0 saves the model and its result comes back here. The processes cannot reach
    the caller's listeners, so their epochs are replayed to `io.on_epoch` at the end (no progress
    reports while they train). With a checkpoint folder a killed run resumes where it stopped.

    Under a torchrun launch of the caller's own (several processes already), the table runs the
    training directly instead.
    Refuses: adaptation (its MLM objective and rounds run in one process), an image backbone with
    text-only settings; and, in the settings already, privacy and a search.
    """

    @classmethod
    def applies(cls, job: Job) -> bool:
        return job.params.processes > 1 and distributed.rank_and_size()[1] == 1

    @classmethod
    def refuse(cls, job: Job) -> None:
        if job.adapt.method != "none":
            raise GraftlineError(f"adapt.method {job.adapt.method!r} trains in one process; set finetune.processes=1")
        super().refuse(job)

    def run(self) -> FinetuneResult:
        result = distributed.launch(self.recipes, (self.job.unheard(),), self.job.params.processes)
        if self.job.io.on_epoch:  # the processes cannot reach the caller's tracking run; replay their epochs here
            for record in result.training.history:
                self.job.io.on_epoch(record)
        return result
