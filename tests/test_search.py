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
