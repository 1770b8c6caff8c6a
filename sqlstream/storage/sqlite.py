"""The sqlite storage driver: objects kept inside a sqlstream database.

``{"driver": "sqlite", "path": "objects.db"}`` (or ``"database": <open Database>``).

How objects are stored (schema in ``migrations/0003_exports.sql``): the bytes of an
object live in one or more *segments*, each a sealed, secret byte stream named
``_objects/<random hex>`` (its bytes are ordinary ``chunks`` rows of at most 1 MiB).
``storage_objects`` maps a path to an object id and size; ``storage_segments`` lists the
object's segment streams in order. An object's bytes are its segments' byte logs,
concatenated.

That indirection is what makes the zuul operations cheap and atomic:

* ``cat_objects`` *re-links*: the new object's segment list is the sources' segment
  lists, in order, and the sources' rows are deleted, all in one transaction; no payload
  byte is read or copied (unless an ``md5`` is given to verify).
* ``move_object`` is ``UPDATE storage_objects SET path = ...``.
* Replacing or deleting an object deletes the segment streams no object refers to any
  more, in the same transaction.

``put_object`` of bytes is one transaction. An iterable is written to a new, unlinked
segment stream in batches (so a slow producer does not hold the write lock), then sealed
and linked in one transaction; until then no reader can see it. A process killed
mid-upload leaves an unlinked segment; :meth:`SqliteDriver.collect_garbage` removes
those.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apsw

from .. import connection as cx
from ..clock import now_us
from ..errors import InvalidArgument, ObjectNotFound, ObjectPathConflict, StorageError, convert
from . import Chunk, Data, ObjectInfo, StorageDriver, check_path, chunk_spec, iter_data

log = logging.getLogger("sqlstream.storage")

SEGMENT_PREFIX = "_objects/"
SEGMENT_METADATA = {"sqlstream.storage": "segment"}
PIECE = 1 << 20  # bytes per chunk row
_BATCH_BYTES = 8 << 20  # bytes per transaction while uploading an iterable




def _pieces(data: Data) -> Iterator[bytes]:
    for piece in iter_data(data):
        for start in range(0, len(piece), PIECE):
            yield piece[start : start + PIECE]


class _SnapshotReader:
    """Yields an object's bytes from a connection's open read transaction; closes it at the end."""

    def __init__(self, conn: apsw.Connection, object_id: int) -> None:
        self._conn: apsw.Connection | None = conn
        self._cursor = conn.execute(
            "SELECT c.data FROM storage_segments s JOIN records c ON c.stream_id = s.stream_id "
            "WHERE s.object_id = ? ORDER BY s.seq, c.offset",
            (object_id,),
        )

    def __iter__(self) -> _SnapshotReader:
        return self

    def __next__(self) -> bytes:
        if self._conn is None:
            raise StopIteration
        try:
            row = next(self._cursor, None)
        except apsw.Error as exc:
            self.close()
            raise convert(exc) from exc
        if row is None:
            self.close()
            raise StopIteration
        data = row[0]
        return data if isinstance(data, bytes) else data.encode()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._cursor.close()
                conn.close()
            except apsw.Error:
                pass

    def __del__(self) -> None:
        self.close()


class SqliteDriver(StorageDriver):
    """Objects as sealed byte streams in a sqlstream database (see the module docstring)."""

    name = "sqlite"
    OPTIONS = frozenset({"path", "database"})

    def __init__(self, conf: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(conf, **options)
        from ..database import Database, open as open_database

        database = self.conf.get("database")
        path = self.conf.get("path")
        if database is not None:
            if not isinstance(database, Database):
                raise InvalidArgument("the sqlite driver's 'database' must be an open sqlstream Database")
            self.db, self._owns_db = database, False
        elif isinstance(path, (str, os.PathLike)) and os.fspath(path):
            self.db, self._owns_db = open_database(path), True
        else:
            raise InvalidArgument("the sqlite driver needs 'path': the sqlstream database file that holds the objects")

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def describe(self, path: str) -> str:
        return f"sqlite:{self.db.path}:{path}"

    # ----------------------------------------------------------------- helpers

    def _conn(self) -> apsw.Connection:
        return self.db.engine.write_conn()

    def _object(self, conn: apsw.Connection, path: str) -> tuple[int, int] | None:
        rows = cx.rows(conn, "SELECT id, size FROM storage_objects WHERE path = ?", (path,))
        return (rows[0][0], rows[0][1]) if rows else None

    def _segments(self, conn: apsw.Connection, object_id: int) -> list[int]:
        return [r[0] for r in conn.execute(
            "SELECT stream_id FROM storage_segments WHERE object_id = ? ORDER BY seq", (object_id,)
        )]

    def _drop_object(self, conn: apsw.Connection, object_id: int) -> None:
        """Delete an object row and every segment stream nothing refers to afterwards."""
        streams = self._segments(conn, object_id)
        conn.execute("DELETE FROM storage_objects WHERE id = ?", (object_id,))  # cascades to segments
        self._drop_unreferenced(conn, streams)

    def _drop_unreferenced(self, conn: apsw.Connection, stream_ids: Sequence[int]) -> None:
        for sid in set(stream_ids):
            if conn.execute("SELECT 1 FROM storage_segments WHERE stream_id = ? LIMIT 1", (sid,)).fetchall():
                continue
            conn.execute("DELETE FROM chunks WHERE stream_id = ?", (sid,))
            conn.execute("DELETE FROM streams WHERE id = ?", (sid,))

    def _check_tree(self, conn: apsw.Connection, path: str) -> None:
        """Refuse ``path`` if an ancestor is an object or objects exist under it (as on a filesystem).

        Paths are plain keys here, but a store that holds both ``a/b`` and ``a/b/c`` could
        not be copied to the filesystem driver, and ``list_objects`` would show ``b`` twice.
        """
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if ancestors:
            marks = ",".join("?" * len(ancestors))
            found = cx.rows(conn, f"SELECT path FROM storage_objects WHERE path IN ({marks}) LIMIT 1", ancestors)
            if found:
                raise ObjectPathConflict(
                    f"cannot store {path!r}: {found[0][0]!r} is an object, not a directory",
                    hint="an object cannot also hold other objects; choose another path",
                )
        # '0' is the character after '/': [path/, path0) holds exactly the paths under it.
        if cx.rows(conn, "SELECT 1 FROM storage_objects WHERE path >= ? AND path < ? LIMIT 1", (path + "/", path + "0")):
            raise ObjectPathConflict(
                f"cannot store object {path!r}: other objects are stored under {path + '/'!r}",
                hint="an object cannot also hold other objects; choose another path",
            )

    def _link(self, conn: apsw.Connection, path: str, size: int, stream_ids: Sequence[int]) -> None:
        """Make ``path`` the object made of ``stream_ids``, replacing any object there."""
        self._check_tree(conn, path)
        old = self._object(conn, path)
        if old is not None:
            self._drop_object_keeping(conn, old[0], stream_ids)
        object_id = conn.execute(
            "INSERT INTO storage_objects (path, size, created_at) VALUES (?, ?, ?) RETURNING id",
            (path, size, now_us()),
        ).fetchall()[0][0]
        for seq, sid in enumerate(stream_ids):
            conn.execute(
                "INSERT INTO storage_segments (object_id, seq, stream_id) VALUES (?, ?, ?)", (object_id, seq, sid)
            )

    def _drop_object_keeping(self, conn: apsw.Connection, object_id: int, keep: Sequence[int]) -> None:
        streams = [s for s in self._segments(conn, object_id) if s not in set(keep)]
        conn.execute("DELETE FROM storage_objects WHERE id = ?", (object_id,))
        self._drop_unreferenced(conn, streams)

    def _new_segment(self) -> tuple[Any, int]:
        from ..streams import Stream

        stream: Stream = self.db.create_stream(
            SEGMENT_PREFIX + secrets.token_hex(16), secret=True, metadata=SEGMENT_METADATA
        )
        with self.db.engine.snapshot() as conn:
            sid: int = cx.rows(conn, "SELECT id FROM streams WHERE name = ?", (stream.name,))[0][0]
        return stream, sid

    # ----------------------------------------------------------------- the interface

    def list_objects(self, path: str) -> list[ObjectInfo]:
        prefix = check_path(path, allow_root=True)
        start = prefix + "/" if prefix else ""
        # '0' is the character after '/': [start, end) holds exactly the paths under prefix.
        end = prefix + "0" if prefix else None
        with self.db.engine.snapshot() as conn:
            if end is None:
                rows = cx.rows(conn, "SELECT path, created_at FROM storage_objects ORDER BY path")
            else:
                rows = cx.rows(
                    conn,
                    "SELECT path, created_at FROM storage_objects WHERE path >= ? AND path < ? ORDER BY path",
                    (start, end),
                )
        entries: dict[str, ObjectInfo] = {}
        for full, created in rows:
            rest = full[len(start):]
            name, sep, _ = rest.partition("/")
            ctime = created / 1e6
            previous = entries.get(name)
            if previous is not None:
                ctime = max(ctime, previous.ctime or 0.0)
            entries[name] = ObjectInfo(path=start + name, name=name, ctime=ctime, isdir=bool(sep) or (
                previous is not None and previous.isdir))
        return [entries[k] for k in sorted(entries)]

    def get_object_size(self, path: str) -> int | None:
        path = check_path(path)
        with self.db.engine.snapshot() as conn:
            found = self._object(conn, path)
        return None if found is None else found[1]

    def put_object(self, path: str, data: Data, uuid: str | None = None) -> None:
        path = check_path(path)
        self._put(path, data)
        log.debug("sqlite put_object %s (upload %s)", self.describe(path), uuid)

    def _put(self, path: str, data: Data) -> None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            pieces = list(_pieces(data))
            with self.db.transaction():
                stream_ids: list[int] = []
                if pieces:
                    stream, sid = self._new_segment()
                    stream.extend(pieces)
                    stream.seal()
                    stream_ids.append(sid)
                self._link(self._conn(), path, sum(map(len, pieces)), stream_ids)
            return
        with self.db.engine.snapshot() as conn:
            self._check_tree(conn, path)  # fail before consuming the iterable; checked again when linking
        segment = None
        try:
            size, batch, batch_bytes = 0, [], 0
            for piece in _pieces(data):
                batch.append(piece)
                batch_bytes += len(piece)
                if batch_bytes >= _BATCH_BYTES:
                    if segment is None:
                        segment = self._new_segment()
                    segment[0].extend(batch)
                    size += batch_bytes
                    batch, batch_bytes = [], 0
            with self.db.transaction():
                if batch and segment is None:
                    segment = self._new_segment()
                if segment is not None:
                    segment[0].extend(batch)
                    segment[0].seal()
                size += batch_bytes
                self._link(self._conn(), path, size, [segment[1]] if segment is not None else [])
        except BaseException:
            if segment is not None:
                self._discard_segment(segment[1])
            raise

    def _discard_segment(self, sid: int) -> None:
        """Best effort: remove an unlinked segment after a failed upload."""
        try:
            with self.db.transaction():
                self._drop_unreferenced(self._conn(), [sid])
        except Exception:  # noqa: BLE001 - collect_garbage() gets it later
            pass

    def get_object(self, path: str) -> bytes | None:
        path = check_path(path)
        with self.db.engine.snapshot() as conn:
            found = self._object(conn, path)
            if found is None:
                return None
            parts = [bytes(r[0]) if not isinstance(r[0], str) else r[0].encode() for r in conn.execute(
                "SELECT c.data FROM storage_segments s JOIN records c ON c.stream_id = s.stream_id "
                "WHERE s.object_id = ? ORDER BY s.seq, c.offset",
                (found[0],),
            )]
        return b"".join(parts)

    def stream_object(self, path: str) -> tuple[int | None, Iterator[bytes] | None]:
        path = check_path(path)
        # A connection of its own, holding one read transaction until the iterator is
        # done: the object is read as it was at this call even if it is replaced or
        # deleted meanwhile (WAL keeps the old pages for an open reader).
        conn = self.db.engine.connect(readonly=self.db.readonly)
        try:
            conn.execute("PRAGMA query_only = 1").fetchall()
            conn.execute("BEGIN")
            found = self._object(conn, path)
            if found is None:
                conn.close()
                return None, None
        except apsw.Error as exc:
            conn.close()
            raise convert(exc) from exc
        except BaseException:
            conn.close()
            raise
        return found[1], _SnapshotReader(conn, found[0])

    def delete_object(self, path: str) -> None:
        path = check_path(path)
        with self.db.engine.write() as conn:
            found = self._object(conn, path)
            if found is not None:
                self._drop_object(conn, found[0])

    def move_object(self, src_path: str, dst_path: str, uuid: str | None = None) -> None:
        src, dst = check_path(src_path), check_path(dst_path)
        with self.db.engine.write() as conn:
            found = self._object(conn, src)
            if found is None:
                raise ObjectNotFound(f"no object {src!r} to move", hint="check the path with list_objects()",
                                     cli_hint="check the object path")
            if src == dst:
                return
            self._check_tree(conn, dst)
            old = self._object(conn, dst)
            if old is not None:
                self._drop_object_keeping(conn, old[0], self._segments(conn, found[0]))
            conn.execute("UPDATE storage_objects SET path = ? WHERE id = ?", (dst, found[0]))
        log.debug("sqlite move_object %s -> %s (upload %s)", src, self.describe(dst), uuid)

    def cat_objects(self, path: str, chunks: Sequence[Chunk], uuid: str | None = None) -> None:
        path = check_path(path)
        specs = [chunk_spec(c) for c in chunks]
        with self.db.engine.write() as conn:
            sources: list[int] = []
            stream_ids: list[int] = []
            size = 0
            for src, want_size, md5 in specs:
                found = self._object(conn, src)
                if found is None:
                    raise ObjectNotFound(f"cat_objects: no object {src!r}")
                object_id, got = found
                if want_size is not None and got != want_size:
                    raise StorageError(f"cat_objects: {src!r} has {got} bytes, not the expected {want_size}")
                if md5 is not None and self._md5(conn, object_id) != md5:
                    raise StorageError(f"cat_objects: {src!r} does not match its md5 {md5}")
                sources.append(object_id)
                stream_ids.extend(self._segments(conn, object_id))
                size += got
            # Re-link: the sources' segment streams become the new object's, in order.
            for object_id in set(sources):
                conn.execute("DELETE FROM storage_objects WHERE id = ?", (object_id,))
            self._link(conn, path, size, stream_ids)
        log.debug("sqlite cat_objects %s from %d chunks (upload %s)", self.describe(path), len(specs), uuid)

    def _md5(self, conn: apsw.Connection, object_id: int) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        for (data,) in conn.execute(
            "SELECT c.data FROM storage_segments s JOIN records c ON c.stream_id = s.stream_id "
            "WHERE s.object_id = ? ORDER BY s.seq, c.offset",
            (object_id,),
        ):
            digest.update(data if isinstance(data, bytes) else data.encode())
        return digest.hexdigest()

    # ----------------------------------------------------------------- maintenance

    def collect_garbage(self, older_than: float = 3600.0) -> int:
        """Delete segment streams no object refers to, created over ``older_than`` seconds ago.

        Such streams are left by uploads whose process died before linking them. Younger
        ones are kept: they may be uploads in progress. Returns how many were deleted.
        """
        cutoff = now_us() - int(older_than * 1_000_000)
        with self.db.engine.write() as conn:
            rows = cx.rows(
                conn,
                "SELECT id FROM streams WHERE name >= ? AND name < ? AND created_at < ? "
                "AND json_extract(metadata, '$.\"sqlstream.storage\"') = 'segment' "
                "AND NOT EXISTS (SELECT 1 FROM storage_segments WHERE stream_id = streams.id)",
                (SEGMENT_PREFIX, SEGMENT_PREFIX[:-1] + "0", cutoff),
            )
            self._drop_unreferenced(conn, [r[0] for r in rows])
        return len(rows)

    def stats(self) -> dict[str, int]:
        """Counts for inspection: objects, segments, segment streams, stored bytes."""
        with self.db.engine.snapshot() as conn:
            objects, size = cx.rows(conn, "SELECT count(*), coalesce(sum(size), 0) FROM storage_objects")[0]
            segments = cx.rows(conn, "SELECT count(*) FROM storage_segments")[0][0]
            streams = cx.rows(
                conn, "SELECT count(*) FROM streams WHERE json_extract(metadata, '$.\"sqlstream.storage\"') = 'segment'"
            )[0][0]
        return {"objects": objects, "segments": segments, "segment_streams": streams, "bytes": size}


__all__ = ["SqliteDriver", "SEGMENT_PREFIX"]
