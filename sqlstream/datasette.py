"""A Datasette plugin: ``datasette app.db`` explains a sqlstream file.

Installed with the ``datasette`` extra (``pip install 'sqlstream[datasette]'``) and found by
Datasette through the ``datasette`` entry point group; nothing in sqlstream imports it.
For each database Datasette serves that is a sqlstream file (see :func:`schema_objects`),
the plugin adds:

- titles and descriptions for the database, its tables and views, and their columns
  (``get_metadata``);
- canned queries (``canned_queries``): ``streams_and_lag``, ``pending``, ``dead_letters``,
  ``export_progress`` and ``latest_records`` (``:stream``, ``:limit``); a query whose
  tables an older schema lacks is left out;
- an authorizer on its connections (``prepare_connection``) that makes the write-secret
  hash column read as NULL everywhere, queries included;
- readable cells (``render_cell``): integer microsecond times (``created_at``,
  ``timestamp``, ``deadline``...) as ISO 8601 UTC, and BLOB payloads as their size and a
  printable preview.

Other databases are left alone: no metadata, no queries, no rendering. The plugin only
reads (Datasette's own read connections); it never opens the file through sqlstream, so
it runs no migration. Local ``metadata.json`` still takes precedence over what it gives.

Written against Datasette 0.64/0.65 (``get_metadata`` is gone from the 1.0 alphas).
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

import datasette as _datasette
from markupsafe import Markup

from .clock import iso_time_us
from .connection import SECRET_COLUMN, is_secret_column

_F = TypeVar("_F", bound=Callable[..., Any])
# Datasette ships no type information: give its pluggy marker a typed face.
hookimpl = cast(Callable[[_F], _F], _datasette.hookimpl)

#: What a file needs to count as a sqlstream database: PRAGMA user_version >= 1 and
#: these tables (0001_init.sql) with these ``chunks`` columns.
REQUIRED_TABLES = frozenset({"streams", "chunks", "counters"})
REQUIRED_CHUNK_COLUMNS = frozenset({"stream_id", "offset", "position", "timestamp", "txn", "content_type", "data"})

#: Integer columns holding microseconds since the Unix epoch (UTC).
TIME_COLUMNS = frozenset({
    "created_at", "updated_at", "sealed_at", "last_append_at", "delivered_at", "deadline",
    "timestamp", "closed_at", "trim_time",
})

#: Bytes of a BLOB shown in its preview.
PREVIEW_BYTES = 48

# Per Datasette instance: database name -> the names of its tables and views when it is a
# sqlstream file, None when it is not. Filled at startup, and on demand for databases
# added later.
_known: weakref.WeakKeyDictionary[Any, dict[str, frozenset[str] | None]] = weakref.WeakKeyDictionary()


def schema_objects(conn: sqlite3.Connection) -> frozenset[str] | None:
    """The tables and views of a sqlstream database on ``conn``; None if it is not one.

    Decided from the schema only (``PRAGMA user_version`` and the ``streams``/``chunks``
    tables), so a file of another application that happens to have a ``streams`` table is
    not taken for one. Reads only.
    """
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if not isinstance(version, int) or version < 1:
            return None
        names = frozenset(
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        )
        if not REQUIRED_TABLES <= names:
            return None
        columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
        if not REQUIRED_CHUNK_COLUMNS <= columns:
            return None
        return names
    except sqlite3.Error:
        return None


async def _objects(datasette: Any, database: str | None) -> frozenset[str] | None:
    """The cached :func:`schema_objects` of ``database``, detecting it on first use."""
    if database is None:
        return None
    known = _known.setdefault(datasette, {})
    if database not in known:
        try:
            db = datasette.get_database(database)
        except KeyError:
            return None
        known[database] = await db.execute_fn(schema_objects)
    return known[database]


def _hide_secret_hash(action: int, arg1: str | None, arg2: str | None, dbname: str | None,
                      source: str | None) -> int:
    """sqlite3 authorizer: the write-secret hash column reads as NULL (see
    ``sqlstream.connection.is_secret_column``), everything else as usual."""
    if action == sqlite3.SQLITE_READ and is_secret_column(arg1, arg2, source):
        return sqlite3.SQLITE_IGNORE
    return sqlite3.SQLITE_OK


@hookimpl
def prepare_connection(conn: sqlite3.Connection, database: str, datasette: Any) -> None:
    """Keep the write-secret hash out of every page, JSON answer and query of a sqlstream file.

    An authorizer on each of Datasette's connections to a sqlstream database makes
    ``streams.write_secret_sha256`` read as NULL, in table pages, ``.json`` and arbitrary
    SQL alike (the column still shows, empty). Other databases get no authorizer.
    """
    if schema_objects(conn) is not None:
        conn.set_authorizer(_hide_secret_hash)


@hookimpl
def startup(datasette: Any) -> Callable[[], Coroutine[Any, Any, None]]:
    """Detect the sqlstream databases before the first request (get_metadata is sync)."""

    async def detect() -> None:
        for name in list(datasette.databases):
            if name != "_internal":
                await _objects(datasette, name)

    return detect


# ---------------------------------------------------------------------------- metadata

_DB_DESCRIPTION = (
    "A sqlstream database: streams of records in one SQLite file. Times in the tables are "
    "integer microseconds since the Unix epoch (UTC), shown here as ISO 8601; the views "
    "already hold ISO text. Browse read-only: change data with sqlstream's API or CLI "
    "(a hand-made INSERT or DELETE breaks offsets and deliveries that sqlstream keeps in step)."
)

# table or view -> (title, description, {column: description})
_TABLES: dict[str, tuple[str, str, dict[str, str]]] = {
    "streams": ("Streams", "One row per stream: its offsets, byte length, times and retention settings.", {
        "first_offset": "oldest retained offset",
        "next_offset": "a floor of the offset the next append gets (exact in streams_now and stream_stats)",
        "first_position": "byte position of first_offset",
        "byte_length": "a floor of the bytes ever appended (exact in streams_now and stream_stats)",
        SECRET_COLUMN[1]: "hidden (always empty here): the SHA-256 of the write secret; see secret in stream_stats",
        "max_age": "retention by age, in seconds",
        "metadata": "the stream's JSON metadata",
        "keep_unacked": "1: retention keeps records some subscription has not acked",
        "trim_offset": "retention trigger (a hint; maintain() enforces the limits)",
        "trim_bytes": "retention trigger (a hint)",
        "trim_time": "retention trigger (a hint)",
    }),
    "records": ("Records (with values)", "One row per record, keyed by (stream_id, offset), with its value in data "
                "wherever it is stored: a BLOB for bytes records, text for text and JSON records "
                "(content_type says which). size is the value's length in bytes.", {
        "offset": "the record's offset in its stream",
        "position": "byte offset of its first byte in the stream",
        "timestamp": "append time",
        "txn": "commit sequence number: records of one transaction share it",
        "headers": "JSON object of string headers",
        "content_type": "json, text or bytes",
        "data": "the value",
        "size": "the value's length in bytes",
    }),
    "payloads": ("Large payloads", "Values longer than about a quarter of a page, stored out of their "
                 "record's row (as bytes) under the record's stream_id and offset; the records view shows "
                 "them in place.", {}),
    "chunks": ("Records (as stored)", "One row per record, keyed by (stream_id, offset), as stored: data holds "
               "the value when it is small; a larger one is in payloads (data NULL). "
               "The records view shows every value.", {
        "offset": "the record's offset in its stream",
        "position": "byte offset of its first byte in the stream",
        "timestamp": "append time",
        "txn": "commit sequence number: records of one transaction share it",
        "headers": "JSON object of string headers",
        "content_type": "json, text or bytes",
        "data": "the value when stored in the row (NULL when it is in payloads)",
    }),
    "counters": ("Counters", "Database-wide counters: txn and txn_stream give the last commit sequence number handed out with the tail stream's last record (read it from the last_txn view).", {}),
    "subscriptions": ("Subscriptions", "One row per subscription (consumer group) and its settings.", {
        "next_offset": "delivery frontier: offsets from here on were never delivered",
        "ack_timeout": "seconds a consumer holds a record before it is redelivered",
        "max_deliveries": "deliveries before a record moves to the dead_letter stream",
        "acked": "records acked so far",
        "dead_lettered": "records moved to the dead-letter stream so far",
    }),
    "deliveries": ("Deliveries", "One row per delivered, unacked record of a subscription.", {
        "consumer": "who holds it (empty once nacked)",
        "attempts": "deliveries so far",
        "delivered_at": "last delivery",
        "deadline": "redelivered after this",
        "last_error": "the error given with the last nack",
    }),
    "cursors": ("Reader positions", "One row per named reader: position is the next offset it returns.", {}),
    "dedup": ("Dedup ids", "Remembered ids of idempotent appends: dedup_id -> the offset first appended with it.", {}),
    "exports": ("Exports", "One row per named export (db.export / sqlstream export).", {
        "directory": "where its archives are staged",
    }),
    "export_streams": ("Export progress per stream", "Per export and stream: records below "
                       "exported_offset are in committed archives, below delivered_offset in closed ones.", {}),
    "export_files": ("Export archives", "Archives written by exports: pending (committed, working name) or closed.", {
        "bytes": "size of the archive as stored",
        "location": "where the closed archive is",
    }),
    "export_ranges": ("Export ranges",
                      "Which offsets [first_offset, next_offset) of which stream each archive holds.", {}),
    "storage_objects": ("Stored objects", "Objects of the sqlite storage driver.", {}),
    "storage_segments": ("Stored object segments",
                         "The segments of each object: sealed streams named _objects/...", {}),
    "stream_stats": ("Stream stats", "One row per stream: records and bytes retained, times as ISO 8601, retention.", {
        "records": "records retained",
        "bytes": "payload bytes retained",
        "total_bytes": "bytes ever appended",
        "sealed": "1: no more appends",
        "secret": "1: writable only with its write secret",
        "dedup_ids": "dedup ids remembered",
    }),
    "subscription_stats": ("Subscription stats", "One row per subscription: lag, pending and dead-lettered records.", {
        "delivered_up_to": "every offset below it was delivered at least once",
        "lag": "records not delivered yet",
        "pending": "delivered, not acked",
        "expired": "pending past their ack deadline (redelivered at the next fetch)",
        "oldest_pending_age": "seconds since the oldest pending record was appended",
        "acked_frontier": "everything below it is acked or dead-lettered",
    }),
    "streams_now": ("Streams (now)", "The streams table with next_offset, byte_length and last_append_at as "
                    "they are now, derived from each stream's last record (the table's are floors).", {}),
    "pending_deliveries": ("Pending deliveries", "One row per delivered, unacked record.", {
        "idle_seconds": "seconds since the last delivery",
        "expired": "1: past its deadline",
    }),
}

_SQL_STREAMS_AND_LAG = """\
SELECT st.name AS stream,
       st.records,
       st.bytes,
       st.last_append,
       st.sealed,
       count(ss.name) AS subscriptions,
       max(ss.lag) AS max_lag,
       sum(ss.pending) AS pending,
       sum(ss.expired) AS expired,
       max(ss.oldest_pending_age) AS oldest_pending_age,
       sum(ss.dead_lettered) AS dead_lettered,
       group_concat(ss.name || ' (lag ' || ss.lag || ')', ', ') AS lag_by_subscription
  FROM stream_stats st
  LEFT JOIN subscription_stats ss ON ss.stream = st.name
 WHERE st.name NOT LIKE '\\_objects/%' ESCAPE '\\'
 GROUP BY st.name
 ORDER BY max_lag DESC, st.name"""

_SQL_PENDING = """\
SELECT p.subscription, p.stream, p.offset, p.consumer, p.attempts,
       p.delivered, p.deadline, p.idle_seconds, p.expired, p.last_error,
       c.key, c.content_type,
       CASE c.content_type WHEN 'bytes' THEN '<' || c.size || ' bytes>'
            ELSE substr(c.data, 1, 200) END AS value
  FROM pending_deliveries p
  JOIN streams s ON s.name = p.stream
  LEFT JOIN records c ON c.stream_id = s.id AND c.offset = p.offset
 WHERE :subscription = '' OR p.subscription = :subscription
 ORDER BY p.expired DESC, p.attempts DESC, p.idle_seconds DESC"""

_SQL_DEAD_LETTERS = """\
SELECT s.name AS dead_letter_stream,
       c.offset,
       strftime('%Y-%m-%dT%H:%M:%fZ', c.timestamp / 1e6, 'unixepoch') AS time,
       json_extract(c.headers, '$."sqlstream.source_stream"') AS source_stream,
       json_extract(c.headers, '$."sqlstream.source_offset"') AS source_offset,
       json_extract(c.headers, '$."sqlstream.subscription"') AS subscription,
       json_extract(c.headers, '$."sqlstream.attempts"') AS attempts,
       json_extract(c.headers, '$."sqlstream.last_error"') AS last_error,
       c.key,
       c.content_type,
       CASE c.content_type WHEN 'bytes' THEN '<' || c.size || ' bytes> ' || hex(substr(c.data, 1, 16))
            ELSE substr(c.data, 1, 200) END AS value
  FROM records c JOIN streams s ON s.id = c.stream_id
 WHERE s.name IN (SELECT dead_letter FROM subscriptions WHERE dead_letter IS NOT NULL)
 ORDER BY c.timestamp DESC, s.name, c.offset DESC
 LIMIT 1000"""

_SQL_EXPORT_PROGRESS = """\
SELECT e.name AS export,
       s.name AS stream,
       es.exported_offset,
       es.delivered_offset,
       s.next_offset,
       s.next_offset - es.exported_offset AS not_exported,
       (SELECT count(*) FROM export_files f WHERE f.export_id = e.id AND f.state = 'closed') AS closed_files,
       (SELECT count(*) FROM export_files f WHERE f.export_id = e.id AND f.state = 'pending') AS pending_files,
       (SELECT coalesce(sum(f.bytes), 0) FROM export_files f WHERE f.export_id = e.id) AS archive_bytes,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.updated_at / 1e6, 'unixepoch') AS updated,
       e.directory
  FROM exports e
  JOIN export_streams es ON es.export_id = e.id
  JOIN streams_now s ON s.id = es.stream_id
 ORDER BY not_exported DESC, e.name, s.name"""

# JSON functions only see rows whose content_type is 'json' (CASE evaluates lazily): a
# text record such as 'hello' is not JSON and would make json_each() fail the query.
_SQL_LATEST_RECORDS = """\
SELECT c.offset,
       strftime('%Y-%m-%dT%H:%M:%fZ', c.timestamp / 1e6, 'unixepoch') AS time,
       c.key,
       c.content_type,
       c.headers,
       CASE c.content_type
            WHEN 'json' THEN json(c.data)
            WHEN 'text' THEN c.data
            ELSE '<' || c.size || ' bytes> ' || hex(substr(c.data, 1, 32))
       END AS value,
       CASE WHEN c.content_type = 'json' AND json_type(c.data) IN ('object', 'array') THEN
            (SELECT group_concat(j.key || ': ' || CASE j.type
                                     WHEN 'text' THEN json_quote(j.value)
                                     WHEN 'null' THEN 'null'
                                     WHEN 'true' THEN 'true'
                                     WHEN 'false' THEN 'false'
                                     ELSE j.value END, char(10))
               FROM json_each(c.data) j)
       END AS json_fields
  FROM records c
 WHERE c.stream_id = (SELECT id FROM streams WHERE name = :stream)
 ORDER BY c.offset DESC
 LIMIT min(max(coalesce(CAST(nullif(:limit, '') AS INTEGER), 20), 1), 1000)"""

# name -> (tables and views it reads, title, description, sql)
_QUERIES: dict[str, tuple[frozenset[str], str, str, str]] = {
    "streams_and_lag": (
        frozenset({"stream_stats", "subscription_stats"}),
        "Streams and lag",
        "Every stream with its size and, across its subscriptions, the largest lag (records not "
        "delivered yet), pending and expired deliveries and dead-lettered records. "
        "Storage-driver segments (_objects/...) are left out.",
        _SQL_STREAMS_AND_LAG,
    ),
    "pending": (
        frozenset({"pending_deliveries", "records"}),
        "Pending deliveries",
        "Delivered, unacked records with the record they hold: expired and most-retried first. "
        "Leave subscription empty for all.",
        _SQL_PENDING,
    ),
    "dead_letters": (
        frozenset({"subscriptions", "records"}),
        "Dead letters",
        "Records in the dead-letter streams of subscriptions, with where they came from "
        "(the sqlstream.* headers): source stream and offset, subscription, attempts, last error.",
        _SQL_DEAD_LETTERS,
    ),
    "export_progress": (
        frozenset({"exports", "export_streams", "export_files"}),
        "Export progress",
        "Per export and stream: offsets exported and delivered (closed archives), records not "
        "exported yet, and the export's archive files.",
        _SQL_EXPORT_PROGRESS,
    ),
    "latest_records": (
        frozenset({"records"}),
        "A stream's latest records",
        "The newest records of a stream (limit: default 20, at most 1000), newest first. JSON "
        "values are shown as JSON with their top-level fields one per line; text as itself; "
        "bytes as their size and the hex of their first bytes.",
        _SQL_LATEST_RECORDS,
    ),
}


def database_metadata(objects: frozenset[str]) -> dict[str, Any]:
    """Datasette metadata for one sqlstream database holding the tables/views ``objects``."""
    tables: dict[str, Any] = {}
    for name, (title, description, columns) in _TABLES.items():
        if name in objects:
            entry: dict[str, Any] = {"title": title, "description": description}
            if columns:
                entry["columns"] = dict(columns)
            tables[name] = entry
    if "streams" in tables:
        # Foreign keys to streams (chunks.stream_id, ...) show the stream's name.
        tables["streams"]["label_column"] = "name"
    return {"title": "sqlstream database", "description": _DB_DESCRIPTION, "tables": tables}


def canned_queries_for(objects: frozenset[str]) -> dict[str, dict[str, Any]]:
    """The canned queries whose tables and views ``objects`` has (older schemas lack some)."""
    queries: dict[str, dict[str, Any]] = {}
    for name, (needs, title, description, sql) in _QUERIES.items():
        if needs <= objects:
            queries[name] = {"sql": sql, "title": title, "description": description}
    return queries


@hookimpl
def get_metadata(datasette: Any, key: str | None, database: str | None, table: str | None) -> dict[str, Any]:
    """Titles and descriptions for the sqlstream databases detected so far."""
    known = _known.get(datasette) or {}
    databases = {name: database_metadata(objects) for name, objects in known.items() if objects is not None}
    return {"databases": databases} if databases else {}


@hookimpl
def canned_queries(datasette: Any, database: str) -> Callable[[], Coroutine[Any, Any, dict[str, Any]]]:
    """The sqlstream canned queries, for sqlstream databases only."""

    async def queries() -> dict[str, Any]:
        objects = await _objects(datasette, database)
        return canned_queries_for(objects) if objects is not None else {}

    return queries


# ---------------------------------------------------------------------------- cells


def format_micros(value: int) -> str | None:
    """``value`` µs since the epoch as ISO 8601 UTC (``...T...Z``), by the one rule the
    views and the CLI use (:func:`sqlstream.clock.iso_time_us`, milliseconds); None when
    out of range."""
    return iso_time_us(value)


def preview_bytes(value: bytes, limit: int = PREVIEW_BYTES) -> str:
    """Printable ASCII kept, other bytes as ``\\xNN``; at most ``limit`` bytes, then ``…``."""
    shown = "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02x}" for b in value[:limit])
    return shown + ("…" if len(value) > limit else "")


def render_value(value: Any, column: str, download_url: str | None = None) -> Markup | None:
    """The HTML for one cell of a sqlstream database, or None to leave it to Datasette.

    ``download_url``: where the whole BLOB can be downloaded (Datasette's ``.blob`` URL),
    linked from the size of a bytes cell.
    """
    if isinstance(value, int) and not isinstance(value, bool) and column in TIME_COLUMNS and value >= 0:
        text = format_micros(value)
        if text is None:
            return None
        return Markup('<span class="sqlstream-time" title="{} µs since the epoch">{}</span>').format(value, text)
    if isinstance(value, bytes):
        size = f"&lt;{len(value):,} byte{'' if len(value) == 1 else 's'}&gt;"
        if download_url is not None:
            label = Markup('<a class="blob-download" href="{}">{}</a>').format(download_url, Markup(size))
        else:
            label = Markup("<em>{}</em>").format(Markup(size))
        return Markup('<span class="sqlstream-bytes">{} <code>{}</code></span>').format(label, preview_bytes(value))
    return None


# Tables and views whose stream_id names a stream without a foreign key Datasette could
# follow (chunks has none since schema version 20; a view never has one): their cells get
# the stream's name linked, as Datasette shows a foreign key.
_STREAM_ID_TABLES = frozenset({"chunks", "payloads", "records"})


async def _stream_link(datasette: Any, database: str, stream_id: int) -> Markup | None:
    """``stream_id`` as Datasette renders a foreign key: the stream's name, linked to its
    row, then the id; None (the plain number) for an id no stream has."""
    if isinstance(stream_id, bool):
        return None
    found = await datasette.get_database(database).execute("SELECT name FROM streams WHERE id = ?", [stream_id])
    row = found.first()
    if row is None:
        return None
    href = datasette.urls.row(database, "streams", str(stream_id))
    return Markup('<a href="{}">{}</a>&nbsp;<em>{}</em>').format(href, row[0], stream_id)


@hookimpl
def render_cell(row: Any, value: Any, column: str, table: str | None, database: str,
                datasette: Any) -> Callable[[], Coroutine[Any, Any, Markup | None]] | None:
    """Readable times and bytes in the tables and queries of sqlstream databases."""
    if not isinstance(value, (int, bytes)):
        return None  # the common case: no detection needed

    async def render() -> Markup | None:
        objects = await _objects(datasette, database)
        if objects is None or (table is not None and table not in _TABLES):
            return None
        if column == "stream_id" and table in _STREAM_ID_TABLES and isinstance(value, int):
            return await _stream_link(datasette, database, value)
        download_url = None
        if table in ("chunks", "payloads") and isinstance(value, bytes):
            # Keep Datasette's download link for payloads; chunks' key is (stream_id, offset),
            # a large payload's its id.
            pks = ("stream_id", "offset") if table == "chunks" else ("id",)
            try:
                # A foreign key cell arrives expanded ({"value": ..., "label": ...}).
                keys = [row[pk]["value"] if isinstance(row[pk], dict) else row[pk] for pk in pks]
                row_path = ",".join(str(int(k)) for k in keys)
            except (KeyError, IndexError, TypeError, ValueError):
                pass
            else:
                download_url = datasette.urls.row_blob(database, table, row_path, column)
        return render_value(value, column, download_url)

    return render


__all__ = [
    "canned_queries_for", "database_metadata", "format_micros", "preview_bytes", "render_value",
    "schema_objects",
]
