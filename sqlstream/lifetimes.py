"""Stream lifetimes: expiry (a sliding TTL, an absolute time), forks and soft deletion.

- **Expiry.** ``set_expiry(name, ttl=, expires_at=)`` gives a stream a sliding idle window
  (``ttl`` seconds after the last :func:`touch`, or after ``set_expiry``) and/or an
  absolute end (``expires_at``, seconds since the epoch). An expired stream keeps its
  records until :func:`retire_stream` or :func:`expire_streams` removes it: expiry is
  observed (``Lifetime.expired``) rather than enforced by a background thread, so the
  file never changes behind a caller's back. ``touch`` is quiet (it wakes no reader).
- **Forks.** :func:`fork_stream` makes a new stream holding a copy of a source's records
  below an offset (plus, optionally, the first bytes of the record at that offset), so
  the fork reads with the source's offsets up to the divergence point and continues
  with its own. Copy-on-fork: the fork owns its records, and neither stream's writes,
  trims or deletion affect the other's data. A stream trimmed below its offset 0 cannot
  be forked (its offsets could not be kept). Forks start unsealed, with no producer
  state, and inherit the source's expiry unless given their own.
- **Soft deletion.** :func:`retire_stream` deletes a stream, unless forks still name it
  as their source: it is then *soft-deleted* (``Lifetime.deleted``; its name stays taken)
  and dropped when its last fork is retired, up the chain of sources.

Every function is one write transaction (or part of the caller's).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, NamedTuple

from . import connection as cx
from .errors import InvalidArgument, OffsetOutOfRange, StreamGone, StreamNotFound
from .streams import Stream
from .validation import check_name

if TYPE_CHECKING:
    from .database import Database

# Records copied per read while forking (bounded memory for a long source).
_COPY_BATCH = 500


class Lifetime(NamedTuple):
    """A stream's expiry, fork origin and deletion state (see :func:`lifetime`)."""

    ttl: float | None
    """Seconds of idleness (no :func:`touch`) after which the stream expires."""
    expires_at: float | None
    """Absolute expiry, seconds since the epoch."""
    touched_at: float | None
    """When the TTL window last restarted (seconds since the epoch)."""
    source: str | None
    """The stream this one was forked from."""
    fork_offset: int | None
    """The source offset the fork diverged at."""
    deleted: bool
    """Soft-deleted: retired while forks still name it."""
    forks: int
    """How many existing streams were forked from this one."""
    expired: bool
    """The TTL or the absolute expiry has passed."""


#: The latest ``expires_at``: 9999-12-31T23:59:59Z, the last whole second an RFC 3339 time
#: (the HTTP front's Stream-Expires-At) can show. Later ones overflowed: 1e15 s is past
#: SQLite's integers in µs (OverflowError), and one past year 9999 made every HTTP answer
#: about the stream a 500.
MAX_EXPIRES_AT = 253402300799


#: The longest ``ttl`` (2**53 - 1 s, the HTTP front's largest Stream-TTL): an int beyond
#: SQLite's integers raised OverflowError when stored.
MAX_TTL = 2**53 - 1


def _check_expiry(ttl: float | None, expires_at: float | None) -> None:
    for what, value, most, shown in (("ttl", ttl, MAX_TTL, f"{MAX_TTL:,}"),
                                     ("expires_at", expires_at, MAX_EXPIRES_AT, f"{MAX_EXPIRES_AT} (9999-12-31T23:59:59Z)")):
        if value is None:
            continue
        # The bound before math.isfinite(), which raises OverflowError for a huge int.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(min(value, most)) \
                or value < 0:
            raise InvalidArgument(f"{what} must be a non-negative number of seconds or None, not {value!r}")
        if value > most:
            raise InvalidArgument(f"{what} must be at most {shown}, not {value!r}",
                                  hint="for a stream that never expires, leave it None")


def _row(q: cx.Query, name: str) -> tuple[int, tuple[Any, ...] | None]:
    rows = q("SELECT id FROM streams WHERE name = ?", (name,))
    if not rows:
        raise StreamNotFound(f"no stream named {name!r}")
    sid = int(rows[0][0])
    life = q("SELECT ttl, expires_at, touched_at, source, fork_offset, deleted_at FROM stream_lifetimes "
             "WHERE stream_id = ?", (sid,))
    return sid, (tuple(life[0]) if life else None)


