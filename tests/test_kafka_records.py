"""Record batches (``sqlstream.kafka.records``) against an encoder and a reader we did not write.

kafka-python's ``DefaultRecordBatchBuilder`` and ``DefaultRecordBatch`` are an independent
implementation of the same format (KIP-98): what it encodes, the listener's decoder must
read back field for field, and what the listener encodes, it must read back with a valid
CRC. The sizes and timestamps are drawn around the widths where a varint grows (1, 2, 3
bytes), where the decoder's inline fast paths hand over to the general ones.
"""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("kio", reason="the kafka extra (kio needs Python 3.11+)")

from crc32c import crc32c  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from sqlstream.kafka.records import BatchError, KafkaRecord, decode_batches, encode_batch  # noqa: E402

default_records = pytest.importorskip("kafka.record.default_records", reason="kafka-python (the test extra)")

# Lengths on both sides of each varint width (zig-zag: 63/64 and 8191/8192 change width).
_sizes = st.sampled_from([0, 1, 62, 63, 64, 65, 100, 1024, 8191, 8192, 8193, 70_000]) | st.integers(0, 300)
_blobs = _sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n) if n < 64 else st.just(bytes(range(256)) * (n // 256) + bytes(n % 256)))
_names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
_headers = st.lists(st.tuples(_names, st.none() | st.binary(max_size=80)), max_size=4)
# Timestamps: deltas from the first record of both signs and every varint width.
_deltas = st.sampled_from([0, 1, 63, 64, 8191, 8192, -1, -64, -8193, 2**40]) | st.integers(-2**20, 2**20)
_record = st.tuples(_deltas, st.none() | _blobs, st.none() | _blobs, _headers)

BASE_TS = 1_700_000_000_000
LIMITS = {"max_record_bytes": 1 << 20, "max_batch_bytes": 1 << 24}


def _kafka_python_batch(records: list[KafkaRecord], codec: int = 0) -> bytes:
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=False, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 30)
    for i, r in enumerate(records):
        assert builder.append(i, r.timestamp, r.key, r.value, list(r.headers)) is not None
    return bytes(builder.build())


def _as_records(drawn: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]) -> list[KafkaRecord]:
    return [KafkaRecord(BASE_TS + d, k, v, tuple(h)) for d, k, v, h in drawn]


@given(st.lists(_record, min_size=1, max_size=12), st.sampled_from([0, 1]))
@settings(max_examples=80, deadline=None)
def test_batches_encoded_by_kafka_python_decode_field_for_field(drawn, codec):
    records = _as_records(drawn)
    [batch] = decode_batches(_kafka_python_batch(records, codec), **LIMITS)
    assert batch.records == records
    assert batch.codec in (0, codec)  # kafka-python sends a batch uncompressed when gzip would grow it


@given(st.lists(_record, min_size=1, max_size=12), st.integers(0, 2**40))
@settings(max_examples=80, deadline=None)
def test_batches_encoded_here_read_back_in_kafka_python_with_a_valid_crc(drawn, base):
    records = _as_records(drawn)
    read = default_records.DefaultRecordBatch(encode_batch(base, records))
    assert read.validate_crc()
    got = [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in read]
    assert got == [(base + i, r.timestamp, r.key, r.value, r.headers) for i, r in enumerate(records)]


def _resealed(data: bytearray) -> bytes:
    """``data`` with its length and CRC made consistent again, so a change reaches the records."""
    struct.pack_into(">i", data, 8, len(data) - 12)
    struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
    return bytes(data)


_valid = st.lists(_record, min_size=1, max_size=4).map(lambda d: encode_batch(0, _as_records(d)))


@given(_valid, st.data())
@settings(max_examples=200, deadline=None)
def test_a_damaged_record_section_is_refused_with_batch_error_only(batch, data):
    """Flipped, cut or inserted bytes after the header, with the CRC recomputed (a client
    bug, not line noise): decoded to something or refused with BatchError, never another
    exception (an IndexError from a fast path reading past the end, say)."""
    damaged = bytearray(batch)
    where = data.draw(st.integers(61, len(damaged)))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if kind == "flip" and where < len(damaged):
        damaged[where] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del damaged[where:where + data.draw(st.integers(1, 12))]
    else:
        damaged[where:where] = data.draw(st.binary(min_size=1, max_size=12))
    try:
        batches = decode_batches(_resealed(damaged), **LIMITS)
    except BatchError:
        return
    for b in batches:
        assert all(isinstance(r, KafkaRecord) for r in b.records)


def _read_all(data: bytes) -> list[tuple[int, int, list[tuple[int, int, bytes | None, bytes | None, tuple[tuple[str, bytes | None], ...]]]]]:
    """Every batch in ``data`` as kafka-python reads it: (base offset, count, records)."""
    out = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from(">i", data, pos + 8)
        read = default_records.DefaultRecordBatch(data[pos:pos + 12 + length])
        assert read.validate_crc()
        records = [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in read]
        out.append((read.base_offset, len(records), records))
        pos += 12 + length
    return out


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 5000)), min_size=1, max_size=4), st.integers(0, 2**40),
       st.lists(_record, min_size=1, max_size=6))
@settings(max_examples=30, deadline=None)
def test_encode_batches_starts_a_batch_at_every_gap_and_after_max_batch_records(runs, first, drawn):
    """Runs of consecutive offsets separated by gaps (retention, or a Fetch across records
    that were never Kafka's): each run is its own batches, none over MAX_BATCH_RECORDS,
    and every record comes back at its own offset with its own fields."""
    from sqlstream.kafka.records import MAX_BATCH_RECORDS, FetchedRecord, encode_batches

    pool = _as_records(drawn)
    fetched: list[FetchedRecord] = []
    offset = first
    for gap, length in runs:
        offset += gap - 1
        for _ in range(length):
            fetched.append((offset, *pool[offset % len(pool)]))
            offset += 1
    got = _read_all(bytes(encode_batches(fetched)))
    assert all(count <= MAX_BATCH_RECORDS for _, count, _ in got)
    flat = [r for _, _, records in got for r in records]
    assert flat == fetched
