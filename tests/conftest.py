"""Shared fixtures. The environment is set here, before anything imports MLflow or Prefect,
because both read their telemetry and offline switches at import time."""

import os

from graftline.tasks import environment

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach a model hub from a test
# What `datasets` converts a Hub-layout folder into stays out of the user's cache.
os.environ["HF_DATASETS_CACHE"] = __import__("tempfile").mkdtemp(prefix="graftline-tests-hf-datasets-")
# The workers the platform tests start (`graftline up`, inheriting this environment) look for new runs
# every second instead of Prefect's 10 s: each deployment run would otherwise wait 5 s on average.
os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
environment.apply_defaults()

import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import prefect  # noqa: E402, F401  -- binds Prefect's log handler to pytest's session-long stderr,
import pytest  # noqa: E402         # not to a per-test capsys stream that is closed afterwards


def short_texts():
    """Model-wide settings of the tiny test models: texts cut at 32 tokens."""
    from graftline.tasks.settings import ModelParams

    return ModelParams(max_length=32)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT built from config (random weights) with MiniLM's real tokenizer.

    Small enough to fine-tune in a second on the CPU; random weights, so tests assert behaviour
    (loss falls, layers copy, files appear), not pretrained quality.
    """
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), width=32, layers=2)


@pytest.fixture(scope="session")
def narrow_backbone(tmp_path_factory) -> Path:
    """A 1-layer, 16-wide BERT: a student whose width differs from the tiny teacher's."""
    return build_tiny_bert(tmp_path_factory.mktemp("narrow-bert"), width=16, layers=1)


@pytest.fixture(scope="session")
def still_backbone(tmp_path_factory) -> Path:
    """The tiny BERT without dropout: runs that split the same work differently (processes,
    micro-batches) must agree to rounding, which random dropout masks would prevent."""
    return build_tiny_bert(tmp_path_factory.mktemp("still-bert"), width=32, layers=2, dropout=0.0)


def build_tiny_bert(folder: Path, width: int, layers: int, dropout: float = 0.1) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from graftline.tasks.engine.backbones import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_image_backbone(tmp_path_factory) -> Path:
    """A two-stage EfficientNet-Lite of a few thousand weights (random), read at 32 x 32: the image
    counterpart of the tiny BERT, built from config with nothing downloaded."""
    import torch

    from graftline.tasks.engine import vision

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-lite")
    vision.build(vision.tiny_config(["x"])).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shape_images(tmp_path_factory) -> dict[str, Path]:
    """Drawn pictures of three classes (demo_images): `train` (14 a class) and `outlines` (4 a class,
    the other look), one folder per class each."""
    from graftline.tasks.data import demo_images

    root = tmp_path_factory.mktemp("shapes")
    return {
        "train": demo_images.draw_set(root / "train", 14, outline=False, seed=1),
        "outlines": demo_images.draw_set(root / "outlines", 4, outline=True, seed=2),
    }


@pytest.fixture(scope="session", autouse=True)
def graftline_home(tmp_path_factory) -> Path:
    """graftline's folder (reused step results, checkpoints, token cache) for this session only."""
    home = tmp_path_factory.mktemp("graftline-home")
    os.environ["GRAFTLINE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One sqlite MLflow store for the session (creating its tables costs ~7 s), explicit artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["GRAFTLINE_ARTIFACT_ROOT"] = (root / "artifacts").as_uri()
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield root
    mlflow.set_tracking_uri(None)


@pytest.fixture
def unique_name() -> str:
    """A fresh registered-model / experiment name, so tests sharing the store never collide."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect API for the whole session (startup ~8 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def toy_frame(n_per_class: int = 40, seed: int = 0) -> pd.DataFrame:
    """Separable two-class data: each class has its own vocabulary."""
    import random

    rng = random.Random(seed)
    words = {
        "good": ["great", "love", "excellent", "happy", "perfect", "wonderful", "fantastic", "nice"],
        "bad": ["broken", "awful", "terrible", "refund", "angry", "useless", "cracked", "late"],
    }
    rows = []
    for label, vocab in words.items():
        for i in range(n_per_class):
            rows.append((" ".join(rng.choices(vocab, k=5)) + f" {label[0]}{i}", label))
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture
def toy_splits():
    from graftline.tasks.data.splits import Split, Splits

    return Splits(
        train=Split("train", toy_frame(40, 0), "toy"),
        validation=Split("validation", toy_frame(10, 1), "toy"),
        test=Split("test", toy_frame(10, 2), "toy"),
    )


@pytest.fixture(scope="session")
def dead_backbone(tiny_backbone, tmp_path_factory):
    """The tiny BERT with every weight zeroed: its features are constant, so it transfers nothing."""
    import torch
    from transformers import BertModel

    from graftline.tasks.engine.backbones import load_tokenizer

    folder = tmp_path_factory.mktemp("dead-bert")
    model = BertModel.from_pretrained(tiny_backbone)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(str(tiny_backbone)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def exported_run(prefect_harness, mlflow_store, tiny_backbone):
    """One lifecycle run of the demo data on the tiny BERT, exported and explained: (model name, summary).

    Shared by the flow tests (what it tracks and registers) and the serving tests (what its versions
    do next), so the suite pays for it once. Its registered models are `<name>` and `<name>-student`,
    both at `production`; tests that add to them (monitor records) must not assume they are alone."""
    from graftline.flows.lifecycle import transfer
    from graftline.tasks.settings import (
        DistillParams,
        ExplainParams,
        ExportParams,
        FinetuneParams,
        GateParams,
        ModelParams,
        RegistryParams,
        RunParams,
    )

    name = f"t-{uuid.uuid4().hex[:8]}"
    summary = transfer(
        model=ModelParams(max_length=32, seed=13),
        finetune=FinetuneParams(backbone=str(tiny_backbone), epochs=2, patience=2, learning_rate=3e-3),
        distill=DistillParams(student="teacher-layers:1", epochs=1, learning_rate=3e-3),
        export=ExportParams(enabled=True),
        explain=ExplainParams(enabled=True, rows=4, errors=2, n_steps=8),
        registry=RegistryParams(model_name=name, experiment=name, gates=GateParams(retention_floor=0.0)),
        run=RunParams(reuse_steps=False),
    )
    return name, summary


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL server for the session (flows/database.py `scratch_server`): its URL,
    with a password, one database `platform`; stopped and removed at the end."""
    from graftline.flows import database

    if database.server_programs() is None:
        pytest.skip("needs PostgreSQL's server programs (apt-get install postgresql; .ci/run installs it)")
    with database.scratch_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_if_installed(request) -> str | None:
    """`postgres`'s URL where PostgreSQL is installed, else None (the caller falls back to SQLite)."""
    from graftline.flows import database

    return request.getfixturevalue("postgres") if database.server_programs() else None
