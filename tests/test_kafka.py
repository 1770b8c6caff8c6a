"""The Kafka listener with the real clients (confluent-kafka, kafka-python, aiokafka, kcat).

Every test runs a real listener on a free 127.0.0.1 port over a real file (the
``sqlstream_kafka`` fixture) and checks what Kafka clients and sqlstream's own API see.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest

try:
    import kio  # noqa: F401  (the kafka extra; kio needs Python 3.11+)
except ImportError:
    if os.environ.get("CI") and sys.version_info >= (3, 11):
        raise  # in CI the test extra must have installed it
    pytest.skip("the Kafka listener needs the kafka extra (kio: Python 3.11+)", allow_module_level=True)

from crc32c import crc32c  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

import sqlstream  # noqa: E402
from sqlstream.errors import InvalidArgument  # noqa: E402
from sqlstream.kafka import Settings, start  # noqa: E402
from sqlstream.kafka.records import BatchError, KafkaRecord, decode_batches, encode_batch  # noqa: E402

from helpers_kafka import frame as _frame, recv as _recv  # noqa: E402

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic  # noqa: E402


def _consume(bs: str, topic: str, n: int, group: str | None = None, timeout: float = 30.0) -> list:
    conf = {"bootstrap.servers": bs, "group.id": group or f"g-{uuid.uuid4()}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False}
    c = Consumer(conf)
    c.subscribe([topic])
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append(m)
    finally:
        c.close()
    return got


# ---------------------------------------------------------------------- record batches (pure)

_records = st.lists(st.builds(
    KafkaRecord,
    st.integers(0, 2**41),
    st.none() | st.binary(max_size=20),
    st.none() | st.binary(max_size=200),
    st.lists(st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=10)), max_size=3).map(tuple),
), min_size=1, max_size=20)


@given(_records, st.integers(0, 4), st.integers(0, 2**40))
@settings(max_examples=60, deadline=None)
def test_a_batch_decodes_to_exactly_what_was_encoded_with_every_codec(records, codec, base):
    data = encode_batch(base, records, codec=codec)
    [batch] = decode_batches(data, max_record_bytes=1 << 20, max_batch_bytes=1 << 22)
    assert batch.records == records
    assert batch.codec == codec


def test_damaged_and_oversized_batches_are_refused():
    data = encode_batch(0, [KafkaRecord(1, b"k", b"v" * 100, ())])
    with pytest.raises(BatchError, match="CRC"):
        decode_batches(data[:-1] + bytes([data[-1] ^ 1]), max_record_bytes=1000, max_batch_bytes=10_000)
    with pytest.raises(BatchError):
        decode_batches(data[:-3], max_record_bytes=1000, max_batch_bytes=10_000)
    with pytest.raises(BatchError, match="over the limit"):
        decode_batches(data, max_record_bytes=50, max_batch_bytes=10_000)
    # A zstd bomb: 10 MiB of zeros in a few hundred bytes, refused at the 1 MiB limit.
    bomb = encode_batch(0, [KafkaRecord(1, None, bytes(10 << 20), ())], codec=4)
    assert len(bomb) < 2000
    with pytest.raises(BatchError, match="more than the limit"):
        decode_batches(bomb, max_record_bytes=32 << 20, max_batch_bytes=1 << 20)


# ---------------------------------------------------------------------- clients


def test_confluent_records_keep_key_headers_timestamp_and_null_value_exactly(sqlstream_kafka):
    bs = sqlstream_kafka.bootstrap_servers
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 5})
    sent = [
        (b"text-key", b"v0", [("a", b"1"), ("b", b"2")], 1_700_000_000_123),
        (b"\xff\x00bin", b"v1", [("dup", b"x"), ("dup", b"\xfe"), ("n", None)], 1_600_000_000_001),
        (None, None, [], 1_700_000_000_500),
        (b"", b"", [], 1_700_000_000_400),
    ]
    for key, value, headers, ts in sent:
        p.produce("orders", key=key, value=value, headers=headers, timestamp=ts)
    assert p.flush(30) == 0
    got = _consume(bs, "orders", len(sent))
    assert [(m.key(), m.value(), m.headers() or [], m.timestamp()[1]) for m in got] == \
        [(k, v, h, ts) for k, v, h, ts in sent]
    assert [m.offset() for m in got] == [0, 1, 2, 3]
    # The same records through the Python API: a one-partition topic is the stream `orders`.
    with sqlstream.open(sqlstream_kafka.path) as db:
        records = db.stream("orders").read(0, 10)
        assert [(r.key, r.headers, r.value) for r in records] == [
            ("text-key", {"a": "1", "b": "2"}, b"v0"), (None, {}, b"v1"), (None, {}, b""), ("", {}, b"")]
        # What the chunk rows cannot hold is in kafka_batches, readable with SQL.
        rows = db.query("SELECT base_offset, base_timestamp, timestamps, extras FROM kafka_batches "
                        "ORDER BY base_offset").rows
        extras = {}
        for base, _, _, text in rows:
            for i, e in json.loads(text or "{}").items():
                extras[base + int(i)] = e
        assert extras[1] == {"key": "ff0062696e", "headers": [["dup", "78"], ["dup", "fe"], ["n", None]]}
        assert extras[2] == {"value": None}


def test_records_appended_with_the_python_api_are_fetched_by_kafka_consumers(sqlstream_kafka):
    with sqlstream.open(sqlstream_kafka.path) as db:
        s = db.create_stream("events")
        s.append(b"raw", key="k1", headers={"src": "py"})
        s.append({"n": 1})
        s.append("text")
    got = _consume(sqlstream_kafka.bootstrap_servers, "events", 3)
    assert [(m.offset(), m.key(), m.value(), m.headers()) for m in got] == [
        (0, b"k1", b"raw", [("src", b"py")]), (1, None, b'{"n":1}', None), (2, None, b"text", None)]
    assert all(m.timestamp()[1] > 1_600_000_000_000 for m in got)


def test_kafka_python_produces_and_consumes_in_a_group_and_commits(sqlstream_kafka):
    kafka = pytest.importorskip("kafka")
    bs = sqlstream_kafka.bootstrap_servers
    p = kafka.KafkaProducer(bootstrap_servers=bs, compression_type="gzip")
    for i in range(20):
        p.send("kp", key=b"k%d" % i, value=b"v%d" % i, headers=[("h", b"\xff")])
    p.flush()
    p.close()
    c = kafka.KafkaConsumer("kp", bootstrap_servers=bs, group_id="kpg", auto_offset_reset="earliest",
                            enable_auto_commit=False, consumer_timeout_ms=10_000)
    got = []
    for m in c:
        got.append((m.offset, m.key, m.value, m.headers))
        if len(got) == 20:
            break
    c.commit()
    c.close()
    assert got == [(i, b"k%d" % i, b"v%d" % i, [("h", b"\xff")]) for i in range(20)]
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert db.query("SELECT group_id, topic, partition, stream, offset, lag FROM kafka_consumer_offsets").rows \
            == [("kpg", "kp", 0, "kp", 20, 0)]


def test_aiokafka_idempotent_producer_and_group_consumer(sqlstream_kafka):
    aiokafka = pytest.importorskip("aiokafka")
    bs = sqlstream_kafka.bootstrap_servers

    async def main():
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=bs, enable_idempotence=True, compression_type="zstd")
        await p.start()
        try:
            for i in range(30):
                await p.send("ak", key=b"k%d" % (i % 3), value=b"v%d" % i)
            await p.flush()
        finally:
            await p.stop()
        c = aiokafka.AIOKafkaConsumer("ak", bootstrap_servers=bs, group_id="akg", auto_offset_reset="earliest",
                                      enable_auto_commit=False)
        await c.start()
        got = []
        try:
            async with asyncio.timeout(30):
                async for m in c:
                    got.append((m.offset, m.value))
                    if len(got) == 30:
                        break
            await c.commit()
        finally:
            await c.stop()
        return got

    got = asyncio.run(main())
    assert got == [(i, b"v%d" % i) for i in range(30)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_is_accepted_and_served(sqlstream_kafka, codec):
    bs = sqlstream_kafka.bootstrap_servers
    p = Producer({"bootstrap.servers": bs, "compression.type": codec, "linger.ms": 20})
    values = [(b"%05d" % i) * 40 for i in range(200)]
    for v in values:
        p.produce(codec, value=v)
    assert p.flush(30) == 0
    got = _consume(bs, codec, len(values))
    assert [m.value() for m in got] == values
    with sqlstream.open(sqlstream_kafka.path) as db:  # stored per record, uncompressed
        assert [r.value for r in db.stream(codec).read(0, 300)] == values


def test_list_offsets_by_timestamp_earliest_and_latest(sqlstream_kafka):
    bs = sqlstream_kafka.bootstrap_servers
    p = Producer({"bootstrap.servers": bs})
    stamps = [1_000_000, 3_000_000, 2_000_000, 5_000_000, 4_000_000]  # not in order, as Kafka allows
    for i, ts in enumerate(stamps):
        p.produce("times", value=b"%d" % i, timestamp=ts)
        p.flush(10)
    c = Consumer({"bootstrap.servers": bs, "group.id": "t"})
    try:
        def at(ts):
            [tp] = c.offsets_for_times([TopicPartition("times", 0, ts)], timeout=10)
            return tp.offset

        assert at(500_000) == 0
        assert at(2_000_000) == 1      # the first record at or after 2,000,000 is offset 1 (3,000,000)
        assert at(3_500_000) == 3
        assert at(4_500_000) == 3
        assert at(5_000_001) == -1     # none: the end
        assert at(2**62) == -1         # past SQLite's integers in µs: none (was an OverflowError, connection dropped)
        low, high = c.get_watermark_offsets(TopicPartition("times", 0), timeout=10)
        assert (low, high) == (0, 5)
    finally:
        c.close()


def test_admin_creates_grows_and_deletes_topics_as_streams(sqlstream_kafka):
    bs = sqlstream_kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bs})
    for f in admin.create_topics([NewTopic("multi", 3, 1), NewTopic("single", 1, 1)]).values():
        f.result(10)
    with pytest.raises(confluent_kafka.KafkaException, match="TOPIC_ALREADY_EXISTS"):
        admin.create_topics([NewTopic("multi", 1, 1)])["multi"].result(10)
    admin.create_partitions([NewPartitions("single", 2)])["single"].result(10)
    md = admin.list_topics(timeout=10)
    assert {n: len(t.partitions) for n, t in md.topics.items()} == {"multi": 3, "single": 2}
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert sorted(i.name for i in db.streams()) == ["multi/0", "multi/1", "multi/2", "single", "single/1"]
    p = Producer({"bootstrap.servers": bs})
    for part in range(3):
        p.produce("multi", value=b"p%d" % part, partition=part)
    assert p.flush(10) == 0
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert [db.stream(f"multi/{i}").read(0)[0].value for i in range(3)] == [b"p0", b"p1", b"p2"]
    admin.delete_topics(["multi"])["multi"].result(10)
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert sorted(i.name for i in db.streams()) == ["single", "single/1"]


def test_kcat_lists_and_consumes(sqlstream_kafka):
    kcat = shutil.which("kcat")
    if kcat is None:
        if os.environ.get("CI"):
            pytest.fail("kcat is missing (.ci/run installs the Debian package kcat)")
        pytest.skip("kcat is not installed (Debian package kcat)")
    bs = sqlstream_kafka.bootstrap_servers
    with sqlstream.open(sqlstream_kafka.path) as db:
        db.create_stream("kc").extend([b"one", b"two", b"three"])
    listing = subprocess.run([kcat, "-b", bs, "-L"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert 'topic "kc" with 1 partitions' in listing.stdout
    out = subprocess.run([kcat, "-b", bs, "-C", "-t", "kc", "-e", "-f", "%o:%s\\n"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0:one", "1:two", "2:three"]


# ---------------------------------------------------------------------- safety


def test_a_non_loopback_address_needs_sasl_or_insecure(tmp_path):
    with pytest.raises(InvalidArgument, match="non-loopback"):
        start(tmp_path / "x.db", Settings(host="0.0.0.0", port=0))
    running = start(tmp_path / "x.db", Settings(host="0.0.0.0", port=0, sasl_password="pw"))
    running.close()


def test_sasl_plain_lets_the_right_password_in_only(tmp_path):
    running = start(tmp_path / "s.db", Settings(port=0, sasl_username="app", sasl_password="s3cret"))
    try:
        base = {"bootstrap.servers": running.bootstrap_servers, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN", "sasl.username": "app"}
        p = Producer({**base, "sasl.password": "s3cret"})
        p.produce("secure", value=b"ok")
        assert p.flush(20) == 0
        errors = []
        bad = Producer({**base, "sasl.password": "wrong", "message.timeout.ms": 3000,
                        "error_cb": lambda e: errors.append(e)})
        bad.produce("secure", value=b"no")
        assert bad.flush(10) == 1 or errors  # never delivered
        assert any("uthentication" in str(e) for e in errors)
    finally:
        running.close()
    with sqlstream.open(tmp_path / "s.db") as db:
        assert [r.value for r in db.stream("secure").read(0)] == [b"ok"]


def test_malformed_frames_are_answered_or_closed_with_a_logged_reason(sqlstream_kafka, caplog):
    port = sqlstream_kafka.port
    caplog.set_level(logging.INFO, logger="sqlstream.kafka")
    # An API key nobody serves: the connection is closed, the reason logged.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_frame(9999, 0, 7))
        assert _recv(s) == b""
    # ApiVersions at a version from the future: answered (v0, UNSUPPORTED_VERSION, the table).
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_frame(18, 99, 8))
        reply = _recv(s)
        assert struct.unpack(">ih", reply[:6]) == (8, 35)
    # A Metadata version not served: answered per API when its schema has an error code,
    # otherwise closed; a frame larger than the limit: closed.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(struct.pack(">i", 2**31 - 1))
        assert _recv(s) == b""
    # Garbage inside a known API: closed, logged, and the listener goes on serving.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_frame(3, 12, 9, b"\xff\xff\xff"))
        assert _recv(s) == b""
    text = caplog.text
    assert "API key 9999 is not supported" in text
    assert "max_request_bytes" in text
    assert "does not decode" in text
    admin = AdminClient({"bootstrap.servers": sqlstream_kafka.bootstrap_servers})
    assert admin.list_topics(timeout=10).brokers


def test_connections_beyond_the_limit_are_refused(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sqlstream.kafka")
    running = start(tmp_path / "c.db", Settings(port=0, max_connections=2))
    try:
        held = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(2)]
        for i, h in enumerate(held):  # both are being served (an ApiVersions answered)
            h.sendall(_frame(18, 0, i))
            assert struct.unpack(">ih", _recv(h)[:6]) == (i, 0)
        with socket.create_connection(("127.0.0.1", running.port)) as s:
            s.settimeout(60)
            assert s.recv(1) == b""
        assert "max_connections" in caplog.text
        for h in held:
            h.close()
    finally:
        running.close()


def test_small_compressed_batches_cannot_each_inflate_to_the_bound():
    """The bound is on the decompressed batches of a record set together: 200 copies of a
    zstd batch of ~1 MiB (a few hundred bytes each) used to decode to 200 MiB held at once
    with a 1 MiB bound (a compression bomb in one small Produce)."""
    value = b"\0" * ((1 << 18) - 200)
    batch = encode_batch(0, [KafkaRecord(0, None, value, ())] * 4, codec=4)
    [one] = decode_batches(batch, max_record_bytes=1 << 20, max_batch_bytes=1 << 20)
    assert len(one.records) == 4
    with pytest.raises(BatchError, match="limit"):
        decode_batches(batch * 200, max_record_bytes=1 << 20, max_batch_bytes=1 << 20)
    with pytest.raises(BatchError, match="limit"):
        decode_batches(batch * 2, max_record_bytes=1 << 20, max_batch_bytes=1 << 20)


def _produce_v3(topic: str, record_set: bytes) -> bytes:
    name = topic.encode()
    return (struct.pack(">hhi", -1, 1, 30000) + struct.pack(">ih", 1, len(name)) + name
            + struct.pack(">iii", 1, 0, len(record_set)) + record_set)


def _partition_error(reply: bytes) -> int:
    """The first partition's error code in a Produce v3 response (after the correlation id)."""
    pos = 4 + 4
    (n,) = struct.unpack_from(">h", reply, pos)
    pos += 2 + n + 4
    return int(struct.unpack_from(">ih", reply, pos)[1])


