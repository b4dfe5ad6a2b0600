"""Images as the engine reads them: decoded once, stored small, cropped and normalised per batch.

`ImageProcessor` plays the tokenizer's part for an image classifier. `encode` decodes every image once
(threads: Pillow releases the GIL while it decodes and resizes), resizes its shorter side to
`image_size / 0.875` and keeps the centre square as uint8, the usual evaluation framing. With a cache
folder the pixels are a memory-mapped file keyed by the files' paths, sizes and modification times,
so a second step or a resumed run decodes nothing and a large set need not fit in memory.

Each batch is then cut from those stored squares:
- for training (`augmented`), a random resized crop (share of the area in [crop_scale_min, 1], aspect
  ratio in [3/4, 4/3]) and a random horizontal flip. The random numbers are a function of the seed and
  the batch's row indices, so a resumed run sees the same crops as an uninterrupted one;
- otherwise the centre `image_size` square.

Limits: the stored square drops the long side's edges of non-square images (evaluation framing
always did; training crops see a little less). Decoding in the DataLoader's worker processes every
epoch would re-decode each JPEG once per epoch; on the CPUs this is written for, decoding once is
the cheaper way to keep the cores on the model.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from graftline.tasks.errors import DataError
from graftline.tasks.modality.base import InputPreparer

log = logging.getLogger(__name__)
CENTRE_SHARE = 0.875  # the centre crop takes this share of the shorter side (the ImageNet convention)


@dataclass(frozen=True)
class ImageProcessor(InputPreparer):
    """An image classifier's input preparer (the image modality's tokenizer)."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad_token_id: int = 0  # no padding: the engine asks every input preparer for one

    @classmethod
    def of(cls, config) -> ImageProcessor:
        """The processor an image classifier's config asks for (vision.ImageConfig)."""
        return cls(int(config.image_size), tuple(config.mean), tuple(config.std))

    @property
    def stored_size(self) -> int:
        return round(self.image_size / CENTRE_SHARE)

    def encode(self, paths: list[str], labels, cache_dir: Path | None = None) -> DecodedImages:
        pixels = self.decode(list(paths), cache_dir)
        return DecodedImages(pixels, np.asarray(labels, dtype=np.int64), self)

    def decode(self, paths: list[str], cache_dir: Path | None = None) -> np.ndarray:
        """Every image as a stored square, [rows, size, size, 3] uint8 (memory-mapped when cached)."""
        size = self.stored_size
        if cache_dir is None:
            pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)
            self._decode_into(paths, pixels)
            return pixels
        path = Path(cache_dir) / f"pixels-{_key(paths, size)}.u8"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            pixels = np.lib.format.open_memmap(partial, "w+", np.uint8, (len(paths), size, size, 3))
            self._decode_into(paths, pixels)
            pixels.flush()
            del pixels
            partial.replace(path)
        else:
            log.info("images: %d decoded images from the cache (%s)", len(paths), path.name)
        return np.load(path, mmap_mode="r")

    def _decode_into(self, paths: list[str], out: np.ndarray) -> None:
        from graftline.tasks import progress

        def one(index: int) -> None:
            out[index] = stored_square(paths[index], self.stored_size)

        with (
            ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool,
            progress.activity(f"decoding {len(paths):,} images", total=len(paths)) as shown,
        ):
            for done, _ in enumerate(pool.map(one, range(len(paths))), start=1):
                if done % 64 == 0 or done == len(paths):
                    shown.update(done)

    def pixel_values(self, squares: torch.Tensor) -> torch.Tensor:
        """uint8 [batch, h, w, 3] at `image_size` -> normalised float [batch, 3, h, w]."""
        x = squares.permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def model_inputs(self, inputs: list, tensors: str = "pt") -> dict:
        """Pixel values of `inputs` (paths, URLs or bytes): decoding is part of the work, as tokenising is."""
        pixels = self.prepare(inputs)
        return {"pixel_values": pixels if tensors == "pt" else pixels.numpy()}

    def prepare(self, images: list) -> torch.Tensor:
        """Pixel values of paths, bytes or Pillow images, framed as for evaluation (serving's path)."""
        squares = np.stack([stored_square(image, self.stored_size) for image in images])
        return self.pixel_values(torch.from_numpy(_centre(squares, self.image_size)))

    def save_pretrained(self, folder: Path) -> None:
        """Nothing to write: the classifier's config holds the size and normalisation."""


