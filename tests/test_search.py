"""The fine-tuning search (tasks/train/search.py): real Optuna studies in sqlite files, trials fine-tuning the
tiny random BERT (20 optimizer steps an epoch). The flow's side (nested runs, the leaderboard) is in
test_flow's auto-backbone test; bad search spaces are among test_cli's one-line errors."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from graftline.tasks.data.splits import Split, Splits
from graftline.tasks.engine import backbones
from graftline.tasks.evaluate.scores import evaluate_model
from graftline.tasks.settings import FinetuneParams, ModelParams, SearchParams
from graftline.tasks.train.finetune import RECIPES
from graftline.tasks.train.search import Study, records, search
from tests.conftest import toy_frame

# The given learning rate (3e-3) learns the toy task within an epoch; most of this range learns nothing
# in 20 steps, so the sampler's trials report poorly and the pruner has something to stop.
SPACE = {"learning_rate": {"low": 1e-7, "high": 3e-3, "log": True}, "epochs": {"low": 1, "high": 2}}
MODEL = ModelParams(max_length=32)


def splits() -> Splits:
    return Splits(
        train=Split("train", toy_frame(160, 0), "toy"),  # 320 rows: 20 steps of 16
        validation=Split("validation", toy_frame(20, 1), "toy"),
        test=Split("test", toy_frame(10, 2), "toy"),
    )


def searching(backbone) -> FinetuneParams:
    space = SearchParams(enabled=True, trials=3, space=SPACE, min_reports=1)
    return FinetuneParams(backbone=str(backbone), epochs=1, patience=2, learning_rate=3e-3, search=space)


def test_a_poor_trial_is_pruned_and_the_best_trial_is_the_teacher(tiny_backbone, tmp_path):
    data = splits()
    result = search(data, searching(tiny_backbone), MODEL, tmp_path / "teacher", Study.beside(tmp_path, "s"), RECIPES)
    heard = result.trials
    assert [t.number for t in heard] == [0, 1, 2]
    assert heard[0].settings == {"learning_rate": 3e-3, "epochs": 1}  # the given settings come first
    pruned = [t for t in heard if t.state == "pruned"]
    assert pruned and all(t.stopped_by == "pruner" for t in pruned)
    assert all(len(t.reports) < 4 * t.settings["epochs"] for t in pruned)  # stopped before its last report
    assert all(len(t.reports) == 4 * t.settings["epochs"] for t in heard if t.state == "complete")

    best = result.best
    assert best.value == max(t.value for t in heard if t.state == "complete")
    teacher = result.finetune
    assert teacher.model_dir == tmp_path / "teacher" and not (tmp_path / "teacher-trials").exists()
    assert len(teacher.training.history) == best.settings["epochs"]
    # the saved teacher is the best trial's model: it scores on validation what that trial reported
    saved = backbones.load_classifier(str(teacher.model_dir)), backbones.load_tokenizer(str(teacher.model_dir))
    assert evaluate_model(*saved, data.validation, MODEL.max_length).macro_f1 == pytest.approx(best.value)
    metrics = result.metrics()
    assert metrics["search_pruned"] == len(pruned) and 0 < metrics["search_pruned_share_of_seconds"] < 1
    logged = result.logged()  # what the finetune step logs of the search
    assert logged.params == {f"search.best.{k}": v for k, v in best.settings.items()}
    assert set(logged.tables) == {"search/leaderboard.json"} and set(logged.texts) == {"search/leaderboard.csv"}
    assert logged.lines[0].startswith(
        f"search: trial {best.number} is the teacher (validation macro-F1 {best.value:.4f}"
    )


# Run in a fresh process that kills itself (SIGKILL: no clean-up of any kind) at trial 1's first report.
KILLED_SEARCH = """
import os, signal, sys
from pathlib import Path
from graftline.tasks.train import search as searching
from graftline.tasks.train.finetune import RECIPES
from tests.test_search import MODEL, searching as params, splits

def dying(self, value):
    if self.trial.number == 1:
        os.kill(os.getpid(), signal.SIGKILL)

