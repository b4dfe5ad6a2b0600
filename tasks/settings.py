"""Every parameter group of graftline, with its defaults: the one home of every setting.

Each group is a pydantic model. That is what the Prefect UI renders as a validated form (with these
descriptions, enums and bounds), what the command line and parameter files are checked against, and
what the step functions in tasks/ take as their configuration, so there is no second copy of a
default to drift: `finetune(splits, FinetuneParams(), ModelParams(), out)` trains what `graftline run`
trains. The groups live here, in tasks/, because steps take them and tasks never import flows;
flows/params.py assembles them into the flows' parameters. Every command has its group here too
(promote, rollback, predict, monitor, serve, explain, the platform): each command-line option takes
its default from its field (flows/cli/options.py), and the names several commands share (the
experiment, the demo's model, the work pool) are written once, below. What image data changes is
IMAGE_DEFAULTS, noted in the description of every field it changes.

The training engine (tasks/engine/training.py) keeps its own small dataclass, `TrainConfig`, with no
defaults for anything a user sets; `TrainingParams.train_config` is the one translation into it.

Defaults run the embedded demo: ticket routing on customer messages about electronics, with
messages about home goods as a second domain to measure cross-domain transfer.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from graftline.tasks.registry.contract import PRODUCTION, STUDENT_SUFFIX

if TYPE_CHECKING:  # the engine imports torch; the settings stay light for the command line and the UI
    from graftline.tasks.engine.training import TrainConfig
    from graftline.tasks.train.self_training import SelfTrainingSettings

# Names written once, used by every command that needs them.
EXPERIMENT = "graftline"  # the MLflow experiment of every run, unless a command is told another
DEMO_MODEL = "graftline-demo"  # the demo's registered model (its student: `graftline-demo-student`)
DEMO_SERVED = f"{DEMO_MODEL}{STUDENT_SUFFIX}@{PRODUCTION}"  # what the demo serves: its student in production
WORK_POOL = "graftline"  # the Prefect work pool `graftline up` creates and the deployments run on
RETRAIN_CRON = "0 2 * * *"  # 02:00 every night, in the server's time zone (UTC unless told)
MONITOR_CRON = "30 * * * *"  # every hour: a check waits (no run) until min_rows new rows were scored

DEMO_TRAIN = "demo:electronics"
DEMO_EVAL_SETS = {"home": "demo:home"}
IMAGE_DEMO_TRAIN = "demo:shapes"  # drawn by tasks/data/demo_images.py
IMAGE_DEMO_EVAL_SETS = {"outlines": "demo:outlines"}
# What image data changes: each of these parameters still at its (text) default takes this value
# instead (flows.params.TransferParams.for_modality). The optimisation settings are the ones the image
# benchmark measured: a probe at 1e-3, then the backbone at a tenth of 3e-4.
IMAGE_DEFAULTS = {
    "data": {"train_path": IMAGE_DEMO_TRAIN, "eval_sets": IMAGE_DEMO_EVAL_SETS},
    "select": {"candidates": ["efficientnet-lite0", "efficientnet-lite2"]},
    "finetune": {
        "backbone": "efficientnet-lite2",
        "strategy": "lp-ft",
        "epochs": 8,
        "learning_rate": 3e-4,
        "backbone_rate": 0.1,  # the pretrained layers move at a tenth of the new head's rate
    },
    "distill": {"student": "efficientnet-lite0", "epochs": 8, "learning_rate": 3e-4},
}
# The drawn demo pictures are 64 x 64: read at that size, the demo trains in a few minutes on a CPU.
IMAGE_DEMO_MODEL = "graftline-demo-images"  # a registered name holds one kind of model: the demos' apart
IMAGE_DEMO_DEFAULTS = {"model": {"image_size": 64}}
RESERVED_SPLITS = {"train", "validation", "test"}
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
GENERIC_STEMS = {"train", "training", "data", "dataset", "all", "full", "reviews", "text", "texts"}


def default_model_name(data) -> str:
    """The registered name of a run that names none: the demos' own, else the training data's."""
    demos = {DEMO_TRAIN: DEMO_MODEL, IMAGE_DEMO_TRAIN: IMAGE_DEMO_MODEL}
    return demos.get(data.train_path) or model_name_of(data.train_path)


def model_name_of(train_path: str) -> str:
    """The registered name a run on `train_path` gets when none is given: the file's or dataset's
    name ("tickets.csv" -> "tickets"; "hf://datasets/org/imdb" -> "imdb"), or its folder's where the
    file's name says nothing ("books/train.csv" -> "books-train")."""
    base = train_path.split("?")[0].rstrip("/")
    if base.startswith("hf://datasets/"):
        base = base.split("@")[0]
    parts = [p for p in re.split(r"[/\\]", base) if p and not p.endswith(":")]
    stem = re.sub(r"(\.(csv|jsonl|json|parquet|pq|gz|bz2|zip|xz|zst))+$", "", parts[-1] if parts else "", flags=re.I)
    if stem.lower() in GENERIC_STEMS and len(parts) > 1:
        stem = f"{parts[-2]}-{stem}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._")
    return name or "graftline-model"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silent default


def known_encoding(name: str) -> str:
    """`name` if Python can decode text in it, else a one-line error."""
    import codecs

    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"unknown text encoding {name!r} (e.g. utf-8, cp1252, latin-1)") from None
    return name


Encoding = Annotated[str, AfterValidator(known_encoding)]  # a text encoding Python can decode


