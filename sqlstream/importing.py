"""Importing exported archives back into streams, idempotently.

:func:`import_archives` (also ``sqlstream.archive.import_archives`` and ``sqlstream
import``) reads archives written by ``db.export`` and appends each record to the stream
its metadata names, at its original offset, byte position and timestamp. A record the
stream already holds (offset below the stream's next offset) is skipped, so importing
the same archives twice imports them once, and an import stopped part-way is finished by
running it again. Records are inserted directly (one transaction per batch of up to
1,000 records of one stream) because the append path assigns new offsets and
timestamps; the same invariants are kept: offsets gap-free, positions adding up,
timestamps never decreasing within a stream, one commit number per transaction.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import apsw

from .archive import ArchiveReader
from .errors import (
    ArchiveError,
    CorruptArchive,
    EndOfArchive,
    PayloadTooLarge,
    StreamNotFound,
    StreamSealed,
    TruncatedRecord,
    convert,
)
from .export import DEFAULT_BATCH, _sql, parse_timestamp
from .rolling import matching_files

if TYPE_CHECKING:
    from .database import Database
    from .storage import StorageDriver

__all__ = ["import_archives", "ImportResult"]

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    """What one call of :func:`import_archives` did."""

    files: list[str] = field(default_factory=list)
    records: int = 0  # records read from the archives
    imported: int = 0  # records added to streams
    skipped: int = 0  # records the streams already held
    streams: dict[str, int] = field(default_factory=dict)  # stream -> records added
    torn: list[str] = field(default_factory=list)  # files whose torn last record was ignored



_CONTENT_TYPES = ("bytes", "text", "json")


def _archive_sources(
    pattern: str, directory: str, storage: StorageDriver | None
) -> list[tuple[str, Callable[[], tuple[IO[bytes] | None, str]]]]:
    """(label, opener) per archive matching ``pattern``, in name order."""
    if storage is None:
        sub, pat = os.path.split(pattern)
        files = matching_files(os.path.join(directory, sub), pat)
        local: list[tuple[str, Callable[[], tuple[IO[bytes] | None, str]]]] = []
        for f in files:
            local.append((f, lambda f=f: (None, f)))  # type: ignore[misc]
        return local
    prefix = "/".join(p for p in (directory.strip("/"), os.path.dirname(pattern)) if p and p != ".")
    pat = os.path.basename(pattern)
    out: list[tuple[str, Callable[[], tuple[IO[bytes] | None, str]]]] = []
    for info in storage.list_objects(prefix):
        if not info.isdir and fnmatch.fnmatchcase(info.name, pat):
            def opener(path: str = info.path) -> tuple[IO[bytes] | None, str]:
                from .storage import download_file

                tmp = tempfile.NamedTemporaryFile(prefix="sqlstream-import-", delete=False)  # noqa: SIM115
                tmp.close()
                download_file(storage, path, tmp.name)
                return None, tmp.name

            out.append((storage.describe(info.path), opener))
    return out


class _Importer:
    def __init__(self, db: Database, only: set[str] | None, create: bool, result: ImportResult) -> None:
        self.db = db
        self.only = only
        self.create = create
        self.result = result
        self.pending: list[tuple[str, dict[str, str], bytes]] = []

    def add(self, label: str, meta: dict[str, str], payload: bytes) -> None:
        stream = meta.get("stream")
        if stream is None or "offset" not in meta:
            raise ArchiveError(
                f"{label}: record {self.result.records} has no 'stream'/'offset' metadata",
                hint="import loads archives written by sqlstream export; read others with ArchiveReader",
            )
        self.result.records += 1
        if self.only is not None and stream not in self.only:
            return
        if self.pending and (self.pending[-1][1]["stream"] != stream or len(self.pending) >= DEFAULT_BATCH):
            self.flush(label)
        self.pending.append((label, meta, payload))

    def flush(self, label: str = "") -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        stream = batch[0][1]["stream"]
        with self.db.transaction():
            conn = self.db._write_conn()
            state = _sql(conn, "SELECT id, first_offset, next_offset, byte_length, sealed_at IS NOT NULL, "
                               "coalesce(last_append_at, 0) FROM streams WHERE name = ?", (stream,))
            if not state:
                if not self.create:
                    raise StreamNotFound(f"no stream named {stream!r} to import into",
                                         hint="create it first, or import with create=True")
                self.db.create_stream(stream)
                state = _sql(conn, "SELECT id, first_offset, next_offset, byte_length, sealed_at IS NOT NULL, "
                                   "coalesce(last_append_at, 0) FROM streams WHERE name = ?", (stream,))
            sid, first, nxt, length, sealed, last_ts = state[0]
            rows: list[tuple[Any, ...]] = []
            for where, meta, payload in batch:
                offset, position, ts, ctype, data = self.decode(where, meta, payload)
                if offset < nxt:
                    self.result.skipped += 1
                    continue
                if offset > nxt:
                    if first == nxt and not rows:
                        # An empty stream adopts the archive's numbering, as if trimmed to there.
                        first = nxt = offset
                        length = position
                        _sql(conn, "UPDATE streams SET first_offset = ?, next_offset = ?, first_position = ?, "
                                   "byte_length = ? WHERE id = ?", (offset, offset, position, position, sid))
                    else:
                        raise ArchiveError(
                            f"{where}: stream {stream!r} continues at offset {nxt}, but the archive's next "
                            f"record is offset {offset}",
                            hint="an archive is missing, or the files do not sort in export order; "
                                 "import the missing archive first",
                        )
                if position != length:
                    raise ArchiveError(
                        f"{where}: record {stream}/{offset} is at byte {position} in the archive but the stream "
                        f"is {length} bytes long: the archive is not of this stream",
                    )
                if sealed:
                    raise StreamSealed(f"stream {stream!r} is sealed; cannot import offset {offset} into it")
                nbytes = len(payload)
                if nbytes > self.db.max_record_bytes:
                    raise PayloadTooLarge(f"{where}: record of {nbytes:,} bytes exceeds max_record_bytes")
                last_ts = max(last_ts, ts)  # timestamps never decrease within a stream
                rows.append((sid, offset, position, last_ts, meta.get("key"), meta.get("headers") or None,
                             ctype, data))
                nxt, length = offset + 1, length + nbytes
            if rows:
                txn = self.db._txn_number(conn)
                try:
                    conn.executemany(
                        "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, "
                        "content_type, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(r[0], r[1], r[2], r[3], txn, r[4], r[5], r[6], r[7]) for r in rows],
                    )
                except apsw.Error as exc:
                    raise convert(exc) from exc
                _sql(conn, "UPDATE streams SET next_offset = ?, byte_length = ?, "
                           "last_append_at = max(coalesce(last_append_at, 0), ?) WHERE id = ?",
                     (nxt, length, last_ts, sid))
                self.db._tx_dirty = True
                self.result.imported += len(rows)
                self.result.streams[stream] = self.result.streams.get(stream, 0) + len(rows)

    @staticmethod
    def decode(where: str, meta: dict[str, str], payload: bytes) -> tuple[int, int, int, str, bytes | str]:
        try:
            offset = int(meta["offset"])
            position = int(meta.get("position", "-1"))
        except ValueError:
            raise CorruptArchive(f"{where}: offset/position metadata is not an integer") from None
        if offset < 0 or position < 0:
            raise ArchiveError(f"{where}: record lacks a valid 'position' (archives of sqlstream export have one)")
        ts = parse_timestamp(meta.get("timestamp", "0"))
        ctype = meta.get("content_type", "bytes")
        if ctype not in _CONTENT_TYPES:
            raise CorruptArchive(f"{where}: unknown content_type {ctype!r}")
        headers = meta.get("headers")
        if headers:
            try:
                parsed = json.loads(headers)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
                raise CorruptArchive(f"{where}: headers metadata is not a JSON object of strings")
        if ctype == "bytes":
            return offset, position, ts, ctype, payload
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptArchive(f"{where}: a {ctype} record's payload is not UTF-8") from None
        if ctype == "json":
            try:
                json.loads(text)
            except ValueError:
                raise CorruptArchive(f"{where}: a json record's payload is not valid JSON") from None
        return offset, position, ts, ctype, text


def import_archives(
    db: Database,
    pattern: str,
    directory: str | os.PathLike[str] = ".",
    *,
    storage: StorageDriver | Mapping[str, Any] | None = None,
    streams: Sequence[str] | None = None,
    create: bool = True,
    progress: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Load the records of exported archives back into their streams, idempotently.

    Archives are the files in ``directory`` whose names match the fnmatch ``pattern``
    (``"orders-*.events*"``; a directory part is allowed), or with ``storage`` the
    objects under the prefix ``directory`` whose names match. They are read in name
    order, compressed or not. Each record goes to the stream its metadata names (created
    if missing, unless ``create=False``), at its original offset, byte position and
    timestamp; records the stream already holds are skipped, so a second import adds
    nothing. ``streams`` limits the import to those streams. An archive whose last
    record is torn is imported up to it and listed in ``torn``. Raises ``ArchiveError``
    when a stream would get a gap (a missing archive), ``StreamSealed``, and the archive
    errors for damaged files (records before the damage are imported).
    """
    from .storage import StorageDriver, get_driver

    driver = None if storage is None else get_driver(storage)
    owns = storage is not None and not isinstance(storage, StorageDriver)
    result = ImportResult()
    importer = _Importer(db, None if streams is None else set(streams), create, result)
    try:
        for label, opener in _archive_sources(pattern, os.fspath(directory), driver):
            _, local = opener()
            try:
                with ArchiveReader(local) as reader:
                    while True:
                        try:
                            meta, payload = reader.read()
                        except EndOfArchive:
                            break
                        except TruncatedRecord as exc:
                            log.warning("%s", exc)
                            result.torn.append(label)
                            break
                        importer.add(f"{label}: record {reader.index - 1}", meta, payload)
                importer.flush(label)
            finally:
                if local != label:
                    with contextlib.suppress(OSError):
                        os.unlink(local)
            result.files.append(label)
            if progress is not None:
                progress(result)
    finally:
        if owns and driver is not None:
            driver.close()
    return result

