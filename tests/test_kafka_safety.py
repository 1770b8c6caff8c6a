"""The Kafka listener's safety rules: one loopback rule, connection timeouts that never
hang ``close()``, a partition's record set stored whole or not at all, producer state in
the public core API, and producer ids that expire.

Real listeners on free loopback ports over real files; raw frames where no client can
produce the case (a stalled frame, two batches for one partition).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

try:
    import kio  # noqa: F401  (the kafka extra; kio needs Python 3.11+)
except ImportError:
    if os.environ.get("CI") and sys.version_info >= (3, 11):
        raise  # in CI the test extra must have installed it
    pytest.skip("the Kafka listener needs the kafka extra (kio: Python 3.11+)", allow_module_level=True)

from crc32c import crc32c  # noqa: E402
from helpers_kafka import closed, frame, produce_errors, produce_v3, recv  # noqa: E402
from hypothesis import given, strategies as st  # noqa: E402

import sqlstream  # noqa: E402

from sqlstream import addresses  # noqa: E402
from sqlstream.errors import InvalidArgument  # noqa: E402
from sqlstream.http.server import check_listen  # noqa: E402
from sqlstream.streaming.config import ConfigError  # noqa: E402
from sqlstream.kafka import Settings, check_bind, start  # noqa: E402
from sqlstream.kafka.config import settings_from_config  # noqa: E402
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


# ---------------------------------------------------------------------- connection timeouts and shutdown


def _fetch_v4(topic: str, offset: int, max_wait_ms: int) -> bytes:
    name = topic.encode()
    return (struct.pack(">iiiib", -1, max_wait_ms, 1, 50 << 20, 0) + struct.pack(">ih", 1, len(name)) + name
            + struct.pack(">iiqi", 1, 0, offset, 50 << 20))


def _close_in_thread(running) -> bool:
    """Whether ``running.close()`` returned (a hang fails the test instead of the run)."""
    done = threading.Thread(target=running.close, daemon=True)
    done.start()
    done.join(120)
    return not done.is_alive()


def test_close_never_hangs_with_idle_stalled_long_polling_and_unread_connections(tmp_path):
    path = tmp_path / "close.db"
    with sqlstream.open(path) as db:
        db.create_stream("empty")
        db.create_stream("big").append(b"x" * (1 << 20))
    running = start(path, Settings(port=0))
    socks = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(4)]
    try:
        idle, stalled, polling, unread = socks
        stalled.sendall(struct.pack(">i", 100) + b"\0" * 10)          # a frame that never completes
        polling.sendall(frame(1, 4, 1, _fetch_v4("empty", 0, 600_000)))  # a 10-minute long poll
        unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for i in range(64):                                         # 64 MiB of answers nobody reads
            unread.sendall(frame(1, 4, 10 + i, _fetch_v4("big", 0, 0)))
        idle.sendall(frame(18, 0, 5))
        assert struct.unpack(">i", recv(idle)[:4]) == (5,)           # the listener serves them all
        assert _close_in_thread(running)
        for s in socks:
            assert closed(s)
    finally:
        for s in socks:
            s.close()


def _api_versions(sock: socket.socket, correlation: int) -> bool:
    sock.sendall(frame(18, 0, correlation))
    reply = recv(sock)
    return bool(reply) and struct.unpack(">ih", reply[:6]) == (correlation, 0)


def test_an_idle_connection_is_closed_but_a_long_poll_is_not_idleness(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sqlstream.kafka")
    path = tmp_path / "idle.db"
    with sqlstream.open(path) as db:
        db.create_stream("quiet")
    with start(path, Settings(port=0, idle_timeout=0.5)) as running:
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            assert _api_versions(sock, 1)
            # A Fetch that waits three times the idle timeout is being handled, not idle:
            # it is answered (no records) on the same connection.
            sock.sendall(frame(1, 4, 2, _fetch_v4("quiet", 0, 1500)))
            assert struct.unpack(">i", recv(sock)[:4]) == (2,)
            assert closed(sock)  # then nothing more: closed for idleness
        assert "(idle_timeout)" in caplog.text


def test_a_stalled_frame_is_closed_with_its_reason(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sqlstream.kafka")
    with start(tmp_path / "stall.db", Settings(port=0, frame_timeout=0.3)) as running:
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            assert _api_versions(sock, 1)
            sock.sendall(struct.pack(">i", 1000) + b"\0" * 100)  # 100 of 1000 bytes, then nothing
            assert closed(sock)
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            sock.sendall(b"\0\0")  # half a size prefix
            assert closed(sock)
        assert caplog.text.count("(frame_timeout)") == 2


def test_a_connection_must_authenticate_within_auth_timeout(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sqlstream.kafka")
    with start(tmp_path / "auth.db", Settings(port=0, sasl_password="pw", auth_timeout=0.5)) as running:
        with socket.create_connection(("127.0.0.1", running.port)) as lingering, \
                socket.create_connection(("127.0.0.1", running.port)) as authenticated:
            authenticated.sendall(frame(17, 1, 1, struct.pack(">h", 5) + b"PLAIN"))
            assert recv(authenticated)
            token = b"\0user\0pw"
            authenticated.sendall(frame(36, 1, 2, struct.pack(">i", len(token)) + token))
            assert struct.unpack(">ih", recv(authenticated)[:6]) == (2, 0)
            assert _api_versions(lingering, 3)  # allowed before authentication ...
            assert closed(lingering)            # ... but the connection must authenticate in time
            assert _api_versions(authenticated, 4)  # after the same time, still served
        assert "(auth_timeout)" in caplog.text


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "10", True])
@pytest.mark.parametrize("key", ["idle_timeout", "auth_timeout", "frame_timeout", "producer_expiry"])
def test_timeouts_are_checked_at_load(key, value):
    with pytest.raises(ConfigError, match=key):
        settings_from_config({key: value}, "serve.toml")
    if not isinstance(value, (str, bool)):
        with pytest.raises(InvalidArgument, match=key):
            start("never-created.db", Settings(port=0, **{key: value}))
    assert getattr(settings_from_config({key: 2.5}), key) == 2.5