class DataParams(Params):
    train_path: str = Field(
        DEMO_TRAIN,
        description="Training data: a local path or fsspec URL to CSV, JSONL or Parquet "
        "(`demo:electronics` and `demo:home` are the embedded demo files), or a Hugging Face dataset: "
        "hf://datasets/OWNER/NAME[@REVISION], a save_to_disk folder or a Hub-layout folder "
        "(`?split=` and `?config=` choose; a dataset's validation and test splits are used when present).",
    )
    validation_path: str | None = Field(
        None, description="Validation file; when empty, the training dataset's validation split, else carved from it."
    )
    test_path: str | None = Field(
        None, description="Test file; when empty, the training dataset's test split, else carved from it."
    )
    modality: Literal["auto", "text", "image"] = Field(
        "auto",
        description="text or image data; auto: image when train_path is a folder (one subfolder per class) or "
        "a table with image_column and without text_column, else text.",
    )
    text_column: str = Field("text", min_length=1, description="Column holding the text.")
    image_column: str = Field("image", min_length=1, description="Images in a table: the column of paths or URLs.")
    label_column: str = Field("label", min_length=1, description="Column holding the class name.")
    encoding: Encoding = Field(
        "utf-8",
        description="Text encoding of the run's CSV and JSON Lines files, labeled, target and unlabeled (e.g. "
        "cp1252 or latin-1 for a spreadsheet's export); Parquet carries its own.",
    )
    hf_config: str | None = Field(
        None, min_length=1, description="Config (subset) of every Hugging Face dataset source that names none."
    )
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field(
        "auto", description="File format; auto reads the suffix."
    )
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the data held out for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of the data held out for testing.")
    split_seed: int = Field(13, description="Seed of the stratified split.")
    eval_sets: dict[str, str] = Field(
        default_factory=lambda: dict(DEMO_EVAL_SETS),
        description="Extra evaluation sets, name -> path, same columns (e.g. another domain); "
        "each is reported under its own name.",
    )

    target_sets: dict[str, str] = Field(
        default_factory=dict,
        description="Unlabeled texts of domains the model will serve, name -> path (the text column only; "
        "a label column is never read): what domain adaptation (`adapt`) trains on and the domain-gap "
        "report measures. A name that is also an evaluation set is scored with that set's labels.",
    )

    @field_validator("eval_sets", "target_sets")
    @classmethod
    def _names_are_free(cls, value: dict[str, str]) -> dict[str, str]:
        taken = RESERVED_SPLITS & set(value)
        if taken:
            raise ValueError(f"set names {sorted(taken)} are reserved for the main splits")
        return value


PII_KINDS = ("email", "card", "iban", "ip", "phone", "url")  # found by tasks/data/pii.py
PII_CUSTOM_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a name for validation.pii_patterns


def check_pii_patterns(patterns: dict[str, str]) -> None:
    """Raise ValueError naming the first user kind of personal data that cannot be used."""
    for name, regex in patterns.items():
        if not PII_CUSTOM_KIND.match(name) or name in PII_KINDS:
            raise ValueError(
                f"{name!r} is not a usable kind name (lower-case letters, digits and _; not a built-in kind)"
            )
        try:
            re.compile(regex)
        except re.error as error:
            raise ValueError(f"{name}: not a regular expression: {error}") from None


class ValidationParams(Params):
    mode: Literal["fail", "warn"] = Field("fail", description="fail: stop before training; warn: record and continue.")
    min_text_chars: int = Field(1, ge=0, description="Shortest acceptable text, in characters.")
    max_text_chars: int = Field(
        1_000_000,
        ge=1,
        description="Longest acceptable text, in characters: a guard against absurd rows (a file read "
        "as one cell); long texts are normal, the tokenizer cuts them at model.max_length.",
    )
    max_duplicate_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share of repeated texts within a split (real data repeats some: the same "
        "spam, the same short review; far more suggests a file read or joined twice).",
    )
    max_overlap_fraction: float = Field(
        0.01, ge=0, le=1, description="Largest share of test/eval texts also in train (leakage)."
    )
    min_image_side: int = Field(32, ge=1, description="Images: smallest acceptable width and height, in pixels.")
    max_image_side: int = Field(
        10_000, ge=1, description="Images: largest acceptable width and height, in pixels (a guard against scans)."
    )
    near_duplicate_bits: int = Field(
        4,
        ge=0,
        le=32,
        description="Images: two pictures whose 64-bit difference hashes differ in at most this many bits are "
        "near duplicates (the same picture resized or re-encoded); 0: exact pixels only.",
    )
    min_examples_per_class: int = Field(5, ge=1, description="Fewest training rows a class may have.")
    max_class_ratio: float = Field(
        20.0, ge=1, description="Largest allowed ratio of biggest to smallest training class."
    )
    pii: Literal["fail", "redact", "warn", "off"] = Field(
        "fail",
        description="Personal data in the texts (e-mails, phone, card and IBAN numbers, IP addresses, URLs, "
        "pii_patterns): fail: stop before anything is stored; redact: replace each with a placeholder such "
        "as <EMAIL> before anything else reads the texts; warn: record the counts and go on with the raw "
        "texts; off: do not look.",
    )
    pii_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Kinds of personal data of your own: name -> regular expression, e.g. "
        '{"order_id": "ORD-\\d{8}"} (placeholder <ORDER_ID>).',
    )

    @field_validator("pii_patterns")
    @classmethod
    def _usable_patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        check_pii_patterns(patterns)
        return patterns


class ModelParams(Params):
    """Model-wide settings: every step that tokenises, trains or scores a model reads them from here."""

    max_length: int = Field(128, ge=8, le=8192, description="Tokens per text; longer texts are truncated.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA (bf16 autocast) when present, else CPU."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast on GPUs, fp32 on CPUs; bf16 also speeds up CPUs with bf16 units "
        "(avx512_bf16, AMX).",
    )
    image_size: int | None = Field(
        None,
        ge=16,
        le=1024,
        description="Images: side of the square an image classifier reads; empty: the backbone's own (224 for "
        "EfficientNet-Lite0, 260 for Lite2). Smaller is faster and loses detail.",
    )
    seed: int = Field(13, description="Seed of weight initialisation, batch order and dropout.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub backbone. Off by default.")


RECOMMENDED_ADAPTATION = "self-distillation"  # what adapt.method auto runs
RECOMMENDED_TEACHERS = 2  # and how many source models label its round