def test_a_record_set_refused_half_way_stores_none_of_it(sqlstream_kafka):
    """[good batch, transactional batch] for one partition: refused whole. Before, the
    good batch was stored and the error answered, so the client's retry stored it again."""
    good = encode_batch(0, [KafkaRecord(0, None, b"order-1", ())])
    bad = bytearray(encode_batch(0, [KafkaRecord(0, None, b"x", ())]))
    struct.pack_into(">h", bad, 21, 0x10)  # attributes: transactional
    struct.pack_into(">I", bad, 17, crc32c(bytes(bad[21:])))
    for _attempt in range(2):
        with socket.create_connection(("127.0.0.1", sqlstream_kafka.port)) as sock:
            sock.sendall(_frame(0, 3, 7, _produce_v3("halfway", good + bytes(bad))))
            assert _partition_error(_recv(sock)) == 87  # INVALID_RECORD
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert db.stream("halfway").read(0) == []


def _closed(sock: socket.socket, data: bytes) -> bool:
    """Whether the listener closes the connection instead of answering ``data``."""
    try:
        sock.sendall(data)
        return _recv(sock) == b""
    except ConnectionResetError:  # it closed before or while this was sent
        return True


def test_sasl_closes_the_connection_after_a_failed_authentication_and_bounds_earlier_frames(tmp_path):
    running = start(tmp_path / "g.db", Settings(port=0, sasl_password="pw"))
    try:
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            sock.sendall(_frame(17, 1, 1, struct.pack(">h", 5) + b"PLAIN"))
            assert _recv(sock)
            token = b"\0user\0wrong"
            sock.sendall(_frame(36, 1, 2, struct.pack(">i", len(token)) + token))
            assert _recv(sock)  # answered (SASL_AUTHENTICATION_FAILED) ...
            assert _closed(sock, _frame(18, 0, 3))  # ... and closed: no second guess on this connection
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            # A frame larger than any pre-authentication request is refused by its size,
            # before its bytes are read (they were buffered up to max_request_bytes).
            assert _closed(sock, struct.pack(">i", 600 * 1024))
    finally:
        running.close()


