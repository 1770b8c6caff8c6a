"""The one place the streaming services touch the engine below the public API.

:class:`Store` reads blocks (a block is one commit: the records of one ``txn``) from a
consistent snapshot, keeps each service's durable cursor (table ``streaming_cursors``,
migration 0005) and blocks until a commit. It uses the engine interface
(``db.engine``: ``snapshot()``, ``write()``, ``wait_until()``); its own bookkeeping writes
are quiet (``wakes=False``: nobody waits for a cursor to move).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import now_us
from ..connection import runner
from ..database import Database
from ..errors import InvalidArgument, InvalidName, InvalidValue, PayloadTooLarge, SqlstreamError
from ..lineage import Identity, read_identity
from ..retention import PIN_PREFIX, pin_counter, streamed_counter
from ..txn import last_txn

__all__ = ["Store", "Block", "BlockRecord", "Cursor", "RecordsTrimmed", "SentMarks", "SourceItem", "SourceResult",
           "matches"]

log = logging.getLogger("sqlstream.streaming")


class RecordsTrimmed(SqlstreamError):
    """Retention trimmed records a service had not streamed yet; ``gaps`` names them.

    ``gaps``: (stream, first offset, last offset) per stream; ``count`` the records when
    only the number is known.
    """

    def __init__(self, service: str, gaps: Sequence[tuple[str, int, int]], count: int | None = None) -> None:
        where = ", ".join(f"{name} offsets {first}..{last}" for name, first, last in gaps)
        what = where or f"{count} record(s) (the log names the ranges)"
        super().__init__(
            f"streaming service {service!r}: records were trimmed by retention before it streamed them: {what}",
            hint="those records are gone; raise the streams' retention limits, then run "
                 "`sqlstream serve --skip-trimmed` once to go on without them",
        )
        self.service = service
        self.gaps = list(gaps)


def _done_counter(service: str, stream_id: int) -> str:
    # Per service and stream: the offset after the last record the service streamed, in the
    # `counters` name/value table (no schema change). Written in the transaction that
    # advances the cursor, so the two always agree. Named in retention.py, which deletes
    # it with the stream.
    return streamed_counter(service, stream_id)

# The sqlite storage driver keeps objects in streams named `_objects/<hex>`: archive bytes,
# not application records. Patterns expose them only when they name them (start with `_`).
_INTERNAL_PREFIX = "_objects/"


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether stream ``name`` is exposed by ``patterns`` (names or ``fnmatch`` globs, ``*`` all)."""
    for pattern in patterns:
        if name.startswith(_INTERNAL_PREFIX) and not pattern.startswith("_"):
            continue
        if fnmatch.fnmatchcase(name, pattern):
            return True
    return False


@dataclass(frozen=True)
class BlockRecord:
    """One record of a block, as stored: ``data`` is the stored bytes (text/JSON as UTF-8)."""

    stream: str
    offset: int
    timestamp: int  # µs since epoch
    key: str | None  # undecodable stored bytes as surrogate escapes
    headers: str | None  # JSON object text, or None
    content_type: str
    data: bytes
    #: The stream's incarnation (migration 0011): a number no other stream of the file
    #: had or will have, so a stream deleted and created again under its name is told
    #: apart. None for a stream created before version 11.
    incarnation: int | None = None


@dataclass(frozen=True)
class Block:
    """The records one commit (``height`` = its txn number) wrote to the exposed streams.

    ``streams`` maps each exposed stream the commit touched to its records in offset
    (write) order; iterate ``sorted(streams)`` for ascending store-key order.
    """

    height: int
    streams: dict[str, list[BlockRecord]] = field(default_factory=dict)
    #: stream id -> the offset after the block's last record in it
    next_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def commit_time_us(self) -> int:
        """The newest record timestamp of the block (deterministic: read back from the file)."""
        return max((r.timestamp for rs in self.streams.values() for r in rs), default=0)

    @property
    def record_count(self) -> int:
        return sum(len(rs) for rs in self.streams.values())


