"""Plugins named by a string: ``"package.module:Name"``.

Archive callbacks (``CallbackList(callback_list="sqlstream.archive:GzipCallback, ...")``)
and storage drivers (``BUILTIN_DRIVERS`` and the ``sqlstream.storage_drivers`` entry
points) are both named this way. The loader lives here, below both, so that the storage
layer does not import the archive wing to load a driver.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import InvalidArgument

__all__ = ["load_object"]


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
