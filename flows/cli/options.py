"""Command-line options that mirror a settings field: their default is the field's, never one of their own.

An option made by `setting(Group, "field")` takes the field's default and, unless it is given a help
text of its own, the field's description; it remembers which field it mirrors (`MIRRORS`), so
tests/test_settings.py walks every command of the typer app and checks each option against its
group. An option that mirrors no field may only default to "not given" (None, False, an empty list).
"""

from __future__ import annotations

import typer
from pydantic import BaseModel

from graftline.tasks.settings import default_of

MIRRORS = "graftline_mirrors"  # the attribute of an option naming the (group, field) it mirrors


def setting(group: type[BaseModel], name: str, *declarations: str, help: str | None = None, **kwargs):
    """A typer option for field `name` of `group`: its default and (by default) its description."""
    option = typer.Option(
        default_of(group, name), *declarations, help=help or group.model_fields[name].description, **kwargs
    )
    setattr(option, MIRRORS, (group, name))
    return option
