"""SQLAlchemy integration (the optional extra ``sqlstream[sqlalchemy]``, SQLAlchemy 2.x).

* **The driver.** ``sqlite+sqlstream:///PATH`` is SQLAlchemy's SQLite dialect running on
  apsw — the SQLite library sqlstream itself uses — through a small DB-API adapter
  (``sqlstream._dbapi``). Use it (or :func:`create_engine`) for every SQLAlchemy engine on
  a sqlstream file: with Python's ``sqlite3`` the process would hold the file through two
  copies of SQLite that do not see each other's locks, which corrupts it. Writing
  transactions begin with ``BEGIN IMMEDIATE`` before their first write, so they wait for
  other writers (up to the busy timeout) instead of failing with "database is locked".

* **Tables.** :data:`metadata` holds Core :class:`~sqlalchemy.Table` objects for the
  schema (``streams``, ``chunks``, ``subscriptions``, ...), :data:`views` the views for
  people, for queries with Core or the ORM. The schema belongs to sqlstream's migrations
  (``sqlstream.open(path)`` creates and upgrades it; never ``metadata.create_all``); write
  to it only through sqlstream or :func:`append`, or ``sqlstream check`` will find the
  broken offsets.

* **Transactional outbox.** :func:`append` (and :func:`extend`) append records inside the
  caller's transaction on the caller's connection, with the statements of sqlstream's own
  append path (``sqlstream.append``): offsets reserved gap-free in the stream row,
  one ``txn`` number per transaction, retention triggers, dedup ids. The application's
  rows and its events commit together or not at all; a crash before COMMIT leaves
  neither, and burns no offset. Once the transaction commits, sqlstream readers blocked in
  this process wake at once and those in other processes are rung (the doorbell of
  ``sqlstream.wakeup``), from the SQLite WAL hook that runs right after the commit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import apsw
from sqlalchemy import (
    BLOB,
    INTEGER,
    REAL,
    TEXT,
    Column,
    ForeignKey,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    text,
)
from sqlalchemy import create_engine as _sa_create_engine
from sqlalchemy.dialects import registry as _registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, Connection, Engine

from . import _dbapi
from . import append as _append
from . import dedup as _dedup
from . import txn as _txn
from .append import PreparedRecord
from .clock import us
from .connection import Query, runner
from .engine import DEFAULT_MAX_RECORD_BYTES
from .errors import InvalidArgument, convert
from .records import check_name, encode_headers, encode_key, encode_value
from .wakeup import notifier_for

__all__ = ["metadata", "views", "append", "extend", "create_engine", "SqlstreamDialect"]

# --------------------------------------------------------------------------- tables

metadata = MetaData()
"""Core Tables for sqlstream's schema (the version ``sqlstream.connection.schema_version()``)."""

streams = Table(
    "streams", metadata,
    Column("id", INTEGER, primary_key=True),
    Column("name", TEXT, nullable=False, unique=True),
    Column("created_at", INTEGER, nullable=False),
    Column("sealed_at", INTEGER),
    Column("write_secret_sha256", TEXT, unique=True),
    Column("first_offset", INTEGER, nullable=False, server_default="0"),
    Column("next_offset", INTEGER, nullable=False, server_default="0"),
    Column("first_position", INTEGER, nullable=False, server_default="0"),
    Column("byte_length", INTEGER, nullable=False, server_default="0"),
    Column("last_append_at", INTEGER),
    Column("max_count", INTEGER),
    Column("max_age", REAL),
    Column("max_bytes", INTEGER),
    Column("metadata", TEXT, nullable=False, server_default="'{}'"),
    Column("keep_unacked", INTEGER, nullable=False, server_default="0"),
    Column("dedup_seconds", REAL, nullable=False, server_default="86400.0"),
    Column("dedup_records", INTEGER, nullable=False, server_default="100000"),
    Column("trim_offset", INTEGER),
    Column("trim_bytes", INTEGER),
    Column("trim_time", INTEGER),
    Column("incarnation", INTEGER),
)

