"""The registry contract: every name graftline writes into, or reads back from, the MLflow Model Registry.

A lifecycle registers its teacher as `<name>` and its student as `<name>-student`. Stages are
aliases: every version gets `candidate`; `staging` and `production` move only behind the gates
(promotion.py). A version carries tags that say where it came from and how to use it again; with
them, "what does production run?" is one lookup of the production version's tags:

    graftline.role       teacher | student
    backbone             what the teacher was fine-tuned from (a student: the backbone of its teacher)
    max_length           tokens per text it was trained and evaluated at; promotion scores it at the same
    modality             the kind of input (text)
    training_run_id      the MLflow run that trained it (finetune or distill step)
    ingest_run_id        the run holding its evaluation sets (artifact folder `evaluation_sets`)
    data_digest          digest of the train/validation/test data
    validation_success   whether data validation passed (true | false)
    test_accuracy, test_macro_f1   its scores when it was registered
    teacher_version      students: the teacher version they were distilled from
    privacy_epsilon, privacy_delta   the differential-privacy budget spent by a privately fine-tuned teacher
    privacy_note         a student of a private teacher: why it carries no guarantee of its own
    export_run_id        the run holding its ONNX exports, when it was exported
    servable_model_uri   its ONNX pyfunc (export servable.py): `mlflow models serve -m <uri>` serves the fast form
    temperature          divides its logits before the softmax: calibrated confidence (fitted on validation)
    prefect_flow_run_id, git_commit   what ran it
    lifecycle_run_id     the lifecycle's MLflow run (a resumed one adopts what the run it finishes registered)

History records are registered-model tags `graftline.history.NNNNN`. The promotion lock lives
outside the registry (registry/locks.py); `<name>.graftline-lock` is the registered model an earlier
graftline used as one, deleted when the model is next locked.
"""

from __future__ import annotations

TEACHER, STUDENT = "teacher", "student"
ROLES = (TEACHER, STUDENT)
STUDENT_SUFFIX = "-student"

CANDIDATE, STAGING, PRODUCTION = "candidate", "staging", "production"
STAGES = (CANDIDATE, STAGING, PRODUCTION)
PROMOTABLE = (STAGING, PRODUCTION)
BELOW = {STAGING: CANDIDATE, PRODUCTION: STAGING}  # where a promotion takes its version by default

HISTORY_PREFIX = "graftline.history."
LEGACY_LOCK_SUFFIX = ".graftline-lock"
EVALUATION_SETS = "evaluation_sets"  # artifact folder of the ingest run: <name>.parquet per evaluation set

# Version tag keys
ROLE = "graftline.role"
BACKBONE = "backbone"
MAX_LENGTH = "max_length"
MODALITY = "modality"
TRAINING_RUN = "training_run_id"
INGEST_RUN = "ingest_run_id"
DATA_DIGEST = "data_digest"
LABELS = "labels"  # the classes it predicts (labels_tag): one registered name holds one label set
VALIDATION = "validation_success"
TEST_ACCURACY = "test_accuracy"
TEST_MACRO_F1 = "test_macro_f1"
TEACHER_VERSION = "teacher_version"
PRIVACY_EPSILON = "privacy_epsilon"
PRIVACY_DELTA = "privacy_delta"
PRIVACY_NOTE = "privacy_note"
EXPORT_RUN = "export_run_id"
TEMPERATURE = "temperature"
CLASSIFIER = "classifier_uri"  # the trained model a version's pyfunc runs (text: export/calibrated.py)
WEIGHTS_DIGEST = "weights_sha256"  # of the version's safetensors weights (records.weights_digest)
SERVABLE = "servable_model_uri"
FLOW_RUN = "prefect_flow_run_id"
LIFECYCLE_RUN = "lifecycle_run_id"  # the MLflow run of the lifecycle that registered the version
RESUMED_FROM = "graftline.resumed_from"  # a resumed lifecycle: the run it finishes
GIT_COMMIT = "git_commit"

TEXT = "text"
IMAGE = "image"
IMAGE_WEIGHTS = "weights"  # artifact folder of a logged image model: its safetensors classifier folder
# Every logged model's input example: written here, never rows of the data (which may hold personal
# data that the model page would show to everyone who can read the store).
INPUT_EXAMPLE = ["An example text to classify.", "Another one, a little longer than the first."]
# Versions registered before `max_length` was recorded were trained at the then default.
UNRECORDED_MAX_LENGTH = 128


def registered_name(model_name: str, role: str) -> str:
    """The registered model of `role`: the teacher under the model name, the student beside it."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
    return model_name if role == TEACHER else model_name + STUDENT_SUFFIX


def teacher_name(student_name: str) -> str:
    return student_name.removesuffix(STUDENT_SUFFIX)


def recorded_temperature(tags: dict[str, str]) -> float:
    """What a version's logits are divided by for calibrated probabilities (1: never calibrated)."""
    return float(tags.get(TEMPERATURE, 1.0))


def recorded_max_length(tags: dict[str, str]) -> int:
    """The tokens per text a version was trained and evaluated at: what it must be scored at again."""
    return int(tags.get(MAX_LENGTH, UNRECORDED_MAX_LENGTH))


def labels_tag(labels: list[str]) -> str:
    """The `labels` tag's value: the class names as JSON, or their digest where a tag cannot hold them."""
    import hashlib
    import json

    written = json.dumps(sorted(labels), ensure_ascii=False)
    return written if len(written) <= 4000 else "sha256:" + hashlib.sha256(written.encode()).hexdigest()


def trained_model_uri(name: str, version: str, tags: dict[str, str]) -> str:
    """The trained model of a registered version, which graftline re-scores, serves with its own
    predictors and trains from: the model its pyfunc runs (`classifier_uri`), else the version's own
    (versions registered before the pyfunc, image versions)."""
    return tags.get(CLASSIFIER) or f"models:/{name}/{version}"
