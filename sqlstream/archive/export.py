"""Exporting streams to archive files, and trimming what was exported.

``db.export(streams, directory, ...)`` (:func:`export`) writes every record, with its
stream, offset, byte position, timestamp, key, content type and headers as archive
metadata, to rolled archive files. Progress is kept in the database per named export
(tables ``exports``, ``export_streams``, ``export_files``, ``export_ranges``), so an
export can be stopped at any moment, even by SIGKILL, and re-run: the closed archives
then hold every record exactly once.

How, for each archive:

1. Records are written to a staging file ``DIR/.sqlstream-staging/ID-NAME/FILE`` (and
   compressed there, if asked), then fsynced. ``ID`` is the export's row id, so two
   exports never share a staging folder, even when their names differ only in
   characters a file name cannot hold (``a/b`` and ``a_b``).
2. One transaction records the file as *pending* and advances the export's
   ``exported_offset`` for each stream it holds. This commit is the point of no return.
3. The file is *delivered*: hard-linked to its final name ``DIR/FILE`` (never
   overwriting another file), or uploaded to the storage driver; then the staging file
   is removed.
4. A second transaction marks it *closed* and advances ``delivered_offset``.

A run first finishes any pending file (step 3 is idempotent: a final name already
linked to the staging file, or an object already uploaded and holding exactly the
file's records, is recognised) and deletes staging files that never reached step 2,
whose records are exported again. A pending file whose staging file is gone and that
was never delivered is *not* marked closed: it is forgotten and its records are
exported again, so ``delivered_offset`` only ever covers records in a closed archive.
One process at a time runs a given export (an advisory file lock in the staging
directory). A run that leaves nothing staged removes its staging folder, and
``DIR/.sqlstream-staging`` when no other export's folder is in it. Every file and folder an export creates is no more readable than the
database file (its mode, without execute bits; folders get execute bits where read is
allowed, staging folders are the owner's only).

:func:`trim_exported` deletes records below what an export has delivered;
:mod:`sqlstream.archive.importing` loads archives back.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import io
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apsw

from ..clock import now_us
from .. import connection as cx
from ..errors import (
    ArchiveError,
    ConcurrencyError,
    CorruptArchive,
    DamagedRecord,
    InvalidArgument,
    SqlstreamError,
    StorageError,
    StorageFull,
    StreamNotFound,
    WriteError,
    convert,
)
from ..records import MISSING_PAYLOAD, Damaged, check_name
from ..retention import trim_below
from ..storage import StorageDriver, get_driver, upload_file
from .callbacks import EXTENSIONS, check_compression, compress_file
from .format import ArchiveReader, ArchiveWriter, fsync_directory
from .rolling import (
    AnyRollChecker,
    NeverRollChecker,
    RollChecker,
    SizeRollChecker,
    TimeRollChecker,
    candidate_names,
    check_template,
    render_template,
)

if TYPE_CHECKING:
    from ..database import Database

__all__ = [
    "export",
    "trim_exported",
    "export_status",
    "ExportResult",
    "ExportProgress",
    "ExportStatus",
]

# The logger keeps its name from before the archive package, so logging configuration
# and log lines users rely on do not change.
log = logging.getLogger("sqlstream.export")

STAGING = ".sqlstream-staging"
DEFAULT_ROLL_SIZE_MB = 100
DEFAULT_BATCH = 1000
_IDLE_WAIT = 1.0  # seconds a follow=True export waits before re-checking `stop` and time rolls

_RECORD_SQL = (
    # CAST: the stored bytes as they are; export never decodes a payload, so a damaged
    # text record is archived byte for byte rather than failing the export. With whether
    # the headers are what an import takes back (a JSON object of strings): archive
    # metadata is text, so damaged ones cannot be archived.
    "SELECT offset, timestamp, {key}, {headers}, content_type, CAST(data AS BLOB), "
    "position, txn, CASE WHEN headers IS NULL OR headers = '' THEN 1 WHEN NOT json_valid(headers) THEN 0 "
    "WHEN json_type(headers) != 'object' THEN 0 "
    "ELSE NOT EXISTS (SELECT 1 FROM json_each(headers) WHERE type != 'text') END FROM records "
    "WHERE stream_id = ? AND offset >= ? AND offset < ? ORDER BY offset LIMIT ?"
)
# The key and headers as text (decoded by apsw), or undecoded: only for a page whose
# decoding failed (a key or headers that are not UTF-8), so record_metadata can name it.
_TEXT_RECORD_SQL = _RECORD_SQL.format(key="key", headers="headers")
_RAW_RECORD_SQL = _RECORD_SQL.format(key="CAST(key AS BLOB)", headers="CAST(headers AS BLOB)")


@dataclass
class ExportProgress:
    """What an export has done so far; passed to the ``progress`` callback."""

    records: int  # records written to archives by this call
    total: int | None  # records that were waiting when the call started (None: unknown)
    files: int  # archives closed by this call
    current_file: str | None  # the archive being written, if any


@dataclass
class ExportResult:
    """What one call of :func:`export` did."""

    name: str
    files: list[str] = field(default_factory=list)  # locations of the archives it closed
    records: int = 0
    bytes: int = 0
    recovered: int = 0  # pending archives of an interrupted run that this call finished
    skipped: int = 0  # records trimmed by retention before they could be exported
    offsets: dict[str, int] = field(default_factory=dict)  # stream -> exported_offset afterwards


@dataclass
class ExportStatus:
    """An export's progress as kept in the database."""

    name: str
    directory: str
    streams: dict[str, tuple[int, int]]  # stream -> (exported_offset, delivered_offset)
    files: int
    pending: int