chunks = Table(
    "chunks", metadata,
    # No foreign key since schema version 20 (the trigger streams_delete_records deletes a
    # stream's records): join on chunks.c.stream_id == streams.c.id.
    Column("stream_id", INTEGER, nullable=False),
    Column("offset", INTEGER, nullable=False),
    Column("position", INTEGER, nullable=False),
    Column("timestamp", INTEGER, nullable=False),
    Column("txn", INTEGER, nullable=False),
    Column("key", TEXT),
    Column("headers", TEXT),
    Column("content_type", TEXT, nullable=False),
    Column("data", BLOB),  # NULL when the payload is stored out of the row (payloads)
    PrimaryKeyConstraint("stream_id", "offset"),
    sqlite_with_rowid=False,
)

payloads = Table(
    "payloads", metadata,
    Column("id", INTEGER, primary_key=True),
    Column("stream_id", INTEGER, nullable=False),  # the record whose value this is
    Column("offset", INTEGER, nullable=False),
    Column("data", BLOB, nullable=False),
    Index("payloads_by_record", "stream_id", "offset", unique=True),
)

counters = Table(
    "counters", metadata,
    Column("name", TEXT, primary_key=True),
    Column("value", INTEGER, nullable=False),
    sqlite_with_rowid=False,
)

subscriptions = Table(
    "subscriptions", metadata,
    Column("id", INTEGER, primary_key=True),
    Column("name", TEXT, nullable=False, unique=True),
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("ack_timeout", REAL, nullable=False),
    Column("max_unacked", INTEGER, nullable=False),
    Column("max_deliveries", INTEGER),
    Column("dead_letter", TEXT),
    Column("start_offset", INTEGER, nullable=False),
    Column("next_offset", INTEGER, nullable=False),
    Column("acked", INTEGER, nullable=False, server_default="0"),
    Column("dead_lettered", INTEGER, nullable=False, server_default="0"),
    Column("created_at", INTEGER, nullable=False),
    Column("ordering", TEXT, nullable=False, server_default="none"),
    Column("redrive_offset", INTEGER, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)

deliveries = Table(
    "deliveries", metadata,
    Column("subscription_id", INTEGER, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False),
    Column("offset", INTEGER, nullable=False),
    Column("consumer", TEXT),
    Column("attempts", INTEGER, nullable=False),
    Column("delivered_at", INTEGER, nullable=False),
    Column("deadline", INTEGER, nullable=False),
    Column("last_error", TEXT),
    Column("key", TEXT),
    Column("waiting", INTEGER, nullable=False, server_default="0"),
    PrimaryKeyConstraint("subscription_id", "offset"),
    Index("deliveries_by_deadline", "subscription_id", "deadline"),
    Index("deliveries_by_key", "subscription_id", "key", "waiting", "offset",
          sqlite_where=text("key IS NOT NULL")),
    sqlite_with_rowid=False,
)

cursors = Table(
    "cursors", metadata,
    Column("id", INTEGER, primary_key=True),
    Column("name", TEXT, nullable=False, unique=True),
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("position", INTEGER, nullable=False),
    Column("created_at", INTEGER, nullable=False),
    Column("updated_at", INTEGER, nullable=False),
    sqlite_autoincrement=True,
)

exports = Table(
    "exports", metadata,
    Column("id", INTEGER, primary_key=True),
    Column("name", TEXT, nullable=False, unique=True),
    Column("directory", TEXT, nullable=False),
    Column("created_at", INTEGER, nullable=False),
    Column("updated_at", INTEGER, nullable=False),
)

export_streams = Table(
    "export_streams", metadata,
    Column("export_id", INTEGER, ForeignKey("exports.id", ondelete="CASCADE"), nullable=False),
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("exported_offset", INTEGER, nullable=False),
    Column("delivered_offset", INTEGER, nullable=False),
    PrimaryKeyConstraint("export_id", "stream_id"),
    sqlite_with_rowid=False,
)

export_files = Table(
    "export_files", metadata,
    Column("id", INTEGER, primary_key=True),
    Column("export_id", INTEGER, ForeignKey("exports.id", ondelete="CASCADE"), nullable=False),
    Column("name", TEXT, nullable=False),
    Column("working", TEXT, nullable=False),
    Column("destination", TEXT),
    Column("location", TEXT),
    Column("state", TEXT, nullable=False),
    Column("records", INTEGER, nullable=False),
    Column("bytes", INTEGER, nullable=False),
    Column("created_at", INTEGER, nullable=False),
    Column("closed_at", INTEGER),
    Index("export_files_by_state", "export_id", "state"),
)

export_ranges = Table(
    "export_ranges", metadata,
    Column("file_id", INTEGER, ForeignKey("export_files.id", ondelete="CASCADE"), nullable=False),
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("first_offset", INTEGER, nullable=False),
    Column("next_offset", INTEGER, nullable=False),
    PrimaryKeyConstraint("file_id", "stream_id"),
    sqlite_with_rowid=False,
)

storage_objects = Table(
    "storage_objects", metadata,
    Column("id", INTEGER, primary_key=True),
    Column("path", TEXT, nullable=False, unique=True),
    Column("size", INTEGER, nullable=False),
    Column("created_at", INTEGER, nullable=False),
)

storage_segments = Table(
    "storage_segments", metadata,
    Column("object_id", INTEGER, ForeignKey("storage_objects.id", ondelete="CASCADE"), nullable=False),
    Column("seq", INTEGER, nullable=False),
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="RESTRICT"), nullable=False),
    PrimaryKeyConstraint("object_id", "seq"),
    Index("storage_segments_by_stream", "stream_id"),
    sqlite_with_rowid=False,
)

