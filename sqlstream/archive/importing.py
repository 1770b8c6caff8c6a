"""Importing exported archives back into streams, idempotently.

:func:`import_archives` (also ``sqlstream.archive.import_archives`` and ``sqlstream
import``) reads archives written by ``db.export`` and appends each record to the stream
its metadata names, at its original offset, byte position and timestamp. A record the
stream already holds (offset below the stream's next offset) is skipped, so importing
the same archives twice imports them once, and an import stopped part-way is finished by
running it again. Records go through the one append path (``sqlstream.append``; one
transaction per batch of up to 1,000 records of one stream) at the archive's offsets
(as the expected offset) and timestamps: offsets gap-free, positions adding up,
timestamps never decreasing within a stream, one commit number per transaction, and
the stream's retention limits enforced as for any append.

An archive is untrusted input: the stream its records name is only a suggestion. A
stream created with ``secret=True`` takes imported records only when the caller passes
its write secret (``secrets={stream: secret}``), and ``rename={archive_stream: target}``
puts records somewhere else. Numbers and JSON the database could not store, or that
``check()`` would reject, are refused with :class:`~sqlstream.errors.CorruptArchive`.
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

from .. import connection as cx
from .. import writesecrets as _writesecrets
from ..append import PreparedRecord, renumber_empty
from ..errors import (
    AccessDenied,
    ArchiveError,
    CorruptArchive,
    EndOfArchive,
    PayloadTooLarge,
    StreamNotFound,
    StreamSealed,
    InvalidArgument,
    TruncatedRecord,
)
from ..records import check_name
from ..storage import StorageDriver, download_file, get_driver
from .export import DEFAULT_BATCH, parse_timestamp
from .format import ArchiveReader
from .rolling import matching_files

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["import_archives", "ImportResult"]

# The logger keeps its name from before the archive package, so logging configuration
# and log lines users rely on do not change.
log = logging.getLogger("sqlstream.importing")


@dataclass
class ImportResult:
    """What one call of :func:`import_archives` did."""

    files: list[str] = field(default_factory=list)  # archives read: absolute paths, or storage locations
    records: int = 0  # records read from the archives
    imported: int = 0  # records added to streams
    skipped: int = 0  # records the streams already held
    streams: dict[str, int] = field(default_factory=dict)  # stream -> records added
    torn: list[str] = field(default_factory=list)  # files whose torn last record was ignored



_CONTENT_TYPES = ("bytes", "text", "json")
_INT64_MAX = 2**63 - 1
# A batch is also flushed at this many payload bytes, so memory stays bounded when an
# archive holds many large records (DEFAULT_BATCH of them could be gigabytes).
_BATCH_BYTES = 32 * 1024 * 1024
_STATE_SQL = ("SELECT id, first_offset, next_offset, byte_length, sealed_at IS NOT NULL, "
              "coalesce(last_append_at, 0), (SELECT write_secret_sha256 FROM streams s WHERE s.id = n.id) "
              "FROM streams_now n WHERE name = ?")


def _check_names(what: str, value: object) -> dict[str, str]:
    """``value`` as a dict of str to str, else InvalidArgument."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in value.items()):
        raise InvalidArgument(f"{what} must be a dict of stream name to str, not {value!r}"[:300])
    return dict(value)


def _denied(stream: str) -> AccessDenied:
    return AccessDenied(
        f"stream {stream!r} was created with a write secret; the archive's records cannot be imported "
        "into it without that secret",
        hint=f"pass secrets={{{stream!r}: SECRET}}, or rename={{{stream!r}: 'other'}} to import elsewhere",
    )


def _archive_sources(
    pattern: str, directory: str, storage: StorageDriver | None
) -> list[tuple[str, Callable[[], tuple[IO[bytes] | None, str]]]]:
    """(label, opener) per archive matching ``pattern``, in name order."""
    if storage is None:
        sub, pat = os.path.split(pattern)
        # Absolute, as ExportResult.files are: a result outlives the call (and its working
        # directory), and the labels name files in errors and in ``torn``.
        files = matching_files(os.path.abspath(os.path.join(directory, sub)), pat)
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
                # mkstemp's file is 0600 whatever the umask: the copy is no more readable
                # than the database (which import only writes), and it is ours alone.
                fd, name = tempfile.mkstemp(prefix="sqlstream-import-", suffix=".events")
                os.close(fd)
                try:
                    download_file(storage, path, name)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(name)
                    raise
                return None, name

            out.append((storage.describe(info.path), opener))
    return out