# --------------------------------------------------------------------------- helpers


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")


def default_template(name: str) -> str:
    """The file name template of export ``name`` when none is given."""
    return _safe(name) + "-%Y%m%dT%H%M%S.%fZ.events"


MAX_BATCH = 1_000_000  # records read per query; more only costs memory


def file_mode_of(db_path: str) -> int:
    """The permission bits for files made from the database at ``db_path``: its own, minus execute.

    Falls back to owner-only when the file cannot be examined.
    """
    try:
        return stat.S_IMODE(os.stat(db_path).st_mode) & 0o666
    except OSError:
        return 0o600


def dir_mode_for(file_mode: int) -> int:
    """A folder mode as open as ``file_mode``: search (x) allowed where reading is."""
    return file_mode | ((file_mode & 0o444) >> 2)


def make_dirs(path: str, mode: int) -> None:
    """``os.makedirs`` that gives ``mode`` to every folder it creates (not just the last)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make_dirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def create_file(path: str, mode: int) -> None:
    """Create the empty file ``path`` (it must not exist) with permission bits ``mode``."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


def os_error(exc: OSError, what: str) -> SqlstreamError:
    """The sqlstream error for an ``OSError`` met while ``what`` (e.g. "exporting to DIR")."""
    detail = f"{what}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    if exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StorageFull(
            detail,
            hint="free disk space (or raise the file size limit) and run the export again: "
                 "it continues where it stopped, each record exported exactly once",
        )
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidArgument(detail, hint="use a shorter directory, export name or file name template")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOENT):
        return InvalidArgument(detail, hint="give a directory that exists or can be created")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(detail, hint="give a directory this process may write to")
    return WriteError(detail, hint="check the disk and run the export again: it continues where it stopped")


def format_timestamp(us: int) -> str:
    """Microseconds since the epoch as exact decimal seconds: ``"1700000000.123456"``."""
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def parse_timestamp(text: str) -> int:
    """The inverse of :func:`format_timestamp` (also accepts plain integer seconds)."""
    whole, _, frac = text.partition(".")
    if not whole.lstrip("-").isdigit() or (frac and not frac.isdigit()) or len(frac) > 6:
        raise CorruptArchive(f"timestamp {text!r} is not decimal seconds with up to 6 decimals")
    return int(whole) * 1_000_000 + int(frac.ljust(6, "0") or 0)


def record_metadata(stream: str, row: tuple[Any, ...]) -> tuple[dict[str, str], bytes]:
    """The archive metadata and payload of one chunks row (see docs/format.md)."""
    offset, ts, key, headers, ctype, data, position, txn, headers_ok = row
    try:
        if isinstance(key, bytes):  # a page read undecoded (_RAW_RECORD_SQL)
            key = key.decode("utf-8")
        if isinstance(headers, bytes):
            headers = headers.decode("utf-8")
    except UnicodeDecodeError:
        headers_ok = False
    if not headers_ok:
        # Archived as they are, they would make the whole archive one an import refuses.
        raise DamagedRecord(
            f"record {offset} of stream {stream!r} is damaged (its key is not UTF-8 or its headers are not a "
            "JSON object of strings); nothing was exported from it on",
            stream=stream, offset=offset,
            hint="SQL outside sqlstream wrote them: repair them with SQL, or trim the stream past it, to "
            "export what follows; `sqlstream check` lists every damaged record",
        )
    meta = {
        "stream": stream,
        "offset": str(offset),
        "position": str(position),
        "timestamp": format_timestamp(ts),
        "content_type": ctype,
        "txn": str(txn),
    }
    if key is not None:
        meta["key"] = key
    if headers:
        meta["headers"] = headers
    if data is None:  # its payloads row is gone (foreign SQL): there is nothing to archive
        raise Damaged(offset, position, MISSING_PAYLOAD, None, {}, b"").error(
            stream, "trim the stream past it to export what follows")
    return meta, data if isinstance(data, bytes) else data.encode("utf-8")


