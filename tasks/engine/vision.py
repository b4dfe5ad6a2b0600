"""Image classifiers: EfficientNet-Lite, built from a config and loaded from safetensors.

The catalog's EfficientNet-Lite0/Lite2 weights are plain state dicts converted from TensorFlow; the
network that reads them is written here (about a hundred lines) rather than taken from the
`efficientnet-lite-pytorch` package, an unmaintained port whose loader fetches weights from the
internet and unpickles them, or from timm, which brings torchvision (a wheel built for each torch
release; our torch build is pinned). Keeping the module here also lets a test build the same network,
tiny, from a config with no download.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and head
(Tan & Le 2019; the TensorFlow `efficientnet/lite` builder). Convolutions pad like TensorFlow's `SAME`
(asymmetric at stride 2), which the converted weights expect. Inputs are scaled to [-1, 1] (mean and
standard deviation 127/128 of 255, the Lite builder's preprocessing).

A model folder holds `config.json` (the architecture, input size, normalisation and label names) and
`model.safetensors`; the classifier's interface is the part of a transformers classifier the engine
uses: `config.id2label`, `forward(pixel_values=...)` returning `.logits`, `save_pretrained`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from graftline.tasks.engine.image_config import CONFIG, WEIGHTS, ImageConfig, is_image_folder, tiny_config

__all__ = ["CONFIG", "WEIGHTS", "ImageConfig", "is_image_folder", "tiny_config", "build", "load"]


class SameConv(nn.Conv2d):
    """A convolution padded like TensorFlow's SAME: output size ceil(input / stride), the odd pixel of
    padding at the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)  # TensorFlow's 0.99 decay


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion, depthwise k x k, 1x1 projection; a residual when
    the shape is kept, dropped per sample with probability `drop` while training."""

    def __init__(self, inp: int, outp: int, kernel: int, stride: int, expand: int, drop: float):
        super().__init__()
        mid = inp * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = SameConv(inp, mid, 1, bias=False)
            self._bn0 = _batchnorm(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _batchnorm(mid)
        self._project_conv = SameConv(mid, outp, 1, bias=False)
        self._bn2 = _batchnorm(outp)
        self.residual, self.drop = stride == 1 and inp == outp, drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.residual:
            return out
        if self.training and self.drop:
            keep = torch.empty(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype).bernoulli_(1 - self.drop)
            out = out * keep / (1 - self.drop)
        return out + x


@dataclass
class ImageClassifierOutput:
    logits: torch.Tensor
    pooled: torch.Tensor  # the pooled features the head reads (what selection and drift embed)

    def __getitem__(self, index: int) -> torch.Tensor:  # tuple-style access, as transformers outputs allow
        return (self.logits, self.pooled)[index]


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite classifier. Parameter names follow the published state dicts, so the
    catalog's weights load as they are (all but the 1000-class head when new labels are given)."""

    main_input_name = "pixel_values"
    head_prefix = "_fc."
    has_transformer_layers = False  # blocks, not transformer layers: nothing for reinit_layers to draw anew

    def __init__(self, config: ImageConfig):
        super().__init__()
        self.config = config
        self.frozen_batchnorm = self.frozen_backbone = False  # see freeze_batchnorm and freeze_backbone
        self._conv_stem = SameConv(3, config.stem, 3, stride=2, bias=False)
        self._bn0 = _batchnorm(config.stem)
        settings = []
        for repeats, kernel, stride, expand, inp, outp in config.scaled_stages():
            settings += [(inp, outp, kernel, stride, expand)] + [(outp, outp, kernel, 1, expand)] * (repeats - 1)
        self._blocks = nn.ModuleList(
            MBConv(*setting, drop=config.drop_connect * index / len(settings)) for index, setting in enumerate(settings)
        )
        last = settings[-1][1]
        self._conv_head = SameConv(last, config.head, 1, bias=False)
        self._bn1 = _batchnorm(config.head)
        self._dropout = nn.Dropout(config.dropout)
        self._fc = nn.Linear(config.head, max(config.num_labels, 1))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled features of a batch of normalised images, [batch, head channels]."""
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_) -> ImageClassifierOutput:
        pooled = self.features(pixel_values)
        return ImageClassifierOutput(self._fc(self._dropout(pooled)), pooled)

    def layer_depth(self, name: str) -> int:
        """Depth of a parameter for layer-wise learning rates: 0 the stem, i + 1 block i, L + 1 the rest."""
        if name.startswith("_blocks."):
            return int(name.split(".")[1]) + 1
        return 0 if name.startswith(("_conv_stem", "_bn0")) else len(self._blocks) + 1

    def freeze_batchnorm(self, frozen: bool = True) -> None:
        """Keep every BatchNorm layer in eval mode (running statistics used, not updated) even while the
        model trains: the statistics of a small batch are too noisy to normalise with."""
        self.frozen_batchnorm = frozen
        self.train(self.training)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Train the head alone: every other weight fixed, and the backbone kept in eval mode (no
        dropped blocks, no statistics updates), so its features are the pretrained ones."""
        for name, param in self.named_parameters():
            param.requires_grad = not frozen or name.startswith(self.head_prefix)
        self.frozen_backbone = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        if mode and self.frozen_backbone:
            for name, module in self.named_children():
                if name not in ("_dropout", "_fc"):
                    module.eval()
        elif mode and self.frozen_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def save_pretrained(self, folder: Path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        self.config.write(folder)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})