class _Importer:
    def __init__(self, db: Database, only: set[str] | None, create: bool, result: ImportResult,
                 secrets: dict[str, str], rename: dict[str, str], allow_gap: bool = False) -> None:
        self.db = db
        self.allow_gap = allow_gap
        self.only = only
        self.create = create
        self.result = result
        self.secrets = secrets
        self.rename = rename
        self.pending: list[tuple[str, dict[str, str], bytes]] = []
        self.pending_bytes = 0
        self.target = ""  # the stream the pending records go to

    def target_of(self, label: str, meta: dict[str, str], index: int) -> str | None:
        """The stream a record goes to, or None when ``streams=`` leaves it out."""
        stream = meta.get("stream")
        if stream is None or "offset" not in meta:
            raise ArchiveError(
                f"{label}: record {index} has no 'stream'/'offset' metadata",
                hint="import loads archives written by sqlstream export; read others with ArchiveReader",
            )
        if self.only is not None and stream not in self.only:
            return None
        return self.rename.get(stream, stream)

    def add(self, label: str, meta: dict[str, str], payload: bytes) -> None:
        target = self.target_of(label, meta, self.result.records)
        self.result.records += 1
        if target is None:
            return
        if self.pending and (self.target != target or len(self.pending) >= DEFAULT_BATCH
                             or self.pending_bytes >= _BATCH_BYTES):
            self.flush(label)
        self.target = target
        self.pending.append((label, meta, payload))
        self.pending_bytes += len(payload)

    def flush(self, label: str = "") -> None:
        """Store the pending records in one transaction: all of them or (on any error) none."""
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        stream = self.target
        secret = self.secrets.get(stream)
        with self.db.engine.write() as conn:
            state = cx.rows(conn, _STATE_SQL, (stream,))
            if not state:
                if not self.create:
                    raise StreamNotFound(f"no stream named {stream!r} to import into",
                                         hint="create it first, or import with create=True")
                self.db.create_stream(stream)
                state = cx.rows(conn, _STATE_SQL, (stream,))
            sid, first, nxt, length, sealed, last_ts, write_secret = state[0]
            # Checked here, inside the write transaction, as well as up front: a secret
            # stream created by another process during the import is still protected.
            if not _writesecrets.matches(write_secret, secret):
                raise _denied(stream)
            start = nxt
            rows: list[PreparedRecord] = []
            stamps: list[int] = []
            for where, meta, payload in batch:
                offset, position, ts, ctype, data = self.decode(where, meta, payload)
                if offset < nxt:
                    self.result.skipped += 1
                    continue
                if offset > nxt:
                    if first == nxt and not rows and self.allow_gap:
                        # Asked for: the empty stream adopts the archive's numbering, as if
                        # trimmed to there. Offsets are never reused, so the records below
                        # can never be imported afterwards: hence only when asked.
                        first = nxt = start = offset
                        length = position
                        renumber_empty(cx.runner(conn), sid, offset, position)
                    else:
                        raise self.gap(where, stream, nxt, offset, empty=first == nxt and not rows)
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
                if position > _INT64_MAX - nbytes or offset >= _INT64_MAX:
                    raise CorruptArchive(f"{where}: offset {offset} / position {position} is out of range")
                if ctype == "json" and not cx.rows(conn, "SELECT json_valid(?)", (data,))[0][0]:
                    # SQLite's own test, the one check() applies: Python's json module
                    # accepts NaN and Infinity, which SQLite does not.
                    raise CorruptArchive(f"{where}: a json record's payload is not valid JSON")
                last_ts = max(last_ts, ts)  # timestamps never decrease within a stream
                rows.append((meta.get("key"), meta.get("headers") or None, ctype, data, nbytes))
                stamps.append(last_ts)
                nxt, length = offset + 1, length + nbytes
            if rows:
                # The one append path at the archive's offsets (expect_offset: the batch
                # lands exactly where the archive says) and timestamps; retention triggers
                # fire as for any append.
                self.db.engine.append_rows(stream, secret, rows, start, timestamps=stamps)
                self.result.imported += len(rows)
                self.result.streams[stream] = self.result.streams.get(stream, 0) + len(rows)

    def gap(self, where: str, stream: str, nxt: int, offset: int, *, empty: bool) -> ArchiveError:
        """The refusal to give ``stream`` a gap: records ``nxt`` to ``offset - 1`` are not in the archives."""
        torn = f" ({', '.join(self.result.torn)} ended in a torn record)" if self.result.torn else ""
        problem = (f"{where}: stream {stream!r} continues at offset {nxt}, but the archives' next record of it "
                   f"is offset {offset}: records {nxt} to {offset - 1} are missing{torn}")
        if not empty:
            return ArchiveError(problem, hint="an archive is missing or torn, or the files do not sort in export "
                                              "order; import a good copy of the missing archive, then rerun: the "
                                              "import continues where it stopped")
        return ArchiveError(
            problem,
            hint="import a good copy of the archive holding them (nothing of this stream was stored, so a "
                 "rerun with the complete set fills it), or, if those records are gone for good (e.g. "
                 "trimmed before the export), pass allow_gap=True (CLI: --allow-gap) to start the stream "
                 f"at offset {offset}",
            cli_hint="import a good copy of the archive holding them (nothing of this stream was stored, so a "
                     "rerun with the complete set fills it), or, if those records are gone for good (e.g. "
                     f"trimmed before the export), pass --allow-gap to start the stream at offset {offset}",
        )

    @staticmethod
    def decode(where: str, meta: dict[str, str], payload: bytes) -> tuple[int, int, int, str, bytes | str]:
        if "position" not in meta:
            raise ArchiveError(f"{where}: record lacks a valid 'position' (archives of sqlstream export have one)")
        offset = _number(where, meta, "offset")
        position = _number(where, meta, "position")
        stamp = meta.get("timestamp", "0")
        if len(stamp) > 30:  # also keeps int() away from its digit limit
            raise CorruptArchive(f"{where}: timestamp {stamp[:40]!r}... is out of range")
        ts = parse_timestamp(stamp)
        if not 0 <= ts <= _INT64_MAX:
            raise CorruptArchive(f"{where}: timestamp {stamp!r} is out of range (0 to 9.2e12 seconds)")
        ctype = meta.get("content_type", "bytes")
        if ctype not in _CONTENT_TYPES:
            raise CorruptArchive(f"{where}: unknown content_type {ctype!r}")
        headers = meta.get("headers")
        if headers:
            try:
                parsed = json.loads(headers)
            except (ValueError, RecursionError):
                parsed = None
            if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
                raise CorruptArchive(f"{where}: headers metadata is not a JSON object of strings")
        if ctype == "bytes":
            return offset, position, ts, ctype, payload
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptArchive(f"{where}: a {ctype} record's payload is not UTF-8") from None
        return offset, position, ts, ctype, text


