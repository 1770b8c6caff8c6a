"""The Kafka listener's safety rules: one loopback rule, connection timeouts that never
hang ``close()``, a partition's record set stored whole or not at all, producer state in
the public core API, and producer ids that expire.

Real listeners on free loopback ports over real files; raw frames where no client can
produce the case (a stalled frame, two batches for one partition).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time

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
from sqlstream import connection as cx  # noqa: E402

from sqlstream import addresses  # noqa: E402
from sqlstream.errors import InvalidArgument, SequenceGap  # noqa: E402
from sqlstream.http.server import check_listen  # noqa: E402
from sqlstream.streaming.config import ConfigError  # noqa: E402
from sqlstream.testing import FakeClock, wait_for  # noqa: E402
from sqlstream.kafka import Settings, check_bind, start  # noqa: E402
from sqlstream.kafka.config import settings_from_config  # noqa: E402
from sqlstream.kafka.records import Batch, KafkaRecord, encode_batch  # noqa: E402
from sqlstream.kafka.store import KafkaRefused, KafkaStore  # noqa: E402

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Producer  # noqa: E402


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


def _reaches_end(sock: socket.socket) -> bool:
    """Whether the connection ends (EOF or reset) once what was already sent is read: a
    closed connection may still deliver the answers the kernel had buffered."""
    sock.settimeout(60)  # a connection left open fails the test instead of hanging it
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_close_never_hangs_with_idle_stalled_long_polling_and_unread_connections(tmp_path):
    path = tmp_path / "close.db"
    with sqlstream.open(path) as db:
        db.create_stream("empty")
        db.create_stream("big").extend([b"x" * (1 << 20)] * 16)
    running = start(path, Settings(port=0))
    socks = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(4)]
    try:
        idle, stalled, polling, unread = socks
        stalled.sendall(struct.pack(">i", 100) + b"\0" * 10)          # a frame that never completes
        polling.sendall(frame(1, 4, 1, _fetch_v4("empty", 0, 600_000)))  # a 10-minute long poll
        unread.sendall(frame(1, 4, 10, _fetch_v4("big", 0, 0)))   # a 16 MiB answer nobody reads
        # Its first byte has arrived, so the listener has written it whole to its transport,
        # which holds what the sockets' buffers (a few MiB) cannot: the listener waits for
        # this client to read. Before, closing that transport waited to flush it: Python
        # 3.12's Server.wait_closed never returned, 3.11 left the connection open.
        unread.settimeout(60)
        assert unread.recv(1, socket.MSG_PEEK)
        idle.sendall(frame(18, 0, 5))
        assert struct.unpack(">i", recv(idle)[:4]) == (5,)           # the listener serves them all
        assert _close_in_thread(running)
        for s in socks:
            assert _reaches_end(s)
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


def test_the_auth_deadline_does_not_move_with_a_frame_begun_before_it(tmp_path):
    """``auth_timeout`` counts from connecting: a frame whose first byte arrives before the
    deadline and the rest after it is not answered. Before, the deadline was re-armed from
    the first byte (up to twice ``auth_timeout`` for a client that trickles)."""
    with start(tmp_path / "late.db", Settings(port=0, sasl_password="pw", auth_timeout=1.0)) as running:
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            request = frame(18, 0, 1)
            time.sleep(0.7)  # within auth_timeout: the frame begins ...
            sock.sendall(request[:1])
            time.sleep(0.6)  # ... and ends after it (the listener's deadline is absolute)
            try:
                sock.sendall(request[1:])
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed already: what is expected
            assert closed(sock)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "10", True])
@pytest.mark.parametrize("key", ["idle_timeout", "auth_timeout", "frame_timeout", "producer_expiry",
                                 "producer_expiry_check"])
def test_timeouts_are_checked_at_load(key, value, tmp_path):
    with pytest.raises(ConfigError, match=key):
        settings_from_config({key: value}, "serve.toml")
    if not isinstance(value, (str, bool)):
        with pytest.raises(InvalidArgument, match=key):
            start(tmp_path / "never-created.db", Settings(port=0, **{key: value}))
        assert not (tmp_path / "never-created.db").exists()  # refused before the file is opened
    assert getattr(settings_from_config({key: 2.5}), key) == 2.5


# ---------------------------------------------------------------------- producer state in the core


def _producers(path) -> dict[str, tuple[int, int, list]]:
    """``producers`` rows of stream ``t``: name -> (epoch, seq, recent), read with plain SQL."""
    with sqlstream.open(path) as db:
        rows = db.query("SELECT p.producer, p.epoch, p.seq, p.recent FROM producers p JOIN streams s "
                        "ON s.id = p.stream_id WHERE s.name = 't'").rows
    return {r[0]: (r[1], r[2], json.loads(r[3])) for r in rows}


def test_kafka_producers_use_the_core_producer_state(sqlstream_kafka):
    """The Kafka front's sequence state is the core's ``producers`` (the table
    ``Stream.append_fenced`` and the HTTP front use), not a Kafka table of its own: one
    rule, one place. Before, it lived in kafka_producer_state and ``producers`` stayed empty."""
    p = Producer({"bootstrap.servers": sqlstream_kafka.bootstrap_servers, "enable.idempotence": True,
                  "linger.ms": 0})
    for i in range(3):
        p.produce("t", value=b"v%d" % i)
        p.flush(30)
    [(name, (epoch, seq, recent))] = _producers(sqlstream_kafka.path).items()
    assert name.startswith("kafka:") and epoch == 0 and seq == 2
    assert [(f, last, a, b) for f, last, a, b in recent] == [(0, 0, 0, 1), (1, 1, 1, 2), (2, 2, 2, 3)]
    with sqlstream.open(sqlstream_kafka.path) as db:
        # The Python API sees the same producer, under the same rule: its next number is 3.
        stream = db.stream("t")
        again = stream.append_fenced([b"v2"], producer=name, epoch=0, seq=2, wrap=2**31)
        assert again.duplicate and again.original == range(2, 3)
        assert stream.append_fenced([b"v3"], producer=name, epoch=0, seq=3, wrap=2**31).offsets == range(3, 4)


def test_a_retried_batch_is_recognised_across_the_upgrade_of_an_older_file(tmp_path):
    """The kafka_producers migration moves an older file's kafka_producer_state into ``producers``:
    a batch stored before the upgrade and retried after it is still dropped, answered with
    its offset, and a wrapped sequence range gets its record count right."""
    path = str(tmp_path / "old.db")
    cx.create_private_file(path)
    conn = cx.connect(path, busy_timeout=5.0, synchronous="normal")
    try:
        plan = cx.load_migrations()
        upto = next(i for i, (_v, name, _sql) in enumerate(plan) if "kafka_producers" in name)
        conn.create_scalar_function("sqlstream_sha256", lambda v: None if v is None else hashlib.sha256(
            str(v).encode()).hexdigest(), 1)
        with conn:
            for version, _name, sql in plan[:upto]:
                for _ in conn.execute(sql):
                    pass
                conn.execute(f"PRAGMA user_version = {version}")
        with conn:
            conn.execute("INSERT INTO streams (id, name, created_at) VALUES (1, 't', 1)")
            for off in range(5):
                conn.execute("INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
                             "VALUES (1, ?, ?, 1, ?, 'bytes', ?)", (off, 2 * off, 1, b"x%d" % off))
            conn.execute("UPDATE streams SET next_offset = 5, byte_length = 10 WHERE id = 1")
            conn.execute("INSERT INTO kafka_producers (producer_id, epoch, created_at) VALUES (1000, 0, 1), (1001, 0, 1)")
            conn.execute("INSERT INTO kafka_producer_state (producer_id, stream_id, epoch, batches) VALUES "
                         "(1000, 1, 0, '[[0,2,0],[3,4,3]]'), (1001, 1, 3, '[[2147483647,1,5]]')")
    finally:
        conn.close()
    got = _producers(path)
    assert got == {"kafka:1000": (0, 4, [[0, 2, 0, 3], [3, 4, 3, 5]]), "kafka:1001": (3, 1, [[2147483647, 1, 5, 8]])}
    with sqlstream.open(path) as db:
        store = KafkaStore(db)
        again = store.produce("t", Batch(1000, 0, 3, False, False, 0, [KafkaRecord(1, None, b"x3", ())] * 2))
        assert (again.base_offset, again.duplicate) == (3, True)
        assert store.produce("t", Batch(1000, 0, 5, False, False, 0, [KafkaRecord(1, None, b"x5", ())])).base_offset == 5
        with pytest.raises(KafkaRefused) as gap:
            store.produce("t", Batch(1000, 0, 7, False, False, 0, [KafkaRecord(1, None, b"x7", ())]))
        assert gap.value.code == 45
        assert [r.value for r in db.stream("t").read(0, limit=10)] == [b"x0", b"x1", b"x2", b"x3", b"x4", b"x5"]
        assert sqlstream.maintenance.check(db).ok
        assert db.query("PRAGMA user_version").rows == [(cx.schema_version(),)]
        assert not db.query("SELECT name FROM sqlite_master WHERE name = 'kafka_producer_state'").rows


def test_sequence_numbers_that_wrap_and_cover_several_records(db):
    """Kafka's numbering through the public API: a batch covers ``seq .. last_seq``; with
    ``wrap`` the number after 2**31 - 1 is 0, only a recent batch is a duplicate, and an
    older number is a gap (without ``wrap`` it is a duplicate, as the HTTP front needs)."""
    s = db.create_stream("w")
    top = 2**31 - 1
    # A producer's state taken over at the top of the range (a new epoch starts at 0).
    first = s.append_fenced([b"a", b"b"], producer="k", epoch=0, seq=0, last_seq=1, wrap=2**31)
    assert (first.offsets, first.seq) == (range(0, 2), 1)
    with pytest.raises(SequenceGap) as gap:
        s.append_fenced([b"c"], producer="k", epoch=0, seq=top, last_seq=0, wrap=2**31)
    assert (gap.value.expected, gap.value.received) == (2, top)
    for n in range(3):  # three more batches: (2..3), (4..5), (6..7)
        s.append_fenced([b"x", b"y"], producer="k", epoch=0, seq=2 + 2 * n, last_seq=3 + 2 * n, wrap=2**31)
    dup = s.append_fenced([b"?"], producer="k", epoch=0, seq=4, last_seq=5, wrap=2**31)
    assert dup.duplicate and dup.original == range(4, 6)
    with pytest.raises(SequenceGap):  # not a recent batch's exact range: neither duplicate nor next
        s.append_fenced([b"?"], producer="k", epoch=0, seq=4, last_seq=4, wrap=2**31)
    # Without wrap an older number is a duplicate (original only when it is recent).
    h = s.append_fenced([b"?"], producer="h", epoch=0, seq=0)
    assert not h.duplicate
    for n in range(1, 7):
        s.append_fenced([b"h%d" % n], producer="h", epoch=0, seq=n)
    old = s.append_fenced([b"?"], producer="h", epoch=0, seq=0)
    assert old.duplicate and old.original is None and old.seq == 6
    # Wrapping: a producer at the top of the range continues at 0.
    z = db.create_stream("z")
    z.append_fenced([b"0"], producer="k", epoch=1, seq=0, wrap=2**31)
    with pytest.raises(SequenceGap):
        z.append_fenced([b"x"], producer="k", epoch=1, seq=5, wrap=2**31)
    for bad in ({"seq": 0, "last_seq": 1, "wrap": 1}, {"seq": 3, "last_seq": 2}, {"seq": 0, "wrap": 0}):
        with pytest.raises(InvalidArgument):
            z.append_fenced([b"x"], producer="k", epoch=1, **bad)
    assert [r.value for r in s.read(0, limit=20)][:2] == [b"a", b"b"]


# ---------------------------------------------------------------------- producer expiry

DAY = 24 * 3600.0


def _batch(pid: int, seq: int) -> Batch:
    return Batch(pid, 0, seq, False, False, 0, [KafkaRecord(1, None, b"%d-%d" % (pid, seq), ())])


def test_idle_producers_expire_and_active_ones_never_do(tmp_path):
    """``producer_expiry`` (7 days by default, Kafka's transactional.id.expiration.ms):
    a producer idle that long is forgotten, its id too unless it is the highest; one that
    produced within it keeps its state and its retried batch is still a duplicate."""
    clock = FakeClock()
    with sqlstream.open(tmp_path / "exp.db") as db:
        clock.install(db)
        store = KafkaStore(db)
        store.topic("t", create=True)
        active, idle = store.init_producer()[0], store.init_producer()[0]
        store.produce("t", _batch(active, 0))
        store.produce("t", _batch(idle, 0))
        clock.advance(6 * DAY)
        store.produce("t", _batch(active, 1))
        newest = store.init_producer()[0]      # got its id, produced nothing yet
        assert store.expire_producers(7 * DAY) == (0, 0)  # nobody idle for 7 days yet
        clock.advance(2 * DAY)                 # idle: 8 days; active: 2 days; newest: 2 days
        assert store.expire_producers(7 * DAY) == (1, 1)
        assert set(_producers(tmp_path / "exp.db")) == {f"kafka:{active}"}
        ids = [r[0] for r in db.query("SELECT producer_id FROM kafka_producers ORDER BY producer_id").rows]
        assert ids == [active, newest]
        assert store.produce("t", _batch(active, 1)).duplicate   # the active one's retry: still known
        with pytest.raises(KafkaRefused) as gap:                # ... and its gaps still refused
            store.produce("t", _batch(active, 5))
        assert gap.value.code == 45
        # The forgotten one carries on where it was (Kafka's rule for a producer without
        # state), and is known again from there.
        assert store.produce("t", _batch(idle, 1)).duplicate is False
        assert store.produce("t", _batch(idle, 1)).duplicate
        clock.advance(30 * DAY)                # everybody idle: the highest id stays, ids stay unique
        assert store.expire_producers(7 * DAY) == (2, 1)  # both states; the active id (idle's went before)
        assert [r[0] for r in db.query("SELECT producer_id FROM kafka_producers").rows] == [newest]
        assert store.init_producer()[0] == newest + 1


def test_the_listener_expires_idle_producers_and_their_clients_carry_on(tmp_path):
    """The listener forgets idle producers on its own (every ``producer_expiry_check``);
    a client whose producer was forgotten goes on producing with the sequence numbers it
    had, as against Kafka. Before, the listener refused them (OUT_OF_ORDER_SEQUENCE_NUMBER)
    and librdkafka's idempotent producer stopped with a fatal error."""
    path = tmp_path / "upkeep.db"
    with start(path, Settings(port=0, producer_expiry=DAY, producer_expiry_check=0.05)) as running:
        clock = FakeClock()
        clock.install(running.listener.adb.sync)  # the listener's own Database
        errors: list[object] = []
        p = Producer({"bootstrap.servers": running.bootstrap_servers, "enable.idempotence": True, "linger.ms": 0,
                      "error_cb": lambda err: errors.append(err)})
        delivered: list[object] = []
        for i in range(3):
            p.produce("t", value=b"a%d" % i, on_delivery=lambda err, msg: delivered.append(err))
            assert p.flush(30) == 0
        [producer] = _producers(path)
        clock.advance(2 * DAY)
        wait_for(lambda: not _producers(path), timeout=60, message="the idle producer to be forgotten")
        for i in range(3):
            p.produce("t", value=b"b%d" % i, on_delivery=lambda err, msg: delivered.append(err))
            assert p.flush(30) == 0
        assert errors == [] and delivered == [None] * 6
        assert set(_producers(path)) == {producer}  # known again, from sequence 3 on
        with sqlstream.open(path) as db:
            assert [r.value for r in db.stream("t").read(0, limit=10)] == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]