@dataclass
class DecodedImages:
    """Decoded images and their class ids; batches are cut from the stored squares on the fly."""

    pixels: np.ndarray  # [rows, stored, stored, 3] uint8
    labels: np.ndarray
    processor: ImageProcessor
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. teacher logits per row
    augmentation: Augmentation | None = None  # set: training crops and flips

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self), dtype=np.int64)  # one image is one unit of work

    def augmented(self, augmentation: Augmentation) -> DecodedImages:
        return replace(self, augmentation=augmentation)

    def collate(self, rows: np.ndarray, pin: bool = False) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows)
        order = np.argsort(rows, kind="stable")  # a memory map reads fastest in file order
        squares = np.empty((len(rows), *self.pixels.shape[1:]), dtype=np.uint8)
        squares[order] = self.pixels[rows[order]]
        size = self.processor.image_size
        if self.augmentation is None:
            batch = torch.from_numpy(_centre(squares, size))
        else:
            batch = self.augmentation.apply(squares, size, rows)
        out = {
            "pixel_values": self.processor.pixel_values(batch),
            "labels": torch.from_numpy(self.labels[rows]),
            **{key: torch.from_numpy(np.asarray(values[rows])) for key, values in self.extras.items()},
        }
        return {k: v.pin_memory() for k, v in out.items()} if pin else out


@dataclass(frozen=True)
class Augmentation:
    """Random resized crop and horizontal flip, drawn from (seed, the batch's rows)."""

    seed: int
    crop_scale_min: float = 0.25
    flip: bool = True

    def apply(self, squares: np.ndarray, size: int, rows: np.ndarray) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, *map(int, rows)])
        stored = squares.shape[1]
        crops = []
        for square in torch.from_numpy(squares).permute(0, 3, 1, 2).float():
            top, left, height, width = _random_box(rng, stored, self.crop_scale_min)
            crop = square[:, top : top + height, left : left + width]
            crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if self.flip and rng.random() < 0.5:
                crop = crop.flip(-1)
            crops.append(crop[0])
        return torch.stack(crops).clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)


def _random_box(rng: np.random.Generator, side: int, scale_min: float) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box on a side x side image: ten tries, then the whole image."""
    area = side * side
    for _ in range(10):
        target = area * rng.uniform(scale_min, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        width, height = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < width <= side and 0 < height <= side:
            return int(rng.integers(0, side - height + 1)), int(rng.integers(0, side - width + 1)), height, width
    return 0, 0, side, side


def _centre(squares: np.ndarray, size: int) -> np.ndarray:
    offset = (squares.shape[1] - size) // 2
    return np.ascontiguousarray(squares[:, offset : offset + size, offset : offset + size])


def stored_square(image, size: int) -> np.ndarray:
    """One image (path, URL, bytes or Pillow image) in RGB, shorter side resized to `size`, centre square."""
    from PIL import Image

    try:
        if isinstance(image, Image.Image):
            picture = image
        elif isinstance(image, bytes | bytearray):
            picture = Image.open(io.BytesIO(image))
        else:
            from graftline.tasks.data.image_files import read_bytes

            picture = Image.open(io.BytesIO(read_bytes(str(image))))
        picture = picture.convert("RGB")
    except DataError:
        raise
    except Exception as exc:
        name = "the image bytes" if isinstance(image, bytes | bytearray) else str(image)
        raise DataError(f"{name}: cannot decode the image ({type(exc).__name__})") from None
    width, height = picture.size
    scale = size / min(width, height)
    picture = picture.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR)
    width, height = picture.size
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(picture.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _key(paths: list[str], size: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    for path in paths:
        digest.update(path.encode())
        try:
            stat = os.stat(path)
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:  # a URL: its path names it
            pass
        digest.update(b"\x1f")
    return digest.hexdigest()[:24]
