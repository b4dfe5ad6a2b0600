"""Backbones: the one place that turns a backbone name into a tokenizer and a classifier.

A backbone is one of
- a catalog name (`minilm-l6`, `minilm-l3`, `mpnet-base`: see tasks/engine/catalog.py and `graftline zoo list`),
- a local folder holding a transformers checkpoint (config, safetensors weights, tokenizer),
- a Hugging Face hub id (needs network; refused quickly when HF_HUB_OFFLINE=1 and not cached).

A backbone is of one kind, text or image (`kind_of`: what its catalog entry or folder states; the run's
Modality, tasks/modality/, resolves from it). An image backbone (the catalog's EfficientNet-Lite,
or a folder saved by one: engine/vision.py) loads as an image classifier, and its "tokenizer" is an
`ImageProcessor` (engine/image_inputs.py): the same role, inputs to model inputs, so the steps that
train and score a model take either kind. Image models from the hub (transformers or timm) are not
loaded yet.

Weights load from safetensors only; `trust_remote_code` stays off unless the caller turns it on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from graftline.tasks.engine import catalog, image_config
from graftline.tasks.errors import BackboneError

LAYER_PREFIX = "teacher-layers:"  # a student made of some of the teacher's layers: teacher-layers:3


def resolve(spec: str) -> str:
    """A loadable source for `spec`: a catalog name's folder, a local folder, or the hub id as is."""
    if spec in catalog.CATALOG:
        return str(catalog.folder(spec))
    if Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser().resolve()
        read_folder_config(folder)
        return str(folder)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BackboneError(f"backbone {spec!r}: no such folder")
    return spec  # a hub id; load_config tells whether it is reachable


def check(spec: str) -> dict | None:
    """The cheap check of a backbone name, without loading weights or importing transformers: a
    catalog backbone is installed, a folder holds a readable config and safetensors weights, a hub
    id is in the local cache when the hub is offline. Returns the config when it could be read."""
    import os

    if spec in catalog.CATALOG:
        entry = catalog.get(spec)
        if not catalog.installed(entry):
            raise BackboneError(f"backbone {spec!r} is not installed: graftline zoo install {spec}")
        return catalog.config(spec)
    if Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser().resolve()
        config = read_folder_config(folder)
        if not any(folder.glob("*.safetensors")):
            raise BackboneError(
                f"backbone folder {folder}: no safetensors weights (*.safetensors); other weight formats are "
                "never loaded (they can run code when unpickled)"
            )
        return config
    resolve(spec)  # a path that is not a folder is named here
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
        if not isinstance(cached, str):
            known = ", ".join(name for name, entry in catalog.CATALOG.items() if entry.text)
            raise BackboneError(
                f"unknown backbone {spec!r}: not a catalog backbone ({known}), not a local folder, and not in "
                "the local Hugging Face cache while HF_HUB_OFFLINE is set"
            )
    return None


def read_folder_config(folder: Path) -> dict:
    """A backbone folder's config.json, or an error naming the file and what is wrong with it."""
    import json

    path = folder / "config.json"
    if not path.is_file():
        raise BackboneError(f"backbone folder {folder}: no config.json (not a transformers checkpoint)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackboneError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(config, dict) or ("model_type" not in config and not image_config.is_image_folder(folder)):
        raise BackboneError(f"{path}: no 'model_type' (not a transformers config)")
    return config


def require_student_kind(student: str, modality: str) -> None:
    """A distillation student fit for the data: a backbone of the data's kind (a `teacher-layers:` student
    is cut from its teacher, so it always is)."""
    if not student.startswith(LAYER_PREFIX):
        require_kind(student, modality, "distill.student")


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def kind_of(spec: str) -> str:
    """`text` or `image`: what a backbone classifies (a hub id is taken as text)."""
    if spec in catalog.CATALOG:
        return catalog.get(spec).kind
    if spec.startswith(LAYER_PREFIX):
        raise ValueError(f"{spec!r} names a part of a teacher, not a backbone")
    folder = Path(spec).expanduser()
    return "image" if folder.is_dir() and image_config.is_image_folder(folder) else "text"


def require_kind(spec: str, modality: str, role: str = "backbone") -> None:
    """Refuse a backbone of the other kind, naming the ones that fit."""
    kind = kind_of(spec)
    if kind != modality:
        fitting = ", ".join(name for name, entry in catalog.CATALOG.items() if entry.kind == modality)
        raise BackboneError(
            f"{role} {spec!r} is {_a(kind)} backbone; {modality} data needs {_a(modality)} one (catalog: {fitting})"
        )


def student_layers(spec: str, teacher_layers: int) -> list[int] | None:
    """The teacher layers a `teacher-layers:` student keeps, or None for a separate backbone."""
    if not spec.startswith(LAYER_PREFIX):
        return None
    value = spec.removeprefix(LAYER_PREFIX)
    try:
        if "," in value:
            kept = sorted({int(v) for v in value.split(",")})
        else:
            count = int(value)
            if not 1 <= count <= teacher_layers:
                raise ValueError
            step = teacher_layers / count
            kept = [int(i * step) for i in range(count)]
    except ValueError:
        raise BackboneError(
            f"student {spec!r}: expected {LAYER_PREFIX}N with 1 <= N <= {teacher_layers}, or a list of layer indices"
        ) from None
    if kept[0] < 0 or kept[-1] >= teacher_layers:
        raise BackboneError(f"student {spec!r}: the teacher has layers 0..{teacher_layers - 1}")
    return kept


def load_config(spec: str, trust_remote_code: bool = False):
    """Load a backbone's config: the cheap check that a backbone exists, done before any work."""
    from transformers import AutoConfig

    source = resolve(spec)
    if _is_image(source):
        return image_config.ImageConfig.read(Path(source))
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if Path(source).is_dir():
            raise BackboneError(f"backbone folder {source}: cannot load its config ({_first_line(exc)})") from exc
        known = ", ".join(name for name, entry in catalog.CATALOG.items() if entry.text)
        raise BackboneError(
            f"unknown backbone {spec!r}: not a catalog backbone ({known}), not a local folder, "
            f"and not loadable from the hub ({_first_line(exc)})"
        ) from exc


def load_tokenizer(spec: str, trust_remote_code: bool = False, image_size: int | None = None):
    """The backbone's tokenizer; for an image backbone its ImageProcessor (at `image_size` when given)."""
    from transformers import AutoTokenizer

    source = resolve(spec)
    if _is_image(source):
        return image_processor(image_config.ImageConfig.read(Path(source)), image_size)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"backbone {spec!r}: cannot load its tokenizer ({_first_line(exc)})") from exc


