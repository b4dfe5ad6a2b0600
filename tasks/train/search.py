"""Automatic fine-tuning: a hyper-parameter search whose best trial becomes the teacher.

Fine-tuning results swing with the learning rate, the training length, warmup and even the seed
(Dodge et al. 2020), and many runs are visibly going nowhere long before they end. `search` runs an
Optuna study over the settings of `finetune.search.space`: the TPE sampler proposes each trial's
settings from the trials before it, after a few random ones scaled to the budget; every trial is one
ordinary fine-tuning (`train`: the recipe its settings choose, tasks/train/finetune.py) that reports
its validation macro-F1 `reports_per_epoch` times per epoch. The pruner stops a trial whose reports
fall behind the others' after as much training (successive halving compares the scores at equal
reports, `EqualResourceHalving`; or Hyperband), never before the trial has run `prune_after` of its
own schedule: half-way through a long schedule the learning rate is still high, and a slow starter
pruned at its first checkpoint is a good setting never seen. The budget is a number of trials,
wall-clock seconds, or both; when the seconds are spent, a running trial is stopped once some trial
has finished.

The first trial trains the settings as given (`start_from_settings`), and they stay the teacher unless
another trial beats them on validation by more than the validation split's noise: the best trial must
score higher in `confidence` of the bootstrap resamples of the validation rows (`confirm`). The best
of many trials on a small validation split is partly the luckiest one; the check is what keeps a
search from replacing good defaults with a draw that only looked better.

Every finished trial's model is saved in its own folder, and only the best one and the given
settings' one are kept, so the teacher *is* a trial: nothing is trained twice. (When the chosen
trial ran where its folder cannot be read, on another machine, its settings are trained again here.)

The study lives in a database, named by the caller: the search recipe (recipes/search.py) keeps it
in a sqlite file beside the tracking store, named by the finetune step's fingerprint. Running the
same search again resumes it: finished trials are kept, a trial that was running when the process
died is marked failed and queued again with the same settings, and the budget counts what was
already spent. The same database lets several workers share one study (`Worker`), which is how
trials run in parallel on Dask.

Why Optuna: a maintained, MIT-licensed library made for exactly this (samplers, pruners, storage
that several processes share, parameter importances); the code here only maps graftline's settings
onto it and keeps the models.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from graftline.tasks import plots
from graftline.tasks.data.splits import Splits
from graftline.tasks.engine.training import EpochRecord, TrainingIO, TrainResult
from graftline.tasks.errors import GraftlineError
from graftline.tasks.evaluate.scores import paired_bootstrap, predictions_on
from graftline.tasks.registry.tracking import StepLog
from graftline.tasks.settings import (
    AdaptParams,
    FinetuneParams,
    ModelParams,
    SearchParams,
    SearchRange,
    searched_field,
)
from graftline.tasks.train.recipes.base import Job
from graftline.tasks.train.recipes.result import FinetuneResult

GIVEN = "given"  # the user attribute of the trial that trains the settings as given
TRIAL_RESULT = "trial.json"  # beside a finished trial's model: its training, to become the teacher's record
Train = Callable[[Job], FinetuneResult]  # one fine-tuning: what each trial runs (the recipes' table)
Work = Callable[[int, int], None]  # what each of several workers runs: work(copy, copies)
Launch = Callable[[Work, int], None]  # runs `copies` calls of the work somewhere (e.g. on Dask) and waits


@dataclass(frozen=True)
class Study:
    """Where a study is kept: a database URL and the study's name in it."""

    storage: str
    name: str

    @classmethod
    def beside(cls, home: Path, name: str) -> Study:
        """The default: `<home>/search/studies.db`, one sqlite file for every study."""
        folder = home / "search"
        folder.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{folder / 'studies.db'}", name)


