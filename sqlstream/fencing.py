"""Fenced appends: idempotent producers (epoch + sequence) and writer sequence tokens.

A producer names itself (``producer``), declares an ``epoch`` (bumped on every restart)
and numbers its batches ``seq`` = 0, 1, 2 ... within the epoch. The stream remembers, per
producer, the last accepted ``(epoch, seq)`` in the ``producers`` table, written in the
same transaction as the records it covers, so a retry after any crash is recognised:

- ``seq`` at or below the last accepted one, same epoch: a duplicate; nothing is stored
  and the result says so (``duplicate=True``).
- ``seq`` = last + 1: stored.  ``seq`` further ahead: ``SequenceGap`` (nothing stored).
- An older ``epoch``: ``StaleEpoch`` carrying the current epoch (a fenced zombie).
- A newer ``epoch`` must start at ``seq`` 0 (``InvalidArgument`` otherwise); it fences
  every older one.

A writer sequence token (``writer_seq``) is an opaque string per stream that must grow
(byte-wise) with every append that carries one, else ``SequenceRegression``.

Everything here is one write transaction (or part of the caller's): the checks, the
records, the producer row, the token and the optional seal commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import connection as cx
from .engine import Engine
from .errors import InvalidArgument, SequenceGap, SequenceRegression, StaleEpoch, StreamNotFound, StreamSealed

# Producer epochs and sequences travel as JSON numbers in other languages: keep them exact.
MAX_COUNTER = 2**53 - 1


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
    writer_seq: str | None = None,
    seal: bool = False,
) -> FencedAppend:
    """See :meth:`sqlstream.Stream.append_fenced` (the contract is there). ``extend`` and
    ``seal_stream`` are the stream handle's own (so its write secret applies); they run
    inside this function's write scope."""
    if (producer is None) != (epoch is None) or (producer is None) != (seq is None):
        raise InvalidArgument("producer, epoch and seq go together: give all three or none")
    if producer is not None:
        if not isinstance(producer, str) or not producer:
            raise InvalidArgument("a producer id is a non-empty str")
        epoch = check_counter(epoch, "epoch")
        seq = check_counter(seq, "seq")
    if writer_seq is not None and not isinstance(writer_seq, str):
        raise InvalidArgument(f"writer_seq must be a str, not {type(writer_seq).__name__}")
    with engine.write() as conn:
        q = cx.runner(conn)
        rows = q("SELECT id, sealed_at IS NOT NULL FROM streams WHERE name = ?", (name,))
        if not rows:
            raise StreamNotFound(f"no stream named {name!r}")
        sid, sealed = int(rows[0][0]), bool(rows[0][1])
        if producer is not None:
            assert epoch is not None and seq is not None
            known = q("SELECT epoch, seq FROM producers WHERE stream_id = ? AND producer = ?", (sid, producer))
            if known:
                cur_epoch, cur_seq = int(known[0][0]), int(known[0][1])
                if epoch < cur_epoch:
                    raise StaleEpoch(
                        f"producer {producer!r} epoch {epoch} is fenced: the stream is at epoch {cur_epoch}",
                        current_epoch=cur_epoch,
                    )
                if epoch == cur_epoch and seq <= cur_seq:
                    nxt, length = _ends(q, sid)
                    return FencedAppend(range(nxt, nxt), nxt, True, sealed, length, epoch, cur_seq)
                if epoch == cur_epoch and seq > cur_seq + 1:
                    raise SequenceGap(
                        f"producer {producer!r} sent seq {seq}, expected {cur_seq + 1}",
                        expected=cur_seq + 1, received=seq,
                    )
                if epoch > cur_epoch and seq != 0:
                    raise InvalidArgument(f"producer {producer!r} starts epoch {epoch} at seq {seq}: a new epoch starts at seq 0")
            elif seq != 0:
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
            q("INSERT INTO producers (stream_id, producer, epoch, seq, updated_at) VALUES (?, ?, ?, ?, ?) "
              "ON CONFLICT (stream_id, producer) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, "
              "updated_at = excluded.updated_at", (sid, producer, epoch, seq, engine.now_us()))
        if writer_seq is not None:
            q("INSERT INTO writer_seqs (stream_id, seq) VALUES (?, ?) "
              "ON CONFLICT (stream_id) DO UPDATE SET seq = excluded.seq", (sid, writer_seq))
        if seal:
            seal_stream()
        nxt, length = _ends(q, sid)
    return FencedAppend(stored, nxt, False, seal, length, epoch, seq)


def _ends(q: cx.Query, sid: int) -> tuple[int, int]:
    row = q("SELECT next_offset, byte_length FROM streams_now WHERE id = ?", (sid,))[0]
    return int(row[0]), int(row[1])
