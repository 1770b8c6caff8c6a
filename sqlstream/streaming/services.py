"""The streaming-service interface and the registry that builds services by name.

A service turns blocks (:class:`~sqlstream.streaming.store.Block`: the records one commit
wrote to the streams it exposes) into output. The runner hands it every block above its
durable cursor, in height order, and advances the cursor after :meth:`Service.write_block`
returns; so ``write_block`` must be idempotent: a block redone after a crash (the output
written, the cursor not yet advanced) must give the same output.

Services are found by name: the built-ins in :data:`BUILTIN_SERVICES` (``file``), then the
``sqlstream.streaming_services`` entry-point group (name -> Service subclass).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as _metadata
from typing import Any, ClassVar

from ..errors import InvalidArgument
from ..plugins import load_object
from .store import Block, Store

__all__ = ["Service", "Option", "ENTRY_POINT_GROUP", "BUILTIN_SERVICES", "service_class", "known_services"]

ENTRY_POINT_GROUP = "sqlstream.streaming_services"
BUILTIN_SERVICES = {
    "file": "sqlstream.streaming.file:FileService",
    "jetstream": "sqlstream.streaming.jetstream:JetStreamForward",
    "jetstream-source": "sqlstream.streaming.jetstream:JetStreamSource",
}


@dataclass(frozen=True)
class Option:
    """One option a service accepts: its TOML type(s), default, and whether it is required.

    ``kind`` is one of ``"str"``, ``"bool"``, ``"int"``, ``"number"``, ``"path"`` (a string,
    resolved against the config file's directory), ``"table"``.
    """

    kind: str
    default: Any = None
    required: bool = False
    help: str = ""


class Service(ABC):
    """A streaming service: writes each block it is given, idempotently.

    Subclasses declare ``KIND`` (their registry name) and ``OPTIONS`` (every option
    besides ``keys``; the config loader rejects any other key). They are built with the
    streamer's name, its ``keys`` patterns and the validated options.
    """

    KIND: ClassVar[str] = ""
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    #: False for a service that runs its own loop (:meth:`serve`) in a thread the runner
    #: starts, instead of being handed blocks: a relay that pipelines acknowledgements, or
    #: one fed by a remote system. It keeps its own position through the Store.
    BLOCKS: ClassVar[bool] = True

    def __init__(self, name: str, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        self.name = name
        self.keys = list(keys)
        self.options = dict(options)
        self.stop_on_error = bool(self.options.get("stop-node-on-error", True))

    @property
    def enabled(self) -> bool:
        """An empty ``keys`` list turns the service off."""
        return bool(self.keys)

    @abstractmethod
    def write_block(self, block: Block) -> None:
        """Write ``block``'s output completely (durably, if configured) or raise.

        Must be idempotent: called again with the same block it produces the same output.
        """

    def serve(self, store: Store, stop: threading.Event, *, once: bool = False) -> None:
        """Run a ``BLOCKS = False`` service until ``stop`` is set (``once``: until caught up).

        Called in a thread of its own; raising stops the whole run (the runner reports it
        as :class:`~sqlstream.streaming.runner.ServiceError`). Transient failures are the
        service's to retry.
        """
        raise NotImplementedError(f"{type(self).__name__} is fed blocks (BLOCKS = True)")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources once the runner stops (default: nothing)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} keys={self.keys!r}>"


def known_services() -> list[str]:
    """Every service name the registry can build (built-ins and entry points)."""
    return sorted(set(BUILTIN_SERVICES) | {ep.name for ep in _metadata.entry_points(group=ENTRY_POINT_GROUP)})


def service_class(kind: str) -> type[Service]:
    """The Service subclass registered as ``kind``; InvalidArgument names the known ones."""
    if kind in BUILTIN_SERVICES:
        cls = load_object(BUILTIN_SERVICES[kind])
    else:
        found = [ep for ep in _metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
        if not found:
            raise InvalidArgument(
                f"no streaming service named {kind!r} (known: {', '.join(known_services())})",
                hint=f"install the package that provides it (entry-point group {ENTRY_POINT_GROUP!r})",
            )
        cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Service)):
        raise InvalidArgument(f"streaming service {kind!r} is {cls!r}, not a sqlstream.streaming.Service subclass")
    return cls


def resolve_path(value: str, base_dir: str) -> str:
    """``value`` with ``~`` expanded, relative to ``base_dir`` (the config file's directory)."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