@dataclass
class TrialRecord:
    """One trial as the leaderboard and the tracking store see it."""

    number: int
    state: str  # complete | pruned | failed
    value: float | None  # a finished trial's best validation macro-F1; a pruned one's last report
    settings: dict[str, float]
    reports: list[float]  # validation macro-F1, reports_per_epoch per epoch
    seconds: float
    started: float  # epoch seconds
    stopped_by: str | None = None  # pruner | budget, for a pruned trial
    worker: str | None = None  # host:pid of the process that ran it

    def line(self) -> str:
        """What the run's log says of the trial when it ends."""
        state = self.state + (f" by the {self.stopped_by}" if self.stopped_by else "")
        value = "-" if self.value is None else f"{self.value:.4f}"
        settings = ", ".join(f"{k}={v:.3g}" for k, v in self.settings.items())
        return (
            f"search trial {self.number} {state}: validation macro-F1 {value} after {len(self.reports)} reports, "
            f"{self.seconds:.0f} s ({settings})"
        )


@dataclass(frozen=True)
class Confirmation:
    """The check before the best trial replaces the given settings: in what share of bootstrap resamples
    of the validation rows its macro-F1 was higher than theirs, against the share required."""

    given: int  # the trial of the given settings
    leader: int  # the trial with the best validation macro-F1
    share: float
    required: float
    gain: float  # the leader's validation macro-F1 minus the given settings'

    @property
    def replaced(self) -> bool:
        return self.share >= self.required

    def line(self) -> str:
        verdict = "replace them" if self.replaced else "the given settings stay"
        return (
            f"search check: trial {self.leader} beat the given settings (trial {self.given}) by "
            f"{100 * self.gain:+.2f} points of validation macro-F1, higher in {100 * self.share:.0f}% of "
            f"bootstrap resamples of the validation rows (required: {100 * self.required:.0f}%): {verdict}"
        )


@dataclass
class SearchResult:
    finetune: FinetuneResult  # the teacher: the chosen trial's model
    best: TrialRecord  # the chosen trial: the best one, unless the check kept the given settings
    trials: list[TrialRecord]
    importances: dict[str, float] = field(default_factory=dict)  # fANOVA, when two trials finished
    retrained: bool = False  # the chosen trial's folder was out of reach: its settings trained again here
    picture: Path | None = None  # the optimisation history and importances (`plot_search`), once drawn
    confirmation: Confirmation | None = None  # when a trial other than the given settings' scored best

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)

    def metrics(self) -> dict[str, float]:
        states = [t.state for t in self.trials]
        pruned_seconds = sum(t.seconds for t in self.trials if t.state == "pruned")
        return {
            "search_trials": len(self.trials),
            "search_complete": states.count("complete"),
            "search_pruned": states.count("pruned"),
            "search_seconds": self.seconds,
            "search_pruned_share_of_seconds": pruned_seconds / self.seconds if self.seconds else 0.0,
            "search_best_trial": self.best.number,
            "search_best_val_macro_f1": self.best.value,
            **(
                {
                    "search_check_share": self.confirmation.share,
                    "search_check_replaced": float(self.confirmation.replaced),
                }
                if self.confirmation
                else {}
            ),
        }

    def table(self):
        """The leaderboard: finished trials best first, then the pruned ones by their last report."""
        import pandas as pd

        order = {"complete": 0, "pruned": 1, "failed": 2}
        rows = sorted(self.trials, key=lambda t: (order[t.state], -(t.value if t.value is not None else -1)))
        return pd.DataFrame(
            [
                {
                    "trial": t.number,
                    "state": t.state,
                    "val_macro_f1": t.value,
                    "reports": len(t.reports),
                    "seconds": round(t.seconds, 1),
                    **t.settings,
                }
                for t in rows
            ]
        )

    def logged(self) -> StepLog:
        """The search in the finetune step's run: its metrics, the best settings, the leaderboard and the
        picture, the choice as a tag, and the summary line. (Each trial is its own run, logged as it ends.)"""
        best, metrics, table = self.best, self.metrics(), self.table()
        chosen = ", ".join(f"{k}={v:.4g}" for k, v in best.settings.items())
        retrained = "; its folder was out of reach, so its settings were trained again" if self.retrained else ""
        return StepLog(
            params={f"search.best.{k}": v for k, v in best.settings.items()},
            metrics=metrics,
            tags={"graftline.search": f"trial {best.number} of {len(self.trials)}: {chosen}"},
            files=[(self.picture, "search")] if self.picture else [],
            texts={"search/leaderboard.csv": table.to_csv(index=False)},
            tables={"search/leaderboard.json": table},
            lines=[
                f"search: trial {best.number} is the teacher (validation macro-F1 {best.value:.4f}; {chosen}); "
                f"{metrics['search_trials']} trials, {metrics['search_pruned']} pruned "
                f"({100 * metrics['search_pruned_share_of_seconds']:.0f}% of {metrics['search_seconds']:.0f} s)"
                f"{retrained}",
                *([self.confirmation.line()] if self.confirmation else []),
            ],
        )