class AdaptParams(Params):
    """Domain adaptation: how fine-tuning uses the unlabeled texts of `data.target_sets`."""

    method: Literal["none", "auto", "mlm", "self-training", "mlm+self-training", "self-distillation"] = Field(
        "none",
        description="none: source data only; auto: the recommended method (self-distillation from two source "
        "models); mlm: one mixed loss, source cross-entropy + mlm_weight x masked-language modelling on the "
        "target texts (UDALM-style); "
        "self-training: train on the source, then rounds of confident, class-balanced hard pseudo-labels on the "
        "target texts, each round retrained from the source model; mlm+self-training: mlm first, then the rounds; "
        "self-distillation: rounds on every target text with the model's class-aligned predicted distribution as a "
        "soft label. After each round a label-free guard keeps the source-only model when the round fell on the "
        "source validation split or flipped the teacher's confident target predictions; target labels are "
        "never read.",
    )
    mlm_weight: float = Field(1.0, gt=0, le=10, description="Weight of the target MLM loss in the mixed loss.")
    mask_probability: float = Field(0.15, gt=0, lt=1, description="Share of target tokens masked (BERT's 80/10/10).")
    head_warmup_steps: int = Field(
        100,
        ge=0,
        le=100_000,
        description="Steps training the new MLM head alone (encoder frozen) before the mixed loss: the packaged "
        "sentence-embedding backbones ship without one.",
    )
    rounds: int = Field(1, ge=1, le=10, description="Self-training: most pseudo-labelling rounds.")
    pseudo_label_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Self-training: share of the target texts a round labels, the most confident predictions first.",
    )
    confidence_threshold: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Self-training: softmax confidence every pseudo-label must also reach (0: no absolute floor).",
    )
    class_balance: bool = Field(
        True,
        description="Self-training: split the round's labels over the classes in the source's proportions (the "
        "most confident of each class), so the easiest class cannot flood the round.",
    )
    max_per_class: int | None = Field(None, ge=1, description="Self-training: most pseudo-labels of any one class.")
    max_confident_flips: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Rounds: the most share of the source model's confident target predictions (top probability "
        ">= 0.9) a round may change and still be kept; past it the round has drifted on the target (the label-free "
        "guard the source validation split cannot give).",
    )
    teachers: int | None = Field(
        None,
        ge=1,
        le=5,
        description="Self-training and self-distillation: how many source models label the first round together "
        "(the mean of their predicted distributions): the one adapted and teachers - 1 more trained the same way "
        "with the seeds after model.seed. Each costs one more source training; the adapted model stays one model. "
        "Default: 2 with auto, else 1.",
    )
    round_epochs: int = Field(
        1, ge=1, le=100, description="Self-training: epochs of each round (early-stopped on source validation)."
    )
    max_source_drop: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Self-training: a round whose source validation macro-F1 falls more than this below the "
        "source model's is discarded, and the rounds stop (the label-free guard against drifting away).",
    )

    @property
    def resolved(self) -> str:
        """The method that runs: `auto` is the recommended one."""
        return RECOMMENDED_ADAPTATION if self.method == "auto" else self.method

    @property
    def teacher_count(self) -> int:
        """How many source models label the first round: `teachers`, else 2 with auto and 1 otherwise."""
        if self.teachers is not None:
            return self.teachers
        return RECOMMENDED_TEACHERS if self.method == "auto" else 1

    @property
    def uses_mlm(self) -> bool:
        return self.resolved in ("mlm", "mlm+self-training")

    @property
    def self_trains(self) -> bool:
        """Whether rounds on the target texts follow the source training (hard or soft labels)."""
        return self.resolved in ("self-training", "mlm+self-training", "self-distillation")

    def self_training(self) -> SelfTrainingSettings:
        """The rounds' settings: the one translation into the self-training loop."""
        from graftline.tasks.train.self_training import SelfTrainingSettings

        return SelfTrainingSettings(
            rounds=self.rounds,
            share=self.pseudo_label_share,
            threshold=self.confidence_threshold,
            class_balance=self.class_balance,
            max_per_class=self.max_per_class,
            round_epochs=self.round_epochs,
            max_source_drop=self.max_source_drop,
            soft=self.resolved == "self-distillation",
            max_confident_flips=self.max_confident_flips,
        )


class ImageTrainingParams(Params):
    """How an image classifier trains: augmentation and BatchNorm (ignored for text)."""

    crop_scale_min: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Random resized crop: the smallest share of the image's area a training crop keeps (1: no "
        "cropping). torchvision's default is 0.08; short fine-tuning runs keep more of the picture.",
    )
    flip: bool = Field(True, description="Flip half the training images left-right.")
    freeze_batchnorm: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Keep the BatchNorm statistics of the pretrained backbone fixed while training; auto: when "
        "fewer than 16 images per process make a batch (their statistics are too noisy).",
    )

    def freezes_batchnorm(self, batch_size: int, processes: int = 1) -> bool:
        if self.freeze_batchnorm == "auto":
            return batch_size // processes < 16
        return self.freeze_batchnorm == "on"


class TrainingParams(Params):
    """The optimisation settings of a training step (fine-tuning and distillation each have their own)."""

    epochs: int = Field(4, ge=1, le=100, description="Most epochs; early stopping may end sooner.")
    batch_size: int = Field(16, ge=1, le=4096)
    learning_rate: float = Field(8e-5, gt=0, le=1, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming the learning rate up.")
    patience: int = Field(2, ge=1, description="Epochs without better validation macro-F1 before stopping.")
    grad_accumulation: int = Field(
        1, ge=1, le=1024, description="Micro-batches per optimizer step (effective batch = batch_size x this)."
    )
    group_by_length: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Batch texts of similar length together (less padding); "
        "auto: when random batches would be over 20% padding.",
    )
    compile: bool = Field(False, description="torch.compile the model (pays a one-off compile; helps long GPU runs).")
    fast_cpu_dropout: bool = Field(
        True,
        description="On CPUs: draw dropout masks four to a 64-bit random word, attention included "
        "(same maths, another random stream; off: PyTorch's own dropout).",
    )
    layer_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: each layer below the top trains at this factor of the one above.",
    )
    backbone_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Everything below the classification head trains at this share of learning_rate, the head at "
        "all of it (lp-ft: in its second stage).",
    )
    checkpoint_every: int = Field(
        500, ge=0, description="Optimizer steps between resumable checkpoints (0: only at each epoch's end)."
    )
    checkpoint_seconds: float = Field(
        30.0,
        ge=0,
        description="A checkpoint that is due (every checkpoint_every steps, each epoch's end) is written only "
        "when this many seconds of training have passed since the last one (0: every one is written).",
    )
    images: ImageTrainingParams = Field(
        default_factory=lambda: ImageTrainingParams(), description="Image classifiers: augmentation and BatchNorm."
    )

    def train_config(self, model: ModelParams) -> TrainConfig:
        """The engine's configuration: the one translation from parameters to the training loop."""
        from graftline.tasks.engine.training import TrainConfig

        own = self.model_dump(include=set(TrainingParams.model_fields) - {"images"})
        own["group_by_length"] = {"auto": None, "on": True, "off": False}[self.group_by_length]
        return TrainConfig(**own, seed=model.seed, device=model.device, precision=model.precision)


