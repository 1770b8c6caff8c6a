"""Upkeep of a database file: ``db.maintain()`` (``sqlstream vacuum``) and ``db.check()`` (``sqlstream check``).

:func:`maintain` gives space back: it enforces every stream's retention limits exactly,
forgets dedup ids that left their window, frees the file's unused pages
(``PRAGMA incremental_vacuum``; new files are ``auto_vacuum=INCREMENTAL``), checkpoints
the WAL (``TRUNCATE`` when no reader needs the old frames, else ``PASSIVE``) and runs
``PRAGMA optimize``. Each step is its own short write transaction, so writers in other
threads and processes interleave with it instead of waiting for the whole run.

:func:`check` verifies the file and what sqlstream promises about its contents:
``PRAGMA integrity_check`` (or ``quick_check``) and ``foreign_key_check``; for every
stream, that its records are exactly the offsets ``first_offset .. next_offset - 1``
without gaps, that byte positions add up from ``first_position`` to ``byte_length``,
that timestamps never decrease, that each payload has the storage class its content
type says (and JSON is valid), that txn numbers are assigned; that every pending
delivery, reader position and dedup entry points at an offset that exists (or existed).
Every problem names its stream and offset.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apsw

from . import connection as cx
from . import dedup as _dedup
from . import retention as _retention
from . import txn as _txn
from .clock import us
from .errors import CorruptDatabase, InvalidArgument, convert, translate
from .records import damage_of
from .validation import check_count, check_flag, check_seconds

if TYPE_CHECKING:
    from .database import Database

VACUUM_STEP = 2048  # pages freed per transaction: bounds how long other writers wait

ProgressCallback = Callable[[int, "int | None"], None]
"""``progress(done, total)``: units of work done so far and the total (None: not known yet)."""


class _Progress:
    """Counts work units for an optional :data:`ProgressCallback` (a no-op without one)."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback, self.done, self.total = callback, 0, 0

    def add(self, units: int) -> None:
        """More work discovered: the total grows (a vacuum learns its pages after retention)."""
        self.total += units
        self.tick(0)

    def tick(self, units: int = 1) -> None:
        self.done += units
        if self.callback is not None:
            self.callback(min(self.done, self.total), self.total)


@dataclass
class MaintenanceReport:
    """What :func:`maintain` did. Sizes are of the database file plus its WAL."""

    trimmed: dict[str, int] = field(default_factory=dict)
    """Records retention deleted, per stream (streams with limits only)."""
    held: dict[str, str] = field(default_factory=dict)
    """Streams kept over their limits by ``keep_unacked``, and why."""
    dedup_pruned: int = 0
    """Dedup ids forgotten because they left their stream's window."""
    pages_freed: int = 0
    """Pages incremental vacuum gave back to the filesystem."""
    free_pages: int = 0
    """Unused pages left inside the file afterwards."""
    checkpoint: str = "skipped"
    """``"truncate"`` (WAL emptied and truncated), ``"passive"`` (a reader or writer kept
    some frames; they are checkpointed later), or ``"skipped"``."""
    optimized: bool = False
    bytes_before: int = 0
    bytes_after: int = 0
    notes: list[str] = field(default_factory=list)
    """Anything the caller should know, e.g. that the file cannot free pages incrementally."""


