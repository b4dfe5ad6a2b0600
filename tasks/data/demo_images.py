"""The embedded image demo: three classes of shapes in two visual domains, drawn by this module.

`demo:shapes` is the training domain: filled circles, squares and triangles of random colours, sizes,
positions and rotations on light, noisy backgrounds. `demo:outlines` is the same classes in another
look: outlines only, on dark striped backgrounds. A model trained on the first and scored on the
second shows the cross-domain gap the lifecycle reports, as the text demo's second domain does.

The pictures are generated, not shipped: deterministically from a fixed seed (the same files on
every machine), 64 x 64 PNG, once, into the cache (`GRAFTLINE_CACHE`'s parent, default
~/.cache/graftline/demo-images), as one folder per class.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np

from graftline.tasks import environment
from graftline.tasks.data.image_files import difference_hash, hamming

CLASSES = ("circle", "square", "triangle")
DOMAINS = {"shapes": 100, "outlines": 40}  # name -> images per class
SIZE = 64
VERSION = "v2"  # bump when the drawing changes: a new folder, never a stale one
DISTINCT_BITS = 8  # every picture differs from the others of its set in more dHash bits than this


def folder(name: str) -> Path:
    """The demo set `name`'s folder (one subfolder per class), drawn on first use."""
    if name not in DOMAINS:
        raise KeyError(name)
    target = environment.cache_dir().parent / "demo-images" / VERSION / name
    if not target.is_dir():
        staging = target.with_name(f"{name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        draw_set(staging, DOMAINS[name], outline=name == "outlines", seed=list(DOMAINS).index(name))
        try:
            staging.rename(target)  # whole or not at all
        except OSError:  # another process drew it first
            shutil.rmtree(staging, ignore_errors=True)
    return target


def draw_set(out: Path, per_class: int, outline: bool, seed: int) -> Path:
    """`per_class` pictures of every class into `out/<class>/`, the same ones for the same arguments."""
    from PIL import Image

    rng = np.random.default_rng([7, seed])
    hashes: list[int] = []
    for label in CLASSES:
        (out / label).mkdir(parents=True)
        for index in range(per_class):
            while True:  # no near duplicates: the set must pass the validation it demonstrates
                picture = Image.fromarray(_draw(label, outline=outline, rng=rng))
                hashed = difference_hash(picture)
                if all(hamming(hashed, other) > DISTINCT_BITS for other in hashes):
                    break
            hashes.append(hashed)
            picture.save(out / label / f"{label}-{index:03d}.png")
    return out


def _draw(label: str, outline: bool, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    if outline:  # dark stripes at a random angle
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 14)
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        stripes = (np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period) > 0) * 30
        base = rng.integers(20, 60, size=3)
        background = np.clip(base + stripes[..., None], 0, 255)
    else:  # light, noisy
        background = np.clip(rng.integers(190, 240, size=3) + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255)
    picture = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = rng.uniform(12, 24)
    cx, cy = rng.uniform(radius + 2, SIZE - radius - 2, size=2)
    colour = (
        tuple(int(c) for c in rng.integers(40, 256, size=3))
        if outline
        else tuple(int(c) for c in rng.integers(0, 200, size=3))
    )
    turn = rng.uniform(0, 2 * math.pi)
    if label == "circle":
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        draw.ellipse(box, outline=colour, width=3) if outline else draw.ellipse(box, fill=colour)
    else:
        corners = 4 if label == "square" else 3
        points = [
            (
                cx + radius * math.cos(turn + 2 * math.pi * k / corners),
                cy + radius * math.sin(turn + 2 * math.pi * k / corners),
            )
            for k in range(corners)
        ]
        draw.polygon(points, outline=colour, width=3) if outline else draw.polygon(points, fill=colour)
    return np.asarray(picture)