PRIVATE_RECIPES = {"full": (5e-4, 3), "linear-probe": (5e-3, 10)}  # learning rate, epochs (PrivacyParams.recipe)


class PrivacyParams(Params):
    """Differentially private fine-tuning (DP-SGD through Opacus; docs: privacy)."""

    enabled: bool = Field(
        False, description="Fine-tune with DP-SGD: a bound on what the model reveals of any one training row."
    )
    epsilon: float = Field(
        8.0, gt=0, le=100, description="Privacy budget the training may spend (smaller: more private, less accurate)."
    )
    delta: float | None = Field(
        None, gt=0, lt=1, description="Probability the epsilon bound may fail; empty: 1 / training rows."
    )
    # The defaults are the large-batch recipe of Li et al., "Large Language Models Can Be Strong
    # Differentially Private Learners" (ICLR 2022), for SST-2: batches of about a thousand rows,
    # a learning rate several times the non-private one, a small clipping norm, three epochs.
    max_grad_norm: float = Field(0.1, gt=0, le=100, description="Each row's gradient is clipped to this norm.")
    logical_batch_size: int = Field(
        1024,
        ge=2,
        le=65536,
        description="Rows per private step on average (Poisson sampling); batch_size rows at a time are computed.",
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Peak AdamW learning rate of private training, in place of finetune.learning_rate; "
        "empty: 5e-4 (full fine-tuning) or 5e-3 (linear-probe).",
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=100,
        description="Epochs of private training, in place of finetune.epochs (the budget covers all); "
        "empty: 3 (full fine-tuning) or 10 (linear-probe).",
    )

    def recipe(self, strategy: str) -> tuple[float, int]:
        """(learning rate, epochs) of private training with `strategy`: the settings, else the recipe's.
        A linear probe trains a new head alone on kept features: it needs larger steps than
        fine-tuning a pretrained network, and its epochs cost milliseconds."""
        rate, epochs = PRIVATE_RECIPES["linear-probe" if strategy == "linear-probe" else "full"]
        return self.learning_rate or rate, self.epochs or epochs


class SearchRange(Params):
    """The values one setting may take in the search: a range from `low` to `high` (on a log scale with
    `log`), or a list of `choices`. Whole numbers for settings that are whole numbers (epochs, batch_size,
    reinit_layers)."""

    low: float | None = Field(None, description="Smallest value of the range.")
    high: float | None = Field(None, description="Largest value of the range.")
    log: bool = Field(False, description="Sample the range on a log scale (learning rates).")
    choices: list[float] | None = Field(None, description="The values to choose from, instead of a range.")

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRange:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices is empty")
            if self.low is not None or self.high is not None:
                raise ValueError("give either low and high or choices, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high, or choices")
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} is above high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, not {self.low:g}")
        return self

    def values(self) -> list[float]:
        """The values the range's ends or choices name (each must be a valid setting)."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


# What the search tries when the space is not given: the two settings that decide most how fine-tuning
# ends (Mosbach et al. 2021, Dodge et al. 2020: the learning rate and the training length) and the batch
# size that sets the number of steps, in ranges that train BERT-style backbones. A budget of a few
# trainings cannot also learn warmup, weight decay, layer decay and re-initialised layers: with all
# seven settings, the sampler's proposals stayed random draws around the defaults; each can be added
# to `space` when the budget is larger.
DEFAULT_SEARCH_SPACE = {
    "learning_rate": {"low": 1e-5, "high": 3e-4, "log": True},
    "epochs": {"low": 1, "high": 5},
    "batch_size": {"choices": [16, 32]},
}
SEARCHABLE = (
    "learning_rate",
    "epochs",
    "warmup_ratio",
    "weight_decay",
    "batch_size",
    "layer_decay",
    "reinit_layers",
    "backbone_rate",
    "probe_learning_rate",
    "probe_epochs",
    "seed",  # model.seed: where validation is small, which seed trains best is worth a trial or two
)


def searched_field(name: str):
    """The settings field a searched name stands for: `seed` is model.seed, the others finetune's."""
    return ModelParams.model_fields["seed"] if name == "seed" else FinetuneParams.model_fields[name]


