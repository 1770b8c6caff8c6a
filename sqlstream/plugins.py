"""Plugins named by a string: ``"package.module:Name"``.

Archive callbacks (``CallbackList(callback_list="sqlstream.archive:GzipCallback, ...")``)
and storage drivers (``BUILTIN_DRIVERS`` and the ``sqlstream.storage_drivers`` entry
points) are both named this way. The loader lives here, below both, so that the storage
layer does not import the archive wing to load a driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["entry_points", "load_object"]


def entry_points(group: str) -> list[EntryPoint]:
    """The installed entry points of ``group`` (e.g. ``"sqlstream.storage_drivers"``).

    :mod:`importlib.metadata` (with email, zipfile, csv) is imported here, when a plugin
    is looked up by name, not when the CLI or a package that names plugins is imported:
    it was the largest part of ``sqlstream -h`` (tests/test_startup.py).
    """
    from importlib import metadata

    return list(metadata.entry_points(group=group))


def load_object(spec: str) -> Any:
    """The object named by ``"package.module:Name"`` (``Name`` may be dotted).

    Raises :class:`~sqlstream.errors.InvalidArgument` if the spec is malformed, the module
    does not import, or it has no such attribute.
    """
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise InvalidArgument(
            f"a plugin is named 'module:Class', not {spec!r}", hint="e.g. 'sqlstream.archive:GzipCallback'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument(f"cannot import {module_name!r} for plugin {spec!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidArgument(f"module {module_name!r} has no {attr!r} (plugin {spec!r})") from None
    return obj