def _number(where: str, meta: dict[str, str], name: str) -> int:
    """A non-negative 64-bit integer field of the metadata (ASCII digits only), else CorruptArchive."""
    text = meta[name]
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > _INT64_MAX:
        raise CorruptArchive(f"{where}: {name} {text[:40]!r} is not an integer from 0 to 2**63-1")
    return int(text)


def import_archives(
    db: Database,
    pattern: str,
    directory: str | os.PathLike[str] = ".",
    *,
    storage: StorageDriver | Mapping[str, Any] | None = None,
    streams: Sequence[str] | None = None,
    create: bool = True,
    secrets: Mapping[str, str] | None = None,
    rename: Mapping[str, str] | None = None,
    progress: Callable[[ImportResult], None] | None = None,
    allow_gap: bool = False,
) -> ImportResult:
    """Load the records of exported archives back into their streams, idempotently.

    Archives are the files in ``directory`` whose names match the fnmatch ``pattern``
    (``"orders-*.events*"``; a directory part is allowed), or with ``storage`` the
    objects under the prefix ``directory`` whose names match. They are read in name
    order, compressed or not. Each record goes to the stream its metadata names, or to
    ``rename[name]`` when given (created if missing, unless ``create=False``), at its
    original offset, byte position and timestamp; records the stream already holds are
    skipped, so a second import adds nothing. ``streams`` limits the import to those
    streams (archive names, before renaming). An archive whose last record is torn is
    imported up to it and listed in ``torn``. A compressed archive is read through once
    before any of its records is stored, so damage that its gzip or zstd checksum reveals
    only at the end stores nothing of it.

    Gaps: a stream's offsets stay gap-free, and an import never leaves a gap that a
    later import of the missing archives could not fill. When the archives' first
    record of a stream lies past the stream's next offset (an empty new stream starts
    at 0), the records between are missing, e.g. because an earlier archive is torn or
    absent: the import raises ``ArchiveError`` and stores nothing of that stream, so a
    rerun with good copies of all the archives imports it completely. ``allow_gap=True``
    starts such an empty stream where the archives do instead (for archives of a
    stream trimmed before it was exported); the records below can then never be
    imported, as offsets are never reused. A stream that holds records never gets a
    gap, whatever ``allow_gap`` says.

    Secret streams: a target stream created with ``secret=True`` takes records only when
    ``secrets`` maps its name (the target name) to its write secret. Otherwise the call
    raises ``AccessDenied`` before it stores anything: when the database holds secret
    streams not unlocked by ``secrets``, every archive is read once first to see where
    its records would go (with ``storage``, downloaded copies are kept for the second
    pass). Temporary copies are private to the user (mode 0600) and removed on return.

    Raises ``ArchiveError`` when a stream would get a gap (a missing or torn archive),
    ``StreamSealed``, ``CorruptArchive`` for values the database cannot store (offsets or
    timestamps out of range, JSON that ``check()`` would reject), ``RecordTooLarge`` for a
    record over ``db.max_record_bytes`` (checked before it is decompressed), and the
    archive errors for damaged files. Records go in batches, one transaction each (up to
    1,000 records of one stream): on an error, the batches before it stay imported and
    the failing batch stores nothing; re-running after the fix carries on.
    """
    if not isinstance(pattern, str) or not pattern or "\x00" in pattern:
        raise InvalidArgument(f"pattern must be a non-empty file name glob (a str without NUL), not {pattern!r}"[:300],
                              hint='e.g. import_archives(db, "orders-*.events", "archives")')
    secret_map = _check_names("secrets", secrets)
    rename_map = _check_names("rename", rename)
    for target in rename_map.values():
        check_name(target)
    if not isinstance(allow_gap, bool):
        raise InvalidArgument(f"allow_gap must be True or False, not {allow_gap!r}"[:300])
    if streams is not None and (not isinstance(streams, (list, tuple, set, frozenset))
                                or not all(isinstance(x, str) for x in streams)):
        raise InvalidArgument(f"streams must be a list of stream names, not {streams!r}"[:300])
    driver = None if storage is None else get_driver(storage)
    owns = storage is not None and not isinstance(storage, StorageDriver)
    result = ImportResult()
    importer = _Importer(db, None if streams is None else set(streams), create, result, secret_map, rename_map,
                         allow_gap)
    downloaded: dict[str, str] = {}  # label -> local copy, kept until the end when pre-scanning
    try:
        sources = _archive_sources(pattern, os.fspath(directory), driver)
        locked = _locked_streams(db, secret_map)
        if locked:
            for label, opener in sources:
                downloaded[label] = opener()[1]
                _refuse_locked(importer, label, downloaded[label], locked)
        for label, opener in sources:
            local = downloaded.pop(label) if label in downloaded else opener()[1]
            try:
                with ArchiveReader(local, max_record_bytes=db.max_record_bytes) as reader:
                    if reader.compression is not None:
                        _read_through(local, db.max_record_bytes)
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
        for label, local in downloaded.items():
            if local != label:
                with contextlib.suppress(OSError):
                    os.unlink(local)
        if owns and driver is not None:
            driver.close()
    return result


