"""Kafka record batches (message format v2), sans I/O: bytes in, records out, and back.

Why not kio's ``kio.records``: its reader truncates every record timestamp to whole
seconds (Kafka timestamps are milliseconds, and this listener keeps them exactly) and
has no decompression; the format itself is small and fixed (KIP-98), so it is decoded
here, with kio's ``crc32c`` dependency for the checksum and ``cramjam`` for the codecs.

Layout of a batch: baseOffset int64, batchLength int32, partitionLeaderEpoch int32,
magic int8 (= 2), crc uint32 (CRC-32C of everything after it), attributes int16
(bits 0-2 codec, bit 3 timestamp type, bit 4 transactional, bit 5 control),
lastOffsetDelta int32, baseTimestamp int64, maxTimestamp int64, producerId int64,
producerEpoch int16, baseSequence int32, record count int32, then the records
(compressed as one block when the codec is not 0). A record: length varint,
attributes int8, timestampDelta varlong, offsetDelta varint, key, value (varint length,
-1 for null), header count varint, headers (key string, value bytes).

Every function raises :class:`BatchError` for input it cannot accept (the listener
answers with CORRUPT_MESSAGE or INVALID_RECORD); none trusts a length it has not
checked against the bytes present and the configured limits.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import NamedTuple

import cramjam
from crc32c import crc32c

__all__ = [
    "BatchError",
    "KafkaRecord",
    "Batch",
    "CODECS",
    "decode_batches",
    "encode_batch",
    "encode_batches",
    "FetchedRecord",
    "MAX_BATCH_RECORDS",
    "compress",
    "decompress",
]

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_HEADER = struct.Struct(">qiibIhiqqqhii")  # baseOffset .. record count: 61 bytes
_CRC_START = 21  # the crc covers attributes..end
_XERIAL_MAGIC = b"\x82SNAPPY\x00"


class BatchError(ValueError):
    """A record batch that cannot be accepted; ``message`` says why."""


class KafkaRecord(NamedTuple):
    """One record as Kafka sees it: every field exactly as the producer sent it."""

    timestamp: int                                  # ms since epoch
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]   # in order, names may repeat


#: A record as a Fetch serves it, flat: (offset, timestamp ms, key, value, headers), the
#: fields of :class:`KafkaRecord` after the offset. One tuple per record, made once by
#: the store and read once by :func:`encode_batches` (Fetch's per-record cost).
FetchedRecord = tuple[int, int, bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]


class Batch(NamedTuple):
    """One decoded producer batch."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    transactional: bool
    control: bool
    codec: int
    records: list[KafkaRecord]


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """The raw (still zig-zag encoded) varint of up to 64 bits at ``pos``: (raw, next position)."""
    shift = 0
    raw = 0
    while True:
        if pos >= len(buf):
            raise BatchError("a record ends inside a varint")
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if not b & 0x80:
            return raw, pos
        shift += 7
        if shift > 63:
            raise BatchError("a varint is longer than 10 bytes")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint (up to 64 bits) at ``pos``: (value, next position)."""
    raw, pos = _uvarint(buf, pos)
    return (raw >> 1) ^ -(raw & 1), pos


def _bytes(buf: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    n, pos = _varint(buf, pos)
    if n < 0:
        if n != -1:
            raise BatchError(f"a negative length {n}")
        return None, pos
    stop = pos + n
    if stop > end:
        raise BatchError("a field runs past the end of its record")
    return buf[pos:stop], stop


def _records(buf: bytes, count: int, base_ts: int, max_record_bytes: int) -> list[KafkaRecord]:
    # The hot loop of Produce, about 1 µs a record: every varint of one or two bytes (the
    # lengths, deltas and counts of records up to 8 KiB, and timestamp deltas up to 8 s)
    # is decoded inline, longer ones through _uvarint/_varint; records are made with
    # tuple.__new__ (the namedtuple's own __new__ is a Python function).
    out: list[KafkaRecord] = []
    append = out.append
    new = tuple.__new__
    cls = KafkaRecord
    pos = 0
    size = len(buf)
    varint = _varint
    uvarint = _uvarint
    try:
        for i in range(count):
            b = buf[pos]
            if b < 0x80:
                pos += 1
            elif buf[pos + 1] < 0x80:
                b = (b & 0x7F) | (buf[pos + 1] << 7)
                pos += 2
            else:
                b, pos = uvarint(buf, pos)
            length = (b >> 1) ^ -(b & 1)
            end = pos + length
            if length < 0 or end > size:
                raise BatchError(f"record {i} claims {length} bytes, more than the batch holds")
            pos += 1  # the attributes byte (unused in v2)
            b = buf[pos]
            if b < 0x80:
                delta = (b >> 1) ^ -(b & 1)
                pos += 1
            elif buf[pos + 1] < 0x80:
                b = (b & 0x7F) | (buf[pos + 1] << 7)
                delta = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                delta, pos = varint(buf, pos)
            # The offset delta: the listener assigns offsets, so it is only skipped.
            if buf[pos] < 0x80:
                pos += 1
            elif buf[pos + 1] < 0x80:
                pos += 2
            else:
                _, pos = uvarint(buf, pos)
            b = buf[pos]
            if b == 1:
                key = None
                pos += 1
            else:
                if b < 0x80:
                    pos += 1
                elif buf[pos + 1] < 0x80:
                    b = (b & 0x7F) | (buf[pos + 1] << 7)
                    pos += 2
                else:
                    b, pos = uvarint(buf, pos)
                n = (b >> 1) ^ -(b & 1)
                if n < 0 or pos + n > end:
                    raise BatchError(f"record {i}: its key runs past the record")
                key = buf[pos:pos + n]
                pos += n
            b = buf[pos]
            if b == 1:
                value = None
                pos += 1
            else:
                if b < 0x80:
                    pos += 1
                elif buf[pos + 1] < 0x80:
                    b = (b & 0x7F) | (buf[pos + 1] << 7)
                    pos += 2
                else:
                    b, pos = uvarint(buf, pos)
                n = (b >> 1) ^ -(b & 1)
                if n < 0 or pos + n > end:
                    raise BatchError(f"record {i}: its value runs past the record")
                if n > max_record_bytes:
                    raise BatchError(f"record {i} has a value of {n:,} bytes, over the limit of "
                                     f"{max_record_bytes:,}")
                value = buf[pos:pos + n]
                pos += n
            if buf[pos] == 0:
                pos += 1
                headers: tuple[tuple[str, bytes | None], ...] = ()
            else:
                headers, pos = _headers(buf, pos, end, i)
            if pos != end:
                raise BatchError(f"record {i}: its fields do not add up to its length")
            append(new(cls, (base_ts + delta, key, value, headers)))
    except IndexError:
        raise BatchError("a record runs past the end of its batch") from None
    if pos != size:
        raise BatchError("bytes left over after the last record of a batch")
    return out


def _headers(buf: bytes, pos: int, end: int, i: int) -> tuple[tuple[tuple[str, bytes | None], ...], int]:
    nh, pos = _varint(buf, pos)
    if nh < 0 or nh > end - pos:
        raise BatchError(f"record {i} claims {nh} headers")
    headers = []
    for _ in range(nh):
        hk, pos = _bytes(buf, pos, end)
        if hk is None:
            raise BatchError(f"record {i} has a header with a null name")
        hv, pos = _bytes(buf, pos, end)
        try:
            name = hk.decode("utf-8")
        except UnicodeDecodeError:
            raise BatchError(f"record {i} has a header name that is not UTF-8") from None
        headers.append((name, hv))
    return tuple(headers), pos


def decode_batches(data: bytes, *, max_record_bytes: int, max_batch_bytes: int) -> list[Batch]:
    """Every batch in a Produce request's record set, checked and decompressed.

    Refuses (``BatchError``) message formats before v2, bad CRCs, lengths that disagree
    with the bytes, batches whose records take more than ``max_batch_bytes`` together
    (decompressed: the bound is on what is held at once, so many small compressed batches
    cannot each inflate to it) and a value over ``max_record_bytes``.
    """
    batches: list[Batch] = []
    pos = 0
    held = 0  # decompressed bytes of the batches decoded so far
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            raise BatchError("a record batch is shorter than its header")
        (_, length, _, magic, crc, attrs, last_delta, base_ts, _max_ts,
         pid, epoch, base_seq, count) = _HEADER.unpack_from(data, pos)
        if magic != 2:
            raise BatchError(f"message format v{magic} is not supported (only record batch v2)")
        end = pos + 12 + length
        if length < _HEADER.size - 12 or end > len(data):
            raise BatchError("a record batch's length runs past the request")
        if crc32c(memoryview(data)[pos + _CRC_START:end]) != crc:
            raise BatchError("record batch CRC mismatch")
        if count < 0 or count != last_delta + 1:
            raise BatchError(f"a batch of {count} records with last offset delta {last_delta}")
        body = bytes(memoryview(data)[pos + _HEADER.size:end])
        codec = attrs & 0x07
        if codec:
            body = decompress(codec, body, max_batch_bytes - held)  # what is left of the bound
        held += len(body)
        if held > max_batch_bytes:
            raise BatchError(f"the batches decompress to more than the limit of {max_batch_bytes:,} bytes")
        records = _records(body, count, base_ts, max_record_bytes)
        batches.append(Batch(pid, epoch, base_seq, bool(attrs & 0x10), bool(attrs & 0x20), codec, records))
        pos = end
    return batches


def _zz_long(n: int) -> bytes:
    """The zig-zag varint of ``n`` (any int64), for numbers outside ``_SMALL``."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        return bytes((z & 0x7F | 0x80, z >> 7)) if z >= 0x80 else bytes((z,))
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# Zig-zag varints of the small numbers every record carries (lengths, deltas), made once.
_SMALL = [_zz_long(n) for n in range(4096)]
#: The most records encoded into one batch: every offset delta is then in ``_SMALL``.
MAX_BATCH_RECORDS = len(_SMALL)