class _Lock:
    """An advisory exclusive lock on a file, released when closed or when the process dies.

    The lock file may be removed by the holder when it is done (:meth:`remove`), so a
    lock taken on a file that was meanwhile unlinked is no lock: after ``flock`` the path
    must still name the locked file, else the attempt starts over (recreating the folder).
    """

    def __init__(self, path: str, what: str, mode: int = 0o600) -> None:
        self.path = path
        for _ in range(1000):  # each round means another run removed the file meanwhile
            try:
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
            except FileNotFoundError:  # the folder went with the lock file
                make_dirs(os.path.dirname(path), 0o700)
                continue
            try:
                import fcntl
            except ImportError:  # pragma: no cover - no fcntl (Windows): no cross-process guard
                return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._fd)
                raise ConcurrencyError(
                    f"{what} is already running in another process or thread",
                    hint="wait for it to finish; one export name is run by one process at a time",
                ) from None
            try:
                named = os.stat(path)
            except FileNotFoundError:
                named = None
            held = os.fstat(self._fd)
            if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                return
            os.close(self._fd)
        raise ConcurrencyError(f"{what}: its lock file keeps being removed", hint="run the export again")

    def remove(self) -> None:
        """Unlink the lock file (still held), its folder and the folder above it when empty
        (a run that left nothing staged leaves no trace); then release the lock."""
        try:
            os.unlink(self.path)
            folder = os.path.dirname(self.path)
            os.rmdir(folder)
            os.rmdir(os.path.dirname(folder))
        except OSError:
            pass  # another export's folder is there, or a file appeared: it stays
        self.close()

    def close(self) -> None:
        os.close(self._fd)


# --------------------------------------------------------------------------- export


class _Archive:
    """The archive an export is writing: staging path, writer, offsets per stream."""

    def __init__(self, final_name: str, staging_path: str, version: int, mode: int) -> None:
        self.final_name = final_name
        self.path = staging_path
        create_file(staging_path, mode)  # ArchiveWriter truncates it, keeping this mode
        self.writer = ArchiveWriter(staging_path, version=version)
        self.ranges: dict[int, list[int]] = {}  # stream id -> [first, next)
        self.records = 0


class _Lost(Exception):
    """A committed archive is neither staged nor delivered: its records must be exported again."""