class SearchParams(Params):
    """Automatic fine-tuning: a hyper-parameter search (Optuna) whose best trial is the teacher (docs: search)."""

    enabled: bool = Field(
        False,
        description="Search the fine-tuning settings in `space` instead of training once; the best trial by "
        "validation macro-F1 becomes the teacher.",
    )
    trials: int | None = Field(
        20, ge=1, le=10_000, description="Budget: most trials (finished and pruned); empty: as many as fit in seconds."
    )
    seconds: float | None = Field(
        None,
        gt=0,
        description="Budget: wall-clock seconds of the whole search; a trial running when they are spent is "
        "stopped once one trial has finished. Empty: trials alone decide.",
    )
    space: dict[str, SearchRange] = Field(
        default_factory=lambda: {name: SearchRange(**spec) for name, spec in DEFAULT_SEARCH_SPACE.items()},
        description="Setting name -> range or choices. Only these settings are searched; the others keep "
        f"their finetune values. Searchable: {', '.join(SEARCHABLE)}.",
    )
    start_from_settings: bool = Field(
        True,
        description="The first trial trains the finetune settings as given (brought inside the space), so the "
        "search can only beat them on validation.",
    )
    confidence: float | None = Field(
        0.9,
        ge=0.5,
        lt=1,
        description="Before the best trial replaces the given settings' trial as the teacher, it must score a "
        "higher validation macro-F1 in at least this share of bootstrap resamples of the validation rows; "
        "else the given settings stay, and the run says so. Empty: the best validation score wins.",
    )
    startup_trials: int | None = Field(
        None,
        ge=1,
        le=1_000,
        description="Trials drawn at random before the sampler (TPE) models the others, the given settings' "
        "trial among them; empty: a third of `trials` (2 to 10), or 3 when only seconds bound the search.",
    )
    pruner: Literal["successive-halving", "hyperband", "none"] = Field(
        "successive-halving",
        description="How unpromising trials are stopped early: asynchronous successive halving, Hyperband, or never.",
    )
    reduction_factor: int = Field(
        3, ge=2, le=10, description="Pruning: one trial in this many goes on past each checkpoint of the pruner."
    )
    reports_per_epoch: int = Field(
        4, ge=1, le=100, description="Validation macro-F1 reports a trial makes per epoch, for the pruner."
    )
    min_reports: int = Field(
        2,
        ge=1,
        le=10_000,
        description="Pruning: the first checkpoint, in reports; the next ones are this times reduction_factor, "
        "its square, and so on. At each, a trial's score is compared with the other trials' scores after as "
        "many reports (as much training).",
    )
    prune_after: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Pruning: a trial is never stopped before this share of its own reports, so that a long "
        "schedule (whose learning rate is still high half-way) is judged once it could show itself.",
    )
    runner: Literal["local", "dask"] = Field(
        "local",
        description="Where trials run: local, one after the other in the flow's process; dask, one trial per "
        "worker of a Dask cluster at a time, sharing the study (needs the `cluster` extra).",
    )
    workers: int | None = Field(
        None, ge=1, le=1024, description="runner dask: trials running at once; empty: the cluster's workers."
    )
    dask_address: str | None = Field(
        None,
        min_length=1,
        description="runner dask: scheduler of an existing cluster (e.g. tcp://dask-scheduler:8786); empty: a "
        "temporary local cluster on this machine.",
    )
    storage: str | None = Field(
        None,
        min_length=1,
        description="Database URL of the study (e.g. postgresql://... for trials on several machines); empty: a "
        "sqlite file beside the tracking store (<home>/search/studies.db).",
    )

    @field_validator("space")
    @classmethod
    def _searchable(cls, space: dict[str, SearchRange]) -> dict[str, SearchRange]:
        if not space:
            raise ValueError("the search space is empty")
        unknown = sorted(set(space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(f"cannot search {', '.join(unknown)}: searchable settings are {', '.join(SEARCHABLE)}")
        return space

    @model_validator(mode="after")
    def _has_budget(self) -> SearchParams:
        if self.trials is None and self.seconds is None:
            raise ValueError("the search needs a budget: trials, seconds or both")
        return self

    def startup(self) -> int:
        """Random trials before TPE models the others: scaled to the budget, so that a budget of a few
        trials is not a random search (TPE's own default, 10, is more than most budgets here)."""
        if self.startup_trials is not None:
            return self.startup_trials
        return 3 if self.trials is None else min(10, max(2, self.trials // 3))


class FinetuneParams(TrainingParams):
    backbone: str = Field(
        "minilm-l6",
        description="Catalog backbone name, local folder, Hugging Face hub id, or `auto` to choose among "
        "select.candidates by transferability score.",
    )
    strategy: Literal["full", "linear-probe", "lp-ft", "lora"] = Field(
        "full",
        description="full: train every weight; linear-probe: frozen backbone; lp-ft: a linear probe first "
        "(probe_epochs), then every weight, the backbone at backbone_rate x the learning rate; "
        "lora: low-rank adapters (peft), merged before export.",
    )
    probe_epochs: int = Field(3, ge=1, le=100, description="lp-ft: epochs of the linear probe before unfreezing.")
    probe_learning_rate: float = Field(
        1e-3, gt=0, le=1, description="lp-ft: learning rate of the probe (a lone new head learns fast)."
    )
    lora_rank: int = Field(8, ge=1, le=512, description="LoRA strategy: rank of the adapters.")
    lora_alpha: int = Field(
        16, ge=1, le=4096, description="LoRA strategy: scaling numerator (updates are scaled by alpha / rank)."
    )
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="LoRA strategy: dropout on the adapters' input.")
    reinit_layers: int = Field(
        0,
        ge=0,
        le=48,
        description="Re-initialise the top this many transformer layers before fine-tuning (their pretraining "
        "can suit the new task worse than fresh weights; text backbones).",
    )
    processes: int = Field(
        1, ge=1, le=64, description="Data-parallel processes (torchrun DDP): one per GPU, or CPU processes (gloo)."
    )
    privacy: PrivacyParams = Field(
        default_factory=lambda: PrivacyParams(), description="Differentially private fine-tuning (DP-SGD)."
    )
    search: SearchParams = Field(
        default_factory=lambda: SearchParams(),
        description="Automatic fine-tuning: a hyper-parameter search for the teacher's settings.",
    )

    @model_validator(mode="after")
    def _search_space_in_bounds(self) -> FinetuneParams:
        if not self.search.enabled:
            return self
        for name, values in self.search.space.items():
            for value in values.values():
                problem = _setting_problem(name, value)
                if problem:
                    raise ValueError(f"search space {name}: {value:g} is not a valid {name} ({problem})")
        if self.privacy.enabled:
            raise ValueError(
                "finetune.search with finetune.privacy: choosing among trials by their validation scores spends "
                "privacy budget that no trial accounts for; search without privacy, then train privately"
            )
        if self.processes > 1:
            raise ValueError("finetune.search trains each trial in one process; set finetune.processes=1")
        return self

    @model_validator(mode="after")
    def _private_training_is_plain(self) -> FinetuneParams:
        if self.privacy.enabled:
            unsupported = [
                setting
                for setting, used in (
                    ("strategy lora", self.strategy == "lora"),
                    ("processes > 1", self.processes > 1),
                    ("compile", self.compile),
                )
                if used
            ]
            if unsupported:
                raise ValueError(
                    f"finetune.privacy trains one plain model in one process; not with {', '.join(unsupported)}"
                )
        return self


def _setting_problem(name: str, value: float) -> str | None:
    """Why `value` cannot be fine-tuning setting `name` (its field's type and bounds), or None."""
    try:
        _setting_adapter(name).validate_python(int(value) if value == int(value) else value)
    except ValidationError as error:
        return error.errors()[0]["msg"]
    return None


@cache
def _setting_adapter(name: str) -> TypeAdapter:
    field = searched_field(name)
    return TypeAdapter(Annotated[field.annotation, field])


class SelectParams(Params):
    candidates: list[str] = Field(
        default_factory=lambda: ["minilm-l3", "minilm-l6"],
        min_length=1,
        description="Backbones scored when finetune.backbone is `auto` (catalog names, folders, hub ids).",
    )
    method: Literal["logme", "hscore", "knn"] = Field(
        "logme", description="Score that decides: LogME, H-score or kNN accuracy."
    )
    sample_size: int = Field(
        1000, ge=20, le=100_000, description="Training rows embedded per candidate (stratified sample)."
    )
    pooling: Literal["last", "layer-mean"] = Field(
        "layer-mean", description="Mean-pooled token states of the last layer, or averaged over layers."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Texts embedded per forward pass while scoring.")
    max_parameters: int | None = Field(None, ge=1, description="Budget: never choose a backbone with more parameters.")
    max_ms_per_example: float | None = Field(
        None, gt=0, description="Budget: never choose a backbone slower than this on the CPU."
    )
    runner: Literal["local", "dask"] = Field(
        "local",
        description="Where candidates are scored: local, one after the other in the flow's process; dask, each "
        "candidate as its own task on a Dask cluster (needs prefect-dask, the `cluster` extra).",
    )
    dask_address: str | None = Field(
        None,
        min_length=1,
        description="runner dask: scheduler of an existing Dask cluster (e.g. tcp://dask-scheduler:8786); empty: a "
        "temporary local cluster, one worker process per candidate up to the CPU count. Ignored by runner local.",
    )


class DistillParams(TrainingParams):
    enabled: bool = Field(True, description="Distil the fine-tuned teacher into a smaller student.")
    student: str = Field(
        "teacher-layers:3",
        description="`teacher-layers:N` (copy of the teacher keeping N evenly spaced layers), "
        "`teacher-layers:0,2,4`, or a backbone name/folder/hub id.",
    )
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of hard-label cross-entropy; 1 - alpha goes to the teacher's soft labels."
    )
    temperature: float = Field(2.0, gt=0, le=20, description="Softmax temperature of the soft labels.")
    hidden_weight: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Weight of hidden-state distillation (student layers' pooled states against the teacher's, "
        "through a learned projection when widths differ); 0 turns it off.",
    )
    unlabeled_paths: list[str] = Field(
        default_factory=list,
        description="Unlabeled text files (CSV/JSONL/Parquet, e.g. the target domain's) added as distillation "
        "data, soft labels only.",
    )
    unlabeled_text_column: str = Field("text", min_length=1, description="Text column of the unlabeled files.")
    augment_copies: int = Field(
        0,
        ge=0,
        le=10,
        description="Noisy copies of each training text (word dropout, a swap) added as soft-label-only rows.",
    )
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Peak AdamW learning rate of the student.")


class ExportParams(Params):
    enabled: bool = Field(
        True,
        description="Export the served model (the student, or the teacher without distillation) to ONNX and time it.",
    )
    quantize: bool = Field(True, description="Also write a dynamically INT8-quantised ONNX model.")
    min_agreement: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Share of test predictions an exported model must share with the torch model; "
        "below it the file is not logged.",
    )
    latency_rows: int = Field(256, ge=1, description="Test texts timed per model (all of them when fewer).")
    max_accuracy_drop: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Test accuracy an exported model may lose against the torch model; "
        "beyond it the file is not logged.",
    )


class ExplainParams(Params):
    """Token attributions (Integrated Gradients) of the teacher and the student on every evaluation set,
    their faithfulness against random and attention, and the student's agreement with its teacher."""

    enabled: bool = Field(
        False, description="Explain a sample of every evaluation set after evaluation (adds minutes on a CPU)."
    )  # opt-in: on the demo it adds more than 15% to the run's wall time (BENCHMARKS: explanations)
    rows: int = Field(16, ge=1, le=1000, description="Texts sampled from each evaluation set.")
    errors: int = Field(4, ge=0, le=1000, description="Plus each set's most confident errors.")
    n_steps: int = Field(
        32,  # the lifecycle's value; `graftline explain`, `predict --explain` and explain() use it too
        ge=2,
        le=1000,
        description="Integrated Gradients: points on the path from the baseline.",
    )
    internal_batch_size: int = Field(64, ge=1, le=4096, description="Path points computed per forward pass.")


class GateParams(Params):
    """What a version must show before `staging` or `production` moves to it (docs: registry)."""

    metric: Literal["macro_f1", "accuracy"] = Field("macro_f1", description="Score the regression gate compares.")
    min_improvement: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Required gain over the version holding the alias, on every evaluation set; 0: must not regress.",
    )
    min_accuracy: float = Field(0.0, ge=0, le=1, description="Absolute minimum test accuracy.")
    min_macro_f1: float = Field(0.0, ge=0, le=1, description="Absolute minimum test macro-F1.")
    retention_floor: float = Field(
        0.97, ge=0, le=1, description="Share of its teacher's test accuracy and macro-F1 a student must keep."
    )  # one floor: the lifecycle admits a student to the registry by it, and a promotion asks it again
    retention_sets: list[str] = Field(
        default_factory=lambda: ["test"],
        min_length=1,
        description="Evaluation sets on which a student must keep retention_floor of its teacher "
        '(e.g. [test, home] to hold it on another domain too; ["*"]: every evaluation set).',
    )
    require_validation: bool = Field(True, description="Refuse versions whose data validation did not pass.")
    max_epsilon: float | None = Field(
        None,
        gt=0,
        description="Refuse versions whose training spent more differential-privacy budget than this, and versions "
        "trained without it (empty: no privacy gate).",
    )