def search(
    splits: Splits,
    params: FinetuneParams,
    model: ModelParams,
    out_dir: Path,
    study: Study,
    train: Train,
    cache_dir: Path | None = None,
    adapt: AdaptParams = AdaptParams(),
    on_trial: Callable[[TrialRecord], None] | None = None,
    launch: Launch | None = None,
    trials_dir: Path | None = None,
) -> SearchResult:
    """Search `params.search.space` for the settings whose fine-tuning scores best on validation, and
    leave the best trial's model in `out_dir`. Each trial is `train` (the recipes' table) of its
    settings, the search off. `on_trial` hears of every trial as it ends (and of the trials an earlier,
    interrupted search finished). With `launch`, the trials run wherever it runs `copies` calls
    `work(copy, copies)` of the work it is given (e.g. on Dask workers), sharing the study; without,
    here. Finished trials' models wait in `trials_dir` (default: beside `out_dir`), which a resumed
    search must find again."""
    import optuna

    settings = params.search
    trials_dir = trials_dir or out_dir.with_name(f"{out_dir.name}-trials")
    once = params.model_copy(update={"search": settings.model_copy(update={"enabled": False})})
    runner = TrialRunner(splits, once, model, adapt, trials_dir, cache_dir, train)
    space = runner.space()
    opened = open_study(study, settings, model.seed, max_reports=_most_reports(params, space))
    _requeue_interrupted(opened)
    if settings.start_from_settings and not opened.trials:
        opened.enqueue_trial(starting_point(params, space, model), user_attrs={GIVEN: True})
    spent = sum(record.seconds for record in records(opened))
    left = _left(settings, opened, spent)

    heard: set[int] = set()

    def tell_new(*_):
        for record in records(opened):
            if record.number not in heard:
                heard.add(record.number)
                if on_trial:
                    on_trial(record)

    tell_new()
    if left is not None:
        trials_left, seconds_left = left
        deadline = None if seconds_left is None else time.time() + seconds_left
        runner = replace(runner, deadline=deadline)
        if launch is None:
            opened.optimize(runner, n_trials=trials_left, timeout=seconds_left, callbacks=[tell_new])
        else:
            work = Worker(study, runner, trials_left, seconds_left)
            _while_waiting(lambda: launch(work, settings.workers or 0), tell_new)
    tell_new()

    complete = opened.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise GraftlineError("the search finished no trial: raise finetune.search.seconds or trials")
    best, given = _best(complete), _given(complete)
    checked = confirm(given, best, runner, settings.confidence) if given and given.number != best.number else None
    chosen = given if checked and not checked.replaced else best
    result, retrained = _teacher(chosen, runner, out_dir)
    shutil.rmtree(trials_dir, ignore_errors=True)
    every = records(opened)
    return SearchResult(
        finetune=result,
        best=next(r for r in every if r.number == chosen.number),
        trials=every,
        importances=importances(opened),
        retrained=retrained,
        confirmation=checked,
    )


def confirm(given, leader, runner: TrialRunner, required: float | None) -> Confirmation | None:
    """Whether `leader` (the best trial) beats `given` (the given settings' trial) on validation beyond
    its noise: both saved models predict the validation rows, and the share of paired bootstrap
    resamples in which the leader's macro-F1 is higher is weighed against `required`. None when the
    check is off, or when either model is out of reach (it ran on another machine)."""
    folders = [runner.folder / f"trial-{trial.number}" for trial in (leader, given)]
    if required is None or not all((folder / TRIAL_RESULT).is_file() for folder in folders):
        return None
    (ours, truth), (theirs, _) = (predictions_on(folder, runner.splits.validation, runner.model) for folder in folders)
    differences = paired_bootstrap(ours, theirs, truth, "macro_f1", seed=runner.model.seed)
    return Confirmation(
        given=given.number,
        leader=leader.number,
        share=float((differences > 0).mean()),
        required=required,
        gain=leader.value - given.value,
    )


