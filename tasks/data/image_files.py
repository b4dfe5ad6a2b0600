"""An image file's bytes, and its perceptual hash: what "the same picture, resized or re-encoded" means.

A leaf module (numpy, Pillow, fsspec): the readers, the engine and the demo drawing all use it.

The difference hash (dHash) is written here rather than taken from `imagehash`: it is ten lines on
Pillow, and that package would bring PyWavelets and scipy pins for hashes graftline does not use.
"""

from __future__ import annotations

import numpy as np

from graftline.tasks.errors import DataError

HASH_SIZE = 8  # dHash of 8 x 8 differences: 64 bits


def difference_hash(image) -> int:
    """dHash: the image in grey at 9 x 8 pixels, one bit per horizontal neighbour pair (left brighter)."""
    from PIL import Image

    small = np.asarray(image.convert("L").resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.LANCZOS), dtype=int)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def read_bytes(path: str) -> bytes:
    """The file's bytes (a local path or an fsspec URL); a missing file is an error naming it."""
    import fsspec

    try:
        with fsspec.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the image file ({error})") from None
