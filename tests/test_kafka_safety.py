"""The Kafka listener's safety rules: one loopback rule, connection timeouts that never
hang ``close()``, a partition's record set stored whole or not at all, producer state in
the public core API, and producer ids that expire.

Real listeners on free loopback ports over real files; raw frames where no client can
produce the case (a stalled frame, two batches for one partition).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

import pytest

try:
    import kio  # noqa: F401  (the kafka extra; kio needs Python 3.11+)
except ImportError:
    if os.environ.get("CI") and sys.version_info >= (3, 11):
        raise  # in CI the test extra must have installed it
    pytest.skip("the Kafka listener needs the kafka extra (kio: Python 3.11+)", allow_module_level=True)

from crc32c import crc32c  # noqa: E402
from helpers_kafka import frame, produce_errors, produce_v3, recv  # noqa: E402
from hypothesis import given, strategies as st  # noqa: E402

import sqlstream  # noqa: E402

from sqlstream import addresses  # noqa: E402
from sqlstream.errors import InvalidArgument  # noqa: E402
from sqlstream.http.server import check_listen  # noqa: E402
from sqlstream.kafka import Settings, check_bind  # noqa: E402
from sqlstream.kafka.records import KafkaRecord, encode_batch  # noqa: E402


# ---------------------------------------------------------------------- one loopback rule


def _kafka_refuses(host: str) -> bool:
    try:
        check_bind(Settings(host=host))
    except InvalidArgument:
        return True
    return False


def _http_refuses(host: str) -> bool:
    try:
        check_listen(host, None, False)
    except InvalidArgument:
        return True
    return False


_HOSTS = st.sampled_from(["localhost", "LocalHost", "LOCALHOST", "127.0.0.1", "127.3.4.5", "::1", "0.0.0.0", "::",
                          "10.0.0.1", "example.com", "localhost.", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"]) | st.text(
    max_size=20)


@given(_HOSTS)
def test_both_fronts_refuse_exactly_the_same_open_addresses(host):
    """Before, the Kafka front had its own rule: ``LOCALHOST`` was loopback for HTTP and
    an open address for Kafka."""
    assert _kafka_refuses(host) == _http_refuses(host) == (not addresses.is_loopback(host))


def test_the_kafka_front_does_not_import_the_http_front():
    code = "import sys, sqlstream.kafka.listener; print(sorted(m for m in sys.modules if m.startswith('sqlstream.http')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- a partition's record set is one unit


def _idempotent(values: list[bytes], producer_id: int, epoch: int, sequence: int) -> bytes:
    """A record batch from an idempotent producer (the producer fields patched, CRC redone)."""
    batch = bytearray(encode_batch(0, [KafkaRecord(1_700_000_000_000, None, v, ()) for v in values]))
    struct.pack_into(">qhi", batch, 43, producer_id, epoch, sequence)
    struct.pack_into(">I", batch, 17, crc32c(bytes(batch[21:])))
    return bytes(batch)


def _init_producer(sock: socket.socket) -> tuple[int, int]:
    sock.sendall(frame(22, 0, 1, struct.pack(">hi", -1, 60000)))  # InitProducerId v0, no transactional id
    reply = recv(sock)
    _, _, code, pid, epoch = struct.unpack(">iihqh", reply[:20])
    assert code == 0
    return pid, epoch


def test_a_second_batch_out_of_sequence_stores_nothing_of_its_partition(sqlstream_kafka):
    """Kafka (ProduceRequest.validateRecords) takes exactly one batch per partition in
    Produce v3+ and answers INVALID_RECORD otherwise, storing nothing of that partition;
    other partitions of the request are independent. Before, the first batch was stored
    and the second's OUT_OF_ORDER_SEQUENCE_NUMBER answered: a client retrying the request
    stored the first again (or was told 45 for records it could not know were kept)."""
    with sqlstream.open(sqlstream_kafka.path) as db:
        db.create_stream("split")
        db.create_stream("other")
    with socket.create_connection(("127.0.0.1", sqlstream_kafka.port)) as sock:
        pid, epoch = _init_producer(sock)
        first = _idempotent([b"a", b"b"], pid, epoch, 0)
        out_of_sequence = _idempotent([b"c"], pid, epoch, 7)
        alone = _idempotent([b"z"], pid, epoch, 0)
        sock.sendall(frame(0, 3, 2, produce_v3({"split": [(0, first + out_of_sequence)], "other": [(0, alone)]})))
        got = produce_errors(recv(sock))
        assert got[("split", 0)][0] == 87  # INVALID_RECORD
        assert got[("other", 0)] == (0, 0)
        # Nothing of the refused partition was stored, so its producer state did not move:
        # the first batch alone, sequence 0, is accepted next (and only once).
        for _ in range(2):
            sock.sendall(frame(0, 3, 3, produce_v3({"split": [(0, first)]})))
            assert produce_errors(recv(sock))[("split", 0)] == (0, 0)
        # Two batches in sequence are one record set too many, stored as nothing.
        sock.sendall(frame(0, 3, 4, produce_v3({"split": [(0, _idempotent([b"c"], pid, epoch, 2)
                                                            + _idempotent([b"d"], pid, epoch, 3))]})))
        assert produce_errors(recv(sock))[("split", 0)][0] == 87
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert [r.value for r in db.stream("split").read(0, limit=10)] == [b"a", b"b"]
        assert [r.value for r in db.stream("other").read(0, limit=10)] == [b"z"]