@dataclass(frozen=True)
class TrialRunner:
    """The objective: one trial's fine-tuning. Picklable, so Dask workers can run it too."""

    splits: Splits
    params: FinetuneParams
    model: ModelParams
    adapt: AdaptParams
    folder: Path  # one sub-folder per finished trial, the best one's kept
    cache_dir: Path | None
    train: Train  # one fine-tuning (the recipes' table: picklable)
    deadline: float | None = None  # epoch seconds after which a running trial stops (once one has finished)

    def space(self) -> dict[str, SearchRange]:
        """The search space this backbone can use: without re-initialising layers where its modality
        refuses it (image backbones have no transformer layers)."""
        from graftline.tasks import modality as modalities
        from graftline.tasks.modality.base import REINIT

        space = dict(self.params.search.space)
        if not modalities.of_backbone(self.params.backbone).supports(REINIT):
            space.pop("reinit_layers", None)
        return space

    def __call__(self, trial) -> float:
        trial_params, trial_model = with_settings(self.params, self.model, suggest(trial, self.space()))
        reporter = _Reporter(trial, self.deadline, _most_reports(trial_params, {}), self.params.search.prune_after)
        io = TrainingIO(self.cache_dir, on_report=reporter, reports_per_epoch=self.params.search.reports_per_epoch)
        folder = self.folder / f"trial-{trial.number}"
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        started = time.time()
        try:
            result = self.train(Job(self.splits, trial_params, trial_model, folder, io, self.adapt))
        finally:  # pruned trials spend seconds too
            trial.set_user_attr("seconds", time.time() - started)
        (folder / TRIAL_RESULT).write_text(json.dumps(_describe(result)))
        value = result.final_training.best_val_macro_f1
        _keep_best(trial, value, self.folder)
        return value


class _Reporter:
    """A trial's `on_report`: each validation macro-F1 goes to the study, and the pruner (or the spent
    budget) may stop the trial there; the pruner not before `prune_after` of the trial's own reports,
    and nothing at its last report, when stopping would save nothing."""

    def __init__(self, trial, deadline: float | None, reports: int, prune_after: float = 0.0) -> None:
        self.trial, self.deadline, self.reports, self.step = trial, deadline, reports, 0
        self.judged_from = max(1, math.ceil(prune_after * reports))

    def __call__(self, macro_f1: float) -> None:
        import optuna

        self.step += 1  # steps count reports from 1: the pruner's min_resource is reports made
        self.trial.report(macro_f1, self.step)
        if self.step >= self.reports:
            return
        if self.step >= self.judged_from and self.trial.should_prune():
            self.trial.set_user_attr("stopped_by", "pruner")
            raise optuna.TrialPruned(f"validation macro-F1 {macro_f1:.4f} behind other trials at report {self.step}")
        if self.deadline is not None and time.time() > self.deadline and _any_complete(self.trial.study):
            self.trial.set_user_attr("stopped_by", "budget")
            raise optuna.TrialPruned("the search's seconds are spent")


@dataclass(frozen=True)
class Worker:
    """What each of `copies` parallel workers runs: its share of the trials left (so that together they
    run exactly the budget), within the seconds left, in the shared study."""

    study: Study
    runner: TrialRunner
    trials: int | None  # left to run, over all workers
    seconds: float | None

    def __call__(self, copy: int, copies: int) -> None:
        share = None if self.trials is None else self.trials // copies + (copy < self.trials % copies)
        if share == 0:
            return
        runner = self.runner
        reports = _most_reports(runner.params, runner.space())
        shared = open_study(self.study, runner.params.search, runner.model.seed, reports, stream=copy + 1)
        shared.optimize(runner, n_trials=share, timeout=self.seconds)