class _Exporter:
    def __init__(
        self,
        db: Database,
        names: list[str],
        directory: str,
        name: str,
        template: str,
        checker: RollChecker,
        compress: str | None,
        storage: StorageDriver | None,
        storage_prefix: str,
        version: int,
        batch: int,
        progress: Callable[[ExportProgress], None] | None,
        follow: bool,
    ) -> None:
        self.db = db
        self.follow = follow
        self.file_mode = file_mode_of(db.path)
        self.names = names
        self.directory = directory
        self.name = name
        self.template = template
        self.checker = checker
        self.compress = compress
        self.storage = storage
        self.storage_prefix = storage_prefix
        self.version = version
        self.batch = batch
        self.progress = progress
        self.staging = ""  # DIR/.sqlstream-staging/ID-NAME, known once the export has an id
        self.lock: _Lock | None = None
        self.result = ExportResult(name=name)
        self.archive: _Archive | None = None
        self.total: int | None = None
        self.ids: dict[str, int] = {}
        self.cursor: dict[int, int] = {}
        self.until: dict[int, int] = {}  # follow=False: stream id -> next_offset when the call started
        self.export_id = 0
        self.finish_later = False  # an archive must be closed before a stream's cursor jumps

    # ----------------------------------------------------------------- setup

    def register(self) -> None:
        """Create/refresh the export's rows, its staging folder and lock; load each stream's cursor.

        One transaction: if the staging folder cannot be made or the lock is held
        elsewhere, nothing is stored.
        """
        now = now_us()
        with self.db.engine.write(wakes=False) as conn:
            rows = cx.rows(conn, "SELECT id FROM exports WHERE name = ?", (self.name,))
            if rows:
                self.export_id = rows[0][0]
            else:
                self.export_id = cx.rows(
                    conn,
                    "INSERT INTO exports (name, directory, created_at, updated_at) VALUES (?, ?, ?, ?) RETURNING id",
                    (self.name, self.directory, now, now),
                )[0][0]
            # The id makes the folder unambiguous: names are not (``a/b`` and ``a_b``).
            self.staging = os.path.join(self.directory, STAGING, f"{self.export_id}-{_safe(self.name)}")
            make_dirs(self.staging, 0o700)
            self.lock = _Lock(os.path.join(self.staging, "lock"), f"export {self.name!r}", self.file_mode)
            cx.rows(conn, "UPDATE exports SET directory = ?, updated_at = ? WHERE id = ?",
                 (self.directory, now, self.export_id))
            total = 0
            for stream in self.names:
                got = cx.rows(conn, "SELECT id, first_offset, next_offset FROM streams_now WHERE name = ?", (stream,))
                if not got:
                    raise StreamNotFound(f"no stream named {stream!r} to export")
                sid, first, nxt = got[0]
                cx.rows(
                    conn,
                    "INSERT INTO export_streams (export_id, stream_id, exported_offset, delivered_offset) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (self.export_id, sid, first, first),
                )
                cur = cx.rows(conn, "SELECT exported_offset FROM export_streams WHERE export_id = ? AND stream_id = ?",
                           (self.export_id, sid))[0][0]
                self.ids[stream] = sid
                self.cursor[sid] = cur
                if not self.follow:
                    self.until[sid] = nxt
                total += max(0, nxt - max(cur, first))
            self.total = total

    def unlock(self) -> None:
        """Release the lock; remove the staging folder when nothing but the lock is in it."""
        if self.lock is not None:
            lock, self.lock = self.lock, None
            try:
                only_lock = os.listdir(self.staging) == ["lock"]
            except OSError:
                only_lock = False
            if only_lock:
                lock.remove()
            else:
                lock.close()

    def recover(self) -> None:
        """Finish archives an interrupted run committed; delete staging files it did not."""
        with self.db.engine.snapshot() as conn:
            pending = cx.rows(
                conn,
                "SELECT id, name, working, destination FROM export_files WHERE export_id = ? AND state = 'pending' "
                "ORDER BY id",
                (self.export_id,),
            )
        keep = set()
        for index, (file_id, name, working, destination) in enumerate(pending):
            try:
                location = self.deliver(file_id, name, working, destination, recovering=True)
            except _Lost:
                # It and anything committed after it (never more than one file in
                # practice: a run finishes its pending file before writing another).
                self.requeue([row[0] for row in pending[index:]])
                break
            self.result.recovered += 1
            if location is not None:
                self.result.files.append(location)
            keep.add(os.path.abspath(working))
        for entry in os.listdir(self.staging):
            path = os.path.abspath(os.path.join(self.staging, entry))
            if entry != "lock" and path not in keep and os.path.isfile(path):
                log.info("export %s: removing %s, staged by a run that stopped before committing it", self.name, path)
                os.unlink(path)
        fsync_directory(self.staging)

    # ----------------------------------------------------------------- delivery

    def destination(self, final_name: str) -> str | None:
        return None if self.storage is None else self.storage_prefix + final_name

    def name_taken(self, final_name: str) -> bool:
        if os.path.lexists(os.path.join(self.directory, final_name)):
            return True
        if os.path.lexists(os.path.join(self.staging, final_name)):
            return True
        dest = self.destination(final_name)
        if dest is not None and self.storage is not None and self.storage.get_object_size(dest) is not None:
            return True
        with self.db.engine.snapshot() as conn:
            return bool(cx.rows(conn, "SELECT 1 FROM export_files WHERE export_id = ? AND name = ? AND state = 'pending'",
                             (self.export_id, final_name)))

    def deliver(self, file_id: int, name: str, working: str, destination: str | None, *, recovering: bool) -> str | None:
        """Give a committed staging file its final place; mark it closed. Idempotent."""
        location: str | None
        if destination is not None:
            if self.storage is None:
                raise StorageError(
                    f"export {self.name!r} has archive {name!r} waiting to be uploaded to {destination!r}",
                    hint="run the export again with the same storage",
                )
            if os.path.exists(working):
                upload_file(self.storage, destination, working)
                os.unlink(working)
            elif not self.object_holds(destination, file_id):
                log.warning("export %s: archive %s is neither staged nor uploaded to %s: exporting its "
                            "records again", self.name, name, destination)
                raise _Lost(name)
            location = self.storage.describe(destination)
        else:
            location = self.publish(file_id, name, working)
        with self.db.engine.write(wakes=False) as conn:
            cx.rows(conn, "UPDATE export_files SET state = 'closed', location = ?, closed_at = ? WHERE id = ?",
                 (location, now_us(), file_id))
            cx.rows(
                conn,
                "UPDATE export_streams SET delivered_offset = max(delivered_offset, r.next_offset) "
                "FROM export_ranges AS r WHERE r.file_id = ? AND export_streams.export_id = ? "
                "AND export_streams.stream_id = r.stream_id",
                (file_id, self.export_id),
            )
        return location

    def publish(self, file_id: int, name: str, working: str) -> str:
        """Hard-link the staging file to the first free candidate of ``DIR/name``; unlink it.

        A candidate that already is the staging file (a run died between link and
        unlink) is recognised, so recovery never publishes one archive twice. Without
        the staging file, ``DIR/name`` counts as delivered only if it holds exactly the
        file's records (a rename-based publish finished before a crash); otherwise
        :class:`_Lost` is raised and the records are exported again.
        """
        if not os.path.exists(working):
            final = os.path.join(self.directory, name)
            if self.file_holds(final, file_id):
                return final
            log.warning("export %s: archive %s is neither staged nor delivered (staging file removed?): "
                        "exporting its records again", self.name, final)
            raise _Lost(name)
        for candidate in candidate_names(name):
            final = os.path.join(self.directory, candidate)
            try:
                os.link(working, final)
            except FileExistsError:
                if os.path.samefile(working, final):
                    break
                continue
            except OSError:  # no hard links here: rename (it never overwrites: checked first)
                if os.path.lexists(final):
                    continue
                os.replace(working, final)
                break
            break
        fsync_directory(self.directory)
        if os.path.exists(working):
            os.unlink(working)
            fsync_directory(self.staging)
        return final

    def expected_records(self, file_id: int) -> tuple[set[tuple[str, int]], int]:
        """The (stream, offset) pairs archive ``file_id`` holds, by its ranges; and its record count."""
        with self.db.engine.snapshot() as conn:
            ranges = cx.rows(conn, "SELECT s.name, r.first_offset, r.next_offset FROM export_ranges r "
                                "JOIN streams s ON s.id = r.stream_id WHERE r.file_id = ?", (file_id,))
            count = cx.rows(conn, "SELECT records FROM export_files WHERE id = ?", (file_id,))[0][0]
        return {(stream, o) for stream, first, nxt in ranges for o in range(first, nxt)}, count

    def archive_holds(self, reader: Callable[[], ArchiveReader], file_id: int) -> bool:
        expected, count = self.expected_records(file_id)
        try:
            with reader() as archive:
                got = [(meta.get("stream", ""), int(meta.get("offset", "-1"))) for meta, _ in archive]
        except (OSError, ArchiveError, ValueError):
            return False
        # Retention may trim inside a range before export: count and membership, not equality.
        return len(got) == count and len(set(got)) == count and set(got) <= expected

    def file_holds(self, path: str, file_id: int) -> bool:
        """True if the local archive ``path`` holds exactly the records of archive ``file_id``."""
        return os.path.isfile(path) and self.archive_holds(lambda: ArchiveReader(path), file_id)

    def object_holds(self, destination: str, file_id: int) -> bool:
        """True if the stored object ``destination`` holds exactly the records of archive ``file_id``."""
        assert self.storage is not None
        data = self.storage.get_object(destination)
        if data is None:
            return False
        return self.archive_holds(lambda: ArchiveReader(fileobj=io.BufferedReader(io.BytesIO(data))), file_id)

    def requeue(self, file_ids: list[int]) -> None:
        """Forget committed archives that were lost before delivery; their records are exported again.

        One transaction: the files' rows go, and each stream's ``exported_offset`` moves
        back to the first offset they held (``delivered_offset`` is already below it).
        """
        with self.db.engine.write(wakes=False) as conn:
            marks: dict[int, int] = {}
            for file_id in file_ids:
                for sid, first in cx.rows(conn, "SELECT stream_id, first_offset FROM export_ranges WHERE file_id = ?",
                                       (file_id,)):
                    marks[sid] = min(first, marks.get(sid, first))
                working = cx.rows(conn, "SELECT working FROM export_files WHERE id = ?", (file_id,))
                if working and os.path.exists(working[0][0]):
                    os.unlink(working[0][0])
                cx.rows(conn, "DELETE FROM export_ranges WHERE file_id = ?", (file_id,))
                cx.rows(conn, "DELETE FROM export_files WHERE id = ?", (file_id,))
            for sid, first in marks.items():
                cx.rows(conn, "UPDATE export_streams SET exported_offset = min(exported_offset, ?) "
                           "WHERE export_id = ? AND stream_id = ?", (first, self.export_id, sid))
                if sid in self.cursor:
                    self.cursor[sid] = min(self.cursor[sid], first)

    # ----------------------------------------------------------------- writing

    def open_archive(self) -> _Archive:
        ext = EXTENSIONS[self.compress] if self.compress else ""
        base = render_template(self.template)
        for candidate in candidate_names(base):
            if not self.name_taken(candidate + ext):
                break
        archive = _Archive(candidate, os.path.join(self.staging, candidate), self.version, self.file_mode)
        self.checker.start(archive.writer)
        self.report()
        return archive

    def write(self, stream: str, sid: int, row: tuple[Any, ...]) -> None:
        if self.archive is None:
            self.archive = self.open_archive()
        archive = self.archive
        meta, payload = record_metadata(stream, row)
        archive.writer.write(meta, payload)
        span = archive.ranges.setdefault(sid, [row[0], row[0]])
        span[1] = row[0] + 1
        archive.records += 1
        self.cursor[sid] = row[0] + 1
        self.result.records += 1
        if self.checker.check(archive.writer):
            self.finish()

    def finish(self) -> None:
        """Close, (compress,) commit and deliver the current archive."""
        archive, self.archive = self.archive, None
        if archive is None:
            return
        archive.writer.close()
        path, final_name = archive.path, archive.final_name
        if self.compress:
            path = compress_file(path, self.compress)
            final_name += EXTENSIONS[self.compress]
        fsync_directory(self.staging)
        size = os.path.getsize(path)
        destination = self.destination(final_name)
        with self.db.engine.write(wakes=False) as conn:
            file_id = cx.rows(
                conn,
                "INSERT INTO export_files (export_id, name, working, destination, state, records, bytes, created_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?) RETURNING id",
                (self.export_id, final_name, path, destination, archive.records, size, now_us()),
            )[0][0]
            for sid, (first, nxt) in archive.ranges.items():
                cx.rows(conn, "INSERT INTO export_ranges (file_id, stream_id, first_offset, next_offset) VALUES (?, ?, ?, ?)",
                     (file_id, sid, first, nxt))
                cx.rows(conn, "UPDATE export_streams SET exported_offset = ? WHERE export_id = ? AND stream_id = ?",
                     (nxt, self.export_id, sid))
            cx.rows(conn, "UPDATE exports SET updated_at = ? WHERE id = ?", (now_us(), self.export_id))
        try:
            location = self.deliver(file_id, final_name, path, destination, recovering=False)
        except _Lost:  # the staging file vanished under us: write those records again
            self.requeue([file_id])
            self.result.records -= archive.records
            return
        if location is not None:
            self.result.files.append(location)
        self.result.bytes += size
        self.report()

    def abandon(self) -> None:
        """Drop the archive being written (its records were not committed: they are exported again)."""
        archive, self.archive = self.archive, None
        if archive is not None:
            with contextlib.suppress(OSError):
                archive.writer.close(sync=False)
            with contextlib.suppress(OSError):
                os.unlink(archive.path)

    def report(self) -> None:
        if self.progress is not None:
            self.progress(ExportProgress(
                records=self.result.records, total=self.total, files=len(self.result.files),
                current_file=None if self.archive is None else self.archive.final_name,
            ))

    # ----------------------------------------------------------------- reading

    def fetch(self) -> tuple[list[tuple[str, int, tuple[Any, ...]]], bool]:
        """Up to ``batch`` records after the cursors, in commit (txn) order; and "all sealed"."""
        per_stream = []
        all_sealed = True
        with self.db.engine.snapshot() as conn:
            for index, stream in enumerate(self.names):
                sid = self.ids[stream]
                state = cx.rows(conn, "SELECT first_offset, next_offset, sealed_at IS NOT NULL FROM streams_now WHERE id = ?",
                             (sid,))
                if not state:
                    raise StreamNotFound(f"stream {stream!r} was deleted while being exported")
                first, nxt, sealed = state[0]
                cur = self.cursor[sid]
                if cur < first:
                    # Retention trimmed records before they were exported: they are gone.
                    log.warning("export %s: records %d..%d of %s were trimmed before export",
                                self.name, cur, first - 1, stream)
                    self.result.skipped += first - cur
                    if self.archive is not None and sid in self.archive.ranges:
                        self.finish_later = True
                    self.cursor[sid] = cur = first
                if not (sealed and cur >= nxt):
                    all_sealed = False
                end = min(nxt, self.until.get(sid, nxt))
                if cur < end:
                    try:
                        rows = cx.rows(conn, _TEXT_RECORD_SQL, (sid, cur, end, self.batch))
                    except UnicodeDecodeError:  # a key or headers not UTF-8: record_metadata names it
                        rows = cx.rows(conn, _RAW_RECORD_SQL, (sid, cur, end, self.batch))
                    per_stream.append([(row[7], index, row[0], stream, sid, row) for row in rows])
        merged = heapq.merge(*per_stream)  # each list is in offset order, hence txn order
        out = [(stream, sid, row) for _, _, _, stream, sid, row in
               (next(merged) for _ in range(min(self.batch, sum(map(len, per_stream)))))]
        return out, all_sealed

    def run(self, follow: bool, stop: threading.Event | None) -> ExportResult:
        try:
            while stop is None or not stop.is_set():
                records, all_sealed = self.fetch()
                if self.finish_later:
                    # An archive's range must be contiguous: close it before skipping ahead.
                    self.finish_later = False
                    self.finish()
                for stream, sid, row in records:
                    self.write(stream, sid, row)
                if records:
                    self.report()
                    continue
                if not follow or all_sealed:
                    break
                if self.archive is not None and self.checker.check(self.archive.writer):
                    self.finish()
                left = self.checker.seconds_left()
                wait = _IDLE_WAIT if left is None else max(0.0, min(_IDLE_WAIT, left))
                self.db.engine.wait_until(self.has_news, wait)
            self.finish()
        except BaseException:
            self.abandon()
            raise
        with self.db.engine.snapshot() as conn:
            for stream, sid in self.ids.items():
                self.result.offsets[stream] = cx.rows(
                    conn,
                    "SELECT exported_offset FROM export_streams WHERE export_id = ? AND stream_id = ?",
                    (self.export_id, sid),
                )[0][0]
        return self.result

    def has_news(self) -> bool | None:
        """True when a stream has records past its cursor, or every stream is sealed (or gone)."""
        all_sealed = True
        with self.db.engine.snapshot() as conn:
            for sid in self.ids.values():
                row = cx.rows(conn, "SELECT next_offset, sealed_at IS NOT NULL FROM streams_now WHERE id = ?", (sid,))
                if not row or row[0][0] > self.cursor[sid]:
                    return True  # new records (or a deleted stream, which fetch() reports)
                all_sealed = all_sealed and bool(row[0][1])
        return True if all_sealed else None