class RegistryParams(Params):
    model_name: str | None = Field(
        None,
        pattern=MODEL_NAME,
        description="Registered model name; the student registers as `<name>-student`. Empty: named after the "
        f"training data (its file, folder or dataset; the demos: {DEMO_MODEL}, {IMAGE_DEMO_MODEL}).",
    )
    experiment: str = Field(EXPERIMENT, min_length=1, description="MLflow experiment of the runs.")
    promote_to: Literal["none", "staging", "production"] = Field(
        "production",
        description="After registering (alias `candidate`), promote each new version to this stage if its gates pass.",
    )
    gates: GateParams = Field(default_factory=lambda: GateParams(), description="The promotion gates.")


class TrackingParams(Params):
    """What the tracking store keeps of the data, besides parameters, metrics, digests and models (docs: privacy)."""

    copy_data: bool = Field(
        True,
        description="Keep the evaluation sets as Parquet files in the store, for promotions to score versions "
        "on again; false: record each set's file URI and content digest instead, and let promotions read the "
        "files again (refusing if they changed).",
    )


class RunParams(Params):
    """How the lifecycle runs, as opposed to what it computes."""

    reuse_steps: bool = Field(
        True,
        description="Reuse the results of steps an identical earlier run completed "
        "(same data digest, parameters and code).",
    )
    retries: int = Field(
        1, ge=0, le=10, description="Retries of a crashed training step; a retry resumes from its last checkpoint."
    )
    resumed_from: str | None = Field(
        None, description="MLflow run id of the killed run this one resumes (set by `graftline resume`)."
    )