@dataclass(frozen=True)
class Problem:
    """One broken invariant: where (stream and offset, when it has them) and what."""

    stream: str | None
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.stream is not None:
            where.append(f"stream {self.stream!r}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{' '.join(where)}: {self.message}" if where else self.message


@dataclass
class CheckReport:
    """What :func:`check` found. ``ok`` when nothing."""

    integrity: list[str] = field(default_factory=list)
    """SQLite's integrity_check messages (empty when it said ``ok``)."""
    problems: list[Problem] = field(default_factory=list)
    streams: int = 0
    records: int = 0
    truncated: bool = False
    """More problems were found than ``max_problems``; only the first are listed."""

    @property
    def ok(self) -> bool:
        return not self.integrity and not self.problems


def _file_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(path + suffix)
    return total




OPTIMIZE_MIN_BYTES = 1 << 20  # PRAGMA optimize runs on files (database + WAL) at least this big


def maintain(
    db: Database,
    *,
    retention: bool = True,
    vacuum: bool = True,
    full: bool = False,
    checkpoint: bool = True,
    optimize: bool = True,
    checkpoint_timeout: float = 1.0,
    progress: ProgressCallback | None = None,
) -> MaintenanceReport:
    """Enforce retention, prune dedup ids, free pages, checkpoint the WAL, run PRAGMA optimize.

    ``retention``: apply every stream's limits exactly (appends trim in batches, so a
    stream may be up to a margin over them) and forget dedup ids outside their window.
    ``vacuum``: give free pages back to the filesystem, ``VACUUM_STEP`` pages per
    transaction. ``full``: instead rewrite the whole file with ``VACUUM`` (switching it to
    ``auto_vacuum=INCREMENTAL`` if it predates that); this blocks every writer for the
    duration and needs free disk space the size of the file. ``checkpoint``: copy the WAL
    into the file and truncate it, waiting at most ``checkpoint_timeout`` seconds for
    readers of old frames, then settling for a passive checkpoint. ``optimize``: run
    ``PRAGMA optimize``, on files of ``OPTIMIZE_MIN_BYTES`` or more only, so that
    maintaining a small file never makes it bigger.

    Blocks only as long as each step's transaction; must not be called inside
    ``db.transaction()`` (``InvalidArgument``). Returns a :class:`MaintenanceReport`.

    ``progress``, if given, is called as ``progress(done, total)`` after each unit of work
    in this thread: a stream's retention, a stream's dedup pruning, a freed page, the
    optimize and the checkpoint. ``total`` grows while the run learns its work (the pages
    to free are counted after retention has run), so ``done <= total`` always holds.
    """
    if db.in_transaction():
        raise InvalidArgument("maintain() cannot run inside db.transaction()", hint="call it outside transactions")
    checkpoint_timeout = check_seconds(checkpoint_timeout, "checkpoint_timeout", positive=False)
    for what, flag in (("retention", retention), ("vacuum", vacuum), ("full", full), ("checkpoint", checkpoint),
                       ("optimize", optimize)):
        check_flag(flag, what)
    report = MaintenanceReport(bytes_before=_file_bytes(db.path))
    conn = db.engine.write_conn()
    ticks = _Progress(progress)
    ticks.add(int(optimize) + int(checkpoint) + int(full))
    if retention:
        _enforce_all(db, report, ticks)
    if full:
        _vacuum_full(db, conn, report)
        ticks.tick()
    elif vacuum:
        _vacuum_incremental(db, conn, report, ticks)
    if optimize:
        if report.bytes_before >= OPTIMIZE_MIN_BYTES:
            with db.engine.write():
                cx.pragma(conn, "optimize")
            report.optimized = True
        else:
            # Its first ANALYZE creates the sqlite_stat tables: two pages more, for query
            # plans that gain nothing on a file this small (a file that was large before
            # this run's vacuum still gets them: its tables may grow again).
            report.notes.append(f"optimize skipped: the file was under {OPTIMIZE_MIN_BYTES:,} bytes")
        ticks.tick()
    if checkpoint:
        report.checkpoint = _checkpoint(db, checkpoint_timeout)
        ticks.tick()
    with db.engine.reading() as rconn:
        report.free_pages = int(cx.pragma(rconn, "freelist_count"))
    report.bytes_after = _file_bytes(db.path)
    return report


def _enforce_all(db: Database, report: MaintenanceReport, ticks: _Progress) -> None:
    with db.engine.snapshot() as rconn:
        limited = cx.runner(rconn)(
            "SELECT id, name FROM streams WHERE max_count IS NOT NULL OR max_age IS NOT NULL "
            "OR max_bytes IS NOT NULL ORDER BY name"
        )
        remembered = cx.runner(rconn)("SELECT DISTINCT stream_id FROM dedup")
    ticks.add(len(limited) + len(remembered))
    # One transaction per stream: other writers get the lock between streams.
    for stream_id, name in limited:
        with db.engine.write() as conn:
            result = _retention.enforce(cx.runner(conn), stream_id, db.engine.now_us())
        report.trimmed[name] = result.trimmed
        if result.held:
            report.held[name] = result.held
        ticks.tick()
    for (stream_id,) in remembered:
        with db.engine.write() as conn:
            rows = cx.runner(conn)(
                "SELECT next_offset, dedup_seconds, dedup_records FROM streams_now WHERE id = ?", (stream_id,)
            )
            if rows:
                _dedup.prune(cx.runner(conn), stream_id, rows[0][0], rows[0][1], rows[0][2], db.engine.now_us())
                report.dedup_pruned += conn.changes()
        ticks.tick()


def _vacuum_incremental(db: Database, conn: apsw.Connection, report: MaintenanceReport, ticks: _Progress) -> None:
    with translate():
        mode = int(cx.pragma(conn, "auto_vacuum"))
    if mode != 2:
        with translate():
            free = int(cx.pragma(conn, "freelist_count"))
        report.notes.append(
            f"this file was created with auto_vacuum={'NONE' if mode == 0 else 'FULL'}, so its {free:,} free "
            "pages cannot be given back incrementally; `sqlstream vacuum --full` (maintain(full=True)) "
            "rewrites it once and switches it to incremental"
        )
        return
    counted = False
    while True:
        with db.engine.write():
            free = int(cx.pragma(conn, "freelist_count"))
            if not counted:
                ticks.add(free)
                counted = True
            if free == 0:
                return
            step = min(free, VACUUM_STEP)
            for _ in conn.execute(f"PRAGMA incremental_vacuum({step})"):
                pass
            freed = free - int(cx.pragma(conn, "freelist_count"))
            report.pages_freed += freed
        ticks.tick(freed)
        if free <= step:
            return


def _vacuum_full(db: Database, conn: apsw.Connection, report: MaintenanceReport) -> None:
    # VACUUM cannot run inside a transaction; holding the Database's lock keeps this
    # process's other threads out while it runs, SQLite's own locks keep other processes out.
    with db.engine.exclusive(), translate():
        free = int(cx.pragma(conn, "freelist_count"))
        cx.pragma(conn, "auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    report.pages_freed += free


def _checkpoint(db: Database, timeout: float) -> str:
    """TRUNCATE on a connection of its own, for at most ``timeout`` seconds; else PASSIVE.

    Another checkpoint in progress (this process's background checkpointer, or another
    process's) makes SQLite answer busy at once, without its busy handler: retried.
    Readers of old frames are waited for by the busy handler, up to the deadline.
    """
    deadline = time.monotonic() + timeout
    try:
        conn = cx.connect(db.path, busy_timeout=timeout, synchronous=db.synchronous, vfs=db.vfs)
    except Exception:  # noqa: BLE001 - a checkpoint is an optimisation; the WAL stays valid without it
        return "skipped"
    try:
        conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()  # open the WAL
        while True:
            # SQLite takes the busy timeout as a C int of milliseconds.
            conn.set_busy_timeout(max(1, min(2**31 - 1, int((deadline - time.monotonic()) * 1000))))
            try:
                conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
                return "truncate"
            except apsw.BusyError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
        with contextlib.suppress(apsw.BusyError):
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        return "passive"
    except apsw.Error as exc:
        raise convert(exc) from exc
    finally:
        conn.close()


# --------------------------------------------------------------------------- check

# The stored form of each record: a payload out of the row (migration 15: `data` NULL)
# is a BLOB in `payloads`, whatever the content type ('out of row'; 'missing' when its row
# is gone), and its size is read from the record header without loading it.
_RECORDS_SQL = (
    "SELECT c.offset, c.position, c.timestamp, c.txn, c.content_type, "
    "CASE WHEN c.data IS NOT NULL THEN typeof(c.data) WHEN p.id IS NULL THEN 'missing' ELSE 'out of row' END, "
    "coalesce(octet_length(c.data), octet_length(p.data), 0), "
    "CASE WHEN c.content_type = 'json' AND ?2 THEN json_valid(coalesce(c.data, CAST(p.data AS TEXT))) ELSE 1 END, "
    # Text payloads undecoded, to find damaged records (invalid UTF-8) without apsw's decoding failing.
    # CAST of p.data too: a payload row written as TEXT by foreign SQL (`X'FF' || ...` is
    # TEXT) would come back as a str apsw cannot decode.
    "CASE WHEN c.content_type != 'bytes' AND ?2 THEN coalesce(CAST(c.data AS BLOB), CAST(p.data AS BLOB)) END, "
    # The key and headers undecoded too: reads refuse a record whose key is not UTF-8 or
    # whose headers are not a JSON object (DamagedRecord), so check names it as well.
    "CASE WHEN ?2 THEN CAST(c.key AS BLOB) END, CASE WHEN ?2 THEN CAST(c.headers AS BLOB) END "
    "FROM chunks c LEFT JOIN payloads p ON c.data IS NULL AND p.stream_id = c.stream_id AND p.offset = c.offset "
    "WHERE c.stream_id = ?1 ORDER BY c.offset"
)
# Payload rows no record stored out of its row names (the trigger chunks_payload_delete
# leaves none; SQL that inserts payload rows or writes a record's `data` by hand can).
_ORPHANS_SQL = (
    "SELECT count(*), min(p.id) FROM payloads p WHERE NOT EXISTS "
    "(SELECT 1 FROM chunks c WHERE c.stream_id = p.stream_id AND c.offset = p.offset AND c.data IS NULL)"
)

# Records whose stream does not exist: one seek per stream id present in `chunks` (a skip
# scan of its key), then a count for each id that names no stream. sqlstream deletes a
# stream's records with it (the trigger streams_delete_records, schema version 20), so
# these were inserted by hand; chunks has no foreign key to report them (version 20).
_STRAY_RECORDS_SQL = (
    "WITH RECURSIVE ids (id) AS ("
    " SELECT (SELECT stream_id FROM chunks ORDER BY stream_id LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT stream_id FROM chunks WHERE stream_id > ids.id ORDER BY stream_id LIMIT 1)"
    " FROM ids WHERE ids.id IS NOT NULL) "
    "SELECT id, (SELECT count(*) FROM chunks c WHERE c.stream_id = ids.id) FROM ids "
    "WHERE id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.id = ids.id) ORDER BY id"
)

CHECK_PROGRESS_EVERY = 1024  # records between progress calls of check()


def check(
    db: Database, *, quick: bool = False, max_problems: int = 100, progress: ProgressCallback | None = None
) -> CheckReport:
    """Verify the file and the stream invariants; return a :class:`CheckReport`.

    ``quick`` uses ``PRAGMA quick_check`` and skips payload validation (without it,
    damaged records — text that is not UTF-8, JSON that does not parse — are named). Read-only: runs in one
    read transaction, so it sees one consistent state while writers carry on. Reads
    every record's metadata (not the payloads, except to validate JSON): time grows with
    the file. At most ``max_problems`` problems are listed (``truncated`` says so).

    ``progress``, if given, is called as ``progress(records_checked, records_total)``:
    once before the integrity check (with 0 done) and then every
    ``CHECK_PROGRESS_EVERY`` records and at the end; the total is the records the
    snapshot holds.
    """
    check_count(max_problems, "max_problems")
    check_flag(quick, "quick")
    report = CheckReport()

    def problem(stream: str | None, offset: int | None, message: str) -> bool:
        """Record one; False once the list is full."""
        if len(report.problems) >= max_problems:
            report.truncated = True
            return False
        report.problems.append(Problem(stream, offset, message))
        return True

    with db.engine.snapshot() as conn:
        total = int(cx.runner(conn)("SELECT coalesce(sum(next_offset - first_offset), 0) FROM streams_now")[0][0])
        if progress is not None:
            progress(0, total)
        rows = conn.execute(f"PRAGMA {'quick_check' if quick else 'integrity_check'}").fetchall()
        report.integrity = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        for table, rowid, parent, _fk in conn.execute("PRAGMA foreign_key_check").fetchall():
            row = "a row" if rowid is None else f"row {rowid}"  # a WITHOUT ROWID table's rows have none
            problem(None, None, f"{row} of table {table} refers to a missing row of {parent}")
        q = cx.runner(conn)
        values = dict(q("SELECT name, value FROM counters "
                        "WHERE name = 'txn' OR name = 'txn_stream' OR name = 'stream_id_floor'"))
        last_txn: int | None = None
        for row in ("txn", "txn_stream", "stream_id_floor"):
            if row not in values:
                problem(None, None, f"the counters table has no {row!r} row")
            elif type(values[row]) is not int:  # noqa: E721 - SQL outside sqlstream wrote it
                problem(None, None, f"the counters row {row!r} holds {values[row]!r}, not an integer")
        if "txn" in values and type(values["txn"]) is int:  # noqa: E721
            try:
                last_txn = _txn.last_txn(q)
            except CorruptDatabase as exc:  # the tail's last record's txn is not an integer
                problem(None, None, str(exc))
        streams = conn.execute(
            "SELECT id, name, first_offset, next_offset, first_position, byte_length, last_append_at "
            "FROM streams_now ORDER BY name"
        ).fetchall()
        for stream in streams:
            report.streams += 1
            if not _check_stream(conn, stream, last_txn, not quick, report, problem, progress, total):
                break
        _check_references(conn, problem, last_txn)
    if progress is not None:
        progress(min(report.records, total), total)
    return report


_STORAGE = {"bytes": "blob", "text": "text", "json": "text"}
_DAMAGE_HINT = "reads raise DamagedRecord; read_bytes reads its bytes; subscriptions set it aside"


def _meta_damage(key: bytes | None, headers: bytes | None) -> str | None:
    """Why a record's stored key or headers would make reads refuse it, or None."""
    if key is not None:
        try:
            bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            return "its key is not valid UTF-8"
    if headers:
        try:
            if not isinstance(json.loads(bytes(headers)), dict):
                return "its headers are not a valid JSON object"
        except (ValueError, RecursionError):
            return "its headers are not a valid JSON object"
    return None


def _check_stream(
    conn: apsw.Connection, stream: tuple[Any, ...], last_txn: int | None, validate_json: bool,
    report: CheckReport, problem: Any, progress: ProgressCallback | None = None, total: int = 0,
) -> bool:
    """Check one stream's records; False when the problem list is full."""
    sid, name, first, nxt, first_pos, length, last_append = stream
    expect, prev_ts, prev_txn = first, None, None
    position: int | None = first_pos
    for offset, pos, ts, txn, ctype, storage, nbytes, json_ok, raw, key, headers in conn.execute(
            _RECORDS_SQL, (sid, validate_json)):
        report.records += 1
        if progress is not None and report.records % CHECK_PROGRESS_EVERY == 0:
            progress(min(report.records, total), total)
        if offset < first:
            if not problem(name, offset, f"record below first_offset {first} (trimmed records must be deleted)"):
                return False
            continue
        if offset >= nxt:
            if not problem(name, offset, f"record at or past next_offset {nxt}"):
                return False
            continue
        # The table is not STRICT: SQL outside sqlstream can store a value of any type;
        # such a value is reported and compared with nothing (it would raise TypeError).
        pos_ok, ts_ok, txn_ok = type(pos) is int, type(ts) is int, type(txn) is int
        for column, value, ok in (("position", pos, pos_ok), ("timestamp", ts, ts_ok), ("txn", txn, txn_ok)):
            if not ok and not problem(name, offset, f"{column} is {value!r}, not an integer "
                                      "(written by SQL outside sqlstream; reads of this record may fail)"):
                return False
        if offset != expect:
            missing = f"offset {expect} is" if offset == expect + 1 else f"offsets {expect}..{offset - 1} are"
            if not problem(name, expect, f"gap: {missing} missing (offsets must be gap-free)"):
                return False
            position = pos if pos_ok else None  # resynchronise so one gap is reported once
        elif pos_ok and position is not None and pos != position:
            if not problem(name, offset, f"byte position {pos}, expected {position} (the sum of earlier payloads)"):
                return False
        if ts_ok and prev_ts is not None and ts < prev_ts:
            if not problem(name, offset, "timestamp earlier than the previous record's (timestamps never decrease)"):
                return False
        if storage == "missing":
            if not problem(name, offset, "damaged record: its payload row is missing from the payloads table"):
                return False
        elif storage != "out of row" and _STORAGE.get(ctype) != storage:
            if not problem(name, offset, f"content type {ctype!r} stored as {storage}"):
                return False
        elif raw is not None and damage_of("text", raw) is not None:
            if not problem(name, offset, f"damaged record: {damage_of('text', raw)} ({_DAMAGE_HINT})"):
                return False
        elif not json_ok:
            if not problem(name, offset, f"damaged record: content type 'json' but the payload is not valid JSON "
                           f"({_DAMAGE_HINT})"):
                return False
        meta = _meta_damage(key, headers)
        if meta is not None and not problem(name, offset, f"damaged record: {meta} ({_DAMAGE_HINT})"):
            return False
        if not txn_ok:
            pass
        elif last_txn is not None and not 0 < txn <= last_txn:
            if not problem(name, offset, f"txn {txn} outside 1..{last_txn} (the commit counter)"):
                return False
        elif prev_txn is not None and txn < prev_txn:
            # Commits append in txn order: a record's number raised or lowered by SQL (the
            # counter follows a raised one: schema 19) shows as a step down.
            if not problem(name, offset, f"txn {txn} below txn {prev_txn} of the record before it "
                           "(txn never decreases in a stream)"):
                return False
        # A missing payload's size is unknown: the next record's position is taken as it is.
        expect, prev_ts, prev_txn = offset + 1, ts if ts_ok else None, txn if txn_ok else None
        position = None if storage == "missing" or not pos_ok else pos + nbytes
    if expect < nxt:
        missing = f"offset {expect} is" if expect + 1 == nxt else f"offsets {expect}..{nxt - 1} are"
        if not problem(name, expect, f"gap: {missing} missing (next_offset is {nxt})"):
            return False
    elif position is not None and position != length:
        if not problem(name, None, f"byte_length is {length} but the retained records end at byte {position}"):
            return False
    if prev_ts is not None and last_append is not None and prev_ts > last_append:
        if not problem(name, expect - 1, "timestamp later than the stream's last_append_at"):
            return False
    return True


def _check_references(conn: apsw.Connection, problem: Any, last_txn: int | None) -> None:
    """Pending deliveries, reader positions and dedup entries must point at real offsets.

    An append writes only its record, so a stream's end is derived from its last record:
    a tail deleted outside sqlstream leaves no gap to see. What can be seen is everyone
    who saw the deleted records: a subscription's delivery position, an export's archive
    position, a reader, a dedup entry past the stream's (derived) end, or a streaming
    service past the last commit.
    """
    orphans, first_orphan = conn.execute(_ORPHANS_SQL).fetchall()[0]
    if orphans and not problem(None, None, f"{orphans} payload row(s) belong to no record (the first: id "
                               f"{first_orphan}): written by hand, not by sqlstream"):
        return
    for sid, count in conn.execute(_STRAY_RECORDS_SQL).fetchall():
        if not problem(None, None, f"{count} record(s) of stream id {sid} belong to no stream (written by hand, "
                       f"not by sqlstream; a stream created later with that id would show them): delete them "
                       f"with DELETE FROM chunks WHERE stream_id = {sid}"):
            return
    for sub, stream, offset, frontier, exists in conn.execute(
        "SELECT s.name, st.name, d.offset, s.next_offset, "
        "EXISTS (SELECT 1 FROM chunks c WHERE c.stream_id = s.stream_id AND c.offset = d.offset) "
        "FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id "
        "JOIN streams st ON st.id = s.stream_id "
        "WHERE d.offset >= s.next_offset OR NOT EXISTS "
        "(SELECT 1 FROM chunks c WHERE c.stream_id = s.stream_id AND c.offset = d.offset) "
        "ORDER BY st.name, d.offset"
    ).fetchall():
        if not exists:
            message = f"subscription {sub!r} has a pending delivery of a record that does not exist"
        else:
            message = f"subscription {sub!r} has a pending delivery at or past its frontier {frontier}"
        if not problem(stream, offset, message):
            return
    for reader, stream, position, nxt in conn.execute(
        "SELECT c.name, st.name, c.position, st.next_offset FROM cursors c JOIN streams_now st ON st.id = c.stream_id "
        "WHERE c.position > st.next_offset ORDER BY st.name"
    ).fetchall():
        if not problem(stream, position, f"reader {reader!r} is past the stream's next_offset {nxt}"):
            return
    past_end = " (records deleted outside sqlstream?)"
    for sub, stream, delivered, nxt in conn.execute(
        "SELECT s.name, st.name, s.next_offset, st.next_offset FROM subscriptions s "
        "JOIN streams_now st ON st.id = s.stream_id WHERE s.next_offset > st.next_offset ORDER BY st.name, s.name"
    ).fetchall():
        if not problem(stream, delivered, f"subscription {sub!r} has delivered up to offset {delivered}, "
                       f"past the stream's end {nxt}{past_end}"):
            return
    for export, stream, exported, nxt in conn.execute(
        "SELECT x.name, st.name, e.exported_offset, st.next_offset FROM export_streams e "
        "JOIN exports x ON x.id = e.export_id JOIN streams_now st ON st.id = e.stream_id "
        "WHERE e.exported_offset > st.next_offset ORDER BY st.name, x.name"
    ).fetchall():
        if not problem(stream, exported, f"export {export!r} has archived up to offset {exported}, "
                       f"past the stream's end {nxt}{past_end}"):
            return
    if last_txn is not None:
        # A jetstream-source's height counts the remote stream's messages, not commits here.
        for service, height in conn.execute(
            "SELECT service, height FROM streaming_cursors WHERE kind != 'jetstream-source' AND height > ? "
            "ORDER BY service", (last_txn,)
        ).fetchall():
            if not problem(None, None, f"streaming service {service!r} is at commit {height}, "
                           f"past the last commit {last_txn}{past_end}"):
                return
    for stream, dedup_id, offset, nxt in conn.execute(
        "SELECT st.name, d.dedup_id, d.offset, st.next_offset FROM dedup d JOIN streams_now st ON st.id = d.stream_id "
        "WHERE d.offset >= st.next_offset ORDER BY st.name, d.offset"
    ).fetchall():
        if not problem(stream, offset, f"dedup id {dedup_id!r} names an offset never appended (next_offset {nxt})"):
            return