def export(
    db: Database,
    streams: str | Sequence[str],
    directory: str | os.PathLike[str],
    *,
    name: str | None = None,
    template: str | None = None,
    roll_size_mb: float | None = DEFAULT_ROLL_SIZE_MB,
    roll_minutes: float | None = None,
    compress: str | None = None,
    storage: StorageDriver | Mapping[str, Any] | None = None,
    storage_prefix: str = "",
    follow: bool = False,
    version: int = 2,
    batch: int = DEFAULT_BATCH,
    stop: threading.Event | None = None,
    progress: Callable[[ExportProgress], None] | None = None,
) -> ExportResult:
    """Export the records of ``streams`` not yet exported under ``name`` to archive files.

    Records go to archives in ``directory`` (or, with ``storage``, to objects
    ``storage_prefix + file name`` in that driver; ``directory`` then only stages them),
    in commit order across the streams. File names come from ``template`` (strftime, UTC;
    default ``"<name>-%Y%m%dT%H%M%S.%fZ.events"``), plus ``.gz``/``.zst`` with
    ``compress="gzip"``/``"zstd"``. An archive is closed once it reaches
    ``roll_size_mb`` MiB or has been open ``roll_minutes`` minutes, and when the call
    ends. ``name`` (default: the stream name, or the names joined by ``+``) identifies
    the export's progress, kept in the database: each call continues where the last
    stopped, and a call killed at any point and re-run leaves every record in exactly one
    closed archive.

    ``follow=False`` exports the records committed when the call started (records
    appended meanwhile wait for the next call) and returns, under steady writes too;
    ``follow=True`` keeps exporting as records arrive until every stream is sealed and
    exported, or ``stop`` is set. ``progress`` is called with an :class:`ExportProgress`
    as work is done. Records trimmed by retention before they could be exported are
    counted in ``skipped``. Raises ``StreamNotFound``, ``InvalidArgument`` (a bad argument: nothing stored or
    created), ``ConcurrencyError`` (this export is running elsewhere), ``StorageError``,
    ``StorageFull`` (disk full or file size limit: re-run once there is space, it
    continues exactly) and ``WriteError`` (another I/O error). Files and folders it
    creates are no more readable than the database file.
    """
    # Every argument is checked before anything is stored or created.
    if isinstance(streams, str):
        names = [streams]
    elif isinstance(streams, (list, tuple)) or (isinstance(streams, Sequence) and not isinstance(streams, bytes)):
        names = list(dict.fromkeys(streams))
    else:
        raise InvalidArgument(f"streams is a stream name or a list of names, not {type(streams).__name__}")
    if not names:
        raise InvalidArgument("export needs at least one stream name")
    for stream in names:
        check_name(stream)
    name = name if name is not None else "+".join(names)
    check_name(name, "export")
    if not isinstance(directory, (str, os.PathLike)):
        raise InvalidArgument(f"directory is a path, not {type(directory).__name__}")
    try:
        directory = os.path.abspath(os.fspath(directory))
        directory.encode("utf-8")
    except (TypeError, ValueError) as exc:  # bytes paths, NUL, lone surrogates
        raise InvalidArgument(f"directory {directory!r} is not a usable path: {exc}") from None
    if "\0" in directory:
        raise InvalidArgument(f"directory {directory!r} contains a NUL character")
    if template is None:
        template = default_template(name)
    check_compression(compress)
    check_template(template, EXTENSIONS[compress] if compress else "")
    if version not in (1, 2):
        raise InvalidArgument(f"archive format version is 1 or 2, not {version!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise InvalidArgument(f"batch must be an int from 1 to {MAX_BATCH:,}, not {batch!r}")
    for what, value in (("roll_size_mb", roll_size_mb), ("roll_minutes", roll_minutes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0 or (isinstance(value, float) and not math.isfinite(value))):
            raise InvalidArgument(f"{what} must be a positive finite number or None, not {value!r}",
                                  hint="None means no roll on that criterion")
    if not isinstance(follow, bool):
        raise InvalidArgument(f"follow must be True or False, not {follow!r}")
    checkers: list[RollChecker] = []
    if roll_size_mb is not None:
        checkers.append(SizeRollChecker(roll_size_mb=roll_size_mb))
    if roll_minutes is not None:
        checkers.append(TimeRollChecker(roll_minutes=roll_minutes))
    checker = AnyRollChecker(checkers) if checkers else NeverRollChecker()
    driver: StorageDriver | None = None
    owns_driver = False
    if storage is not None:
        driver = get_driver(storage)
        owns_driver = not isinstance(storage, StorageDriver)
    exporter = _Exporter(db, names, directory, name, template, checker, compress, driver, storage_prefix,
                         version, batch, progress, follow)
    try:
        make_dirs(directory, dir_mode_for(exporter.file_mode))
        exporter.register()
        exporter.recover()
        return exporter.run(follow, stop)
    except OSError as exc:
        # A full disk, a file where a folder should be, a name too long...: what is
        # committed stays consistent, and a re-run continues exactly where this one stopped.
        raise os_error(exc, f"exporting {name!r} to {directory}") from exc
    finally:
        exporter.unlock()
        if owns_driver and driver is not None:
            driver.close()


def export_status(db: Database, name: str) -> ExportStatus:
    """The progress the database holds for export ``name`` (``InvalidArgument`` if unknown)."""
    with db.engine.snapshot() as conn:
        rows = cx.rows(conn, "SELECT id, directory FROM exports WHERE name = ?", (name,))
        if not rows:
            raise InvalidArgument(f"no export named {name!r}", hint="run db.export(..., name=...) first",
                                  cli_hint="run `sqlstream export STREAM --dir DIR --name NAME` first")
        export_id, directory = rows[0]
        streams = {
            n: (e, d) for n, e, d in cx.rows(
                conn,
                "SELECT s.name, e.exported_offset, e.delivered_offset FROM export_streams e "
                "JOIN streams s ON s.id = e.stream_id WHERE e.export_id = ? ORDER BY s.name",
                (export_id,),
            )
        }
        files, pending = cx.rows(
            conn,
            "SELECT count(*), coalesce(sum(state = 'pending'), 0) FROM export_files WHERE export_id = ?",
            (export_id,),
        )[0]
    return ExportStatus(name=name, directory=directory, streams=streams, files=files, pending=pending)


# --------------------------------------------------------------------------- trim


def trim_exported(db: Database, name: str, streams: Sequence[str] | None = None) -> dict[str, int]:
    """Delete the records export ``name`` has delivered to closed archives; return counts per stream.

    For each stream of the export (or only ``streams``), records below the export's
    ``delivered_offset`` are deleted and the stream's ``first_offset`` and
    ``first_position`` advance to it, in one transaction. Offsets are never reused:
    reads below the new first offset raise ``OffsetOutOfRange``, and appends continue
    at ``next_offset``. Records in archives still pending are not trimmed. Other
    readers of the stream (subscriptions, cursors) are not consulted, ``keep_unacked``
    included: trim only what they no longer need (pending deliveries of trimmed records
    are dropped).
    """
    status = export_status(db, name)
    wanted = list(status.streams) if streams is None else list(streams)
    out: dict[str, int] = {}
    with db.engine.write() as conn:
        for stream in wanted:
            if stream not in status.streams:
                raise InvalidArgument(f"export {name!r} does not export stream {stream!r}")
            row = cx.rows(
                conn,
                "SELECT s.id, s.first_offset, s.next_offset, s.byte_length, e.delivered_offset FROM streams_now s "
                "JOIN export_streams e ON e.stream_id = s.id "
                "JOIN exports x ON x.id = e.export_id WHERE x.name = ? AND s.name = ?",
                (name, stream),
            )
            if not row:
                raise StreamNotFound(f"no stream named {stream!r}")
            sid, _first, nxt, _length, delivered = row[0]
            # The same trim as retention's: first_offset/first_position advance, the
            # records and any pending deliveries of them go.
            out[stream] = trim_below(cx.runner(conn), sid, min(delivered, nxt))[0]
    return out