def test_a_client_that_stops_reading_its_responses_is_closed_as_idle(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sqlstream.kafka")
    path = tmp_path / "unread.db"
    with sqlstream.open(path) as db:
        db.create_stream("big").append(b"x" * (1 << 20))
    with start(path, Settings(port=0, idle_timeout=0.5)) as running:
        with socket.create_connection(("127.0.0.1", running.port)) as unread:
            unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for i in range(64):  # 64 MiB of answers, never read: the listener's writes block
                unread.sendall(frame(1, 4, 10 + i, _fetch_v4("big", 0, 0)))
            wait_for(lambda: "a response unread for 0.5 s (idle_timeout)" in caplog.text, timeout=60)
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            assert _api_versions(sock, 1)  # the listener goes on serving


def test_a_metadata_request_for_a_topic_by_id_only_is_answered(sqlstream_kafka):
    # Metadata v10+ names a topic by id with a null name. The answer's topic name (a
    # kio TopicName, a str subclass) fell to the int default of protocol.build, and
    # writing the response raised TypeError: the connection closed as an internal error.
    import io
    import uuid

    from kio.schema.metadata.v11.request import MetadataRequest, MetadataRequestTopic
    from kio.schema.request_header.v2.header import RequestHeader
    from kio.serial import entity_writer
    from kio.static.primitive import i16, i32

    buf = io.BytesIO()
    entity_writer(RequestHeader)(buf, RequestHeader(request_api_key=i16(3), request_api_version=i16(11),
                                                    correlation_id=i32(5), client_id="t"))
    entity_writer(MetadataRequest)(buf, MetadataRequest(
        topics=(MetadataRequestTopic(topic_id=uuid.uuid4(), name=None),), allow_auto_topic_creation=True,
        include_topic_authorized_operations=False))
    payload = buf.getvalue()
    with socket.create_connection(("127.0.0.1", sqlstream_kafka.port)) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        reply = recv(sock)
    assert reply[:4] == struct.pack(">i", 5)  # answered (correlation id 5), not closed
    from kio.schema.metadata.v11.response import MetadataResponse
    from kio.serial import entity_reader

    response, _ = entity_reader(MetadataResponse)(reply, 5)  # after the correlation id and tagged fields
    (topic,) = response.topics
    assert (topic.error_code.value, topic.name) == (3, "")  # UNKNOWN_TOPIC_OR_PARTITION