@dataclass(frozen=True)
class Cursor:
    """A service's durable position: the last block it finished, and its last error."""

    service: str
    kind: str
    height: int
    head: int
    updated_at: int | None
    last_error: str | None
    #: A jetstream-source service's position (None for the others, and before its first
    #: batch): the JetStream stream, the highest sequence stored, messages stored, and the
    #: messages its consumer still held after the last one stored.
    source: str | None = None
    source_sequence: int | None = None
    source_stored: int | None = None
    source_pending: int | None = None
    #: jetstream-source: messages set aside (poison: not storable), and the last one named
    #: by JetStream stream and sequence with the reason.
    source_poisoned: int | None = None
    source_last_poison: str | None = None
    #: jetstream (forward): records sent again under an identity the file had before it
    #: was copied (a restore from a backup copy; see :mod:`sqlstream.lineage`).
    copied_resent: int = 0

    @property
    def lag(self) -> int | None:
        """Commits after ``height``; for a jetstream-source, the messages left on the server
        (None: not known yet). A jetstream (forward) relay moves its height over commits
        that touch none of its streams once it has caught up, so its lag is what it owes
        (0 after ``serve --once``); a block service's may count such commits."""
        if self.kind == "jetstream-source":
            return self.source_pending
        return max(0, self.head - self.height)


def _str(stored: bytes | None) -> str | None:
    """A text column read as bytes, back to str; bytes that are not UTF-8 survive as
    surrogate escapes (``.encode("utf-8", "surrogateescape")`` gives them back)."""
    return None if stored is None else bytes(stored).decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class SentMarks:
    """What a forwarding service may have published without an ack (migration 0006).

    Blocks in (cursor, ``h1``] were first published no earlier than ``at1``; blocks in
    (``h1``, ``h2``] no earlier than ``at2`` (µs since epoch).
    """

    h1: int
    at1: int
    h2: int
    at2: int

    def earliest_unacked(self, cursor: int) -> int | None:
        """A lower bound of the first publish time of any block above ``cursor`` (None: none was sent)."""
        if cursor < self.h1:
            return self.at1
        if cursor < self.h2:
            return self.at2
        return None


@dataclass(frozen=True)
class SourceItem:
    """One record a source service appends: value, key, headers, and its dedup id.

    ``problem`` set: the message cannot be a record (e.g. a damaged header); it is set
    aside (counted, named by ``where``) instead of stored. ``where`` names the message at
    its source (e.g. "JetStream stream 'CMD' sequence 5").
    """

    value: Any
    key: str | None
    headers: dict[str, str] | None
    dedup_id: str
    where: str = ""
    problem: str | None = None
    raw: bytes = b""  # the message body as received (what a dead-letter record holds)


@dataclass(frozen=True)
class SourceResult:
    """What :meth:`Store.append_from_source` did: records stored (duplicates not counted)
    and the items set aside, as ``(where, problem)``."""

    stored: int
    poisoned: list[tuple[str, str]] = field(default_factory=list)


# Errors an append raises because of the record itself: such a message is poison (set
# aside), whereas any other error (the disk is full, the stream is sealed) fails the batch.
_RECORD_FAULTS = (InvalidArgument, InvalidValue, InvalidName, PayloadTooLarge)
_COPIED_PREFIX = "relay_copied:"
_SOURCE_CREATED_PREFIX = "jetstream_source_created:"
_SOURCE_GENERATION_PREFIX = "jetstream_source_generation:"