def test_transactions_are_refused_with_an_error(sqlstream_kafka):
    p = Producer({"bootstrap.servers": sqlstream_kafka.bootstrap_servers, "transactional.id": "tx-1"})
    # librdkafka keeps asking for a transaction coordinator until the call's timeout, so
    # the refusal surfaces as that timeout; a listener that granted one would answer in
    # milliseconds, so 2 s tells the two apart (10 s waited 8 s more for the same answer).
    with pytest.raises(confluent_kafka.KafkaException):
        p.init_transactions(2)


# ---------------------------------------------------------------------- idempotence in the file


def test_a_retried_batch_is_dropped_even_after_a_restart(tmp_path):
    from sqlstream.kafka.records import Batch
    from sqlstream.kafka.store import KafkaRefused, KafkaStore

    path = tmp_path / "idem.db"
    with sqlstream.open(path) as db:
        store = KafkaStore(db)
        store.topic("t", create=True)
        pid, epoch = store.init_producer()

        def batch(seq, n):
            return Batch(pid, epoch, seq, False, False, 0, [KafkaRecord(1, None, b"x%d" % (seq + i), ())
                                                           for i in range(n)])

        assert store.produce("t", batch(0, 3)).base_offset == 0
        assert store.produce("t", batch(3, 2)).base_offset == 3
        with pytest.raises(KafkaRefused) as gap:
            store.produce("t", batch(7, 1))
        assert gap.value.code == 45
    with sqlstream.open(path) as db:  # a new process would see the same state
        store = KafkaStore(db)
        again = store.produce("t", batch(3, 2))
        assert (again.base_offset, again.duplicate) == (3, True)
        assert store.produce("t", batch(5, 1)).base_offset == 5
        assert [r.value for r in db.stream("t").read(0)] == [b"x0", b"x1", b"x2", b"x3", b"x4", b"x5"]


