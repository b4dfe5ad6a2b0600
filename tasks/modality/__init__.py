"""The modality of a run, resolved once: from the data settings, a backbone, a registered version's
tags, or by name. Every step then asks the `Modality` object (base.py) instead of comparing names.

`every()` is the catalog: a new modality is a module implementing base.Modality, plus its line
there (and its backbones' kind in engine/catalog.py). The implementations are imported when first
asked for, so that the engine can import base.py (InputPreparer) without loading every modality.
"""

from __future__ import annotations

from graftline.tasks.errors import GraftlineError
from graftline.tasks.modality.base import Modality

DEFAULT = "text"  # a hub backbone, a version registered before the modality tag was, a StepContext without one


def every() -> list[Modality]:
    """Every modality, in the order they claim `data.modality: auto` data: the last one (text) claims
    whatever the others do not. A new modality is imported and listed here."""
    from graftline.tasks.modality.image import IMAGE
    from graftline.tasks.modality.text import TEXT

    return [IMAGE, TEXT]


def names() -> list[str]:
    return [modality.name for modality in every()]


def by_name(name: str) -> Modality:
    """The modality called `name`; an unknown name is a one-line error naming the known ones."""
    for modality in every():
        if modality.name == name:
            return modality
    raise GraftlineError(f"unknown modality {name!r}: expected one of {', '.join(sorted(names()))}")


def default() -> Modality:
    return by_name(DEFAULT)


def of_data(data) -> Modality:
    """`data.modality`, or for `auto` the first modality that claims the data's layout (a folder of
    class folders or a table of image paths: image; else text)."""
    if data.modality != "auto":
        return by_name(data.modality)
    return next(modality for modality in every() if modality.claims(data))


def of_backbone(spec: str) -> Modality:
    """What a backbone classifies: a catalog backbone's kind, a local folder's model (a hub id: text)."""
    from graftline.tasks.engine import backbones

    return by_name(backbones.kind_of(spec))


def of_version(tags: dict[str, str]) -> Modality:
    """What a registered version classifies, by its modality tag (registry/contract.py)."""
    from graftline.tasks.registry import contract

    return by_name(tags.get(contract.MODALITY) or DEFAULT)


def of_splits(splits) -> Modality:
    """The modality of splits already read (their record of it)."""
    return by_name(splits.modality)
