"""The sqlstream error tree.

Every error sqlstream raises is a :class:`SqlstreamError`. Errors a caller can fix carry
a ``hint`` that says how. Driver (apsw) errors are converted in exactly one place,
:func:`translate`, with the original kept as ``__cause__``; no apsw exception reaches a
caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import apsw

__all__ = [
    "SqlstreamError",
    "StreamNotFound",
    "StreamExists",
    "StreamSealed",
    "OffsetOutOfRange",
    "WritePending",
    "ConcurrencyError",
    "StaleEpoch",
    "SequenceGap",
    "SequenceRegression",
    "StreamGone",
    "StorageFull",
    "WriteError",
    "LockTimeout",
    "InvalidName",
    "InvalidValue",
    "InvalidArgument",
    "PayloadTooLarge",
    "SchemaVersionError",
    "SubscriptionNotFound",
    "SubscriptionExists",
    "SubscriptionInUse",
    "ReaderNotFound",
    "AccessDenied",
    "ReadOnlyDatabase",
    "QueryLimitExceeded",
    "QueryTimeout",
    "QueryTooLarge",
    "QueryCancelled",
    "CorruptDatabase",
    "DamagedRecord",
    "DatabaseClosed",
    "DatabaseError",
    "ArchiveError",
    "EndOfArchive",
    "TruncatedRecord",
    "CorruptArchive",
    "BadMagic",
    "ChecksumMismatch",
    "UnsupportedVersion",
    "RecordTooLarge",
    "NoMoreFiles",
    "CorruptBlockFile",
    "StorageError",
    "ObjectNotFound",
    "InvalidObjectPath",
    "ObjectPathConflict",
    "SqlstreamWarning",
    "translate",
]


class SqlstreamError(Exception):
    """Base class of every error sqlstream raises.

    ``hint`` says how to fix it in Python (``pass exist_ok=True``); ``cli_hint`` is the same
    advice for the ``sqlstream`` command line (``pass --exist-ok``), which prints
    :attr:`command_line_hint`. A class may set a default ``cli_hint`` for the hints its
    raisers give; a raise site whose hint names Python gives its own ``cli_hint=`` (``""``:
    no advice fits the command line). ``tests/test_cli_hints.py`` scans every hint the
    command line can print for Python names.
    """

    hint: str | None = None
    cli_hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None, cli_hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        if cli_hint is not None:
            self.cli_hint = cli_hint

    @property
    def command_line_hint(self) -> str | None:
        """The hint as the command line prints it (None: no hint line).

        The raise site's own ``cli_hint`` wins; else the class's, but only when there is a
        hint to replace (an error raised without advice stays one line); else ``hint``.
        """
        own = self.__dict__.get("cli_hint")
        if own is not None:
            return own or None
        if self.hint is None:
            return None
        default = type(self).cli_hint
        if default is not None:
            return default or None
        return self.hint

    def __str__(self) -> str:
        text = Exception.__str__(self)  # not super(): KeyError's __str__ would quote it
        return f"{text} (hint: {self.hint})" if self.hint else text


class StreamNotFound(SqlstreamError, KeyError):
    """The named stream (or write secret) does not exist."""

    # The command line says only "no stream named 'x'"; commands that write add how to make it.
    cli_hint = ""

    def __str__(self) -> str:  # KeyError would quote the message
        return SqlstreamError.__str__(self)


class StreamExists(SqlstreamError):
    """A stream with that name already exists."""

    cli_hint = "pass --exist-ok to reuse the existing stream"


class StreamSealed(SqlstreamError):
    """The stream is sealed (finished); it takes no more appends."""


class OffsetOutOfRange(SqlstreamError, IndexError):
    """The offset lies outside what the stream holds (trimmed, or past a sealed end)."""


class WritePending(SqlstreamError):
    """The requested data has not been committed yet and the call was not allowed to wait."""


class ConcurrencyError(SqlstreamError):
    """An optimistic-concurrency check (``expect_offset``) failed."""

    cli_hint = "check `sqlstream info NAME` and retry with the new --expect-offset"


class StaleEpoch(ConcurrencyError):
    """A producer's epoch is older than the stream's for it: a fenced zombie (``current_epoch``)."""

    def __init__(self, message: str, *, current_epoch: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "a restarted producer takes a higher epoch")
        self.current_epoch = current_epoch


class SequenceGap(ConcurrencyError):
    """A producer's ``seq`` skips ahead of the next expected one (``expected``, ``received``)."""

    def __init__(self, message: str, *, expected: int, received: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.expected = expected
        self.received = received


class SequenceRegression(ConcurrencyError):
    """A writer sequence token does not follow (byte-wise) the last one the stream accepted."""


class StreamGone(SqlstreamError):
    """The stream was deleted while forks still read from it (soft-deleted), or it expired."""


class StorageFull(SqlstreamError):
    """The disk (or the database's size limit) is full; nothing was written."""


class WriteError(SqlstreamError):
    """An I/O error stopped a write; the transaction was rolled back."""


class LockTimeout(SqlstreamError):
    """Another writer held the database longer than the busy timeout the caller chose."""

    cli_hint = "another process held the write lock too long; retry once it finishes"


class InvalidName(SqlstreamError, ValueError):
    """A stream, subscription or reader name breaks the naming rule."""


class InvalidValue(SqlstreamError, TypeError):
    """A record value, key or header has a type or content sqlstream cannot store."""


class InvalidArgument(SqlstreamError, ValueError):
    """An argument is outside its allowed range or cannot be used in this situation."""


class PayloadTooLarge(SqlstreamError):
    """A record is larger than the database's maximum record size."""

    cli_hint = "split the value into several smaller records"


class SchemaVersionError(SqlstreamError):
    """The database was written by a newer sqlstream (or is not a sqlstream database)."""

    cli_hint = "run any writing command once (e.g. `sqlstream create NAME --exist-ok`) to upgrade the file"


class SubscriptionNotFound(SqlstreamError, KeyError):
    """The named subscription does not exist."""

    cli_hint = "list them with `sqlstream subscriptions`; create one with `sqlstream subscribe NAME STREAM`"

    def __str__(self) -> str:
        return SqlstreamError.__str__(self)


class SubscriptionExists(SqlstreamError):
    """A subscription with that name already exists."""

    cli_hint = "pass --exist-ok to reuse it, or pick another name"


class SubscriptionInUse(SqlstreamError):
    """The subscription still has pending (delivered, unacked) records; deleting it needs force."""

    cli_hint = "ack the pending records (`sqlstream pending SUBSCRIPTION`), or pass --force"


class ReaderNotFound(SqlstreamError, KeyError):
    """The named reader does not exist (or was deleted)."""

    cli_hint = "name its stream to create it: `sqlstream reader NAME STREAM`"

    def __str__(self) -> str:
        return SqlstreamError.__str__(self)


class AccessDenied(SqlstreamError):
    """The stream takes writes only through its write secret."""

    cli_hint = "pass the stream's write secret with --secret"


class ReadOnlyDatabase(SqlstreamError):
    """A write was attempted on a database opened read-only (or on a read-only file)."""

    cli_hint = "sqlstream sql is read-only; change data with create/append/seal/delete"


class QueryLimitExceeded(SqlstreamError):
    """An ad-hoc query (``db.query()``, ``sqlstream sql``) went past a bound it was given."""


class QueryTimeout(QueryLimitExceeded, TimeoutError):
    """The query ran longer than its ``timeout`` and was interrupted; nothing is returned."""


class QueryTooLarge(QueryLimitExceeded):
    """The query's result (rows or bytes), or one value it built, went past its bound."""


class QueryCancelled(SqlstreamError):
    """The query was stopped by its caller (``stop`` returned True; in ``sqlstream.aio``,
    the awaiting task was cancelled); nothing is returned."""


class CorruptDatabase(SqlstreamError):
    """The file is not a SQLite database or is damaged."""


class DamagedRecord(CorruptDatabase):
    """One stored record cannot be decoded (invalid UTF-8 text, or JSON that does not parse).

    ``stream`` and ``offset`` name it; its bytes stay readable with ``read_bytes``.
    """

    def __init__(self, message: str, *, stream: str, offset: int, hint: str | None = None,
                 cli_hint: str | None = None) -> None:
        super().__init__(message, hint=hint, cli_hint=cli_hint)
        self.stream = stream
        self.offset = offset

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments: pickle them explicitly
        return (_damaged, (self.args[0], self.stream, self.offset, self.hint, self.__dict__.get("cli_hint")))


def _damaged(message: str, stream: str, offset: int, hint: str | None, cli_hint: str | None = None) -> DamagedRecord:
    return DamagedRecord(message, stream=stream, offset=offset, hint=hint, cli_hint=cli_hint)


class DatabaseClosed(SqlstreamError):
    """The Database (or an object bound to it) was used after ``close()``."""


class DatabaseError(SqlstreamError):
    """Any other failure reported by SQLite; the message carries SQLite's own text."""


class SqlstreamWarning(UserWarning):
    """Something sqlstream worked around (e.g. an unsafe doorbell directory); the message says how to fix it."""


# --- archives and object storage (sqlstream.archive, sqlstream.storage) ---------------


class ArchiveError(SqlstreamError):
    """Base class of every problem reading or writing an archive file."""


class EndOfArchive(ArchiveError, EOFError):
    """The archive ended cleanly: no bytes were left where the next record would start."""


class TruncatedRecord(ArchiveError):
    """The archive ends part-way through a record (a torn tail, e.g. a writer that crashed)."""


class CorruptArchive(ArchiveError):
    """The bytes of a record are not a valid record (lengths or metadata do not add up)."""


class BadMagic(CorruptArchive):
    """A record does not start with the magic number 0x69867884: not an archive, or out of sync."""


class ChecksumMismatch(CorruptArchive):
    """A version-2 record's CRC-32 does not match its bytes: the record was damaged."""


class UnsupportedVersion(ArchiveError):
    """A record has a format version (or flag) this sqlstream cannot read."""


class RecordTooLarge(ArchiveError, PayloadTooLarge):
    """An archive record is (or decompresses to) more than the reader's ``max_record_bytes``."""

    cli_hint = "if the archive is trusted, read it with `sqlstream archive cat --max-record-bytes N`"


class NoMoreFiles(ArchiveError):
    """A ReadingRollManager has read every matching archive file to its end."""


class CorruptBlockFile(SqlstreamError, ValueError):
    """A streaming block file (``block-N-data``/``-meta``) is not what the file service writes:
    damaged, cut short, or another kind of file."""


class StorageError(SqlstreamError):
    """An object-storage driver failed; the message names the driver and the object."""


class ObjectNotFound(StorageError, KeyError):
    """The object (or a chunk given to cat_objects) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return SqlstreamError.__str__(self)


class InvalidObjectPath(StorageError, ValueError):
    """An object path is empty, absolute, too long, or would escape the storage root (``..``)."""


class ObjectPathConflict(StorageError):
    """An object path collides with the store's tree: an object cannot also be a "directory".

    E.g. ``put_object("a/b/c")`` while an object ``a/b`` exists, or ``put_object("a")``
    while objects exist under ``a/``.
    """


# Order matters: subclasses of apsw.Error are matched before their bases.
_CONVERSIONS: tuple[tuple[type[BaseException], type[SqlstreamError], str | None], ...] = (
    (
        apsw.BusyError,
        LockTimeout,
        "another connection held the write lock past the busy timeout; raise "
        "busy_timeout in sqlstream.open() or shorten the other writer's transactions",
    ),
    (apsw.LockedError, LockTimeout, "a conflicting transaction is open on this connection"),
    (apsw.FullError, StorageFull, "free disk space; the failed write left stored data unchanged"),
    (apsw.ReadOnlyError, ReadOnlyDatabase, "open the database without readonly=True"),
    (apsw.CorruptError, CorruptDatabase, "run `sqlstream check`, or restore from a backup"),
    (apsw.NotADBError, CorruptDatabase, "check the path: the file is not a SQLite database"),
    (apsw.IOError, WriteError, "check the disk and file permissions"),
    (apsw.CantOpenError, DatabaseError, "check that the path and its directory exist and are writable"),
    (apsw.PermissionsError, DatabaseError, "check file permissions"),
    (apsw.TooBigError, PayloadTooLarge, "store fewer or smaller records per call"),
    (apsw.ConnectionClosedError, DatabaseClosed, None),
    (apsw.CursorClosedError, DatabaseClosed, None),
)


def convert(exc: BaseException) -> SqlstreamError:
    """Return the sqlstream error for an apsw exception (caller raises it ``from exc``)."""
    message = _sqlite_message(exc)
    for apsw_cls, our_cls, hint in _CONVERSIONS:
        if isinstance(exc, apsw_cls):
            return our_cls(message, hint=hint)
    return DatabaseError(message)


def _sqlite_message(exc: BaseException) -> str:
    """SQLite's own text, without apsw's class-name prefix ("SQLError: ...")."""
    text = str(exc)
    prefix = f"{type(exc).__name__}: "
    while text.startswith(prefix):  # apsw sometimes includes it in the message itself
        text = text[len(prefix):]
    return text or type(exc).__name__


@contextlib.contextmanager
def translate() -> Iterator[None]:
    """Convert any apsw error raised inside the block, keeping it as the cause."""
    try:
        yield
    except apsw.Error as exc:
        raise convert(exc) from exc