def _shown(value) -> str:
    """A default as the parameter file writes it: 3e-4, [a, b], {name: path}."""
    if isinstance(value, float) and 0 < value < 1e-2:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


IMAGE_DEFAULTS_NOTE = "image data: {}"  # how a field's description, the parameter file and the docs say it
IMAGE_DEMO_NOTE = "the image demo: {}"


def image_notes() -> dict[tuple[str, str], str]:
    """(group, field) -> what image data changes it to, in words: the note every place that shows the
    defaults carries (the form's descriptions, deployments/transfer.params.yaml, docs/images.md)."""
    notes = {
        (group, name): IMAGE_DEFAULTS_NOTE.format(_shown(value))
        for group, values in IMAGE_DEFAULTS.items()
        for name, value in values.items()
    }
    for group, values in IMAGE_DEMO_DEFAULTS.items():
        notes |= {(group, name): IMAGE_DEMO_NOTE.format(_shown(value)) for name, value in values.items()}
    return notes


def _show_image_defaults() -> None:
    """Append to the description of every field image data changes what it becomes, so the Prefect form
    shows both values (the replacement itself: flows.params.TransferParams.for_modality). Written from
    IMAGE_DEFAULTS, so the note cannot disagree with what an image run trains."""
    groups = {
        "data": DataParams,
        "select": SelectParams,
        "finetune": FinetuneParams,
        "distill": DistillParams,
        "model": ModelParams,
    }
    for (group, name), note in image_notes().items():
        field = groups[group].model_fields[name]  # each class holds its own copy, inherited fields included
        field.description = f"{(field.description or '').rstrip('.')}; {note}."
    for group in groups.values():
        group.model_rebuild(force=True)  # the JSON schema (the form) is built from the fields


_show_image_defaults()

# -- the commands beyond the lifecycle ------------------------------------------------------------
# Each command's options are these fields (flows/cli/options.py reads their defaults), and the flows
# of the same names take these groups as their parameters (flows/params.py).


class PromoteParams(Params):
    """The `promote` flow and `graftline promote`: move a stage to a version behind the gates."""

    model_name: str = Field(
        DEMO_MODEL, min_length=1, description="Registered model to promote (students: `<name>-student`)."
    )
    to: Literal["staging", "production"] = Field("staging", description="The alias to move.")
    version: str | None = Field(
        None,
        pattern=r"^[0-9]+$",
        description="Version to promote; empty: the holder of the stage below (candidate -> staging -> production).",
    )
    gates: GateParams = Field(default_factory=GateParams, description="What the version must show.")
    eval_sets: dict[str, str] = Field(
        default_factory=dict,
        description="Evaluation sets name -> path (needs a `test` entry); empty: the version's own, logged at ingest.",
    )
    text_column: str = Field("text", min_length=1, description="Text column of the eval_sets files.")
    label_column: str = Field("label", min_length=1, description="Label column of the eval_sets files.")
    experiment: str = Field(EXPERIMENT, min_length=1, description="MLflow experiment of the promotion runs.")


class RollbackParams(Params):
    """The `rollback` flow and `graftline rollback`: return a stage to its previous holder."""

    model_name: str = Field(DEMO_MODEL, min_length=1, description="Registered model.")
    alias: Literal["staging", "production"] = Field("production", description="The alias to return.")
    experiment: str = Field(EXPERIMENT, min_length=1, description="MLflow experiment of the rollback run.")


def version_field(purpose: str):
    """The one form field naming a registered version (tasks/serve/predict.ModelReference reads it)."""
    return Field(
        DEMO_SERVED,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_-]+|/[0-9]+)?$",
        description=f"Registered version {purpose}: MODEL@ALIAS, MODEL/VERSION, or MODEL (its production version).",
    )


