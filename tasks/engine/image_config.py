"""The configuration of an image classifier (engine/vision.py), readable without torch.

`config.json` in a model folder records the architecture (EfficientNet-Lite stages and multipliers),
the input size, the normalisation and the label names; `is_image_folder` tells such a folder from a
transformers checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ARCHITECTURE = "efficientnet-lite"
# Each stage: repeats, kernel, stride, expansion, input channels, output channels (Lite0's, before scaling).
LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# width, depth multipliers, input size and dropout of each published variant
VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


@dataclass
class ImageConfig:
    """Everything that rebuilds a classifier and prepares its input; saved as the folder's config.json."""

    architecture: str = ARCHITECTURE
    stages: list[list[int]] = field(default_factory=lambda: [list(s) for s in LITE_STAGES])
    width: float = 1.0
    depth: float = 1.0
    stem: int = 32
    head: int = 1280
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(LITE_MEAN))
    std: list[float] = field(default_factory=lambda: list(LITE_STD))
    dropout: float = 0.2
    drop_connect: float = 0.2
    id2label: dict[int, str] = field(default_factory=dict)
    variant: str = ""

    def __post_init__(self):
        self.id2label = {int(k): v for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    @property
    def num_hidden_layers(self) -> int:
        """Blocks, counted as layers for layer-wise learning-rate decay."""
        return sum(repeats for repeats, *_ in self.scaled_stages())

    @classmethod
    def named(cls, variant: str, **changes) -> ImageConfig:
        width, depth, size, dropout = VARIANTS[variant]
        own = {"width": width, "depth": depth, "image_size": size, "dropout": dropout, "variant": variant}
        return cls(**own | changes)

    @classmethod
    def read(cls, folder: Path) -> ImageConfig:
        raw = json.loads((Path(folder) / CONFIG).read_text())
        if "stages" not in raw and raw.get("architecture") in VARIANTS:  # a catalog folder names its variant
            return cls.named(raw["architecture"], image_size=raw.get("image_size", VARIANTS[raw["architecture"]][2]))
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def write(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / CONFIG).write_text(json.dumps(asdict(self), indent=1))

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled_stages(self) -> list[tuple[int, int, int, int, int, int]]:
        """The stages after width/depth scaling (the first and last stage keep their repeats, and the
        first its 32 input channels: the Lite builder's fixed stem and head)."""
        out = []
        for index, (repeats, kernel, stride, expand, inp, outp) in enumerate(self.stages):
            ends = index in (0, len(self.stages) - 1)
            inp = self.stem if index == 0 else _round_filters(inp, self.width)
            out.append(
                (
                    repeats if ends else math.ceil(self.depth * repeats),
                    kernel,
                    stride,
                    expand,
                    inp,
                    _round_filters(outp, self.width),
                )
            )
        return out


def is_image_folder(folder: Path) -> bool:
    """Whether `folder` holds an image classifier of this module (not a transformers checkpoint)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        return False
    try:
        architecture = json.loads(path.read_text()).get("architecture", "")
    except ValueError:
        return False
    return isinstance(architecture, str) and architecture.startswith(ARCHITECTURE)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def tiny_config(labels: list[str] | None = None, image_size: int = 32) -> ImageConfig:
    """A two-stage EfficientNet-Lite of a few thousand weights, for tests and smoke runs."""
    return ImageConfig(
        stages=[[1, 3, 1, 1, 8, 8], [2, 3, 2, 2, 8, 16]],
        stem=8,
        head=32,
        image_size=image_size,
        dropout=0.0,
        drop_connect=0.0,
        id2label=dict(enumerate(labels or [])),
        variant="tiny",
    )