dedup = Table(
    "dedup", metadata,
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("dedup_id", TEXT, nullable=False),
    Column("offset", INTEGER, nullable=False),
    Column("created_at", INTEGER, nullable=False),
    PrimaryKeyConstraint("stream_id", "dedup_id"),
    Index("dedup_by_offset", "stream_id", "offset", "created_at"),
    sqlite_with_rowid=False,
)

streaming_cursors = Table(
    "streaming_cursors", metadata,
    Column("service", TEXT, primary_key=True),
    Column("kind", TEXT, nullable=False),
    Column("height", INTEGER, nullable=False),
    Column("updated_at", INTEGER, nullable=False),
    Column("last_error", TEXT),
    Column("error_at", INTEGER),
    sqlite_with_rowid=False,
)

jetstream_sent = Table(
    "jetstream_sent", metadata,
    Column("service", TEXT, primary_key=True),
    *(Column(name, INTEGER, nullable=False) for name in ("h1", "at1", "h2", "at2")),
    sqlite_with_rowid=False,
)

jetstream_sources = Table(
    "jetstream_sources", metadata,
    Column("service", TEXT, primary_key=True),
    Column("js_stream", TEXT, nullable=False),
    Column("sequence", INTEGER, nullable=False),
    Column("stored", INTEGER, nullable=False),
    Column("updated_at", INTEGER, nullable=False),
    Column("pending", INTEGER),
    Column("poisoned", INTEGER, nullable=False, server_default="0"),
    Column("last_poison", TEXT),
    sqlite_with_rowid=False,
)

file_lineage = Table(
    "file_lineage", metadata,
    Column("file_id", INTEGER, primary_key=True),
    Column("upto_txn", INTEGER, nullable=False),
)

producers = Table(
    "producers", metadata,
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("producer", TEXT, nullable=False),
    Column("epoch", INTEGER, nullable=False),
    Column("seq", INTEGER, nullable=False),
    Column("updated_at", INTEGER, nullable=False),
    Column("recent", TEXT),
    PrimaryKeyConstraint("stream_id", "producer"),
    sqlite_with_rowid=False,
)

writer_seqs = Table(
    "writer_seqs", metadata,
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", TEXT, nullable=False),
)

stream_lifetimes = Table(
    "stream_lifetimes", metadata,
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
    Column("ttl", REAL),
    Column("expires_at", INTEGER),
    Column("touched_at", INTEGER, nullable=False),
    Column("source", TEXT),
    Column("fork_offset", INTEGER),
    Column("deleted_at", INTEGER),
    Index("stream_lifetimes_by_source", "source", sqlite_where=text("source IS NOT NULL")),
)

# The Kafka-protocol listener's state (version 12, sqlstream.kafka).
kafka_topics = Table(
    "kafka_topics", metadata,
    Column("name", TEXT, primary_key=True),
    Column("partitions", INTEGER, nullable=False),
    Column("first_stream", TEXT, nullable=False),
    Column("topic_id", BLOB, nullable=False),
    Column("created_at", INTEGER, nullable=False),
    sqlite_with_rowid=False,
)