def _zz(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 4096 else _zz_long(n)


def _batch(parts: list[bytes], records: Iterable[FetchedRecord], count: int, base_ts: int, codec: int) -> int:
    """Append one batch of the ``count`` ``records`` (the first's timestamp ``base_ts``;
    their offsets are not read: a record's offset delta is its index) to
    ``parts``, its first 21 bytes (base offset .. CRC) zeros for the caller to fill in
    (:func:`_seal`); return the batch's size."""
    max_ts = base_ts
    small = _SMALL
    zz_long = _zz_long
    # Each record is a few small parts (length, attributes, deltas, key, value length), its
    # value and its headers, joined once by the caller: a value's bytes are copied once.
    # The common record (no key, no headers) takes no function call but the join's.
    body: list[bytes] = []
    extend = body.extend
    size = 0
    for delta, (_, ts, key, value, headers) in enumerate(records):
        if ts > max_ts:
            max_ts = ts
        d = ts - base_ts
        td = small[d] if 0 <= d < 4096 else zz_long(d)
        od = small[delta] if delta < 4096 else zz_long(delta)
        if key is None and not headers and value is not None:
            n = len(value)
            vl = small[n] if n < 4096 else zz_long(n)
            total = 3 + len(td) + len(od) + len(vl) + n
            length = small[total] if total < 4096 else zz_long(total)
            extend((length, b"\0", td, od, b"\1", vl, value, b"\0"))
            size += len(length) + total
            continue
        head = b"\0" + td + od
        head += b"\1" if key is None else _zz(len(key)) + key
        if value is None:
            head += b"\1"
            value = b""
        else:
            head += _zz(len(value))
        if headers:
            trailer = bytearray(_zz(len(headers)))
            for name, hv in headers:
                raw = name.encode("utf-8")
                trailer += _zz(len(raw)) + raw
                trailer += b"\1" if hv is None else _zz(len(hv)) + hv
            tail_bytes = bytes(trailer)
        else:
            tail_bytes = b"\0"
        total = len(head) + len(value) + len(tail_bytes)
        length = _zz(total)
        extend((length, head, value, tail_bytes))
        size += len(length) + total
    parts.append(_UNSEALED)
    parts.append(struct.pack(">hiqqqhii", codec, count - 1, base_ts, max_ts, -1, -1, -1, count))
    if codec:
        payload = compress(codec, b"".join(body))
        parts.append(payload)
        size = len(payload)
    else:
        parts += body
    return _SEALED_AT + 40 + size


_SEALED_AT = 21  # base offset, length, leader epoch, magic, CRC: what _seal writes
_UNSEALED = bytes(_SEALED_AT)
_SEAL = struct.Struct(">qiibI")


def _seal(buf: bytearray, start: int, size: int, base_offset: int) -> None:
    """Fill in the first 21 bytes of the batch at ``buf[start:start + size]``."""
    with memoryview(buf) as view:
        crc = crc32c(view[start + _SEALED_AT:start + size])
    _SEAL.pack_into(buf, start, base_offset, size - 12, 0, 2, crc)


def encode_batch(base_offset: int, records: Sequence[KafkaRecord], *, codec: int = 0) -> bytes:
    """One batch holding ``records`` at offsets ``base_offset``, ``base_offset + 1``, ...

    Producer id -1 (not idempotent), CreateTime timestamps, ``codec`` 0 (none) or a Kafka
    codec number.
    """
    parts: list[bytes] = []
    size = _batch(parts, [(0, *r) for r in records], len(records), records[0].timestamp, codec)
    buf = bytearray().join(parts)
    _seal(buf, 0, size, base_offset)
    return bytes(buf)


def encode_batches(records: Sequence[FetchedRecord], *, codec: int = 0) -> bytearray:
    """Fetched records in ascending offsets as record batches: one batch per run
    of consecutive offsets (a gap starts a new one: a batch's offsets are base + index),
    at most ``MAX_BATCH_RECORDS`` records each; as :func:`encode_batch` otherwise.

    One buffer, written once (a Fetch response's records are megabytes: every extra copy
    of them costs more than the encoding of a small record)."""
    parts: list[bytes] = []
    batches: list[tuple[int, int]] = []  # (base offset, size)
    start = 0
    n = len(records)
    while start < n:
        stop = min(n, start + MAX_BATCH_RECORDS)
        base = records[start][0]
        if records[stop - 1][0] - base != stop - 1 - start:
            # A gap: offsets ascend, so the run is the prefix whose offsets are base + index;
            # its end is found by bisection.
            lo, hi = start + 1, stop - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if records[mid][0] - base == mid - start:
                    lo = mid + 1
                else:
                    hi = mid
            stop = lo
        size = _batch(parts, islice(records, start, stop), stop - start, records[start][1], codec)
        batches.append((base, size))
        start = stop
    buf = bytearray().join(parts)
    at = 0
    for base_offset, size in batches:
        _seal(buf, at, size, base_offset)
        at += size
    return buf


def compress(codec: int, data: bytes) -> bytes:
    """``data`` compressed with Kafka codec ``codec`` (1 gzip, 2 snappy, 3 lz4, 4 zstd)."""
    if codec == 1:
        return gzip.compress(data, compresslevel=1)
    if codec == 2:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.compress(data))
    if codec == 4:
        return bytes(cramjam.zstd.compress(data))
    raise BatchError(f"unknown compression codec {codec}")