def _forks(q: cx.Query, name: str) -> int:
    return int(q("SELECT count(*) FROM stream_lifetimes l JOIN streams s ON s.id = l.stream_id "
                 "WHERE l.source = ?", (name,))[0][0])


def lifetime(db: Database, name: str) -> Lifetime:
    """The :class:`Lifetime` of stream ``name`` (``StreamNotFound`` if absent). A read."""
    check_name(name)
    now = db.engine.now_us()
    with db.engine.snapshot() as conn:
        q = cx.runner(conn)
        _sid, row = _row(q, name)
        forks = _forks(q, name)
    if row is None:
        return Lifetime(None, None, None, None, None, False, forks, False)
    ttl, expires_at, touched, source, fork_offset, deleted = row
    expired = (expires_at is not None and expires_at <= now) or (ttl is not None and touched + ttl * 1e6 <= now)
    return Lifetime(ttl, None if expires_at is None else expires_at / 1e6, touched / 1e6, source, fork_offset,
                    deleted is not None, forks, bool(expired))


def set_expiry(db: Database, name: str, *, ttl: float | None = None, expires_at: float | None = None) -> None:
    """Give stream ``name`` a sliding ``ttl`` and/or absolute ``expires_at`` (None clears
    each); the TTL window starts now. Raises ``StreamNotFound``, ``InvalidArgument``."""
    check_name(name)
    _check_expiry(ttl, expires_at)
    with db.engine.write(wakes=False) as conn:
        q = cx.runner(conn)
        sid, _row_ = _row(q, name)
        q("INSERT INTO stream_lifetimes (stream_id, ttl, expires_at, touched_at) VALUES (?, ?, ?, ?) "
          "ON CONFLICT (stream_id) DO UPDATE SET ttl = excluded.ttl, expires_at = excluded.expires_at, "
          "touched_at = excluded.touched_at",
          (sid, ttl, None if expires_at is None else round(expires_at * 1e6), db.engine.now_us()))


def touch(db: Database, name: str) -> None:
    """Restart stream ``name``'s TTL window (a no-op for a stream without a TTL).

    Quiet: a write that wakes no blocked reader. Raises ``StreamNotFound``.
    """
    check_name(name)
    with db.engine.write(wakes=False) as conn:
        q = cx.runner(conn)
        q("UPDATE stream_lifetimes SET touched_at = ? WHERE ttl IS NOT NULL AND stream_id = "
          "(SELECT id FROM streams WHERE name = ?)", (db.engine.now_us(), name))


