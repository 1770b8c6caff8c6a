"""BuildGrid LogStream storage in a sqlstream file.

:class:`StreamStorage` implements BuildGrid's LogStream ``StreamStorageABC`` (the
storage behind the LogStream and ByteStream services) with the same method names,
argument names, return tuples (:class:`StreamHandle`, :class:`StreamLength`,
:class:`StreamChunk`) and error names. Every LogStream is one sqlstream stream created
with ``secret=True``; its bytes are the stream's byte log, so the file can be shared by
several BuildGrid processes and inspected with the ``sqlite3`` shell.

Names
    ``create_stream(parent, prefix)`` returns ``name = "{parent}/logStreams/{prefix}{uuid4}"``
    (``"logStreams/{prefix}{uuid4}"`` for an empty parent) and
    ``write_resource_name = "{name}/{secret}"``, where ``secret`` is the stream's sqlstream
    write secret: the read name is the write name up to its last ``/``, as in BuildGrid,
    and only holders of the write name can append. Names are instance-qualified: after
    ``set_instance_name("main")`` the stream is stored as ``"main/{name}"`` and is
    invisible to a storage set to another instance (the empty instance, BuildGrid's
    default, stores ``name`` as is). Stored names must pass sqlstream's name rule
    (:data:`sqlstream.records.NAME_RULE`); nothing is escaped or extended: a parent,
    prefix or instance with other characters (or a name too long for the rule) makes
    ``create_stream`` raise :class:`sqlstream.errors.InvalidName`, and such a name given
    to a lookup simply does not exist (``NotFoundError``; ``stream_exists`` is False).

Streaming clients
    ``new_client_streaming`` / ``streaming_client_left`` keep a count of clients per
    LogStream **in the database**, so a writer in one process sees readers in another:
    the count lives in a companion stream ``"{stored name}/_clients"`` whose records are
    the successive counts (JSON ints, changed in write transactions, never below 0).
    ``wait_for_streaming_clients`` blocks on sqlstream's wakeup mechanism (no polling
    loop of its own). The companion is deleted together with its LogStream. A reader
    process that dies without calling ``streaming_client_left`` leaves the count too
    high; the only effect is that writers stop waiting for that stream.

Errors
    :class:`NotFoundError`, :class:`StreamFinishedError`,
    :class:`StreamWritePendingError`, :class:`OutOfRangeError`, :class:`StorageFullError`
    and :class:`WriteError` each subclass the matching sqlstream error (e.g.
    ``NotFoundError`` is a :class:`sqlstream.errors.StreamNotFound`), and, when an
    installed ``buildgrid`` provides ``StreamStorageABC``, also BuildGrid's class of the
    same name where BuildGrid has one; ``StreamStorage`` then subclasses
    ``StreamStorageABC`` and the result tuples are BuildGrid's own. sqlstream errors are
    converted in one place (:func:`_converted`) with the original kept as ``__cause__``.
    Arguments of the wrong type or range raise :class:`sqlstream.errors.InvalidArgument`
    (a ``ValueError``), except negative offsets, which raise ``OutOfRangeError`` as a
    ByteStream read does.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

from .. import errors
from ..database import Database
from ..database import open as _open_database
from ..records import NAME_RULE, check_name
from ..streams import Stream

__all__ = [
    "StreamStorage",
    "StreamHandle",
    "StreamLength",
    "StreamChunk",
    "LogStreamError",
    "NotFoundError",
    "StreamFinishedError",
    "StreamWritePendingError",
    "OutOfRangeError",
    "StorageFullError",
    "WriteError",
    "BUILDGRID_AVAILABLE",
]

LOGSTREAMS_SEGMENT = "logStreams"
CLIENTS_SUFFIX = "/_clients"


# --------------------------------------------------------------------- optional BuildGrid


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or installed without its own dependencies (grpc, ...)
        return None


_bg_abc = _optional_module("buildgrid.server.cas.logstream.stream_storage.stream_storage_abc")
BUILDGRID_AVAILABLE: bool = _bg_abc is not None and hasattr(_bg_abc, "StreamStorageABC")
"""True when an installed ``buildgrid`` provides ``StreamStorageABC`` (then it is our base)."""

_bg_error_modules: list[ModuleType] = []
if BUILDGRID_AVAILABLE:
    assert _bg_abc is not None
    _bg_error_modules.append(_bg_abc)
    for _name in ("buildgrid.server.exceptions", "buildgrid._exceptions"):
        _module = _optional_module(_name)
        if _module is not None:
            _bg_error_modules.append(_module)


def _buildgrid_error(name: str) -> tuple[type[BaseException], ...]:
    """BuildGrid's exception class called ``name`` as a 1-tuple of bases, or ``()``."""
    for module in _bg_error_modules:
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return (cls,)
    return ()