def _bounded(decompress_into: object, data: bytes, limit: int) -> bytes:
    # The output buffer grows by doubling up to the limit, so a small request that
    # decompresses to gigabytes costs at most `limit` bytes before it is refused.
    size = min(limit, max(64 * 1024, 8 * len(data)))
    while True:
        out = bytearray(size + 1)
        try:
            n = decompress_into(data, out)  # type: ignore[operator]
        except cramjam.DecompressionError as exc:
            if "whole buffer" not in str(exc):
                raise BatchError(f"the batch does not decompress: {exc}") from None
            n = size + 1
        if n <= size:
            return bytes(out[:n])
        if size >= limit:
            raise BatchError(f"a batch decompresses to more than the limit of {limit:,} bytes")
        size = min(limit, size * 2)


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(wbits=47)  # gzip or zlib header
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BatchError(f"the batch does not decompress (gzip): {exc}") from None
    if len(out) > limit:
        raise BatchError(f"a batch decompresses to more than the limit of {limit:,} bytes")
    return out


def _snappy(data: bytes, limit: int) -> bytes:
    if not data.startswith(_XERIAL_MAGIC):
        return _bounded(cramjam.snappy.decompress_raw_into, data, limit)
    # The Java client's (and kafka-python's) xerial framing: magic, two int32 versions,
    # then blocks of int32 length + raw snappy.
    pos = 16
    parts: list[bytes] = []
    total = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise BatchError("a snappy (xerial) block header is cut short")
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if n < 0 or pos + n > len(data):
            raise BatchError("a snappy (xerial) block runs past the batch")
        part = _bounded(cramjam.snappy.decompress_raw_into, data[pos:pos + n], limit - total)
        total += len(part)
        parts.append(part)
        pos += n
    return b"".join(parts)


def decompress(codec: int, data: bytes, limit: int) -> bytes:
    """The records block of a batch compressed with ``codec``, at most ``limit`` bytes."""
    if codec == 1:
        return _gunzip(data, limit)
    if codec == 2:
        return _snappy(data, limit)
    if codec == 3:
        return _bounded(cramjam.lz4.decompress_into, data, limit)
    if codec == 4:
        return _bounded(cramjam.zstd.decompress_into, data, limit)
    raise BatchError(f"unknown compression codec {codec}")