searching._Reporter.__call__ = dying
folder = Path(sys.argv[2])
searching.search(splits(), params(sys.argv[1]), MODEL, folder / "teacher", searching.Study.beside(folder, "s"), RECIPES)
"""


def test_a_killed_search_resumes_with_its_finished_trial_kept(tiny_backbone, tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_SEARCH, str(tiny_backbone), str(tmp_path)], env=env, cwd=root)
    assert killed.returncode == -signal.SIGKILL

    study = Study.beside(tmp_path, "s")
    before = optuna.load_study(study_name=study.name, storage=study.storage)
    assert [t.state.name for t in before.trials] == ["COMPLETE", "RUNNING"]
    first = records(before)[0]
    interrupted = before.trials[1].params

    heard = []
    result = search(
        splits(), searching(tiny_backbone), MODEL, tmp_path / "teacher", study, RECIPES, on_trial=heard.append
    )
    assert heard[0] == first  # told first, as it was: not trained again
    assert [t.number for t in result.trials] == [0, 2, 3]  # 3 trials in all; the killed one is not counted
    assert result.trials[1].settings == interrupted  # the killed trial's settings ran again
    assert result.trials[2].settings != interrupted  # a resumed sampler draws anew, not its first draws again
    assert (tmp_path / "teacher" / "model.safetensors").is_file()


def test_the_finetune_fingerprint_covers_the_search_only_when_it_is_on():
    """Reuse (flows/reuse.py): the same search is reused, another space is not; where its trials run is
    not part of it, and a search that is off changes nothing."""
    from graftline.flows.reuse import fingerprint

    def key(**search) -> str:
        return fingerprint("finetune", {"params": FinetuneParams(search=SearchParams(**search))})

    assert key(enabled=True) == key(enabled=True, runner="dask", workers=4, storage="sqlite:///elsewhere.db")
    assert key(enabled=True) != key(enabled=True, space=SPACE)
    assert key(enabled=True) != key(enabled=True, trials=5) != key()
    assert key() == key(trials=5, space=SPACE)  # off: its settings decide nothing


def test_successive_halving_weighs_every_trial_after_as_much_training():
    """The pruner against a computation by hand: at checkpoint 2 (min_reports 2, reduction factor 3) a
    trial goes on only within the top third of all scores after 2 reports, whatever it scored later."""
    from graftline.tasks.train.search import EqualResourceHalving

    study = optuna.create_study(direction="maximize", pruner=EqualResourceHalving(2, 3))
    for curve in ([0.5, 0.9, 0.2, 0.2], [0.5, 0.8], [0.5, 0.7]):  # after 2 reports: 0.9, 0.8, 0.7
        trial = study.ask()
        for step, score in enumerate(curve, start=1):
            trial.report(score, step)
        study.tell(trial, curve[-1])

    def judged(curve: list[float]) -> bool:
        trial = study.ask()
        for step, score in enumerate(curve, start=1):
            trial.report(score, step)
        pruned = trial.should_prune()
        study.tell(
            trial,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            values=None if pruned else curve[-1],
        )
        return pruned

    # first asked at report 4 (as after prune_after): judged by its score after 2 reports, 0.95 >= 0.9 of 4 scores
    assert not judged([0.1, 0.95, 0.1, 0.1])
    assert judged([0.9, 0.85, 0.99, 0.99])  # 0.85 after 2 reports: below the top third (the 0.9 and 0.95)
    assert not judged([0.6])  # before the first checkpoint: nothing to judge


def test_a_trial_is_not_asked_to_stop_before_its_share_of_the_schedule():
    from graftline.tasks.train.search import _Reporter

    class Trial:  # records the pruner's questions; the real study is exercised by the searches above
        asked: list[int] = []

        def report(self, value, step):
            self.step = step

        def should_prune(self):
            self.asked.append(self.step)
            return False

    reporter = _Reporter(Trial(), None, reports=8, prune_after=0.5)
    for score in [0.5] * 8:
        reporter(score)
    assert Trial.asked == [4, 5, 6, 7]  # from half its 8 reports, never at the last


def poorly_started(backbone) -> FinetuneParams:
    """The given learning rate learns nothing in 20 steps; the space offers three that learn the task (two
    trials drawn at random after the given one: a learning rate that learns is drawn but for 1 in 16)."""
    space = {"learning_rate": {"choices": [1e-7, 2e-3, 3e-3, 4e-3]}}
    settings = SearchParams(enabled=True, trials=3, space=space, pruner="none")
    return FinetuneParams(backbone=str(backbone), epochs=1, learning_rate=1e-7, search=settings)


@pytest.mark.parametrize(
    "validation_rows, replaced",
    # 40 validation rows tell a learned model apart; 2 cannot: the given settings' model says one class for
    # both, so in the quarter of resamples that draw that class's row twice the two models tie.
    [(20, True), (1, False)],
)
def test_a_better_trial_replaces_the_given_settings_only_when_validation_can_tell(
    tiny_backbone, tmp_path, validation_rows, replaced
):
    data = splits()
    data = Splits(data.train, Split("validation", toy_frame(validation_rows, 1), "toy"), data.test)
    result = search(data, poorly_started(tiny_backbone), MODEL, tmp_path / "t", Study.beside(tmp_path, "s"), RECIPES)
    trials = {t.number: t for t in result.trials}
    assert trials[0].settings == {"learning_rate": 1e-7}
    learned = sorted((t for t in result.trials if t.settings["learning_rate"] > 1e-3), key=lambda t: -t.value)
    assert learned and min(t.value for t in learned) > trials[0].value  # a better trial was found...
    check = result.confirmation
    assert check.given == 0 and check.leader == learned[0].number and check.replaced is replaced
    assert check.share == (1.0 if replaced else pytest.approx(3 / 4, abs=0.05))
    assert (result.best.number == check.leader) is replaced  # ...and became the teacher only when confirmed
    assert result.logged().lines[-1] == check.line()
    assert ("the given settings stay" in check.line()) is not replaced
    saved = (
        backbones.load_classifier(str(result.finetune.model_dir)),
        backbones.load_tokenizer(str(result.finetune.model_dir)),
    )
    assert evaluate_model(*saved, data.validation, MODEL.max_length).macro_f1 == pytest.approx(result.best.value)


def test_the_paired_bootstrap_agrees_with_scikit_learn_on_a_resample():
    import numpy as np
    from sklearn.metrics import f1_score

    from graftline.tasks.evaluate.scores import _weighted, paired_bootstrap

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.9, truth, rng.integers(0, 3, 300))
    poor = np.where(rng.random(300) < 0.6, truth, rng.integers(0, 3, 300))
    drawn = rng.integers(0, 300, 300)
    counts = np.bincount(drawn, minlength=300)[None].astype(np.float32)
    assert _weighted("macro_f1", counts, good, truth, 3)[0] == pytest.approx(
        f1_score(truth[drawn], good[drawn], average="macro"), abs=1e-5
    )
    assert _weighted("accuracy", counts, poor, truth, 3)[0] == pytest.approx((poor[drawn] == truth[drawn]).mean())
    differences = paired_bootstrap(good, poor, truth, "accuracy", resamples=1000)
    assert len(differences) == 1000 and (differences > 0).all()
    observed = (good == truth).mean() - (poor == truth).mean()
    assert np.percentile(differences, 2.5) < observed < np.percentile(differences, 97.5)


def test_the_seed_is_searched_as_the_model_seed():
    from pydantic import ValidationError

    from graftline.tasks.train.search import starting_point, with_settings

    params = FinetuneParams(search=SearchParams(enabled=True, space={"seed": {"choices": [13, 21]}}))
    assert starting_point(params, params.search.space, ModelParams(seed=20)) == {"seed": 21}  # the nearest choice
    finetune, model = with_settings(params, ModelParams(seed=13), {"seed": 21, "learning_rate": 1e-4})
    assert (model.seed, finetune.learning_rate) == (21, 1e-4)
    with pytest.raises(ValidationError, match="search space seed: 0.5 is not a valid seed"):
        FinetuneParams(search=SearchParams(enabled=True, space={"seed": {"low": 0.5, "high": 3}}))