def open_study(study: Study, settings: SearchParams, seed: int, max_reports: int, stream: int = 0):
    """The study (created, or loaded to resume), with the TPE sampler and the configured pruner.

    The sampler's seed is `seed` for a new study. Loaded with trials, or opened by parallel worker
    `stream`, it is moved on by both: a sampler seeded as before would draw its first random settings
    again, repeating trials the study already has or that another worker is running."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # graftline reports each trial itself
    opened = optuna.create_study(
        study_name=study.name,
        storage=_storage(study),
        pruner=_pruner(settings, max_reports),
        direction="maximize",
        load_if_exists=True,
    )
    opened.sampler = optuna.samplers.TPESampler(
        seed=seed + 1_000 * stream + len(opened.trials), n_startup_trials=settings.startup()
    )
    return opened


def _storage(study: Study):
    import optuna

    if study.storage.startswith("sqlite"):  # several writers wait for each other instead of failing
        storage = optuna.storages.RDBStorage(study.storage, engine_kwargs={"connect_args": {"timeout": 60}})
        _begin_immediate(storage.engine)
        return storage
    return study.storage


def _begin_immediate(engine) -> None:
    """Make every transaction on a SQLite study take the write lock as it begins.

    A worker claims a queued trial by reading that it is waiting and writing that it runs, in one
    transaction whose row lock (`SELECT ... FOR UPDATE`) PostgreSQL and MySQL honour and SQLite
    ignores: its transactions begin deferred, so two workers can both read the trial as waiting and
    both run it (the second then fails to report it finished). Begun IMMEDIATE, one claim at a
    time reads and writes (SQLAlchemy's recipe for serializable SQLite transactions)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _sqlalchemy_begins(connection, _record) -> None:
        connection.isolation_level = None  # the driver's own BEGIN off: the listener below begins

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are closed; new ones get them


def _pruner(settings: SearchParams, max_reports: int):
    import optuna

    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings.min_reports,
            max_resource=max(max_reports, settings.min_reports),
            reduction_factor=settings.reduction_factor,
        )
    return EqualResourceHalving(settings.min_reports, settings.reduction_factor)


class EqualResourceHalving:
    """Asynchronous successive halving in which every comparison is at equal training: at each
    checkpoint (`min_reports` reports, then that times `reduction_factor`, its square, ...) a trial goes
    on only if its score after that many reports is among the top 1/`reduction_factor` of the scores all
    trials made after as many reports. (Optuna's own pruner records a trial's latest score at the
    checkpoints it has passed, so a trial asked late, after `prune_after`, would be weighed by a later
    score against the others' earlier ones.) Of fewer than `reduction_factor` scores, only the lowest
    is stopped. Each checkpoint is judged once per trial, when the trial is first asked past it.

    Optuna asks a study's pruner only `prune(study, trial)`; this class answers that without deriving
    from `optuna.pruners.BasePruner`, so that importing this module does not import Optuna."""

    def __init__(self, min_reports: int, reduction_factor: int) -> None:
        self.min_reports, self.reduction_factor = min_reports, reduction_factor
        self.judged: dict[int, int] = {}  # trial id -> the last checkpoint judged

    def checkpoints(self, up_to: int) -> list[int]:
        steps, step = [], self.min_reports
        while step <= up_to:
            steps.append(step)
            step *= self.reduction_factor
        return steps

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        judged = self.judged.get(trial._trial_id, 0)
        due = [c for c in self.checkpoints(step) if c > judged and c in trial.intermediate_values]
        if not due:  # most reports pass no checkpoint: the study's trials are not read for them
            return False
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        for checkpoint in due:
            self.judged[trial._trial_id] = checkpoint
            scores = [t.intermediate_values[checkpoint] for t in others if checkpoint in t.intermediate_values]
            if scores and not _goes_on(trial.intermediate_values[checkpoint], scores, self.reduction_factor):
                return True
        return False


