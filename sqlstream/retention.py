"""Retention: trimming the oldest records of a stream by count, age and size.

A stream may have ``max_count`` (records), ``max_age`` (seconds) and ``max_bytes``
(retained payload bytes). Trimming advances ``first_offset`` and ``first_position`` and
deletes the records below; offsets are never reused, and reads below the first offset
raise ``OffsetOutOfRange`` naming the first available one.

Amortized enforcement. The append statement returns whether one of three *triggers* on
the stream row fired (``trim_offset``, ``trim_bytes``, ``trim_time``; see
migrations/0004). Retention sets them a margin past the limits (a sixteenth of the
limit, at most 1,024 records / 1 MiB / 60 s), so one trim removes a batch of records
and an append to a stream within its limits runs no retention statement at all. When
a trigger fires, the limits are enforced *exactly* (down to ``max_count`` records, at
most ``max_bytes`` bytes, nothing older than ``max_age``): a stream holds at least its
limit's worth of records (like Redis' ``MAXLEN ~``) and at most the limit plus the
margin. ``max_bytes`` never trims the newest record, so one oversized record stays.

``keep_unacked``: records some subscription of the stream has not acked (pending, or
not delivered yet) are never trimmed by retention; the stream then stays over its
limits, :func:`over_limit` says why, and retention re-checks every
``HELD_RECHECK`` appends. ``db.trim()`` honours it too unless ``force=True``.

Forwarding pins (``keep_unforwarded = true`` on a ``jetstream`` streaming service): the
service keeps, per stream it forwards, the first offset JetStream has not acknowledged
in a ``counters`` row named by :func:`pin_counter`. Retention and ``db.trim()`` (unless
``force=True``) never trim at or above the lowest pin of a stream, whatever its
``keep_unacked``, exactly as they honour a subscription's acked frontier.

Every function here takes ``q``: a callable that runs one SQL statement with bound
parameters inside the caller's write transaction and returns its rows. sqlstream passes
one over its apsw write connection; :mod:`sqlstream.sqlalchemy` one over the caller's
SQLAlchemy connection, so both run the same statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .connection import Query as Query  # re-exported: it was defined here first
from .logs import LazyLogger
from .validation import duration_us

HELD_RECHECK = 64  # appends between re-checks while keep_unacked holds records back

# The first offset in [lo, hi) whose column reaches a value. Positions and timestamps
# never decrease along a stream, so this is the boundary of a prefix; the scan stops at
# the first match, having visited only records that are about to be trimmed.
_FIRST_AT_LEAST_SQL = {
    column: f"SELECT offset FROM chunks WHERE stream_id = ? AND offset >= ? AND offset < ? AND {column} >= ? "
    "ORDER BY offset LIMIT 1"
    for column in ("position", "timestamp")
}
# The subscription whose acked frontier (everything below it is acked or dead-lettered)
# is lowest: keep_unacked may trim below it and no further.
_PROTECTION_SQL = """
SELECT s.name, coalesce((SELECT min(d.offset) FROM deliveries d WHERE d.subscription_id = s.id), s.next_offset) AS f
  FROM subscriptions s WHERE s.stream_id = ? ORDER BY f, s.name LIMIT 1
"""
_TRIGGERS_SQL = "UPDATE streams SET trim_offset = ?, trim_bytes = ?, trim_time = ? WHERE id = ?"
_PENDING_BELOW_SQL = (
    "SELECT count(*), count(last_error) FROM deliveries "
    "WHERE subscription_id IN (SELECT id FROM subscriptions WHERE stream_id = ?) AND offset < ?"
)
# Pending deliveries dropped by trims are counted per stream in the `counters` table
# (a name/value table: no schema change), under dropped_counter(stream_id).
_COUNT_DROPPED_SQL = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_log = LazyLogger("sqlstream")


# A stream's ends (next offset, byte length, last append time) as streams_now derives them
# from its last record, written into its row. Appends write only chunk rows, so the row
# is behind (a floor) while records remain; it must be exact before the last records go
# (a stream with none left has only its row to derive them from), and in the statement
# that raises first_offset/first_position, so CHECK (first_offset <= next_offset) and
# CHECK (first_position <= byte_length) hold.
_SETTLE_ENDS_SQL = """
UPDATE streams SET (next_offset, byte_length, last_append_at) =
       (SELECT next_offset, byte_length, last_append_at FROM streams_now WHERE id = ?1)
 WHERE id = ?1