kafka_batches = Table(
    "kafka_batches", metadata,
    Column("stream_id", INTEGER, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    *(Column(name, INTEGER, nullable=False) for name in (
        "base_offset", "last_offset", "base_timestamp", "max_timestamp", "running_max")),
    Column("timestamps", TEXT),
    Column("extras", TEXT),
    PrimaryKeyConstraint("stream_id", "base_offset"),
    Index("kafka_batches_by_time", "stream_id", "running_max"),
    sqlite_with_rowid=False,
)

kafka_producers = Table(
    "kafka_producers", metadata,
    Column("producer_id", INTEGER, primary_key=True),
    Column("epoch", INTEGER, nullable=False),
    Column("created_at", INTEGER, nullable=False),
)

kafka_group_offsets = Table(
    "kafka_group_offsets", metadata,
    Column("group_id", TEXT, nullable=False),
    Column("topic", TEXT, nullable=False),
    Column("partition", INTEGER, nullable=False),
    Column("offset", INTEGER, nullable=False),
    Column("leader_epoch", INTEGER),
    Column("metadata", TEXT),
    Column("committed_at", INTEGER, nullable=False),
    PrimaryKeyConstraint("group_id", "topic", "partition"),
    sqlite_with_rowid=False,
)

# Durable Streams subscriptions (version 15, sqlstream.http): the protocol's own state;
# the cursor and deliveries are an ordinary subscription named "{id}@{path}".
ds_subscriptions = Table(
    "ds_subscriptions", metadata,
    Column("id", TEXT, primary_key=True),
    Column("type", TEXT, nullable=False),
    *(Column(name, TEXT) for name in ("pattern", "wake_stream", "webhook_url", "callback_base")),
    Column("lease_ttl_ms", INTEGER, nullable=False),
    Column("description", TEXT),
    Column("config_hash", TEXT, nullable=False),
    Column("created_at", INTEGER, nullable=False),
    Column("generation", INTEGER, nullable=False, server_default=text("0")),
    Column("wake_id", TEXT),
    Column("holder", TEXT),
    Column("token_hash", BLOB),
    Column("lease_until", INTEGER),
    sqlite_with_rowid=False,
)

ds_subscription_links = Table(
    "ds_subscription_links", metadata,
    Column("subscription", TEXT, ForeignKey("ds_subscriptions.id", ondelete="CASCADE"), nullable=False),
    Column("path", TEXT, nullable=False),
    Column("explicit", INTEGER, nullable=False, server_default=text("0")),
    Column("glob", INTEGER, nullable=False, server_default=text("0")),
    Column("linked_at", INTEGER, nullable=False),
    PrimaryKeyConstraint("subscription", "path"),
    sqlite_with_rowid=False,
)

views = MetaData()
"""The views for people (docs/sql.md), as Tables to select from; their columns are untyped."""

stream_stats = Table(
    "stream_stats", views,
    *(Column(name) for name in (
        "name", "first_offset", "next_offset", "records", "bytes", "total_bytes", "sealed", "secret",
        "created", "last_append", "sealed_time", "max_count", "max_age", "max_bytes", "keep_unacked",
        "dedup_ids",
    )),
)

subscription_stats = Table(
    "subscription_stats", views,
    *(Column(name) for name in (
        "name", "stream", "start_offset", "delivered_up_to", "lag", "pending", "expired",
        "oldest_pending_age", "acked_frontier", "acked", "dead_lettered", "consumers", "waiting", "ack_timeout",
        "max_unacked", "max_deliveries", "dead_letter", "created",
    )),
)

streaming_progress = Table(
    "streaming_progress", views,
    *(Column(name) for name in (
        "service", "kind", "height", "head", "lag", "updated", "last_error", "error_time",
        "source", "source_sequence", "source_stored",
    )),
)

pending_deliveries = Table(
    "pending_deliveries", views,
    *(Column(name) for name in (
        "subscription", "stream", "offset", "consumer", "attempts", "delivered", "deadline",
        "idle_seconds", "expired", "last_error",
    )),
)

last_txn = Table("last_txn", views, Column("txn"))

records = Table(
    "records", views,
    # chunks with each value in `data` wherever it is stored, and its size in bytes.
    *(Column(name) for name in (
        "stream_id", "offset", "position", "timestamp", "txn", "key", "headers", "content_type", "data", "size",
    )),
)

kafka_consumer_offsets = Table(
    "kafka_consumer_offsets", views,
    *(Column(name) for name in (
        "group_id", "topic", "partition", "stream", "offset", "lag", "metadata", "committed",
    )),
)

streams_now = Table(
    "streams_now", views,
    # The streams columns, with `secret` (whether a write secret is set) for its hash;
    # incarnation (version 11) is read from streams itself: the view predates it.
    *(Column("secret" if c.name == "write_secret_sha256" else c.name) for c in streams.columns
      if c.name != "incarnation"),
)


# --------------------------------------------------------------------------- driver


class SqlstreamDialect(SQLiteDialect_pysqlite):
    """SQLAlchemy's SQLite dialect on apsw (``sqlite+sqlstream://``); see :mod:`sqlstream._dbapi`.

    Connect arguments: ``timeout`` (seconds to wait for the write lock, default 30),
    ``synchronous`` (``"normal"``/``"full"``). Connecting creates the file and applies
    sqlstream's migrations if needed.
    """

    driver = "sqlstream"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _dbapi

    def create_connect_args(self, url: URL) -> Any:
        args, options = super().create_connect_args(url)
        options.setdefault("timeout", 30.0)
        return args, options


# sqlalchemy.create_engine("sqlite+sqlstream:///app.db") once this module is imported;
# the package's entry point registers it too, so installed copies need no import.
_registry.register("sqlite.sqlstream", "sqlstream.sqlalchemy", "SqlstreamDialect")


def create_engine(
    path: str | os.PathLike[str],
    *,
    busy_timeout: float = 30.0,
    synchronous: str = "normal",
    **kwargs: Any,
) -> Engine:
    """An Engine (``sqlite+sqlstream``) on the sqlstream file at ``path``.

    Creates the file and its schema if needed. Connections wait up to ``busy_timeout``
    seconds for the write lock and use ``synchronous`` (``"normal"`` survives a process
    crash, ``"full"`` also power loss), like ``sqlstream.open``. ``kwargs`` go to
    :func:`sqlalchemy.create_engine`. Raises ``InvalidArgument``, ``SchemaVersionError``.
    """
    if synchronous not in ("normal", "full"):
        raise InvalidArgument(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
    if isinstance(busy_timeout, bool) or not (isinstance(busy_timeout, (int, float)) and busy_timeout >= 0):
        raise InvalidArgument(f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}")
    from .database import open as open_database

    with open_database(path, busy_timeout=busy_timeout, synchronous=synchronous) as db:
        full_path = db.path
    connect_args = {"timeout": float(busy_timeout), "synchronous": synchronous, **kwargs.pop("connect_args", {})}
    return _sa_create_engine(URL.create("sqlite+sqlstream", database=full_path), connect_args=connect_args, **kwargs)


# --------------------------------------------------------------------------- outbox


def append(
    connection: Connection,
    stream: str,
    value: Any,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    expect_offset: int | None = None,
    dedup_id: str | None = None,
    secret: str | None = None,
) -> int:
    """Append one record to ``stream`` through ``connection``, inside its transaction.

    ``connection`` is a SQLAlchemy Connection (``session.connection()`` for a Session) of
    a ``sqlite+sqlstream`` engine. Same arguments and rules as ``Stream.append``
    (``secret``: the write secret of a secret stream). Begins the connection's
    transaction if none is open; nothing is visible to others until the caller commits,
    and a rollback leaves no record and burns no offset. Takes SQLite's write lock (if the
    transaction does not hold it yet) and holds it until the caller's transaction ends,
    so keep that short; waits up to the engine's busy timeout for it. Blocked sqlstream
    readers in every process wake after the commit.
    Raises ``StreamNotFound``, ``StreamSealed``, ``AccessDenied``, ``ConcurrencyError``,
    ``InvalidValue``, ``PayloadTooLarge``, ``LockTimeout``, ``InvalidArgument`` (not a
    sqlite+sqlstream connection, or one in autocommit mode); after an error the caller
    should roll its transaction back.
    """
    check_name(stream)
    ctype, data, nbytes = encode_value(value)
    row: PreparedRecord = (encode_key(key), encode_headers(headers), ctype, data, nbytes)
    ids: list[str | None] | None = None if dedup_id is None else [_dedup.check_dedup_id(dedup_id)]
    return _write(connection, stream, secret, [row], expect_offset, ids)[0]


def extend(
    connection: Connection,
    stream: str,
    values: Iterable[Any],
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    expect_offset: int | None = None,
    dedup_ids: Sequence[str | None] | None = None,
    secret: str | None = None,
) -> list[int]:
    """Append several records through ``connection`` (see :func:`append`); one offset per value."""
    check_name(stream)
    if isinstance(values, (bytes, bytearray, memoryview, str, dict)):
        raise InvalidArgument("extend() takes an iterable of values; use append() for one value")
    k, h = encode_key(key), encode_headers(headers)
    rows: list[PreparedRecord] = [(k, h, *encode_value(v)) for v in values]
    ids = None if dedup_ids is None else _dedup.check_dedup_ids(dedup_ids, len(rows))
    if not rows:
        return []
    return _write(connection, stream, secret, rows, expect_offset, ids)


def _driver_connection(connection: Connection) -> _dbapi.Connection:
    if not isinstance(connection, Connection):
        raise InvalidArgument(f"append() takes a SQLAlchemy Connection, not {type(connection).__name__}")
    dbapi = connection.connection.dbapi_connection
    if not isinstance(dbapi, _dbapi.Connection):
        raise InvalidArgument(
            f"the connection uses the {connection.dialect.name}+{connection.dialect.driver} driver; sqlstream's "
            "outbox needs sqlite+sqlstream, which runs on the same SQLite library as sqlstream (two SQLite "
            "libraries writing one file in one process do not see each other's locks and corrupt it)",
            hint="create the engine with sqlstream.sqlalchemy.create_engine(path), or the URL sqlite+sqlstream:///PATH",
        )
    return dbapi


def _write(
    connection: Connection,
    name: str,
    secret: str | None,
    rows: list[PreparedRecord],
    expect_offset: int | None,
    ids: list[str | None] | None,
) -> list[int]:
    dbapi = _driver_connection(connection)
    # Bad arguments are refused before the transaction is touched.
    _append.check_rows(rows, expect_offset, DEFAULT_MAX_RECORD_BYTES)
    if not connection.in_transaction():
        connection.begin()  # what autobegin does: SQLAlchemy then commits or rolls it back
    if dbapi.isolation_level is None and not dbapi.in_transaction:
        raise InvalidArgument(
            "the connection is in autocommit mode: the records and the application's rows would not commit together",
            hint="append inside a transaction (engine.begin(), or a connection without isolation_level='AUTOCOMMIT')",
        )
    q = runner(dbapi.apsw)
    try:
        dbapi.begin_if_needed()  # as the driver does before a write: BEGIN IMMEDIATE
        # sqlstream's one append path (sqlstream.append), on the caller's connection.
        offsets = list(_append.append_rows(
            q, name, rows, secret=secret, expect_offset=expect_offset, ids=ids,
            txn=lambda _stream_id: _txn_number(dbapi, q), now_us=us(time.time()),
            max_record_bytes=DEFAULT_MAX_RECORD_BYTES,
        ))
    except apsw.Error as exc:
        raise convert(exc) from exc
    path = dbapi.path
    dbapi.after_commit(lambda: notifier_for(path).committed())
    return offsets


def _txn_number(dbapi: _dbapi.Connection, q: Query) -> int:
    """One commit sequence number per transaction, as sqlstream's own appends get
    (the general form of the rule: :func:`sqlstream.txn.next_txn` writes the number into
    the ``counters`` row, so the records may go to any stream).

    The transaction keeps its number until it ends, through savepoint rollbacks too: it
    holds the write lock, so nobody else can take the number meanwhile. A savepoint
    rollback (which no hook reports) may have taken the increment back, so each later
    append of the transaction holds the row at the number (:func:`sqlstream.txn.hold_txn`,
    which writes only then). The driver forgets the number at commit and rollback.
    """
    cached = dbapi.sqlstream_txn
    if cached is not None:
        _txn.hold_txn(q, cached)
        return cached
    txn = dbapi.sqlstream_txn = _txn.next_txn(q)
    return txn