def stage_of_blocks(config: ImageConfig) -> list[int]:
    """The stage each block belongs to, in block order."""
    return [stage for stage, (repeats, *_) in enumerate(config.scaled_stages()) for _ in range(repeats)]


def kept_blocks(config: ImageConfig, count: int | None = None, named: list[int] | None = None) -> list[int]:
    """The blocks a `teacher-layers:` student of this network keeps: every stage's first block (it changes
    the shape, so it cannot go) and, of the residual blocks, `count` minus those evenly spaced, or the
    `named` ones. Raises ValueError naming what is possible."""
    stages = stage_of_blocks(config)
    first = [i for i, stage in enumerate(stages) if i == 0 or stages[i - 1] != stage]
    residual = [i for i in range(len(stages)) if i not in first]
    if named is not None:
        if not set(first) <= set(named) or not set(named) <= set(range(len(stages))):
            raise ValueError(
                f"the kept blocks must include every stage's first block {first}, within 0..{len(stages) - 1}"
            )
        return sorted(set(named))
    if count is None or not len(first) <= count <= len(stages):
        raise ValueError(f"an image student keeps {len(first)}..{len(stages)} of the teacher's {len(stages)} blocks")
    extra = count - len(first)
    chosen = [residual[int(j * len(residual) / extra)] for j in range(extra)] if extra else []
    return sorted(first + chosen)


def layer_student(teacher: EfficientNetLite, kept: list[int]) -> EfficientNetLite:
    """A copy of `teacher` keeping only the `kept` blocks (kept_blocks), weights and head included: the
    dropped blocks are residual, so the shapes still fit (EfficientNet trains with whole blocks dropped
    at random: stochastic depth)."""
    import copy

    stages = stage_of_blocks(teacher.config)
    config = copy.deepcopy(teacher.config)
    repeats = [sum(1 for i in kept if stages[i] == stage) for stage in range(len(config.stages))]
    scaled = teacher.config.scaled_stages()
    # the kept repeats, at depth 1 and with each stage's channels as the teacher had them after scaling
    config.stages = [[count, *stage[1:]] for count, stage in zip(repeats, scaled, strict=True)]
    config.width, config.depth, config.variant = 1.0, 1.0, f"{teacher.config.variant or 'lite'}-blocks-{len(kept)}"
    student = build(config)
    state = teacher.state_dict()
    renamed = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            index = int(key.split(".")[1])
            if index not in kept:
                continue
            key = f"_blocks.{kept.index(index)}." + key.split(".", 2)[2]
        renamed[key] = value
    student.load_state_dict(renamed)
    return student


def build(config: ImageConfig) -> EfficientNetLite:
    return EfficientNetLite(config)


def load(folder: Path, labels: list[str] | None = None, image_size: int | None = None) -> EfficientNetLite:
    """The classifier saved in `folder`; with `labels`, a new head for them on the saved features."""
    from safetensors.torch import load_file

    config = ImageConfig.read(folder)
    keep_head = labels is None
    if labels is not None:
        config.id2label = dict(enumerate(labels))
    if image_size:
        config.image_size = image_size
    model = build(config)
    state = load_file(str(Path(folder) / WEIGHTS))
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith(EfficientNetLite.head_prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if keep_head or not k.startswith(EfficientNetLite.head_prefix)]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model