def _server_domain() -> Any:
    for module in _bg_error_modules:
        domain = getattr(module, "ErrorDomain", None)
        if domain is not None and hasattr(domain, "SERVER"):
            return domain.SERVER
    return None


# --------------------------------------------------------------------- errors


class LogStreamError(errors.SqlstreamError):
    """Base of the errors this module raises; carries BuildGrid's ``detail``/``domain``/``reason``."""

    detail: Any = None
    reason: Any = None
    domain: Any = _server_domain()


class NotFoundError(LogStreamError, errors.StreamNotFound, *_buildgrid_error("NotFoundError")):  # type: ignore[misc]
    """No LogStream has that name (in this instance), or no LogStream has that write name."""


class StreamFinishedError(LogStreamError, errors.StreamSealed, *_buildgrid_error("StreamFinishedError")):  # type: ignore[misc]
    """The LogStream was marked finished; it takes no more appends."""


class StreamWritePendingError(
    LogStreamError, errors.WritePending, *_buildgrid_error("StreamWritePendingError")  # type: ignore[misc]
):
    """The requested bytes are not committed yet (non-blocking read, or a blocking read timed out)."""


class OutOfRangeError(LogStreamError, errors.OffsetOutOfRange, *_buildgrid_error("OutOfRangeError")):  # type: ignore[misc]
    """A finished LogStream holds no data at that offset (or the offset is negative)."""


class StorageFullError(LogStreamError, errors.StorageFull, *_buildgrid_error("StorageFullError")):  # type: ignore[misc]
    """The disk or the database's size limit is full; nothing was written."""


class WriteError(LogStreamError, errors.WriteError, *_buildgrid_error("WriteError")):  # type: ignore[misc]
    """The write name was right but the write failed for another reason (cause attached)."""


# sqlstream error -> the error this module raises instead. First match wins.
_CONVERSIONS: tuple[tuple[type[errors.SqlstreamError], type[LogStreamError]], ...] = (
    (errors.StreamNotFound, NotFoundError),
    (errors.AccessDenied, NotFoundError),
    (errors.StreamSealed, StreamFinishedError),
    (errors.WritePending, StreamWritePendingError),
    (errors.OffsetOutOfRange, OutOfRangeError),
    (errors.StorageFull, StorageFullError),
    (errors.WriteError, WriteError),
)
# During a write, these mean "the write failed for other reasons".
_WRITE_FAILURES: tuple[type[errors.SqlstreamError], ...] = (
    errors.LockTimeout,
    errors.ReadOnlyDatabase,
    errors.DatabaseError,
    errors.CorruptDatabase,
    errors.PayloadTooLarge,
)


@contextlib.contextmanager
def _converted(*, write: bool = False) -> Iterator[None]:
    """The one place sqlstream errors become this module's errors (cause kept).

    Errors of the caller's own making (InvalidArgument, InvalidValue, InvalidName) and
    DatabaseClosed pass through unchanged.
    """
    try:
        yield
    except LogStreamError:
        raise
    except errors.SqlstreamError as exc:
        message = exc.args[0] if exc.args else type(exc).__name__
        for ours, theirs in _CONVERSIONS:
            if isinstance(exc, ours):
                raise theirs(message, hint=exc.hint) from exc
        if write and isinstance(exc, _WRITE_FAILURES):
            raise WriteError(f"the LogStream write failed: {message}", hint=exc.hint) from exc
        raise


# --------------------------------------------------------------------- result tuples


class StreamHandle(NamedTuple):
    """What ``create_stream`` returns: the read name and the secret write name."""

    name: str
    write_resource_name: str


class StreamLength(NamedTuple):
    """A LogStream's committed length in bytes and whether it is finished."""

    length: int
    finished: bool


class StreamChunk(NamedTuple):
    """Bytes read from a LogStream; ``finished`` only when they reach a finished stream's end."""

    data: bytes
    chunk_length: int
    finished: bool