def _goes_on(score: float, others: list[float], reduction_factor: int) -> bool:
    """Whether `score` is among the top 1/`reduction_factor` of itself and `others` (with fewer than
    `reduction_factor` scores in all, whether it is not the lowest)."""
    ranked = sorted([*others, score], reverse=True)
    kept = max(1, len(ranked) // reduction_factor)
    if len(ranked) < reduction_factor:
        return score > ranked[-1] or len(set(ranked)) == 1
    return score >= ranked[kept - 1]


def _most_reports(params: FinetuneParams, space: dict[str, SearchRange]) -> int:
    """The most reports a trial can make: Hyperband's largest budget."""
    epochs = max(space["epochs"].values()) if "epochs" in space else params.epochs
    probe = max(space["probe_epochs"].values()) if "probe_epochs" in space else params.probe_epochs
    stages = epochs + (probe if params.strategy == "lp-ft" else 0)
    return int(stages) * params.search.reports_per_epoch


def suggest(trial, space: dict[str, SearchRange]) -> dict[str, float]:
    """The trial's value of every searched setting (whole numbers for whole-number settings)."""
    settings = {}
    for name, values in space.items():
        whole = searched_field(name).annotation in (int, "int")
        if values.choices is not None:
            choices = [int(v) if whole else float(v) for v in values.choices]
            settings[name] = trial.suggest_categorical(name, choices)
        elif whole:
            settings[name] = trial.suggest_int(name, int(values.low), int(values.high), log=values.log)
        else:
            settings[name] = trial.suggest_float(name, values.low, values.high, log=values.log)
    return settings


def with_settings(params: FinetuneParams, model: ModelParams, settings: dict[str, float]):
    """(finetune, model) settings of a trial: the given ones with the searched ones replaced."""
    finetune = {name: value for name, value in settings.items() if name != "seed"}
    model = model.model_copy(update={"seed": settings["seed"]}) if "seed" in settings else model
    return params.model_copy(update=finetune), model


def starting_point(params: FinetuneParams, space: dict[str, SearchRange], model: ModelParams) -> dict[str, float]:
    """The settings as given, each brought inside its range (or to its nearest choice)."""
    point = {}
    for name, values in space.items():
        given = model.seed if name == "seed" else getattr(params, name)
        if values.choices is not None:
            point[name] = min(values.choices, key=lambda choice: abs(choice - given))
        else:
            point[name] = min(max(given, values.low), values.high)
        if searched_field(name).annotation in (int, "int"):
            point[name] = int(point[name])
    return point


def records(study) -> list[TrialRecord]:
    """The study's ended trials, in order."""
    import optuna

    states = {
        optuna.trial.TrialState.COMPLETE: "complete",
        optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "failed",
    }
    ended = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in states or trial.user_attrs.get("requeued"):
            continue
        reports = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else (reports[-1] if reports else None)
        seconds = trial.user_attrs.get("seconds")
        if seconds is None and trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        ended.append(
            TrialRecord(
                number=trial.number,
                state=states[trial.state],
                value=value,
                settings=dict(trial.params),
                reports=reports,
                seconds=seconds or 0.0,
                started=trial.datetime_start.timestamp() if trial.datetime_start else time.time(),
                stopped_by=trial.user_attrs.get("stopped_by"),
                worker=trial.user_attrs.get("worker"),
            )
        )
    return ended


def importances(study) -> dict[str, float]:
    """How much of the variation in the finished trials' scores each setting explains (fANOVA), when
    at least two trials finished with different settings; else nothing."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # e.g. every searched setting had one value only
        return {}


def plot_search(result: SearchResult, path: Path) -> Path:
    """Two panels: every trial's validation macro-F1 in order with the best so far, and the settings'
    importances."""
    from matplotlib.ticker import MaxNLocator

    with plots.figure(path, dpi=110, ncols=2, figsize=(11, 4)) as (fig, (history, importance)):
        for state, marker, colour in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:grey")):
            shown = [t for t in result.trials if t.state == state and t.value is not None]
            history.scatter([t.number for t in shown], [t.value for t in shown], marker=marker, c=colour, label=state)
        best, line = -math.inf, []
        for trial in sorted(result.trials, key=lambda t: t.number):
            if trial.state == "complete" and trial.value is not None:
                best = max(best, trial.value)
            line.append((trial.number, best if best > -math.inf else math.nan))
        history.step([n for n, _ in line], [v for _, v in line], where="post", c="tab:orange", label="best so far")
        history.set(xlabel="trial", ylabel="validation macro-F1", title="optimisation history")
        history.xaxis.set_major_locator(MaxNLocator(integer=True))
        history.legend(loc="lower right")
        if result.importances:
            names = sorted(result.importances, key=result.importances.get)
            importance.barh(names, [result.importances[n] for n in names], color="tab:blue")
            importance.set(xlabel="importance (fANOVA)", title="setting importance")
        else:
            importance.text(0.5, 0.5, "needs two finished trials\nwith different settings", ha="center", va="center")
            importance.set_axis_off()
    return path


# -- the parts that keep a search resumable and its models small ---------------------------------


def _left(settings: SearchParams, study, spent: float) -> tuple[int | None, float | None] | None:
    """(trials, seconds) the budget still allows, or None when it is spent."""
    import optuna

    spending = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # what the trial budget counts
    finished = len(study.get_trials(deepcopy=False, states=spending))
    queued = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    trials = None if settings.trials is None else settings.trials - finished
    seconds = None if settings.seconds is None else settings.seconds - spent
    if (trials is not None and trials <= 0 and not queued) or (seconds is not None and seconds <= 0):
        return None
    return (max(trials, queued) if trials is not None else None), seconds


def _requeue_interrupted(study) -> None:
    """A trial still RUNNING when a search starts belonged to a process that died: mark it failed
    and queue its settings again. (Nothing else runs this study now: the lifecycle starts its workers
    only after this.)"""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "requeued", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={GIVEN: True} if trial.user_attrs.get(GIVEN) else None)


def _any_complete(study) -> bool:
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _keep_best(trial, value: float, folder: Path) -> None:
    """Of the finished trials' folders, keep only the best one's (this trial's, unless an earlier trial
    scored at least as well) and the given settings' one (the check weighs the two). Folders of trials
    still running elsewhere are not touched."""
    import optuna

    complete = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    keep = {trial.number}
    if complete and value <= _best(complete).value:  # a tie keeps the earlier trial
        keep = {_best(complete).number}
    given = _given([*complete, trial])
    keep |= {given.number} if given else set()
    for number in {trial.number, *(t.number for t in complete)} - keep:
        shutil.rmtree(folder / f"trial-{number}", ignore_errors=True)


def _best(complete):
    """The best finished trial; of equal scores, the first."""
    return max(complete, key=lambda t: (t.value, -t.number))


def _given(trials):
    """The trial of the given settings among `trials`, if any."""
    return next((t for t in trials if t.user_attrs.get(GIVEN)), None)


def _teacher(best, runner: TrialRunner, out_dir: Path) -> tuple[FinetuneResult, bool]:
    """The best trial's model moved to `out_dir` with its training record, or, when its folder is out
    of reach, its settings trained again."""
    folder = runner.folder / f"trial-{best.number}"
    if (folder / TRIAL_RESULT).is_file():
        described = json.loads((folder / TRIAL_RESULT).read_text())
        (folder / TRIAL_RESULT).unlink()
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(str(folder), str(out_dir))
        return _undescribe(described, out_dir), False
    params, model = with_settings(runner.params, runner.model, {name: best.params[name] for name in runner.space()})
    job = Job(runner.splits, params, model, out_dir, TrainingIO(runner.cache_dir), runner.adapt)
    return runner.train(job), True


def _describe(result: FinetuneResult) -> dict:
    training = asdict(result.training)
    return {
        "labels": result.labels,
        "training": training,
        "parameters": result.parameters,
        "trainable_parameters": result.trainable_parameters,
    }


def _undescribe(described: dict, model_dir: Path) -> FinetuneResult:
    training = described["training"]
    training["history"] = [EpochRecord(**record) for record in training["history"]]
    return FinetuneResult(
        model_dir=model_dir,
        labels=described["labels"],
        training=TrainResult(**training),
        parameters=described["parameters"],
        trainable_parameters=described["trainable_parameters"],
    )


def _while_waiting(work: Callable[[], None], every: Callable[[], None], seconds: float = 5.0) -> None:
    """Run `work` on a thread (keeping the caller's context) and call `every` each `seconds` until it ends."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Pending

    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="search") as pool:
        running = pool.submit(context.run, work)
        while True:
            try:
                running.result(timeout=seconds)
                return
            except Pending:
                every()
