"""The streaming-service interface and the registry that builds services by name.

A service turns blocks (:class:`~sqlstream.streaming.store.Block`: the records one commit
wrote to the streams it exposes) into output. The runner hands it every block above its
durable cursor, in height order, and advances the cursor after :meth:`Service.write_block`
returns; so ``write_block`` must be idempotent: a block redone after a crash (the output
written, the cursor not yet advanced) must give the same output.

Services are found by name: the built-ins in :data:`BUILTIN_SERVICES` (``file``, ``archive``), then the
``sqlstream.streaming_services`` entry-point group (name -> Service subclass).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import InvalidArgument
from ..plugins import entry_points, load_object
from .store import Block, Store

__all__ = ["Service", "Option", "OptionError", "Output", "output_directory", "ENTRY_POINT_GROUP", "BUILTIN_SERVICES", "service_class", "known_services"]

ENTRY_POINT_GROUP = "sqlstream.streaming_services"
BUILTIN_SERVICES = {
    "file": "sqlstream.streaming.file:FileService",
    "archive": "sqlstream.streaming.archive:ArchiveService",
    "jetstream": "sqlstream.streaming.jetstream:JetStreamForward",
    "jetstream-source": "sqlstream.streaming.jetstream:JetStreamSource",
}


@dataclass(frozen=True)
class Option:
    """One option a service accepts: its TOML type(s), default, and whether it is required.

    ``kind`` is one of ``"str"``, ``"bool"``, ``"int"``, ``"number"``, ``"path"`` (a string,
    resolved against the config file's directory), ``"table"``. ``check``, when given, is
    called with a value of the right type and returns what is wrong with it (None: fine).
    """

    kind: str
    default: Any = None
    required: bool = False
    help: str = ""
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class Output:
    """A place a service writes to, for the config check that no two services write over each other.

    ``where`` names the place (``"directory /abs/out"``, a storage location...), ``names``
    the part of it the service's names can take (``"block files with prefix 'app'"``), or
    None for all of it. Two outputs overlap when ``where`` is equal and ``names`` is equal
    or None on either side; a service declares ``names`` only when name spaces that
    differ can never share a name.
    """

    where: str
    names: str | None = None

    def overlaps(self, other: Output) -> bool:
        return self.where == other.where and (self.names is None or other.names is None or self.names == other.names)

    def __str__(self) -> str:
        return self.where if self.names is None else f"{self.where} ({self.names})"


def output_directory(path: str) -> str:
    """The ``where`` of an output directory: its real path (symlinks resolved, so two
    spellings of one folder compare equal), case-folded where the OS folds file names."""
    return "directory " + os.path.normcase(os.path.realpath(path))


class OptionError(InvalidArgument):
    """An option value a service refuses (raised by :meth:`Service.prepare_options`); ``key`` names it."""

    def __init__(self, key: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(problem, hint=hint)
        self.key = key
        self.problem = problem


class Service(ABC):
    """A streaming service: writes each block it is given, idempotently.

    Subclasses declare ``KIND`` (their registry name) and ``OPTIONS`` (every option
    besides ``keys``; the config loader rejects any other key). They are built with the
    streamer's name, its ``keys`` patterns and the validated options.
    """

    KIND: ClassVar[str] = ""
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    #: A self-paced service is not fed blocks: the runner calls :meth:`run_paced` in a
    #: thread of its own, and the service keeps (and mirrors) its own progress.
    SELF_PACED: ClassVar[bool] = False
    #: A self-paced service that ``Runner.stop()`` lets finish what was committed before it
    #: (a last ``once`` pass). False for services whose output is remote (the JetStream
    #: relays): a stop never waits on a server; their durable cursor resumes next run.
    DRAINS_ON_STOP: ClassVar[bool] = True
    #: What the run counts for this service (``serve --once`` prints it).
    UNIT: ClassVar[str] = "block(s)"

    def __init__(self, name: str, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        self.name = name
        self.keys = list(keys)
        self.options = dict(options)
        self.stop_on_error = bool(self.options.get("stop-node-on-error", True))
        #: ``serve --skip-trimmed``: go past records retention trimmed before this service
        #: streamed them (logged), instead of stopping with RecordsTrimmed.
        self.accept_trimmed = False
        # Permission bits for the files a service creates: the runner sets the database
        # file's own (a copy of the data is never more readable than the data); owner-only
        # until then.
        self.file_mode = 0o600

    @property
    def enabled(self) -> bool:
        """An empty ``keys`` list turns the service off."""
        return bool(self.keys)

    @classmethod
    def prepare_options(cls, options: dict[str, Any], base_dir: str) -> dict[str, Any]:
        """Check values beyond their TOML type and normalise them (paths against ``base_dir``,
        the config file's folder); raise :class:`OptionError`. Default: as they are."""
        return options

    @classmethod
    def prepare_keys(cls, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        """Check the ``keys`` patterns beyond their TOML type (with the prepared ``options``)
        when the config is loaded; raise :class:`OptionError`. Default: any names or globs."""

    @classmethod
    def outputs(cls, name: str, options: Mapping[str, Any]) -> list[Output]:
        """Where the streamer ``name`` configured with the prepared ``options`` writes.

        The config loader refuses two streamers whose outputs overlap, before anything
        runs. Default: none (a service whose output cannot be written over, or that
        writes only through the database's own transactions).
        """
        return []

    def run_paced(self, store: Store, stop: threading.Event, once: bool) -> int:
        """A self-paced service's loop (see ``SELF_PACED``): run until ``stop`` is set (``once``:
        until caught up with what is committed now); return the units of work done."""
        raise NotImplementedError(f"{type(self).__name__} is not self-paced")

    @abstractmethod
    def write_block(self, block: Block) -> None:
        """Write ``block``'s output completely (durably, if configured) or raise.

        Must be idempotent: called again with the same block it produces the same output.
        """

    def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare to run (called once per run before the first block; default: nothing).

        The place to clean up what a killed earlier run left behind.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources once the runner stops (default: nothing)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} keys={self.keys!r}>"


def known_services() -> list[str]:
    """Every service name the registry can build (built-ins and entry points)."""
    return sorted(set(BUILTIN_SERVICES) | {ep.name for ep in entry_points(ENTRY_POINT_GROUP)})


def service_class(kind: str) -> type[Service]:
    """The Service subclass registered as ``kind``; InvalidArgument names the known ones."""
    if kind in BUILTIN_SERVICES:
        cls = load_object(BUILTIN_SERVICES[kind])
    else:
        found = [ep for ep in entry_points(ENTRY_POINT_GROUP) if ep.name == kind]
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