def test_the_fixture_starts_a_listener_for_a_temporary_file(sqlstream_kafka):
    host, port = sqlstream_kafka.bootstrap_servers.split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert os.path.exists(sqlstream_kafka.path)


def test_acks_zero_produces_without_responses(sqlstream_kafka):
    kafka = pytest.importorskip("kafka")
    p = kafka.KafkaProducer(bootstrap_servers=sqlstream_kafka.bootstrap_servers, acks=0)
    for i in range(50):
        p.send("fire", value=b"%d" % i)
    p.flush()
    p.close()
    got = _consume(sqlstream_kafka.bootstrap_servers, "fire", 50)
    assert [m.value() for m in got] == [b"%d" % i for i in range(50)]


def test_a_long_poll_fetch_is_woken_by_a_commit_in_another_process(sqlstream_kafka):
    bs = sqlstream_kafka.bootstrap_servers
    with sqlstream.open(sqlstream_kafka.path) as db:
        db.create_stream("wake")
    # The fetch waits up to 5 minutes for data: only the wake-up on commit can end it
    # before the consumer's own deadline below.
    c = Consumer({"bootstrap.servers": bs, "group.id": "w", "auto.offset.reset": "earliest",
                  "fetch.wait.max.ms": 300_000, "fetch.min.bytes": 1})
    c.assign([TopicPartition("wake", 0, 0)])
    try:
        assert c.poll(1.0) is None           # the fetch is now parked in the listener
        code = (f"import sqlstream; db = sqlstream.open({sqlstream_kafka.path!r}); "
                "db.stream('wake').append(b'from another process'); db.close()")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        m = None
        deadline = time.monotonic() + 60
        while m is None and time.monotonic() < deadline:
            m = c.poll(0.5)
        assert m is not None and m.value() == b"from another process"
    finally:
        c.close()