"""
_RAISE_FIRST_SQL = """
UPDATE streams SET (first_offset, first_position, next_offset, byte_length, last_append_at) =
       (SELECT ?2, ?3, next_offset, byte_length, last_append_at FROM streams_now WHERE id = ?1)
 WHERE id = ?1
"""


def settle_ends(q: Query, stream_id: int) -> None:
    """Write the stream's current ends (``streams_now``) into its ``streams`` row (seal).

    Appends never write the row. Runs in the caller's write transaction.
    """
    q(_SETTLE_ENDS_SQL, (stream_id,))


def dropped_counter(stream_id: int) -> str:
    """The ``counters`` row counting the stream's pending deliveries dropped by trims."""
    return f"dropped_deliveries:{stream_id}"


def dropped_deliveries(q: Query, stream_id: int) -> int:
    """How many pending (delivered, unacked) deliveries trims of the stream have dropped."""
    rows = q("SELECT value FROM counters WHERE name = ?", (dropped_counter(stream_id),))
    return int(rows[0][0]) if rows else 0


def count_margin(limit: int) -> int:
    """Records a stream may hold past ``max_count`` before an append trims it."""
    return min(limit // 16, 1024)


def bytes_margin(limit: int) -> int:
    """Bytes a stream may hold past ``max_bytes`` before an append trims it."""
    return min(limit // 16, 1 << 20)


def age_margin_us(max_age: float) -> int:
    """Microseconds a record may outlive ``max_age`` before an append trims it."""
    return duration_us(min(max_age / 16, 60.0))


class TrimResult(NamedTuple):
    """What a trim did to one stream.

    ``trimmed``: records deleted. ``first_offset``: the stream's first retained offset
    afterwards. ``held``: why records the limits (or ``before_offset``) exclude were kept
    (``keep_unacked``), or None.
    """

    stream: str
    trimmed: int
    first_offset: int
    held: str | None = None


class _Stream(NamedTuple):
    id: int
    name: str
    first: int
    next: int
    first_position: int
    byte_length: int
    max_count: int | None
    max_age: float | None
    max_bytes: int | None
    keep_unacked: bool

    @property
    def limited(self) -> bool:
        return self.max_count is not None or self.max_age is not None or self.max_bytes is not None


_STREAM_SQL = (
    "SELECT id, name, first_offset, next_offset, first_position, byte_length, max_count, max_age, "
    "max_bytes, keep_unacked FROM streams_now WHERE id = ?"
)


def _load(q: Query, stream_id: int) -> _Stream:
    rows = q(_STREAM_SQL, (stream_id,))
    if not rows:
        from .errors import StreamNotFound

        raise StreamNotFound(f"no stream with id {stream_id}")
    sid, name, first, nxt, first_position, byte_length, max_count, max_age, max_bytes, keep = rows[0]
    return _Stream(sid, name, first, nxt, first_position, byte_length, max_count, max_age, max_bytes, bool(keep))


def _first_at_least(q: Query, stream_id: int, column: str, value: int, lo: int, hi: int) -> int:
    """The first offset in [lo, hi) whose ``column`` is >= ``value``; ``hi`` if none (``lo`` if empty)."""
    if hi <= lo:
        return lo
    rows = q(_FIRST_AT_LEAST_SQL[column], (stream_id, lo, hi, value))
    return int(rows[0][0]) if rows else hi


PIN_PREFIX = "keep_unforwarded:"


def pin_counter(stream_id: int, service: str) -> str:
    """The ``counters`` row holding ``service``'s forwarding pin on a stream (see the module docstring)."""
    return f"{PIN_PREFIX}{stream_id}:{service}"


def streamed_counter(service: str, stream_id: int) -> str:
    """The ``counters`` row holding the offset after the last record streaming service
    ``service`` streamed from a stream (written with its cursor; see streaming/store.py)."""
    return f"streaming:{service}:{stream_id}"


def forget_stream(q: Query, stream_id: int) -> None:
    """Delete every ``counters`` row kept per stream: its dropped-deliveries count, the
    relays' forwarding pins and the streaming services' positions. ``delete_stream`` runs
    it: SQLite gives a new stream the id of the deleted newest one, which must start with
    none of them (a position carried over would hide trimmed records from the service)."""
    pins = pin_counter(stream_id, "")
    q("DELETE FROM counters WHERE name = ?1 OR (name >= ?2 AND name < ?3) OR name GLOB ?4",
      (dropped_counter(stream_id), pins, pins[:-1] + ";", streamed_counter("*", stream_id)))


def forward_pin(q: Query, stream_id: int) -> tuple[int, str] | None:
    """(lowest forwarding pin of the stream, its service's name), None when none pins it."""
    prefix = f"{PIN_PREFIX}{stream_id}:"
    rows = q("SELECT value, name FROM counters WHERE name >= ? AND name < ? ORDER BY value LIMIT 1",
             (prefix, prefix[:-1] + ";"))
    return (int(rows[0][0]), str(rows[0][1])[len(prefix):]) if rows else None


def _guard(q: Query, st: _Stream) -> tuple[int, str] | None:
    """(offset retention must not trim at or above, why in words), None when nothing holds records."""
    holders: list[tuple[int, str]] = []
    if st.keep_unacked:
        sub = protection(q, st.id)
        if sub is not None:
            holders.append((sub[0], f"subscription {sub[1]!r} has not acked offset {sub[0]} (keep_unacked)"))
    pin = forward_pin(q, st.id)
    if pin is not None:
        holders.append((pin[0], f"streaming service {pin[1]!r} has not forwarded offset {max(pin[0], st.first)} "
                                "(keep_unforwarded)"))
    return min(holders) if holders else None


def protection(q: Query, stream_id: int) -> tuple[int, str] | None:
    """(lowest acked frontier among the stream's subscriptions, that subscription's name).

    None when the stream has no subscription. Everything below the frontier is acked or
    dead-lettered; keep_unacked may trim up to it and no further.
    """
    rows = q(_PROTECTION_SQL, (stream_id,))
    return (int(rows[0][1]), str(rows[0][0])) if rows else None


class _Plan(NamedTuple):
    target: int  # where the limits want the stream to start (scans capped past new_first)
    new_first: int  # where it will start
    exceeded: list[str]  # the limits it is over, in words
    holder: tuple[int, str] | None  # (offset, who holds records back, in words)


def _plan(q: Query, st: _Stream, now_us: int) -> _Plan:
    guard = _guard(q, st)
    cap = st.next if guard is None else max(st.first, min(guard[0], st.next))
    # Scans stop just past `cap`: beyond what may be trimmed, knowing that the limits
    # want more is enough (and a stream held back for long may be far over its limits).
    target, exceeded = st.first, []
    if st.max_count is not None and st.next - st.first > st.max_count:
        target = st.next - st.max_count
        exceeded.append(f"{st.next - st.first:,} records retained, max_count {st.max_count:,}")
    if st.max_age is not None:
        cutoff = now_us - duration_us(st.max_age)
        young = _first_at_least(q, st.id, "timestamp", cutoff, st.first, min(cap + 1, st.next))
        if young > st.first:
            exceeded.append(f"records older than max_age {st.max_age:g} s")
        target = max(target, young)
    if st.max_bytes is not None and st.byte_length - st.first_position > st.max_bytes:
        # The newest record is always kept, however large it is.
        keep = _first_at_least(
            q, st.id, "position", st.byte_length - st.max_bytes, st.first, min(cap + 1, st.next - 1)
        )
        if keep > st.first:
            exceeded.append(f"{st.byte_length - st.first_position:,} bytes retained, max_bytes {st.max_bytes:,}")
        target = max(target, keep)
    holder = guard if guard is not None and target > cap else None
    return _Plan(target, min(target, cap), exceeded, holder)


def trim_below(q: Query, stream_id: int, new_first: int) -> tuple[int, int]:
    """Delete the stream's records below ``new_first``; return (records deleted, first position).

    Advances ``first_offset``/``first_position`` (never past ``next_offset``, never
    backwards) and drops pending deliveries of the deleted records, so no subscription
    points at a missing record. Runs in the caller's write transaction.
    """
    st = _load(q, stream_id)
    return _trim(q, st, new_first)


def _trim(q: Query, st: _Stream, new_first: int) -> tuple[int, int]:
    new_first = min(new_first, st.next)
    if new_first <= st.first:
        return 0, st.first_position
    if new_first < st.next:
        rows = q("SELECT position FROM chunks WHERE stream_id = ? AND offset = ?", (st.id, new_first))
        if not rows:
            from .errors import CorruptDatabase

            raise CorruptDatabase(
                f"stream {st.name!r} has no record at offset {new_first} although it retains "
                f"{st.first}..{st.next - 1}",
                hint="run `sqlstream check`",
            )
        position = int(rows[0][0])
    else:
        position = st.byte_length
    # Before the DELETE: the ends are derived from the last record, which may be deleted.
    q(_RAISE_FIRST_SQL, (st.id, new_first, position))
    q("DELETE FROM chunks WHERE stream_id = ? AND offset >= ? AND offset < ?", (st.id, st.first, new_first))
    dropped = q(_PENDING_BELOW_SQL, (st.id, new_first))[0]
    if dropped[0]:
        # Delivered, unacked work is lost with its records: never silently.
        q(_COUNT_DROPPED_SQL, (dropped_counter(st.id), dropped[0]))
        _log.warning(
            "trimming stream %r below offset %d dropped %d pending (delivered, unacked) deliveries, "
            "%d of them with a last error; keep_unacked=True prevents this",
            st.name, new_first, dropped[0], dropped[1],
        )
        q(
            "DELETE FROM deliveries WHERE subscription_id IN (SELECT id FROM subscriptions WHERE stream_id = ?) "
            "AND offset < ?",
            (st.id, new_first),
        )
    return new_first - st.first, position


def initial_triggers(
    max_count: int | None, max_bytes: int | None, max_age: float | None, now_us: int
) -> tuple[int | None, int | None, int | None]:
    """The triggers of an empty stream (offset 0, byte 0) created now with these limits."""
    return (
        None if max_count is None else max_count + count_margin(max_count),
        None if max_bytes is None else max_bytes + bytes_margin(max_bytes),
        None if max_age is None else now_us + duration_us(max_age) + age_margin_us(max_age),
    )


def _set_triggers(q: Query, st: _Stream, first: int, first_position: int, now_us: int, held: bool) -> None:
    """Place the stream's triggers a margin past its limits, measured from ``first``."""
    if held:
        # Trimming is blocked until a subscription acks: look again after a few appends
        # rather than at every one (db.maintain() and acks-then-appends catch up).
        triggers: tuple[int | None, int | None, int | None] = (st.next + HELD_RECHECK, None, None)
    else:
        t_time = None
        if st.max_age is not None:
            rows = q("SELECT timestamp FROM chunks WHERE stream_id = ? AND offset = ?", (st.id, first)) \
                if first < st.next else []
            oldest = int(rows[0][0]) if rows else now_us  # any later record is at least this young
            t_time = oldest + duration_us(st.max_age) + age_margin_us(st.max_age)
        triggers = (
            None if st.max_count is None else first + st.max_count + count_margin(st.max_count),
            None if st.max_bytes is None else first_position + st.max_bytes + bytes_margin(st.max_bytes),
            t_time,
        )
    q(_TRIGGERS_SQL, (*triggers, st.id))


def _held(holder: tuple[int, str] | None) -> str | None:
    return None if holder is None else holder[1]


def enforce(q: Query, stream_id: int, now_us: int) -> TrimResult:
    """Apply the stream's limits exactly now, and re-place its triggers.

    Runs in the caller's write transaction; ``now_us`` is the time ``max_age`` counts
    back from. Returns what was trimmed and, with keep_unacked, what held records back.
    """
    st = _load(q, stream_id)
    if not st.limited:
        q(_TRIGGERS_SQL, (None, None, None, st.id))
        return TrimResult(st.name, 0, st.first)
    plan = _plan(q, st, now_us)
    trimmed, position = _trim(q, st, plan.new_first)
    first = max(st.first, plan.new_first)
    _set_triggers(q, st, first, position, now_us, plan.holder is not None)
    return TrimResult(st.name, trimmed, first, _held(plan.holder))


def over_limit(q: Query, stream_id: int, now_us: int) -> str | None:
    """Why the stream holds records its limits exclude, in words; None if it does not.

    Either keep_unacked holds them for a subscription (named, with the offset it has not
    acked), or they are waiting for the next batched trim.
    """
    st = _load(q, stream_id)
    if not st.limited:
        return None
    plan = _plan(q, st, now_us)
    if plan.target <= st.first:
        return None
    why = "; ".join(plan.exceeded)
    dropped = dropped_deliveries(q, stream_id)
    lost = f"; trims have dropped {dropped:,} pending deliveries (keep_unacked=True prevents it)" if dropped else ""
    if plan.holder is not None:
        return f"over its limits ({why}): {_held(plan.holder)}{lost}"
    return f"over its limits ({why}): trimmed in a batch at a later append, or by db.maintain(){lost}"


def trim(q: Query, stream_id: int, before_offset: int | None, now_us: int, *, force: bool = False) -> TrimResult:
    """Trim records below ``before_offset`` (None: apply the retention limits exactly).

    ``before_offset`` past the end trims everything (offsets to come are unaffected).
    With keep_unacked, records a subscription has not acked are kept unless ``force``;
    a forced trim also drops those records' pending deliveries.
    """
    if before_offset is None:
        return enforce(q, stream_id, now_us)
    st = _load(q, stream_id)
    target = min(before_offset, st.next)
    guard = None if force else _guard(q, st)
    new_first = target if guard is None else min(target, max(st.first, guard[0]))
    trimmed, position = _trim(q, st, new_first)
    if st.limited:
        _set_triggers(q, st, max(st.first, new_first), position, now_us, held=False)
    held = guard if guard is not None and target > max(st.first, new_first) else None
    return TrimResult(st.name, trimmed, max(st.first, new_first), _held(held))


RETENTION_COLUMNS = ("max_count", "max_age", "max_bytes", "keep_unacked", "dedup_seconds", "dedup_records")


def set_retention(q: Query, stream_id: int, changes: dict[str, Any], now_us: int) -> TrimResult:
    """Change retention/dedup settings (only the keys given) and enforce the limits at once."""
    for column, value in changes.items():
        if column not in RETENTION_COLUMNS:  # the names are interpolated below: whitelist them
            raise ValueError(f"not a retention setting: {column}")
        q(f"UPDATE streams SET {column} = ? WHERE id = ?", (value, stream_id))
    return enforce(q, stream_id, now_us)