def _text(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


class Store:
    """Block reads, durable cursors and commit waits for the streaming services.

    Thread-safe as the Database is. Per service it keeps, per stream id, the first offset
    whose txn is above the service's height (a hint; the database stays the truth), so
    finding the next block costs one indexed probe per exposed stream.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        # (service, stream id, incarnation) -> (height, offset)
        self._hints: dict[tuple[str, int, int | None], tuple[int, int]] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- cursors

    def cursor(self, service: str, kind: str, patterns: Sequence[str] = ()) -> int:
        """The last height ``service`` finished (0: none yet); creates its row at 0.

        A new service starts from what its streams (``patterns``) retain now: records
        trimmed before it first ran are not its loss (see :meth:`next_block`).
        """
        with self.db.engine.write(wakes=False) as conn:
            conn.execute(
                "INSERT INTO streaming_cursors (service, kind, height, updated_at) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (service) DO NOTHING",
                (service, kind, now_us()),
            )
            if conn.changes() == 1:
                existing: list[Any] = conn.execute("SELECT id, name, first_offset FROM streams").fetchall()
                for sid, name, first in existing:
                    if int(first) > 0 and matches(str(name), patterns):
                        conn.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                                     (_done_counter(service, int(sid)), int(first)))
            row = conn.execute("SELECT height FROM streaming_cursors WHERE service = ?", (service,)).fetchone()
        assert row is not None
        return int(row[0])

    def advance(self, service: str, height: int, block: Block | None = None, *, copied: int = 0) -> None:
        """Record that ``service`` finished block ``height`` (one committed write).

        With ``block``, also where the service now is in each stream the block touched
        (what :meth:`next_block` compares with the streams' first offsets). ``copied``
        adds to the records a relay sent again under an earlier identity of the file
        (:attr:`Cursor.copied_resent`), in the same write.

        Refuses to move backwards: a second runner of the same service that lost a race
        raises instead of rewinding the cursor.
        """
        with self.db.engine.write(wakes=False) as conn:
            conn.execute(
                "UPDATE streaming_cursors SET height = ?, updated_at = ?, last_error = NULL, error_at = NULL "
                "WHERE service = ? AND height < ?",
                (height, now_us(), service, height),
            )
            if conn.changes() != 1:
                from ..errors import ConcurrencyError  # noqa: PLC0415 - rare path

                raise ConcurrencyError(
                    f"streaming service {service!r} is already past block {height}",
                    hint="run each service in one `sqlstream serve` at a time",
                )
            for sid, nxt in (block.next_offsets if block is not None else {}).items():
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
                    (_done_counter(service, sid), nxt),
                )
                # A forwarding pin (keep_unforwarded) follows; none is created here.
                conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = ?",
                             (nxt, pin_counter(sid, service)))
            if copied:
                conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                             "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                             (_COPIED_PREFIX + service, copied))

    def pin_unforwarded(self, service: str, patterns: Sequence[str], keep: bool) -> int:
        """Make retention keep what ``service`` has not forwarded, or stop it (``keep=False``).

        With ``keep``, every stream ``patterns`` expose gets a forwarding pin (see
        :mod:`sqlstream.retention`) at the offset after the last record the service
        finished in it (0: none yet, so the whole stream is kept); :meth:`advance` then
        moves the pins with the cursor. Streams created later are pinned by the next
        call. Writes only when a pin is missing (or, without ``keep``, present); returns
        how many pins it added or removed.
        """
        def wanted(conn: Any) -> tuple[list[tuple[int, int]], list[str]]:
            names = {str(n): int(v) for n, v in conn.execute(
                "SELECT name, value FROM counters WHERE name >= ? AND name < ?", (PIN_PREFIX, PIN_PREFIX[:-1] + ";"))}
            mine = [n for n in names if n.endswith(f":{service}") and n[len(PIN_PREFIX):-len(service) - 1].isdigit()]
            if not keep:
                return [], mine
            missing = []
            for sid, name, first in conn.execute("SELECT id, name, first_offset FROM streams"):
                if matches(str(name), patterns) and pin_counter(int(sid), service) not in names:
                    done = conn.execute("SELECT value FROM counters WHERE name = ?",
                                        (_done_counter(service, int(sid)),)).fetchone()
                    missing.append((int(sid), int(done[0]) if done is not None else 0))
            return missing, []

        with self.db.engine.snapshot() as conn:
            missing, extra = wanted(conn)
        if not missing and not extra:
            return 0
        with self.db.engine.write(wakes=False) as conn:
            missing, extra = wanted(conn)
            for sid, offset in missing:
                conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                             (pin_counter(sid, service), offset))
            for name in extra:
                conn.execute("DELETE FROM counters WHERE name = ?", (name,))
        return len(missing) + len(extra)

    def set_height(self, service: str, height: int) -> None:
        """Mirror the progress a self-paced service keeps elsewhere (never moves backwards).

        The ``archive`` service's truth is its export's progress (``export_streams``);
        this copies it into ``streaming_cursors`` so ``serve --status`` and the
        ``streaming_progress`` view show it like any other service's.
        """
        with self.db.engine.write(wakes=False) as conn:
            conn.execute(
                "UPDATE streaming_cursors SET height = max(height, ?), updated_at = ?, last_error = NULL, "
                "error_at = NULL WHERE service = ?",
                (height, now_us(), service),
            )

    def stream_names(self, patterns: Sequence[str]) -> list[str]:
        """The names of the existing streams ``patterns`` expose, in ascending order."""
        with self.db.engine.snapshot() as conn:
            return [str(n) for (n,) in conn.execute("SELECT name FROM streams ORDER BY name") if matches(str(n), patterns)]

    def export_height(self, export: str) -> int | None:
        """The last height whose records (of the export's streams) are all in closed archives.

        Per stream: one below the txn of its first record not yet delivered, or the head
        when every record is; the minimum over the export's streams. None: no such export.
        """
        with self.db.engine.snapshot() as conn:
            head = self._head(conn)
            rows: list[Any] = conn.execute(
                "SELECT e.delivered_offset, s.next_offset, "
                "(SELECT c.txn FROM chunks c WHERE c.stream_id = s.id AND c.offset >= e.delivered_offset "
                " ORDER BY c.offset LIMIT 1) "
                "FROM exports x JOIN export_streams e ON e.export_id = x.id JOIN streams_now s ON s.id = e.stream_id "
                "WHERE x.name = ?",
                (export,),
            ).fetchall()
            if not rows and conn.execute("SELECT 1 FROM exports WHERE name = ?", (export,)).fetchone() is None:
                return None
        height = head
        for delivered, nxt, txn in rows:
            if int(delivered) < int(nxt) and txn is not None:
                height = min(height, int(txn) - 1)
        return height

    def export_trimmed(self, export: str) -> list[tuple[str, int, int]]:
        """(stream, first, last) offsets retention trimmed before export ``export`` archived them."""
        with self.db.engine.snapshot() as conn:
            gaps: list[Any] = conn.execute(
                "SELECT s.name, e.exported_offset, s.first_offset - 1 FROM exports x "
                "JOIN export_streams e ON e.export_id = x.id JOIN streams_now s ON s.id = e.stream_id "
                "WHERE x.name = ? AND e.exported_offset < s.first_offset ORDER BY s.name",
                (export,),
            ).fetchall()
        return [(str(n), int(a), int(b)) for n, a, b in gaps]

    def record_error(self, service: str, message: str) -> None:
        """Keep ``message`` as the service's last error (shown by ``serve --status``)."""
        with self.db.engine.write(wakes=False) as conn:
            conn.execute(
                "UPDATE streaming_cursors SET last_error = ?, error_at = ? WHERE service = ?",
                (message, now_us(), service),
            )

    def clear_error(self, service: str) -> None:
        """Forget the service's last error: it works again (one committed write, only when set)."""
        with self.db.engine.write(wakes=False) as conn:
            conn.execute("UPDATE streaming_cursors SET last_error = NULL, error_at = NULL "
                         "WHERE service = ? AND last_error IS NOT NULL", (service,))

    def cursors(self) -> list[Cursor]:
        """Every service's cursor, by name (from the ``streaming_progress`` view)."""
        with self.db.engine.snapshot() as conn:
            rows = conn.execute(
                "SELECT c.service, c.kind, c.height, t.txn, c.updated_at, c.last_error, "
                "s.js_stream, s.sequence, s.stored, s.pending, s.poisoned, s.last_poison, coalesce(k.value, 0) "
                "FROM streaming_cursors c JOIN last_txn t "
                "LEFT JOIN jetstream_sources s ON s.service = c.service "
                "LEFT JOIN counters k ON k.name = ? || c.service ORDER BY c.service", (_COPIED_PREFIX,)
            ).fetchall()
        rows_any: list[Any] = rows
        return [Cursor(str(r[0]), str(r[1]), int(r[2]), int(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                       r[11], int(r[12])) for r in rows_any]

    # -------------------------------------------------------------- relays (migration 0006)

    def identity(self) -> Identity:
        """The file's identity and the ones it had before it was copied (:mod:`sqlstream.lineage`)."""
        with self.db.engine.write(wakes=False) as conn:  # creates file_id in a file migrated before it existed
            return read_identity(runner(conn))

    def last_offset_upto(self, stream: str, txn: int) -> int:
        """The offset of stream ``stream``'s last record written by commit ``txn`` or earlier (-1: none)."""
        with self.db.engine.snapshot() as conn:
            row = conn.execute("SELECT c.offset FROM chunks c JOIN streams s ON s.id = c.stream_id "
                               "WHERE s.name = ? AND c.txn <= ? ORDER BY c.offset DESC LIMIT 1",
                               (stream, txn)).fetchone()
        return -1 if row is None else int(row[0])

    def stream_incarnations(self, patterns: Sequence[str]) -> dict[str, int | None]:
        """The incarnation (see :class:`BlockRecord`) of each existing stream ``patterns`` expose."""
        with self.db.engine.snapshot() as conn:
            return {str(n): (None if i is None else int(i)) for n, i in
                    conn.execute("SELECT name, incarnation FROM streams ORDER BY name") if matches(str(n), patterns)}

    def sent_marks(self, service: str) -> SentMarks | None:
        """The service's sent marks (see :class:`SentMarks`), None before its first publish."""
        with self.db.engine.snapshot() as conn:
            row = conn.execute("SELECT h1, at1, h2, at2 FROM jetstream_sent WHERE service = ?", (service,)).fetchone()
        return None if row is None else SentMarks(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def mark_sent(self, service: str, cursor: int, height: int) -> SentMarks:
        """Record, before publishing, that blocks up to ``height`` may be published from now on.

        ``cursor`` is the service's acked height. Keeps a lower bound of the first publish
        time of every block above the cursor in two slots (one committed write).
        """
        now = now_us()
        with self.db.engine.write(wakes=False) as conn:
            row = conn.execute("SELECT h1, at1, h2, at2 FROM jetstream_sent WHERE service = ?", (service,)).fetchone()
            if row is None:
                marks = SentMarks(height, now, height, now)
            else:
                old = SentMarks(int(row[0]), int(row[1]), int(row[2]), int(row[3]))
                if cursor >= old.h2:  # everything sent before is acked
                    marks = SentMarks(height, now, height, now)
                elif cursor >= old.h1:  # the first slot is acked: shift
                    marks = SentMarks(old.h2, old.at2, height, now)
                else:  # both slots still have unacked blocks: widen the second
                    marks = SentMarks(old.h1, old.at1, max(height, old.h2), old.at2)
            conn.execute(
                "INSERT INTO jetstream_sent (service, h1, at1, h2, at2) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (service) DO UPDATE SET h1 = excluded.h1, at1 = excluded.at1, "
                "h2 = excluded.h2, at2 = excluded.at2",
                (service, marks.h1, marks.at1, marks.h2, marks.at2),
            )
        return marks

    def append_from_source(self, service: str, source: str, stream: str, items: Sequence[SourceItem],
                           sequence: int, pending: int | None = None, *,
                           dead_letter: str | None = None) -> SourceResult:
        """Append ``items`` to ``stream`` (created if missing) with their dedup ids and record
        ``sequence`` as the service's position, all in ONE transaction. Raises what the
        appends raise for any other reason than the record itself (the disk is full, the
        stream is sealed); then nothing is stored and the position stays.

        Poison: an item with a ``problem``, or one whose append is refused for the record
        itself (a bad key or headers, too large), is set aside instead: counted in
        ``jetstream_sources.poisoned``, named in ``last_poison`` (and logged), and, with
        ``dead_letter``, its raw value stored in that local stream (headers ``source``,
        ``error``; same dedup id) -- in the same transaction, so once.

        ``pending``: the messages the server still held after these (the progress view's
        lag). The service's last error is cleared: it made progress again."""
        poisoned: list[tuple[str, str]] = []
        with self.db.transaction():
            handle = self.db.create_stream(stream, exist_ok=True)
            before = handle.info().next_offset
            aside = None  # the dead-letter stream, created with its first record
            for item in items:
                problem = item.problem
                if problem is None:
                    try:
                        with self.db.transaction():  # a savepoint: a refused record leaves nothing
                            handle.append(item.value, key=item.key, headers=item.headers, dedup_id=item.dedup_id)
                        continue
                    except _RECORD_FAULTS as exc:
                        problem = f"{type(exc).__name__}: {exc}"
                log.warning("streaming service %r: setting aside %s: %s", service, item.where, problem)
                poisoned.append((item.where, problem))
                if dead_letter:
                    aside = aside or self.db.create_stream(dead_letter, exist_ok=True)
                    headers = {"source": item.where, "error": problem[:2000]}
                    try:
                        with self.db.transaction():
                            aside.append(item.raw, dedup_id=item.dedup_id, headers=headers)
                    except _RECORD_FAULTS as exc:  # e.g. too large for a record: named, not kept
                        headers["error"] += f" (body not kept: {type(exc).__name__}: {exc})"[:2000]
                        aside.append(b"", dedup_id=item.dedup_id, headers=headers)
            stored = handle.info().next_offset - before
            last = f"{poisoned[-1][0]}: {poisoned[-1][1]}" if poisoned else None
            with self.db.engine.write(wakes=False) as conn:
                conn.execute(
                    "INSERT INTO jetstream_sources (service, js_stream, sequence, stored, updated_at, pending, "
                    "poisoned, last_poison) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (service) DO UPDATE SET "
                    "js_stream = excluded.js_stream, sequence = max(sequence, excluded.sequence), "
                    "stored = stored + excluded.stored, updated_at = excluded.updated_at, pending = excluded.pending, "
                    "poisoned = poisoned + excluded.poisoned, last_poison = coalesce(excluded.last_poison, last_poison)",
                    (service, source, sequence, stored, now_us(), pending, len(poisoned), last),
                )
                conn.execute("UPDATE streaming_cursors SET last_error = NULL, error_at = NULL WHERE service = ?",
                             (service,))
        return SourceResult(stored, poisoned)

    def source_generation(self, service: str, js_stream: str, created: int | None) -> int:
        """Which JetStream stream of the name ``js_stream`` the source ``service`` reads now:
        0 for the first one it has seen, one more for each one created later under that
        name (deleted and created again on the server, which numbers its messages from 1
        again). ``created`` is the server's creation time of the stream (µs; None when the
        server does not say: then the stream is taken for the one seen before).

        When ``created`` differs from the one recorded, the stream is a new one: the
        position read from it goes back to 0 (the new stream's messages 1, 2, ... are not
        the earlier ones, stored already) and the generation grows (the dedup ids of its
        messages name it, so none is taken for the earlier stream's message of the same
        sequence). One transaction; the rows are ``counters`` named
        ``jetstream_source_created:{service}`` and ``jetstream_source_generation:{service}``.
        """
        created_key = f"{_SOURCE_CREATED_PREFIX}{service}"
        generation_key = f"{_SOURCE_GENERATION_PREFIX}{service}"
        with self.db.engine.write(wakes=False) as conn:
            row = conn.execute("SELECT value FROM counters WHERE name = ?", (generation_key,)).fetchone()
            generation = 0 if row is None else int(row[0])
            if created is None:
                return generation
            row = conn.execute("SELECT value FROM counters WHERE name = ?", (created_key,)).fetchone()
            if row is not None and int(row[0]) != created:
                generation += 1
                conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                             "SET value = excluded.value", (generation_key, generation))
                conn.execute("UPDATE jetstream_sources SET sequence = 0 WHERE service = ? AND js_stream = ?",
                             (service, js_stream))
            if row is None or int(row[0]) != created:
                conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                             "SET value = excluded.value", (created_key, created))
        return generation

    def source_position(self, service: str) -> tuple[str, int, int, int] | None:
        """(JetStream stream, highest sequence stored, messages stored, updated_at µs), or None."""
        with self.db.engine.snapshot() as conn:
            row = conn.execute("SELECT js_stream, sequence, stored, updated_at FROM jetstream_sources "
                               "WHERE service = ?", (service,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]), int(row[3]))

    # -------------------------------------------------------------- blocks

    def head(self) -> int:
        """The newest committed txn number."""
        with self.db.engine.snapshot() as conn:
            return self._head(conn)

    @staticmethod
    def _head(conn: Any) -> int:
        return last_txn(lambda sql, params=(): conn.execute(sql, params).fetchall())

    @staticmethod
    def _exposed(conn: Any, patterns: Sequence[str]) -> tuple[list[tuple[int, str, int, int]], dict[int, int | None]]:
        """The streams ``patterns`` expose as (id, name, first offset, next offset) by name, and
        their incarnations by id."""
        streams: list[tuple[int, str, int, int]] = []
        incarnations: dict[int, int | None] = {}
        for sid, name, first, nxt, incarnation in conn.execute(
            "SELECT n.id, n.name, n.first_offset, n.next_offset, s.incarnation FROM streams_now n "
            "JOIN streams s ON s.id = n.id ORDER BY n.name"
        ):
            if matches(str(name), patterns):
                streams.append((int(sid), str(name), int(first), int(nxt)))
                incarnations[int(sid)] = None if incarnation is None else int(incarnation)
        return streams, incarnations

    def next_block(self, service: str, patterns: Sequence[str], after: int, upto: int | None = None) -> Block | None:
        """The first block above height ``after`` (and at most ``upto``) that touches a
        stream ``patterns`` expose, read from one snapshot; None when there is none yet."""
        with self.db.engine.snapshot() as conn:
            streams, incarnations = self._exposed(conn, patterns)
            limit = self._head(conn) if upto is None else min(upto, self._head(conn))
            if limit <= after:
                return None
            self._check_trimmed(conn, service, streams)
            starts: dict[int, tuple[int, int]] = {}  # stream id -> (offset, txn) of its next record
            for sid, _name, first, nxt in streams:
                offset = self._first_after(conn, service, sid, first, nxt, after, incarnations[sid])
                row = conn.execute(
                    "SELECT offset, txn FROM chunks WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT 1",
                    (sid, offset),
                ).fetchone()
                if row is not None:
                    starts[sid] = (int(row[0]), int(row[1]))
            if not starts:
                return None
            height = min(txn for _o, txn in starts.values())
            if height > limit:
                return None
            block = Block(height)
            for sid, name, _first, _nxt in streams:
                start = starts.get(sid)
                if start is None or start[1] != height:
                    continue
                records: list[BlockRecord] = []
                # Text columns are read as their stored bytes: a record damaged by another
                # tool (text that is not UTF-8) passes through as those bytes instead of
                # stopping every service at its block for ever.
                for offset, ts, txn, key, headers, ctype, data in conn.execute(
                    "SELECT offset, timestamp, txn, CAST(key AS BLOB), CAST(headers AS BLOB), content_type, "
                    "CAST(data AS BLOB) FROM records WHERE stream_id = ? AND offset >= ? ORDER BY offset",
                    (sid, start[0]),
                ):
                    if txn != height:
                        break
                    records.append(BlockRecord(name, int(offset), int(ts), _str(key), _str(headers), str(ctype),
                                               _text(data), incarnations[sid]))
                block.streams[name] = records
                block.next_offsets[sid] = records[-1].offset + 1
            return block

    def next_blocks(self, service: str, patterns: Sequence[str], after: int, upto: int | None = None, *,
                    max_records: int = 256) -> tuple[int, list[Block]]:
        """(head, blocks): the blocks :meth:`next_block` would return one after the other
        from ``after``, read from ONE snapshot (whose head is returned) with one range
        query per exposed stream, about ``max_records`` records in all (at least one
        whole block when there is one; never part of a block). Same errors as next_block."""
        with self.db.engine.snapshot() as conn:
            head = self._head(conn)
            streams, incarnations = self._exposed(conn, patterns)
            limit = head if upto is None else min(upto, head)
            if limit <= after or not streams:
                return head, []
            self._check_trimmed(conn, service, streams)
            by_txn: dict[int, list[tuple[int, str, list[BlockRecord]]]] = {}
            cap = limit  # blocks above a stream's truncated read may be incomplete
            for sid, name, first, nxt in streams:
                offset = self._first_after(conn, service, sid, first, nxt, after, incarnations[sid])
                rows: list[Any] = conn.execute(
                    "SELECT offset, timestamp, txn, CAST(key AS BLOB), CAST(headers AS BLOB), content_type, "
                    "CAST(data AS BLOB) FROM records WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT ?",
                    (sid, offset, max_records + 1),
                ).fetchall()
                if len(rows) > max_records:
                    cap = min(cap, int(rows[-1][2]) - 1)
                for off, ts, txn, key, headers, ctype, data in rows:
                    txn = int(txn)
                    if txn <= after or txn > limit:
                        continue
                    group = by_txn.setdefault(txn, [])
                    if not group or group[-1][0] != sid:
                        group.append((sid, name, []))
                    group[-1][2].append(BlockRecord(name, int(off), int(ts), _str(key), _str(headers), str(ctype),
                                                    _text(data), incarnations[sid]))
            blocks: list[Block] = []
            for txn in sorted(t for t in by_txn if t <= cap):
                block = Block(txn)
                for sid, name, records in sorted(by_txn[txn], key=lambda g: g[1]):
                    block.streams[name] = records
                    block.next_offsets[sid] = records[-1].offset + 1
                blocks.append(block)
        if not blocks and by_txn:  # one block larger than max_records: read it whole
            single = self.next_block(service, patterns, after, upto)
            if single is not None:
                blocks.append(single)
        return head, blocks

    def _check_trimmed(self, conn: Any, service: str, streams: list[tuple[int, str, int, int]]) -> None:
        """Raise RecordsTrimmed if a stream's first retained offset is past where ``service`` is.

        A stream the service never streamed from counts from the first offset it retained
        when the service first ran (:meth:`cursor`), else 0 (created later: every record is
        owed). ``--skip-trimmed`` accepts a loss.
        """
        prefix = _done_counter(service, 0)[:-1]
        done = {
            int(str(name)[len(prefix):]): int(value)
            for name, value in conn.execute(
                "SELECT name, value FROM counters WHERE name >= ? AND name < ?", (prefix, prefix[:-1] + ";")
            )
            if str(name)[len(prefix):].isdigit()  # not another service's whose name extends this one
        }
        gaps = [(name, done.get(sid, 0), first - 1) for sid, name, first, _nxt in streams if first > done.get(sid, 0)]
        if gaps:
            raise RecordsTrimmed(service, gaps)

    def accept_trimmed(self, service: str, patterns: Sequence[str]) -> list[tuple[str, int, int]]:
        """Move ``service`` past records retention trimmed before it streamed them; return the gaps."""
        with self.db.engine.write(wakes=False) as conn:
            streams = [
                (int(sid), str(name), int(first), int(nxt))
                for sid, name, first, nxt in conn.execute("SELECT id, name, first_offset, next_offset FROM streams_now")
                if matches(str(name), patterns)
            ]
            try:
                self._check_trimmed(conn, service, streams)
            except RecordsTrimmed as exc:
                ids = {name: sid for sid, name, _f, _n in streams}
                for name, first, last in exc.gaps:
                    log.warning("streaming service %r: skipping %s offsets %d..%d, trimmed by retention",
                                service, name, first, last)
                    conn.execute(
                        "INSERT INTO counters (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
                        (_done_counter(service, ids[name]), last + 1),
                    )
                return exc.gaps
        return []

    def _first_after(self, conn: Any, service: str, sid: int, first: int, nxt: int, after: int,
                     incarnation: int | None) -> int:
        """The lowest offset of stream ``sid`` whose txn may be above ``after``.

        Offsets and txns grow together along a stream, so a binary search over offsets
        finds it in O(log n) probes; the hint of the previous call usually answers at once.
        Hints are kept per stream incarnation: a stream created again under a deleted
        one's id starts at offset 0 again, below the old stream's hint.
        """
        with self._lock:
            hint = self._hints.get((service, sid, incarnation))
        if hint is not None and hint[0] <= after:
            lo = max(first, hint[1])
        else:
            lo = first
        hi = nxt
        while lo < hi:
            mid = (lo + hi) // 2
            row = conn.execute(
                "SELECT offset, txn FROM chunks WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT 1",
                (sid, mid),
            ).fetchone()
            if row is None or int(row[1]) > after:
                hi = mid
            else:
                lo = int(row[0]) + 1
        with self._lock:
            self._hints[(service, sid, incarnation)] = (after, lo)
        return lo

    # -------------------------------------------------------------- waiting

    def wait_for_commit(self, after: int, timeout: float) -> bool:
        """Block until a commit above txn ``after`` is visible, or ``timeout`` seconds pass.

        Woken by commits like a blocked reader (no polling loop of ours). True when there is one.
        """
        return self.db.engine.wait_until(lambda: True if self.head() > after else None, timeout) is not None