def load_saved_tokenizer(folder: Path):
    """A tokenizer saved on its own, without a model config beside it (a logged MLflow model's
    `components/tokenizer`): never fetched, never remote code."""
    from transformers import AutoTokenizer

    if _is_image(str(folder)):
        return image_processor(image_config.ImageConfig.read(Path(folder)))
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{folder}: cannot load the saved tokenizer ({_first_line(exc)})") from exc


def load_classifier(
    spec: str, labels: list[str] | None = None, trust_remote_code: bool = False, image_size: int | None = None
):
    """A sequence (or image) classifier on the backbone; a new head when `labels` is given, else the
    saved one. `image_size` changes an image backbone's input size (its weights work at any size)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    source = resolve(spec)
    if _is_image(source):
        from graftline.tasks.engine import vision

        try:
            return vision.load(Path(source), labels, image_size)
        except Exception as exc:  # a SafetensorError, a missing file, a shape mismatch: all unusable weights
            raise BackboneError(f"backbone {spec!r}: cannot load weights ({_first_line(exc)})") from exc
    kwargs = {}
    if labels is not None:
        kwargs = dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            use_safetensors=True,  # never unpickle weights
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
            **kwargs,
        )
    except Exception as exc:  # OSError, ValueError, SafetensorError, ...: all mean unusable weights
        raise BackboneError(f"backbone {spec!r}: cannot load weights ({_first_line(exc)})") from exc
    return model


def load_encoder(spec: str, trust_remote_code: bool = False, image_size: int | None = None):
    """The bare backbone (no head), for embedding text with frozen weights; an image backbone comes
    whole (its `features` embed)."""
    import torch
    from transformers import AutoModel

    if _is_image(resolve(spec)):
        return load_classifier(spec, [], image_size=image_size)
    try:
        return AutoModel.from_pretrained(
            resolve(spec), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch.float32
        )
    except BackboneError:
        raise
    except Exception as exc:
        raise BackboneError(f"backbone {spec!r}: cannot load weights ({_first_line(exc)})") from exc


def labels_of(model) -> list[str]:
    """The label names a classifier was trained with, in id order."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def encoder_layers(model):
    """(name, ModuleList) of a transformers model's stack of `num_hidden_layers` layers."""
    import torch

    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise BackboneError(f"cannot find the {count} encoder layers of {type(model).__name__}")


def reinitialise_top_layers(model, count: int) -> None:
    """Draw the top `count` transformer layers afresh, as the architecture initialises new weights
    (Zhang et al. 2021: the top layers of a pretrained encoder are specialised to its pretraining task,
    and fresh ones can fine-tune better). Seed the random generators first for a repeatable draw."""
    if count == 0:
        return
    if not getattr(model, "has_transformer_layers", True):  # an image classifier (engine/vision.py)
        raise BackboneError("reinit_layers re-initialises transformer layers; image backbones have none")
    _, layers = encoder_layers(model)
    if count > len(layers):
        raise BackboneError(f"reinit_layers {count}: the backbone has only {len(layers)} layers")
    for layer in layers[len(layers) - count :]:
        for module in layer.modules():
            # transformers skips tensors flagged as loaded from the checkpoint: these are to be drawn anew
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                tensor._is_hf_initialized = False
            module._is_hf_initialized = False
            model._init_weights(module)


def layer_student(teacher, kept: list[int]):
    """A copy of a transformers `teacher` with only the `kept` encoder layers (weights copied, head
    included): a `teacher-layers:` distillation student."""
    import copy

    import torch

    student = copy.deepcopy(teacher)
    path, layers = encoder_layers(student)
    parent_name, _, attribute = path.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    setattr(parent, attribute, torch.nn.ModuleList([layers[i] for i in kept]))
    student.config.num_hidden_layers = len(kept)
    return student


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def image_processor(config, image_size: int | None = None):
    """The input preparer (image_inputs.ImageProcessor) of an image classifier's config, at `image_size`
    when given."""
    from graftline.tasks.engine.image_inputs import ImageProcessor

    processor = ImageProcessor.of(config)
    return replace(processor, image_size=image_size) if image_size else processor


def _is_image(source: str) -> bool:
    return Path(source).is_dir() and image_config.is_image_folder(Path(source))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