def fork_stream(
    db: Database,
    name: str,
    source: str,
    offset: int | None = None,
    *,
    partial: int = 0,
    metadata: dict[str, Any] | None = None,
    ttl: float | None = None,
    expires_at: float | None = None,
) -> Stream:
    """Create stream ``name`` as a fork of ``source`` at ``offset`` (default: its next offset).

    The fork holds copies of the source's records ``[0, offset)`` (values, keys, headers)
    at the same offsets, then, if ``partial`` > 0, a record of the first ``partial`` bytes
    of the source's record at ``offset`` (bytes; text when they are whole UTF-8; all of
    them: the whole record), which must be at least that long. ``metadata`` defaults to the source's. Expiry: the fork's
    own ``ttl``/``expires_at`` when given, else the source's. One transaction.
    Raises ``StreamNotFound`` (source), ``StreamGone`` (source soft-deleted),
    ``StreamExists``, ``OffsetOutOfRange`` (past the source's end, or a trimmed source),
    ``InvalidArgument``.
    """
    check_name(name)
    check_name(source)
    _check_expiry(ttl, expires_at)
    if offset is not None and (type(offset) is not int or offset < 0):
        raise InvalidArgument(f"offset must be a non-negative int or None, not {offset!r}")
    if type(partial) is not int or partial < 0:
        raise InvalidArgument(f"partial must be a non-negative int, not {partial!r}")
    with db.engine.write() as conn:
        q = cx.runner(conn)
        _sid, row = _row(q, source)
        if row is not None and row[5] is not None:
            raise StreamGone(f"stream {source!r} was deleted; its forks keep its records, but it cannot be forked")
        info = db.stream_info(source)
        end = info.next_offset if offset is None else offset
        if end > info.next_offset or (partial and end >= info.next_offset):
            raise OffsetOutOfRange(f"fork offset {end} is past the end of stream {source!r} (next offset "
                                   f"{info.next_offset})")
        if info.first_offset > 0 and (end > 0 or partial):
            raise OffsetOutOfRange(f"stream {source!r} was trimmed below offset {info.first_offset}: a fork "
                                   "must copy it from offset 0")
        fork = db.create_stream(name, metadata=info.metadata if metadata is None else metadata)
        src = db.stream(source)
        at = 0
        while at < end:
            for rec in src.read(at, min(_COPY_BATCH, end - at)):
                fork.append(rec.value, key=rec.key, headers=rec.headers or None)
                at = rec.offset + 1
        if partial:
            value = src.read(end, 1)[0].value
            data = value if isinstance(value, bytes) else (value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)).encode()
            if partial > len(data):
                raise InvalidArgument(f"partial {partial} reaches past record {end} of {source!r} ({len(data)} bytes)")
            if partial == len(data):
                fork.append(value)  # the whole record: the same as forking after it
            else:
                piece = data[:partial]
                try:
                    fork.append(piece.decode("utf-8") if not isinstance(value, bytes) else piece)
                except UnicodeDecodeError:
                    fork.append(piece)
        if ttl is None and expires_at is None and row is not None:
            ttl, expires_at = row[0], None if row[1] is None else row[1] / 1e6
        q("INSERT INTO stream_lifetimes (stream_id, ttl, expires_at, touched_at, source, fork_offset) "
          "VALUES ((SELECT id FROM streams WHERE name = ?), ?, ?, ?, ?, ?)",
          (name, ttl, None if expires_at is None else round(expires_at * 1e6), db.engine.now_us(), source, end))
    return fork


def retire_stream(db: Database, name: str) -> bool:
    """Delete stream ``name``; soft-delete it instead while forks name it as their source.

    Returns True when the stream was deleted, False when it was soft-deleted (its records
    and name stay until its last fork is retired). Deleting a fork drops its soft-deleted
    source when it was the last fork, up the chain. One transaction. Pending
    subscription deliveries are dropped with the stream. Raises ``StreamNotFound``,
    ``StreamGone`` (already soft-deleted).
    """
    check_name(name)
    with db.engine.write() as conn:
        q = cx.runner(conn)
        sid, row = _row(q, name)
        if row is not None and row[5] is not None:
            raise StreamGone(f"stream {name!r} was already deleted (its forks keep it)")
        if _forks(q, name):
            q("INSERT INTO stream_lifetimes (stream_id, touched_at, deleted_at) VALUES (?, ?, ?) "
              "ON CONFLICT (stream_id) DO UPDATE SET deleted_at = excluded.deleted_at",
              (sid, db.engine.now_us(), db.engine.now_us()))
            return False
        source = None if row is None else row[3]
        db.delete_stream(name, force=True)
        while source is not None:
            rows = q("SELECT l.deleted_at, l.source FROM stream_lifetimes l JOIN streams s ON s.id = l.stream_id "
                     "WHERE s.name = ?", (source,))
            if not rows or rows[0][0] is None or _forks(q, source):
                break
            db.delete_stream(source, force=True)
            source = rows[0][1]
    return True


def expire_streams(db: Database) -> list[str]:
    """Retire (see :func:`retire_stream`) every expired stream; return their names."""
    now = db.engine.now_us()
    with db.engine.write() as conn:
        q = cx.runner(conn)
        names = [str(r[0]) for r in q(
            "SELECT s.name FROM stream_lifetimes l JOIN streams s ON s.id = l.stream_id WHERE l.deleted_at IS NULL "
            "AND ((l.expires_at IS NOT NULL AND l.expires_at <= ?1) OR (l.ttl IS NOT NULL AND "
            "l.touched_at + l.ttl * 1e6 <= ?1)) ORDER BY s.name", (now,))]
        for n in names:
            retire_stream(db, n)
    return names
