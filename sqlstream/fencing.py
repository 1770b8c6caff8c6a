"""Fenced appends: idempotent producers (epoch + sequence) and writer sequence tokens.

A producer names itself (``producer``), declares an ``epoch`` (bumped on every restart)
and numbers its batches ``seq`` = 0, 1, 2 ... within the epoch; a batch may cover several
numbers, ``seq`` .. ``last_seq`` (Kafka numbers every record). The stream remembers, per
producer, the last accepted ``(epoch, last_seq)`` and the producer's last
:data:`RECENT_BATCHES` batches (their numbers and offsets) in the ``producers`` table,
written in the same transaction as the records they cover, so a retry after any crash is
recognised:

- A batch equal to one of the recent ones (same ``seq`` and ``last_seq``), same epoch: a
  duplicate; nothing is stored and the result says so (``duplicate=True``) and where that
  batch was stored (``original``).
- ``seq`` = last + 1: stored.
- Otherwise, without ``wrap``: ``last_seq`` at or below the last accepted number is a
  duplicate too (``original`` None when it is older than the recent batches), anything
  further ahead is a ``SequenceGap`` (nothing stored).
- With ``wrap`` (numbers count modulo ``wrap``, Kafka's 2**31), "older" has no meaning:
  anything but a recent batch or the next number is a ``SequenceGap``.
- An older ``epoch``: ``StaleEpoch`` carrying the current epoch (a fenced zombie).
- A newer ``epoch`` must start at ``seq`` 0 (``InvalidArgument`` otherwise); it fences
  every older one.

:func:`expire_producers` forgets producers that have not appended for a while (the Kafka
front's ``producer_expiry``, as Kafka's ``transactional.id.expiration.ms``). A producer the
stream has no state for starts at ``seq`` 0, or anywhere with ``resume`` (Kafka's rule).

A writer sequence token (``writer_seq``) is an opaque string per stream that must grow
(byte-wise) with every append that carries one, else ``SequenceRegression``.

Everything here is one write transaction (or part of the caller's): the checks, the
records, the producer row, the token and the optional seal commit together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import connection as cx
from .engine import Engine
from .errors import InvalidArgument, SequenceGap, SequenceRegression, StaleEpoch, StreamNotFound, StreamSealed

#: Producer names that start with this belong to the Kafka front (``kafka:<producer id>``,
#: :mod:`sqlstream.kafka.store`). The Python API may use them (to carry on a Kafka
#: producer's numbering); the HTTP front refuses them, so a Durable Streams client can
#: never move a Kafka producer's sequence.
KAFKA_PRODUCER_PREFIX = "kafka:"

# Producer epochs and sequences travel as JSON numbers in other languages: keep them exact.
MAX_COUNTER = 2**53 - 1
#: Batches per producer and stream whose retry is recognised with its offsets (a Kafka
#: producer has at most 5 in flight).
RECENT_BATCHES = 5


class FencedAppend(NamedTuple):
    """What :meth:`Stream.append_fenced` did."""

    offsets: range
    """The offsets stored by this call (empty for a duplicate or a seal without values)."""
    next_offset: int
    """The stream's next offset after the call."""
    duplicate: bool
    """The producer's ``seq`` was accepted before: nothing was stored."""
    sealed: bool
    """The stream is sealed after the call (by it or before it)."""
    byte_length: int = 0
    """The stream's byte length after the call (the position of ``next_offset``)."""
    epoch: int | None = None
    """The producer's epoch (None without a producer)."""
    seq: int | None = None
    """The highest ``seq`` accepted for the producer in that epoch."""
    original: range | None = None
    """For a duplicate of one of the producer's recent batches: the offsets it was stored at."""


def check_counter(value: object, what: str) -> int:
    """An epoch or sequence number: an int in 0 .. 2**53-1, else ``InvalidArgument``."""
    if type(value) is not int or not 0 <= value <= MAX_COUNTER:
        raise InvalidArgument(f"{what} must be an int from 0 to 2**53-1, not {value!r}")
    return value