# ---------------------------------------------------------------------- configuration and CLI


def test_the_kafka_table_is_checked_strictly(tmp_path):
    from sqlstream.kafka.config import settings_from_config
    from sqlstream.streaming.config import ConfigError, load_config

    path = tmp_path / "s.toml"
    path.write_text('[kafka]\nlisten = "127.0.0.1:0"\nauto_create_topics = false\npassword = "pw"\n')
    config = load_config(path)
    settings = settings_from_config(config.kafka, config.path)
    assert (settings.host, settings.port, settings.auto_create_topics, settings.sasl) == ("127.0.0.1", 0, False, True)
    for bad, match in [("lisen = 'x'", "unknown option"), ("max_connections = 'ten'", "must be an integer"),
                       ("listen = 'nohost'", "HOST:PORT"), ("default_partitions = 0", "at least 1"),
                       # Accepted before, then every client was sent to a port TCP does not
                       # have, and every auto-created topic was refused (at most 10,000).
                       ("advertised_port = 70000", "at most 65,535"),
                       ("default_partitions = 10001", "at most 10,000"),
                       (f"default_partitions = {10**40}", "a number of 41 digits")]:
        path.write_text(f"[kafka]\n{bad}\n")
        with pytest.raises(ConfigError, match=match):
            settings_from_config(load_config(path).kafka, str(path))


def test_topics_are_not_created_on_first_use_when_turned_off(tmp_path):
    running = start(tmp_path / "a.db", Settings(port=0, auto_create_topics=False))
    try:
        p = Producer({"bootstrap.servers": running.bootstrap_servers, "message.timeout.ms": 2000})
        reports = []
        p.produce("nowhere", value=b"x", on_delivery=lambda err, msg: reports.append(err))
        p.flush(10)
        assert len(reports) == 1 and reports[0] is not None   # never delivered: no such topic
    finally:
        running.close()
    with sqlstream.open(tmp_path / "a.db") as db:
        assert db.streams() == []


def test_serve_refuses_an_open_address_and_needs_something_to_serve(tmp_path):
    from sqlstream.cli.main import main

    db = str(tmp_path / "c.db")
    out = subprocess.run([sys.executable, "-m", "sqlstream", "--db", db, "serve", "--kafka", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "non-loopback" in out.stderr and "Traceback" not in out.stderr
    assert main(["--db", db, "serve"]) == 1


def test_two_kafka_python_consumers_share_a_group(sqlstream_kafka):
    kafka = pytest.importorskip("kafka")
    bs = sqlstream_kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic("shared", 2, 1)])["shared"].result(10)
    p = Producer({"bootstrap.servers": bs})
    for i in range(40):
        p.produce("shared", value=b"%d" % i, partition=i % 2)
    assert p.flush(10) == 0
    got: dict[int, list[bytes]] = {0: [], 1: []}
    shared: dict[int, bool] = {0: False, 1: False}   # each member held exactly one partition
    stop = threading.Event()

    def member(n: int) -> None:
        # A session timeout that a loaded machine cannot exceed between a leader's join
        # and its assignment (no heartbeats meanwhile, as in Kafka's clients).
        c = kafka.KafkaConsumer("shared", bootstrap_servers=bs, group_id="pair", auto_offset_reset="earliest",
                                session_timeout_ms=30_000, heartbeat_interval_ms=300)
        try:
            while not stop.is_set():
                # Not a short poll: kafka-python 3.0 returning from poll() while its leader's
                # SyncGroup answer is in flight sometimes never applies that assignment
                # (seen with poll(200): the leader held nothing for a minute).
                for records in c.poll(1000).values():
                    got[n].extend(r.value for r in records)
                if len(c.assignment()) == 1:
                    shared[n] = True
        finally:
            c.close()

    threads = [threading.Thread(target=member, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (all(shared.values()) and len(got[0]) + len(got[1]) >= 40):
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(60)
    assert shared == {0: True, 1: True}   # the second member's join split the partitions
    assert sorted(set(got[0] + got[1]), key=int) == [b"%d" % i for i in range(40)]


def test_kafka_facts_of_trimmed_records_go_with_them(sqlstream_kafka):
    p = Producer({"bootstrap.servers": sqlstream_kafka.bootstrap_servers, "linger.ms": 0})
    for i in range(5):
        p.produce("trimmed", value=b"%d" % i, timestamp=1_000 + i)
        p.flush(10)
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert db.query("SELECT count(*) FROM kafka_batches").rows == [(5,)]
        db.trim("trimmed", before_offset=3)
    p.produce("trimmed", value=b"5", timestamp=2_000)
    p.flush(10)
    with sqlstream.open(sqlstream_kafka.path) as db:
        assert db.query("SELECT base_offset FROM kafka_batches ORDER BY 1").rows == [(3,), (4,), (5,)]
    got = _consume(sqlstream_kafka.bootstrap_servers, "trimmed", 3)
    assert [(m.offset(), m.timestamp()[1]) for m in got] == [(3, 1_003), (4, 1_004), (5, 2_000)]


def test_a_member_waiting_for_its_assignment_outlives_its_session_timeout():
    """A follower's heartbeats queue behind its pending SyncGroup on its connection: while
    the leader takes longer than the session timeout to assign, the follower stays."""
    from sqlstream.kafka.groups import Coordinator

    async def main():
        coordinator = Coordinator(initial_delay=0.05)
        coordinator.start()
        try:
            protocols = [("range", b"meta")]
            joins = [asyncio.create_task(coordinator.join("g", "", None, f"c{i}", "h", 1000, 1000, "consumer",
                                                          protocols, require_known_member=False))
                     for i in range(2)]
            a, b = await asyncio.gather(*joins)
            leader, follower = (a, b) if a.members else (b, a)
            waiting = asyncio.create_task(coordinator.sync("g", follower.member_id, follower.generation, []))
            for _ in range(8):  # 1.6 s, longer than the 1 s session timeout; the leader heartbeats
                await asyncio.sleep(0.2)
                coordinator.heartbeat("g", leader.member_id, leader.generation)
            assignments = [(leader.member_id, b"L"), (follower.member_id, b"F")]
            await coordinator.sync("g", leader.member_id, leader.generation, assignments)
            assert (await waiting)[2] == b"F"
        finally:
            coordinator.stop()

    asyncio.run(main())


_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
_kafka_records = st.lists(st.builds(
    KafkaRecord,
    st.integers(0, 2**42),
    st.none() | st.binary(max_size=12) | _texts.map(str.encode),
    st.none() | st.binary(max_size=40),
    st.lists(st.tuples(_texts, st.none() | st.binary(max_size=6) | _texts.map(str.encode)),
             max_size=4).map(tuple),
), min_size=1, max_size=12)


@given(st.lists(_kafka_records, min_size=1, max_size=4))
@settings(max_examples=40, deadline=None)
def test_the_mapping_gives_back_every_produced_record_exactly(tmp_path_factory, batches):
    from sqlstream.kafka.records import Batch
    from sqlstream.kafka.store import KafkaStore

    path = tmp_path_factory.mktemp("map") / "m.db"
    with sqlstream.open(path) as db:
        store = KafkaStore(db)
        store.topic("t", create=True)
        sent = []
        for records in batches:
            store.produce("t", Batch(-1, -1, -1, False, False, 0, records))
            sent.extend(records)
        got = store.read("t", 0, 1 << 20)
        assert [KafkaRecord(*r[1:]) for r in got.records] == sent
        assert [r[0] for r in got.records] == list(range(len(sent)))
        # And the Python API sees a UTF-8 key as its text, other keys as None.
        keys = [r.key for r in db.stream("t").read(0, 100)]
        expected = []
        for r in sent:
            try:
                expected.append(None if r.key is None else r.key.decode("utf-8"))
            except UnicodeDecodeError:
                expected.append(None)
        assert keys == expected


def test_a_fetch_stays_within_fetch_max_bytes_across_partitions(sqlstream_kafka):
    # Kafka returns a record over the budget only as the first record of the first
    # non-empty partition (KIP-74). The listener gave every partition its first record
    # once the budget was spent, so a response to fetch.max.bytes=1000 over 6 partitions
    # of 900-byte records was ~6 KB: librdkafka refuses a response above
    # receive.message.max.bytes and retried the same fetch for ever (0 records).
    bs = sqlstream_kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bs})
    for f in admin.create_topics([NewTopic("wide", 6, 1)]).values():
        f.result()
    with sqlstream.open(sqlstream_kafka.path) as db:
        for partition in range(6):
            db.stream(f"wide/{partition}").extend([b"%d" % partition + b"x" * 899] * 3)
    c = Consumer({"bootstrap.servers": bs, "group.id": f"g-{uuid.uuid4()}", "enable.auto.commit": False,
                  "fetch.max.bytes": 1000, "message.max.bytes": 1000, "receive.message.max.bytes": 1512,
                  "max.partition.fetch.bytes": 1000})
    c.assign([TopicPartition("wide", partition, 0) for partition in range(6)])
    got: list[tuple[int, int]] = []
    deadline = time.monotonic() + 60  # gives up (fails) rather than hangs; not a speed bound
    try:
        while len(got) < 18 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            assert m.value()[:1] == b"%d" % m.partition()
            got.append((m.partition(), m.offset()))
    finally:
        c.close()
    assert sorted(got) == [(partition, offset) for partition in range(6) for offset in range(3)]


def test_keys_and_headers_count_in_the_fetch_budget(sqlstream_kafka):
    # The budget counted values only: 50 records of a 1-byte value, a 5,000-byte key and
    # a 3,000-byte header answered a 20,000-byte fetch.max.bytes with ~400 KB, which
    # librdkafka refuses (receive.message.max.bytes): the consumer never got a record.
    with sqlstream.open(sqlstream_kafka.path) as db:
        s = db.create_stream("keyed")
        for _ in range(50):
            s.append(b"v", key="k" * 5000, headers={"h": "y" * 3000})
    c = Consumer({"bootstrap.servers": sqlstream_kafka.bootstrap_servers, "group.id": f"g-{uuid.uuid4()}",
                  "enable.auto.commit": False, "fetch.max.bytes": 20000, "message.max.bytes": 20000,
                  "receive.message.max.bytes": 20512, "max.partition.fetch.bytes": 20000})
    c.assign([TopicPartition("keyed", 0, 0)])
    got: list[int] = []
    deadline = time.monotonic() + 60  # gives up (fails) rather than hangs; not a speed bound
    try:
        while len(got) < 50 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            assert (m.key(), m.value()) == (b"k" * 5000, b"v")
            got.append(m.offset())
    finally:
        c.close()
    assert got == list(range(50))


def test_list_offsets_for_a_time_past_sqlites_integers_finds_none(tmp_path):
    """A ListOffsets timestamp is any int64 of ms; in µs it overflowed SQLite's integers:
    OverflowError, the listener dropped the client's connection (failed before the fix)."""
    from sqlstream.kafka.store import KafkaStore

    with sqlstream.open(str(tmp_path / "t.db")) as db:
        db.create_stream("t").append(b"x")
        store = KafkaStore(db)
        assert store.offset_for_time("t", 0) is not None
        for ts in (2**62, 2**63 - 1):
            assert store.offset_for_time("t", ts) is None


@pytest.mark.parametrize("damage", [
    "'{bad'", "'[1]'", "CAST(X'7B22FF223A2261227D' AS TEXT)",  # not JSON, not an object, not UTF-8
])
def test_a_fetch_reaching_headers_damaged_by_sql_ends_before_them(tmp_path, damage):
    """Headers plain SQL damaged made every fetch that reached the record fail with a raw
    JSONDecodeError/AttributeError/UnicodeDecodeError (a whole page: the records before
    it were not answered either): the listener dropped the client's connection at every
    retry. Now the fetch answers the records before it; one at it raises DamagedRecord
    (KAFKA_STORAGE_ERROR for that partition), and the records after it are readable."""
    import apsw

    from sqlstream.errors import DamagedRecord
    from sqlstream.kafka.store import KafkaStore

    path = tmp_path / "h.db"
    with sqlstream.open(path) as db:
        s = db.create_stream("t")
        for i in range(5):
            s.append(b"v%d" % i, key="k", headers={"h": "x"})
    conn = apsw.Connection(str(path))
    conn.execute(f"UPDATE chunks SET headers = {damage} WHERE offset = 2")
    conn.close()
    with sqlstream.open(path) as db:
        store = KafkaStore(db)
        got = store.read("t", 0, 1 << 20)
        assert [(r[0], r[3], r[4]) for r in got.records] == [(0, b"v0", (("h", b"x"),)), (1, b"v1", (("h", b"x"),))]
        with pytest.raises(DamagedRecord, match="record 2 of stream 't'"):
            store.read("t", 2, 1 << 20)
        assert [r[0] for r in store.read("t", 3, 1 << 20).records] == [3, 4]