def _read_through(local: str, max_record_bytes: int) -> None:
    """Read every record of a compressed archive, raising what damage the reading reveals.

    gzip and zstd check their hash of the content at the end of a member or frame, after
    handing out what it decompresses to: without this pass, damaged records of a large
    archive could be stored (a batch is committed every 1,000 records) before the
    damage is noticed. A torn tail is left to the import pass, which reports it.
    """
    with ArchiveReader(local, max_record_bytes=max_record_bytes) as reader:
        while True:
            try:
                reader.read()
            except (EndOfArchive, TruncatedRecord):
                return


def _locked_streams(db: Database, secrets: dict[str, str]) -> set[str]:
    """Names of the secret streams that ``secrets`` does not unlock."""
    with db.engine.snapshot() as conn:
        rows = cx.rows(conn, "SELECT name, write_secret_sha256 FROM streams WHERE write_secret_sha256 IS NOT NULL", ())
    return {name for name, stored in rows if not _writesecrets.matches(stored, secrets.get(name))}


def _refuse_locked(importer: _Importer, label: str, local: str, locked: set[str]) -> None:
    """Raise AccessDenied if any record of the archive would go to a locked stream."""
    with ArchiveReader(local, max_record_bytes=importer.db.max_record_bytes) as reader:
        while True:
            try:
                meta, _ = reader.read()
            except (EndOfArchive, TruncatedRecord):
                return
            target = importer.target_of(label, meta, reader.index - 1)
            if target in locked:
                raise _denied(target)