def append_fenced(
    engine: Engine,
    name: str,
    values: Sequence[Any],
    extend: Callable[[Sequence[Any]], range],
    seal_stream: Callable[[], bool],
    *,
    producer: str | None = None,
    epoch: int | None = None,
    seq: int | None = None,
    last_seq: int | None = None,
    wrap: int | None = None,
    resume: bool = False,
    writer_seq: str | None = None,
    seal: bool = False,
) -> FencedAppend:
    """See :meth:`sqlstream.Stream.append_fenced` (the contract is there). ``extend`` and
    ``seal_stream`` run inside this function's write scope: the stream handle's own (so
    its write secret applies), or a protocol front's (the Kafka store appends its rows
    with per-record keys and headers, in its own write scope around this call).

    ``resume=True`` (the Kafka front, as a Kafka broker does) lets a producer this stream
    has no state for start at any ``seq``, not only 0: a producer whose state
    :func:`expire_producers` forgot carries on where it was instead of being refused for
    good (librdkafka treats that refusal as fatal). Without it such a batch is a
    ``SequenceGap``."""
    if (producer is None) != (epoch is None) or (producer is None) != (seq is None):
        raise InvalidArgument("producer, epoch and seq go together: give all three or none")
    if producer is None and (last_seq is not None or wrap is not None or resume):
        raise InvalidArgument("last_seq, wrap and resume go with a producer, epoch and seq")
    if producer is not None:
        if not isinstance(producer, str) or not producer:
            raise InvalidArgument("a producer id is a non-empty str")
        epoch = check_counter(epoch, "epoch")
        seq = check_counter(seq, "seq")
        if wrap is not None and (check_counter(wrap, "wrap") < 1 or seq >= wrap):
            raise InvalidArgument(f"wrap must be >= 1 and above seq, not {wrap!r}")
        last_seq = seq if last_seq is None else check_counter(last_seq, "last_seq")
        if last_seq < seq if wrap is None else last_seq >= wrap:
            raise InvalidArgument(f"last_seq {last_seq} must be at least seq {seq}" if wrap is None
                                  else f"last_seq {last_seq} must be below wrap {wrap}")
    recent: list[list[int]] = []
    if writer_seq is not None and not isinstance(writer_seq, str):
        raise InvalidArgument(f"writer_seq must be a str, not {type(writer_seq).__name__}")
    with engine.write() as conn:
        q = cx.runner(conn)
        rows = q("SELECT id, sealed_at IS NOT NULL FROM streams WHERE name = ?", (name,))
        if not rows:
            raise StreamNotFound(f"no stream named {name!r}")
        sid, sealed = int(rows[0][0]), bool(rows[0][1])
        if producer is not None:
            assert epoch is not None and seq is not None and last_seq is not None
            known = q("SELECT epoch, seq, recent FROM producers WHERE stream_id = ? AND producer = ?", (sid, producer))
            if known:
                cur_epoch, cur_seq = int(known[0][0]), int(known[0][1])
                if epoch < cur_epoch:
                    raise StaleEpoch(
                        f"producer {producer!r} epoch {epoch} is fenced: the stream is at epoch {cur_epoch}",
                        current_epoch=cur_epoch,
                    )
                if epoch == cur_epoch:
                    recent = json.loads(known[0][2]) if known[0][2] else []
                    expected = cur_seq + 1 if wrap is None else (cur_seq + 1) % wrap
                    original = next((range(a, b) for f, l, a, b in recent if (f, l) == (seq, last_seq)), None)
                    if original is not None or (seq != expected and wrap is None and last_seq <= cur_seq):
                        nxt, length = _ends(q, sid)
                        return FencedAppend(range(nxt, nxt), nxt, True, sealed, length, epoch, cur_seq, original)
                    if seq != expected:
                        raise SequenceGap(
                            f"producer {producer!r} sent seq {seq}, expected {expected}",
                            expected=expected, received=seq,
                        )
                elif seq != 0:
                    raise InvalidArgument(f"producer {producer!r} starts epoch {epoch} at seq {seq}: a new epoch starts at seq 0")
            elif seq != 0 and not resume:
                raise SequenceGap(f"producer {producer!r} is new here: its first seq is 0, not {seq}",
                                  expected=0, received=seq)
        if sealed:
            raise StreamSealed(f"stream {name!r} is sealed")
        if writer_seq is not None:
            last = q("SELECT seq FROM writer_seqs WHERE stream_id = ?", (sid,))
            if last and writer_seq.encode("utf-8", "surrogatepass") <= str(last[0][0]).encode("utf-8", "surrogatepass"):
                raise SequenceRegression(
                    f"writer sequence {writer_seq!r} does not follow {last[0][0]!r} on stream {name!r}",
                )
        stored = extend(values) if values else range(0, 0)
        if producer is not None:
            assert seq is not None and last_seq is not None
            recent = [*recent, [seq, last_seq, stored.start, stored.stop]][-RECENT_BATCHES:]
            q("INSERT INTO producers (stream_id, producer, epoch, seq, updated_at, recent) VALUES (?, ?, ?, ?, ?, ?) "
              "ON CONFLICT (stream_id, producer) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, "
              "updated_at = excluded.updated_at, recent = excluded.recent",
              (sid, producer, epoch, last_seq, engine.now_us(), json.dumps(recent, separators=(",", ":"))))
        if writer_seq is not None:
            q("INSERT INTO writer_seqs (stream_id, seq) VALUES (?, ?) "
              "ON CONFLICT (stream_id) DO UPDATE SET seq = excluded.seq", (sid, writer_seq))
        if seal:
            seal_stream()
        nxt, length = _ends(q, sid)
    return FencedAppend(stored, nxt, False, seal, length, epoch, last_seq)


def expire_producers(engine: Engine, idle: float, *, prefix: str = "") -> int:
    """Forget every producer whose name starts with ``prefix`` on every stream where it
    has not appended for ``idle`` seconds (by the engine's clock); returns how many
    (stream, producer) states went. A producer that appended within ``idle`` keeps its
    state; one forgotten is new to that stream: it starts again at seq 0 (or a new epoch),
    or anywhere when its appends pass ``resume`` (and a retry of a batch from before is then
    stored again: hence an expiry far longer than any retry). One write transaction (or
    part of the caller's)."""
    cutoff = engine.now_us() - int(idle * 1_000_000)
    with engine.write(wakes=False) as conn:
        # substr, not LIKE: LIKE ignores ASCII case and reads the prefix's % and _ as wildcards.
        cx.runner(conn)("DELETE FROM producers WHERE updated_at < ? AND substr(producer, 1, ?) = ?",
                        (cutoff, len(prefix), prefix))
        return int(conn.changes())


def _ends(q: cx.Query, sid: int) -> tuple[int, int]:
    row = q("SELECT next_offset, byte_length FROM streams_now WHERE id = ?", (sid,))[0]
    return int(row[0]), int(row[1])