_StorageBase: type = object
if BUILDGRID_AVAILABLE:
    assert _bg_abc is not None
    _StorageBase = _bg_abc.StreamStorageABC
    StreamHandle = getattr(_bg_abc, "StreamHandle", StreamHandle)  # type: ignore[misc]
    StreamLength = getattr(_bg_abc, "StreamLength", StreamLength)  # type: ignore[misc]
    StreamChunk = getattr(_bg_abc, "StreamChunk", StreamChunk)  # type: ignore[misc]


# --------------------------------------------------------------------- argument checks


def _offset_arg(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgument(f"{what} must be an int, not {value!r}")
    if value < 0:
        raise OutOfRangeError(f"{what} must be >= 0, not {value}")
    return value


def _limit_arg(value: object) -> int | None:
    """``None`` and ``0`` both mean "to the end of the stream" (ByteStream's read_limit 0)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.InvalidArgument(f"read_limit_bytes must be None or an int >= 0, not {value!r}")
    return value or None


def _timeout_arg(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise errors.InvalidArgument(f"timeout must be None or a number of seconds >= 0, not {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int past float range
        raise errors.InvalidArgument(f"timeout must be None or a number of seconds >= 0, not {value!r}"[:200]) from None


def _message_bytes(message: object) -> bytes:
    if message is None:
        return b""
    if isinstance(message, bytes):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    raise errors.InvalidValue(f"a LogStream message must be bytes, not {type(message).__name__}")


# --------------------------------------------------------------------- the storage


class StreamStorage(_StorageBase):  # type: ignore[misc]
    """BuildGrid LogStream storage in one sqlstream database file.

    ``path_or_db`` is a path (the database is opened with ``open_options`` and closed by
    :meth:`close`) or an open :class:`~sqlstream.Database` (shared; :meth:`close` leaves
    it open). Thread-safe; several processes may use one file at once. Use as a context
    manager or call :meth:`close`.
    """

    def __init__(
        self,
        path_or_db: str | os.PathLike[str] | Database,
        *,
        instance_name: str = "",
        **open_options: Any,
    ) -> None:
        if isinstance(path_or_db, Database):
            if open_options:
                raise errors.InvalidArgument(
                    "open options apply only when StreamStorage opens the database from a path"
                )
            self.db = path_or_db
            self._owns_db = False
        else:
            self.db = _open_database(path_or_db, **open_options)
            self._owns_db = True
        self._instance_name: str = ""
        self.set_instance_name(instance_name)

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the database if this storage opened it (idempotent)."""
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> StreamStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<sqlstream.compat.buildgrid.StreamStorage {self.db.path!r} instance={self._instance_name!r}>"

    def set_instance_name(self, instance_name: str) -> None:
        """Qualify every later name with ``instance_name`` (``""`` is BuildGrid's default instance)."""
        if not isinstance(instance_name, str):
            raise errors.InvalidArgument(f"instance_name must be a str, not {type(instance_name).__name__}")
        self._instance_name = instance_name

    @property
    def instance_name(self) -> str:
        return self._instance_name

    # ----------------------------------------------------------------- names

    def stored_name(self, stream_name: str) -> str:
        """The sqlstream stream name that holds LogStream ``stream_name`` in this instance."""
        return f"{self._instance_name}/{stream_name}" if self._instance_name else stream_name

    def _resolve(self, stream_name: object) -> str:
        """The stored name for a lookup; ``NotFoundError`` if no stream could have that name."""
        if not isinstance(stream_name, str):
            raise NotFoundError(f"a LogStream name is a str, not {type(stream_name).__name__}")
        stored = self.stored_name(stream_name)
        try:
            check_name(stored)
        except errors.InvalidName as exc:
            raise NotFoundError(
                f"no LogStream named {stream_name!r} in instance {self._instance_name!r}: "
                f"stored names are {NAME_RULE}"
            ) from exc
        return stored

    def _writer(self, write_resource_name: object) -> Stream:
        """A writable handle for a write name; ``NotFoundError`` unless it names a stream here."""
        if not isinstance(write_resource_name, str) or "/" not in write_resource_name:
            raise NotFoundError("no LogStream has that write resource name")
        read_name, _, secret = write_resource_name.rpartition("/")
        stored = self._resolve(read_name)
        with _converted():
            stream = self.db.writer(secret)
        if stream.name != stored:
            raise NotFoundError(f"no LogStream {read_name!r} with that write resource name")
        return stream

    # ----------------------------------------------------------------- creating, inspecting

    def create_stream(self, parent: str, prefix: str) -> StreamHandle:
        """Create a LogStream named ``{parent}/logStreams/{prefix}{uuid4}``; return its handle.

        ``write_resource_name`` is ``{name}/{secret}``: keep it private, it is the only way
        to append. Raises :class:`sqlstream.errors.InvalidName` when the (instance-qualified)
        name breaks sqlstream's name rule, ``InvalidArgument`` for non-str arguments.
        """
        for what, value in (("parent", parent), ("prefix", prefix)):
            if not isinstance(value, str):
                raise errors.InvalidArgument(f"{what} must be a str, not {type(value).__name__}")
        tail = f"{LOGSTREAMS_SEGMENT}/{prefix}{uuid.uuid4()}"
        name = f"{parent}/{tail}" if parent else tail
        stored = self.stored_name(name)
        try:
            check_name(stored + CLIENTS_SUFFIX)
        except errors.InvalidName as exc:
            raise errors.InvalidName(
                f"cannot create a LogStream for parent={parent!r}, prefix={prefix!r} in instance "
                f"{self._instance_name!r}: its stored name {stored!r} plus {CLIENTS_SUFFIX!r} "
                f"must be {NAME_RULE}",
                hint="use only those characters in the parent, prefix and instance name",
            ) from exc
        with _converted(write=True):
            stream = self.db.create_stream(
                stored,
                secret=True,
                metadata={"buildgrid": {"instance": self._instance_name, "name": name}},
            )
        assert stream.write_secret is not None
        return StreamHandle(name, f"{name}/{stream.write_secret}")

    def stream_exists(self, stream_name: str) -> bool:
        """True when this instance has a LogStream called ``stream_name``. Never raises NotFoundError."""
        try:
            stored = self._resolve(stream_name)
            with _converted():
                self.db.stream_info(stored)
        except NotFoundError:
            return False
        return True

    def stream_finished(self, stream_name: str) -> bool:
        """Whether the LogStream was marked finished. ``NotFoundError`` if it does not exist."""
        return self.stream_length(stream_name).finished

    def stream_length(self, stream_name: str) -> StreamLength:
        """Committed length in bytes and finished flag. ``NotFoundError`` if it does not exist."""
        stored = self._resolve(stream_name)
        with _converted():
            info = self.db.stream_info(stored)
        return StreamLength(info.byte_length, info.sealed)

    def writeable_stream_length(self, write_resource_name: str) -> StreamLength:
        """:meth:`stream_length` by write name. ``NotFoundError`` for an unknown write name."""
        stream = self._writer(write_resource_name)
        with _converted():
            info = self.db.stream_info(stream.name)
        return StreamLength(info.byte_length, info.sealed)

    # ----------------------------------------------------------------- writing

    def append_to_stream(
        self,
        write_resource_name: str,
        message: bytes | None = None,
        *,
        mark_finished: bool | None = False,
    ) -> None:
        """Append ``message`` and/or mark the LogStream finished, in ONE transaction.

        Durable and visible to readers (which wake) when this returns; on any error
        nothing is stored. A message larger than the database's ``max_record_bytes`` is
        stored as several records of the same transaction (the byte log is the same).
        Raises ``NotFoundError`` (unknown write name), ``StreamFinishedError`` (already
        finished: any append, or a second mark_finished), ``StorageFullError``,
        ``WriteError`` (other write failures, cause attached), ``InvalidValue`` when
        ``message`` is not bytes-like.
        """
        data = _message_bytes(message)
        step = self.db.max_record_bytes
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        with _converted(write=True), self.db.transaction():
            # The write name is checked inside the transaction: one snapshot, one commit.
            stream = self._writer(write_resource_name)
            if pieces:
                stream.extend(pieces)
            if mark_finished:
                if not stream.seal():
                    raise errors.StreamSealed(f"LogStream {stream.name!r} was already marked finished")
            elif not pieces and stream.info().sealed:
                raise errors.StreamSealed(f"LogStream {stream.name!r} was marked finished")

    def delete_stream(self, write_resource_name: str) -> None:
        """Delete the LogStream (and its client count) in one transaction.

        Readers blocked on it wake with ``NotFoundError``. ``NotFoundError`` for an unknown
        write name (including a second delete).
        """
        with _converted(write=True), self.db.transaction():
            stream = self._writer(write_resource_name)
            self.db.delete_stream(stream.name)
            with contextlib.suppress(errors.StreamNotFound):
                self.db.delete_stream(stream.name + CLIENTS_SUFFIX)

    # ----------------------------------------------------------------- reading

    def read_stream_chunk(
        self, stream_name: str, read_offset_bytes: int, read_limit_bytes: int | None = None
    ) -> StreamChunk:
        """Committed bytes ``[offset, min(offset + limit, length))`` now, or raise; never blocks.

        ``read_limit_bytes`` None (or 0) means the whole rest of the stream, which must be
        finished. Raises ``StreamWritePendingError`` when the requested bytes are not all
        committed and the stream is not finished, ``OutOfRangeError`` for an offset past the
        end of a finished stream (the end itself gives an empty, finished chunk),
        ``NotFoundError``.
        """
        return self._read_chunk(stream_name, read_offset_bytes, read_limit_bytes, 0)

    def read_stream_chunk_blocking(
        self,
        stream_name: str,
        read_offset_bytes: int,
        read_limit_bytes: int | None = None,
        *,
        timeout: float | None = None,
    ) -> StreamChunk:
        """Like :meth:`read_stream_chunk`, but waits until the chunk is committed or the stream finishes.

        Blocks (on sqlstream's wakeup, no polling loop) until all requested bytes are
        committed, or the stream is finished (then the chunk stops at its end); with
        ``read_limit_bytes`` None, until the stream is finished. ``timeout`` (an extension;
        default None waits without limit) ends the wait with ``StreamWritePendingError``.
        Raises ``OutOfRangeError`` for an offset past the end of a finished stream,
        ``NotFoundError`` if it does not exist or is deleted while waiting.
        """
        return self._read_chunk(stream_name, read_offset_bytes, read_limit_bytes, _timeout_arg(timeout))

    def _read_chunk(self, stream_name: str, offset: int, limit: int | None, timeout: float | None) -> StreamChunk:
        offset = _offset_arg("read_offset_bytes", offset)
        limit = _limit_arg(limit)
        stored = self._resolve(stream_name)
        with _converted():
            chunk = Stream(self.db, stored).read_bytes(offset, limit, timeout=timeout)
        return StreamChunk(chunk.data, chunk.length, chunk.finished)

    def read_stream_bytes_blocking_iterator(
        self,
        stream_name: str,
        max_chunk_size: int,
        offset: int = 0,
        *,
        timeout: float | None = None,
    ) -> Iterator[bytes]:
        """Yield the LogStream's committed bytes in pieces of at most ``max_chunk_size``.

        Starts at byte ``offset * max_chunk_size`` (``offset`` counts chunks) and ends once
        the stream is finished and everything was yielded. While the writer is behind it
        blocks on sqlstream's wakeup mechanism (it re-checks only after a commit), so an
        idle reader costs nothing. A piece may be shorter than ``max_chunk_size`` when
        that is all that is committed. Raises at call time ``NotFoundError`` and
        ``OutOfRangeError`` (start past the end of a finished stream); while iterating
        ``NotFoundError`` if the stream is deleted, and ``StreamWritePendingError`` if
        ``timeout`` (an extension, default None) passes with nothing new.
        """
        if isinstance(max_chunk_size, bool) or not isinstance(max_chunk_size, int) or max_chunk_size < 1:
            raise errors.InvalidArgument(f"max_chunk_size must be an int >= 1, not {max_chunk_size!r}")
        start = _offset_arg("offset", offset) * max_chunk_size
        timeout = _timeout_arg(timeout)
        stored = self._resolve(stream_name)
        with _converted():
            info = self.db.stream_info(stored)
        if info.sealed and start > info.byte_length:
            raise OutOfRangeError(
                f"chunk offset {offset} (byte {start}) is past the end of finished LogStream "
                f"{stream_name!r} ({info.byte_length} bytes)"
            )
        return self._iterate(stored, max_chunk_size, start, timeout)

    def _iterate(self, stored: str, size: int, start: int, timeout: float | None) -> Iterator[bytes]:
        with _converted():
            yield from Stream(self.db, stored).iter_bytes(size, start, timeout=timeout)

    # ----------------------------------------------------------------- streaming clients

    def new_client_streaming(self, stream_name: str) -> None:
        """Count one more client streaming ``stream_name`` (in the database; wakes waiting writers).

        Raises ``NotFoundError`` if the LogStream does not exist.
        """
        self._change_clients(stream_name, +1)

    def streaming_client_left(self, stream_name: str) -> None:
        """Count one client fewer (never below zero). ``NotFoundError`` if the LogStream is gone."""
        self._change_clients(stream_name, -1)

    def streaming_clients(self, stream_name: str) -> int:
        """How many clients are streaming ``stream_name`` now (an extension). ``NotFoundError``."""
        stored = self._resolve(stream_name)
        with _converted():
            self.db.stream_info(stored)
            try:
                return _current_count(self.db.stream(stored + CLIENTS_SUFFIX))
            except errors.StreamNotFound:
                return 0

    def wait_for_streaming_clients(self, write_resource_name: str, timeout: int | float | None = 300) -> bool:
        """Wait until at least one client streams this LogStream; True if one does within ``timeout``.

        Clients counted by any process sharing the file count. Blocks on sqlstream's
        wakeup mechanism; ``timeout`` in seconds (0 checks once, None waits without limit).
        Raises ``NotFoundError`` for an unknown write name or when the stream is deleted
        while waiting. A wait with ``timeout`` other than 0 first creates the stream's
        client counter if it has none yet, so it needs a writable database.
        """
        stream = self._writer(write_resource_name)
        return self._wait_clients(stream.name, _timeout_arg(timeout))

    def _clients_stream(self, stored: str) -> Stream:
        """The companion stream counting ``stored``'s clients, created if needed (in a transaction)."""
        with self.db.transaction():
            self.db.stream_info(stored)  # StreamNotFound if the LogStream itself is gone
            return self.db.create_stream(
                stored + CLIENTS_SUFFIX, exist_ok=True, metadata={"buildgrid_clients_of": stored}
            )

    def _change_clients(self, stream_name: str, delta: int) -> None:
        stored = self._resolve(stream_name)
        with _converted(write=True), self.db.transaction():
            clients = self._clients_stream(stored)
            count = _current_count(clients)
            new = max(0, count + delta)
            if new != count:
                clients.append(new)

    def _wait_clients(self, stored: str, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _converted():
            if timeout == 0:  # a plain check writes nothing (works on read-only databases)
                self.db.stream_info(stored)
                try:
                    return _current_count(self.db.stream(stored + CLIENTS_SUFFIX)) >= 1
                except errors.StreamNotFound:
                    return False
            clients = self._clients_stream(stored)
            while True:
                info = clients.info()
                if _current_count(clients, info.next_offset) >= 1:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Sleeps until the count changes (a record is appended), the stream is
                # deleted (StreamNotFound) or the time is up.
                clients.read(info.next_offset, 1, timeout=remaining)

    # ----------------------------------------------------------------- BuildGrid ABC hooks

    def _create_stream(self, stream_handle: Any) -> None:
        """Not supported: sqlstream chooses the write secret, so use :meth:`create_stream`."""
        raise NotImplementedError(
            "sqlstream chooses each LogStream's write secret; call create_stream(parent, prefix)"
        )

    def _append_to_stream(
        self,
        stream_name: str,
        write_resource_name: str,
        message: bytes | None = None,
        *,
        mark_finished: bool | None = False,
    ) -> None:
        """BuildGrid's hook: :meth:`append_to_stream` after checking the two names agree."""
        if not isinstance(write_resource_name, str) or write_resource_name.rpartition("/")[0] != stream_name:
            raise NotFoundError("no LogStream has that write resource name")
        self.append_to_stream(write_resource_name, message, mark_finished=mark_finished)

    def _wait_for_streaming_clients(self, stream_name: str, timeout: int | float | None) -> bool:
        """BuildGrid's hook: :meth:`wait_for_streaming_clients` by read name."""
        stored = self._resolve(stream_name)
        return self._wait_clients(stored, _timeout_arg(timeout))


def _current_count(clients: Stream, next_offset: int | None = None) -> int:
    """The client count a companion stream holds: its last record's value (0 when empty)."""
    if next_offset is None:
        next_offset = clients.info().next_offset
    if next_offset == 0:
        return 0
    return int(clients.read(next_offset - 1, 1)[0].value)