class PredictParams(Params):
    """The `predict` flow and `graftline predict`: score a file with a registered version."""

    model: str = version_field("to score with")
    input_path: str = Field(
        ..., min_length=1, description="Texts to score: CSV, JSONL or Parquet (path or fsspec URL)."
    )
    output_path: str = Field(
        ..., min_length=1, description="Where the scored rows go (.csv, .jsonl or .parquet): every input column "
        "plus predicted_label, score_<label> and model_version.",
    )  # fmt: skip
    text_column: str = Field("text", min_length=1, description="Text column of the input.")
    encoding: Encoding = Field(
        "utf-8", description="Text encoding of a CSV or JSON Lines input (e.g. cp1252, latin-1)."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Texts scored per call.")
    form: Literal["auto", "onnx-int8", "onnx", "torch"] = Field(
        "auto", description="Which form of the version scores: auto is the fastest whose export passed parity."
    )
    explain: bool = Field(
        False, description="Add `top_words`: the words that pushed each row to its label (IG; ~0.3 s a row on a CPU)."
    )
    experiment: str = Field(EXPERIMENT, min_length=1, description="MLflow experiment of the prediction runs.")


class MonitorParams(Params):
    """A drift check of a registered version on new texts, and what happens when it finds harmful drift
    (tasks/serve/monitor.py takes this group as it is: the thresholds are these fields)."""

    model: str = version_field("to check")
    input_path: str | None = Field(
        None,
        min_length=1,
        description="New texts (CSV, JSONL or Parquet; path or fsspec URL); empty: every row `predict` scored with "
        "this model since its last check.",
    )
    text_column: str = Field("text", min_length=1, description="Text column of the input.")
    encoding: Encoding = Field(
        "utf-8", description="Text encoding of a CSV or JSON Lines input (e.g. cp1252, latin-1)."
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm rate of the verdict, shared by the four detectors.")
    max_accuracy_drop: float = Field(
        0.05, ge=0, le=1, description="Drift whose estimated accuracy falls this far below the reference's is harmful."
    )
    accuracy_estimate: Literal["confidence", "atc"] = Field(
        "confidence",  # on the Amazon domains ATC erred about four times more (BENCHMARKS "Drift detection")
        description="Label-free accuracy estimate: mean calibrated confidence, or ATC (thresholded confidence).",
    )
    min_rows: int = Field(50, ge=10, description="Fewest new texts a check runs on (fewer: too little power).")
    reference_rows: int = Field(1000, ge=50, description="Most held-out rows of the version used as the reference.")
    permutations: int = Field(300, ge=50, le=10000, description="Permutations of the MMD test.")
    seed: int = Field(
        0, description="Seed of the reference sample, the MMD permutations and the domain classifier's folds."
    )
    retrain: bool = Field(
        False,  # asked for: `graftline monitor --retrain`, and the scheduled `monitor` deployment (flows/deploy.py)
        description="On harmful drift, start the retrain deployment with the new texts (needs the deployments: "
        "`graftline up`).",
    )
    retrain_deployment: str = Field("transfer/retrain", min_length=3, description="FLOW/DEPLOYMENT to start.")
    adapt_method: Literal["auto", "mlm", "self-training", "mlm+self-training", "self-distillation"] = Field(
        "auto",
        description="Adaptation the retraining uses on the new texts when its deployment has none.",
    )
    experiment: str = Field(EXPERIMENT, min_length=1, description="MLflow experiment of the monitor runs.")

    def thresholds(self) -> dict:
        """What the verdict depends on, as the monitor run logs it (parameters)."""
        return self.model_dump(include={"alpha", "max_accuracy_drop", "accuracy_estimate", "permutations", "seed"})


class ServeParams(Params):
    """`graftline serve`: MLflow's scoring server on a registered version."""

    model: str = version_field("to serve")
    form: Literal["onnx", "torch"] = Field(
        "onnx", description="onnx: the version's servable ONNX pyfunc | torch: the registered model."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on (this machine only by default).")
    port: int = Field(5001, ge=1, le=65535, description="Port of the scoring server.")


class PlatformParams(Params):
    """`graftline up` and `down`: where the servers keep their state and where they listen."""

    home: Path = Field(
        Path("graftline-platform"), description="Folder of the servers' databases, artifacts, logs and state."
    )
    host: str = Field("127.0.0.1", description="Address the servers bind to (127.0.0.1: this machine only).")
    prefect_port: int = Field(4200, ge=1, le=65535, description="Prefect server (API and UI) port.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server (and UI) port.")
    work_pool: str = Field(WORK_POOL, min_length=1, description="Process work pool the worker polls.")


class DeployParams(Params):
    """`graftline deploy`: where the deployments run and when `retrain` starts."""

    pool: str = Field(WORK_POOL, min_length=1, description="Work pool the deployments run on.")
    pool_type: Literal["process", "kubernetes"] = Field(
        "process", description="process: an existing pool (graftline up makes one); kubernetes: create or update it."
    )
    cron: str = Field(RETRAIN_CRON, min_length=1, description="Schedule of the retrain deployment.")


def default_of(group: type[BaseModel], name: str):
    """The default of field `name` of `group` (a fresh one when it is made by a factory)."""
    return group.model_fields[name].get_default(call_default_factory=True)


def load_yaml(text: str, source: str = "--set value"):
    """`text` read as YAML with YAML 1.2's booleans: only true and false. YAML 1.1 (PyYAML's default)
    also reads yes, no, on and off as booleans, so `--set validation.pii=off` reached a string
    setting as False; a boolean setting still takes them (pydantic reads "off" as False). Unreadable
    YAML is one line naming `source`."""
    import yaml

    from graftline.tasks.errors import GraftlineError

    try:
        return yaml.load(text, Loader=_yaml12_loader())
    except yaml.YAMLError as exc:
        raise GraftlineError(f"{source}: not readable as YAML: {str(exc).splitlines()[0]}") from None


@cache
def _yaml12_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    boolean = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != boolean]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(boolean, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader
