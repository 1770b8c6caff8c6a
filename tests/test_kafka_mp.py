"""The Kafka listener across processes: group members killed and joining, the listener
itself killed under an idempotent producer. Slow (tens of seconds): marked."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

try:
    import kio  # noqa: F401  (the kafka extra; kio needs Python 3.11+)
except ImportError:
    if os.environ.get("CI") and sys.version_info >= (3, 11):
        raise  # in CI the test extra must have installed it
    pytest.skip("the Kafka listener needs the kafka extra (kio: Python 3.11+)", allow_module_level=True)
confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

import sqlstream  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

LOG: list[str] = []  # the stderr of listeners started by _serve

MEMBER = r"""
import sys, signal
from confluent_kafka import Consumer
bs, group, out = sys.argv[1], sys.argv[2], sys.argv[3]
c = Consumer({"bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
c.subscribe(["jobs"])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
with open(out, "a", buffering=1) as f:
    while not stop:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        f.write(f"{m.partition()} {m.offset()} {m.value().decode()}\n")
        c.commit(message=m, asynchronous=False)
c.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(db: Path, config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "sqlstream", "--db", str(db), "serve", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # the listener says when it accepts connections
        if "kafka: listening on" in line:
            # Keep draining its stderr (logged refusals), so a full pipe never blocks it.
            threading.Thread(target=lambda: LOG.extend(proc.stderr or ()), daemon=True).start()
            return proc
    raise AssertionError(f"the listener did not start (exit {proc.wait()})")


def _values(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.split()[2] for line in path.read_text().splitlines() if len(line.split()) == 3]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_group_across_processes_rebalances_on_join_and_kill_and_loses_nothing(tmp_path, sqlstream_kafka):
    bs = sqlstream_kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic("jobs", 3, 1)])["jobs"].result(10)
    producer = Producer({"bootstrap.servers": bs, "linger.ms": 5})

    def produce(start: int, n: int) -> None:
        for i in range(start, start + n):
            producer.produce("jobs", value=str(i).encode(), partition=i % 3)
        assert producer.flush(30) == 0

    outs = {name: tmp_path / f"{name}.txt" for name in "ABCD"}
    members: dict[str, subprocess.Popen[bytes]] = {}

    def member(name: str) -> None:
        members[name] = subprocess.Popen([sys.executable, "-c", MEMBER, bs, "g3", str(outs[name])])

    def seen() -> set[str]:
        return {v for o in outs.values() for v in _values(o)}

    try:
        produce(0, 150)
        member("A")
        member("B")
        _wait(lambda: len(seen()) >= 150, 60, "A and B to consume the first 150")
        member("C")          # joins: the group rebalances over three members
        produce(150, 150)
        _wait(lambda: len(seen()) >= 300, 60, "the group to consume 300")
        members["B"].send_signal(signal.SIGKILL)
        members["B"].wait()
        produce(300, 150)    # B's partitions go to A and C once its session expires
        _wait(lambda: len(seen()) >= 450, 90, "A and C to take over B's partitions")
        assert seen() == {str(i) for i in range(450)}
        for name in "AC":
            members[name].send_signal(signal.SIGTERM)
            members[name].wait(30)
        # A new member starts from the committed offsets: only what comes next.
        member("D")
        produce(450, 30)
        _wait(lambda: len(_values(outs["D"])) >= 30, 60, "D to consume the new records")
        time.sleep(1)
        assert sorted(_values(outs["D"]), key=int) == [str(i) for i in range(450, 480)]
    finally:
        for proc in members.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with sqlstream.open(sqlstream_kafka.path) as db:
        rows = db.query("SELECT partition, stream, offset, lag FROM kafka_consumer_offsets WHERE group_id = 'g3' "
                        "ORDER BY partition").rows
    assert rows == [(0, "jobs/0", 160, 0), (1, "jobs/1", 160, 0), (2, "jobs/2", 160, 0)]


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        # shutdown first: a close() alone does not end a recv() blocked in the other pump.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class _KillingProxy:
    """A TCP proxy in front of the listener that, at the Nth Produce response, SIGKILLs
    the listener instead of passing the response on: the batch is committed in the file
    but the producer never hears so, and retries it on the restarted listener."""

    def __init__(self, upstream: int, kill_at: int, on_kill) -> None:
        self.upstream = upstream
        self.kill_at = kill_at
        self.on_kill = on_kill
        self.produce_responses = 0
        self.kills = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            produce_ids: set[int] = set()
            threading.Thread(target=self._requests, args=(client, up, produce_ids), daemon=True).start()
            threading.Thread(target=self._responses, args=(up, client, produce_ids), daemon=True).start()

    @staticmethod
    def _frame(sock: socket.socket) -> bytes | None:
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                return None
            data += chunk
        (n,) = struct.unpack(">i", data)
        while len(data) < 4 + n:
            chunk = sock.recv(4 + n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _requests(self, client: socket.socket, up: socket.socket, produce_ids: set[int]) -> None:
        try:
            while (frame := self._frame(client)) is not None:
                api_key, _, correlation = struct.unpack_from(">hhi", frame, 4)
                if api_key == 0:
                    produce_ids.add(correlation)
                up.sendall(frame)
        except OSError:
            pass
        _close(client, up)

    def _responses(self, up: socket.socket, client: socket.socket, produce_ids: set[int]) -> None:
        try:
            while (frame := self._frame(up)) is not None:
                (correlation,) = struct.unpack_from(">i", frame, 4)
                if correlation in produce_ids:
                    with self.lock:
                        self.produce_responses += 1
                        kill = self.produce_responses == self.kill_at
                    if kill:
                        self.kills += 1
                        self.on_kill()   # the listener dies with this response unsent
                        break
                client.sendall(frame)
        except OSError:
            pass
        _close(client, up)


def test_an_idempotent_producer_writes_each_record_once_across_a_listener_kill(tmp_path):
    db = tmp_path / "idem.db"
    port = _free_port()
    proxy_holder: list[_KillingProxy] = []
    config = tmp_path / "kafka.toml"
    servers: list[subprocess.Popen[str]] = []

    def kill() -> None:
        servers[-1].send_signal(signal.SIGKILL)
        servers[-1].wait()

    proxy = _KillingProxy(port, kill_at=5, on_kill=kill)
    proxy_holder.append(proxy)
    config.write_text(f'[kafka]\nlisten = "127.0.0.1:{port}"\nadvertised_port = {proxy.port}\n')
    servers.append(_serve(db, config))
    errors: list[object] = []
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{proxy.port}", "enable.idempotence": True,
                         "linger.ms": 5, "batch.num.messages": 100, "message.timeout.ms": 120_000,
                         "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500})
    delivered: list[int] = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append(int(msg.value()))

    n = 2000
    try:
        for i in range(n):
            producer.produce("idem", value=str(i).encode(), on_delivery=on_delivery)
            if i % 100 == 0:
                producer.poll(0.05)
            if proxy.kills and servers[-1].poll() is not None:
                servers.append(_serve(db, config))   # back on the same port, same file
        while producer.flush(0.5) > 0:
            if servers[-1].poll() is not None:
                servers.append(_serve(db, config))
    finally:
        servers[-1].send_signal(signal.SIGTERM)
        servers[-1].wait(30)
    assert proxy.kills == 1
    assert errors == []
    assert sorted(delivered) == list(range(n))
    with sqlstream.open(db) as conn:
        values = [int(r.value) for r in conn.stream("idem").read(0, n + 500)]
    assert values == list(range(n))   # each record once, in order: the retried batch was dropped
