"""Group commit of concurrent POSTs (``AsyncDatabase.run_grouped``), with real HTTP clients.

POSTs that wait for the database thread together are stored in one transaction, each in
a savepoint: one commit (one fsync under ``synchronous="full"``) for the group, every POST
answered only after it. To build a group on purpose the tests hold the server's database
thread with a job of their own, queue the POSTs one by one (each from its own client,
waiting until the server has queued it, so their order is known), then let go. Records
written by one commit carry one ``txn`` number: that is how a test sees the group.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import sqlstream  # noqa: E402
import sqlstream.aio  # noqa: E402
from sqlstream.http import HttpConfig  # noqa: E402
from sqlstream.http import protocol as p  # noqa: E402
from sqlstream.http.server import HttpServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(db_path: str) -> Iterator[HttpServer]:
    with sqlstream.open(db_path):
        pass
    srv = HttpServer(db_path, "127.0.0.1", 0, HttpConfig())
    srv.start()
    yield srv
    srv.stop(10)


class Group:
    """POSTs queued behind a held database thread, in a known order, then let go together."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        assert server.loop is not None
        self.adb: sqlstream.aio.AsyncDatabase = asyncio.run_coroutine_threadsafe(server.app.db(), server.loop).result(10)
        self.gate = threading.Event()
        self.held = asyncio.run_coroutine_threadsafe(self.adb.run_sync(self.gate.wait), server.loop)
        self.threads: list[threading.Thread] = []
        self.answers: list[httpx.Response | BaseException | None] = []

    def post(self, path: str, body: bytes, ctype: str = "text/plain", **headers: str) -> None:
        """Send one POST from a client of its own; return once the server has queued it."""
        index = len(self.answers)
        self.answers.append(None)

        def send() -> None:
            try:
                with httpx.Client(base_url=self.server.url + "/v1/stream", timeout=60) as c:
                    self.answers[index] = c.post(path, content=body, headers={"content-type": ctype, **headers})
            except BaseException as exc:  # noqa: BLE001 - looked at by the test
                self.answers[index] = exc

        thread = threading.Thread(target=send)
        thread.start()
        self.threads.append(thread)
        try:
            for _ in range(3000):  # the mechanism, not the time: wait until it is queued
                if self.adb.grouped_waiting == index + 1:
                    return
                assert thread.is_alive(), self.answers[index]
                time.sleep(0.01)
            raise AssertionError(f"the server did not queue POST {index}")
        except BaseException:
            self.gate.set()  # else the server's database thread stays held
            raise

    def release(self) -> list[httpx.Response]:
        """Let the database thread go; every answer, in the order the POSTs were queued."""
        self.gate.set()
        self.held.result(10)
        for thread in self.threads:
            thread.join(60)
        assert all(isinstance(a, httpx.Response) for a in self.answers), self.answers
        return [a for a in self.answers if isinstance(a, httpx.Response)]


def _records(path: str, name: str) -> list[sqlstream.Record]:
    with sqlstream.open(path) as db:
        return db.stream(name).read(0, limit=1000)


def test_posts_queued_together_commit_in_one_transaction_and_get_their_own_offsets(
        server: HttpServer, db_path: str) -> None:
    with httpx.Client(base_url=server.url + "/v1/stream") as c:
        assert c.put("/g", headers={"content-type": "text/plain"}).status_code == 201
        assert c.post("/g", content=b"before", headers={"content-type": "text/plain"}).status_code == 204
    group = Group(server)
    for i in range(6):
        group.post("/g", f"m{i}".encode())
    answers = group.release()
    assert [a.status_code for a in answers] == [204] * 6
    # Each POST's answer names the end of its own records, in the order they were queued.
    assert [p.parse_offset(a.headers[p.NEXT_OFFSET]).position for a in answers] == list(range(2, 8))
    records = _records(db_path, "g")
    assert [r.value for r in records] == ["before"] + [f"m{i}" for i in range(6)]
    assert [r.offset for r in records] == list(range(7))
    assert len({r.txn for r in records[1:]}) == 1  # one commit for the six
    assert records[0].txn != records[1].txn


def test_a_refused_post_in_a_group_leaves_the_others_and_checks_see_earlier_members(
        server: HttpServer, db_path: str) -> None:
    with httpx.Client(base_url=server.url + "/v1/stream") as c:
        assert c.put("/f", headers={"content-type": "text/plain"}).status_code == 201
    prod = {p.PRODUCER_ID: "up", p.PRODUCER_EPOCH: "0"}
    group = Group(server)
    group.post("/f", b"p0", **prod, **{p.PRODUCER_SEQ: "0"})  # stored
    group.post("/f", b"x1")  # stored
    group.post("/f", b"p0", **prod, **{p.PRODUCER_SEQ: "0"})  # a retry of the first: duplicate
    group.post("/f", b"p2", **prod, **{p.PRODUCER_SEQ: "2"})  # seq 1 is next: a gap
    group.post("/f", b"w-b", **{p.SEQ: "b"})  # stored
    group.post("/f", b"w-a", **{p.SEQ: "a"})  # below the "b" of the same group: regression
    group.post("/f", b"{}", ctype="application/json")  # wrong content type
    group.post("/f", b"p1", **prod, **{p.PRODUCER_SEQ: "1"})  # stored: follows the first
    answers = group.release()
    assert [a.status_code for a in answers] == [200, 204, 204, 409, 204, 409, 409, 200]
    assert answers[2].headers[p.PRODUCER_SEQ] == "0"
    assert answers[3].headers[p.PRODUCER_EXPECTED_SEQ] == "1" and answers[3].headers[p.PRODUCER_RECEIVED_SEQ] == "2"
    assert answers[7].headers[p.PRODUCER_SEQ] == "1"
    records = _records(db_path, "f")
    assert [(r.offset, r.value) for r in records] == [(0, "p0"), (1, "x1"), (2, "w-b"), (3, "p1")]
    assert len({r.txn for r in records}) == 1
    assert p.parse_offset(answers[7].headers[p.NEXT_OFFSET]).position == 4
    with sqlstream.open(db_path) as db:  # the producer's state is the group's last word
        retry = db.stream("f").append_fenced([b"p1"], producer="up", epoch=0, seq=1)
        assert retry.duplicate and retry.original == range(3, 4)


def test_each_post_of_a_group_is_atomic_and_contiguous(server: HttpServer, db_path: str) -> None:
    with httpx.Client(base_url=server.url + "/v1/stream") as c:
        assert c.put("/j", headers={"content-type": "application/json"}).status_code == 201
    group = Group(server)
    group.post("/j", json.dumps([{"a": i} for i in range(3)]).encode(), ctype="application/json")
    group.post("/j", b"[1, 2", ctype="application/json")  # not JSON: 400, nothing stored
    group.post("/j", json.dumps([{"b": i} for i in range(3)]).encode(), ctype="application/json")
    group.post("/j", b"[]", ctype="application/json")  # an empty array appends nothing: 400
    group.post("/j", json.dumps([{"c": i} for i in range(3)]).encode(), ctype="application/json")
    answers = group.release()
    assert [a.status_code for a in answers] == [204, 400, 204, 400, 204]
    records = _records(db_path, "j")
    assert [r.value for r in records] == [{k: i} for k in "abc" for i in range(3)]
    assert [p.parse_offset(answers[i].headers[p.NEXT_OFFSET]).position for i in (0, 2, 4)] == [3, 6, 9]


def test_a_group_that_cannot_commit_answers_every_member_with_the_error(tmp_path: Path) -> None:
    """The group's commit fails (another connection holds the write lock past the busy
    timeout): no member is answered 2xx and nothing of the group is stored."""
    path = str(tmp_path / "locked.db")
    with sqlstream.open(path) as db:
        db.create_stream("l")
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(open_options={"busy_timeout": 0.5}))
    srv.start()
    try:
        group = Group(srv)
        group.post("/l", b"a")
        group.post("/l", b"b")
        with sqlstream.open(path) as other, other.transaction():
            other.stream("l").append("other")
            answers = group.release()
        assert [a.status_code for a in answers] == [500, 500]
        assert [r.value for r in _records(path, "l")] == ["other"]
    finally:
        srv.stop(10)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_run_grouped_rolls_back_only_the_failing_member(tmp_path: Path) -> None:
    async with await sqlstream.aio.open(str(tmp_path / "a.db")) as adb:
        await adb.create_stream("s")

        def good(value: str) -> int:
            return adb.sync.stream("s").append(value)

        def bad() -> None:
            adb.sync.stream("s").append("undone")
            raise ValueError("refused")

        gate = threading.Event()
        held = asyncio.ensure_future(adb.run_sync(gate.wait))
        try:
            calls = [asyncio.ensure_future(adb.run_grouped(good, "a")), asyncio.ensure_future(adb.run_grouped(bad)),
                     asyncio.ensure_future(adb.run_grouped(good, "b"))]
            await asyncio.sleep(0)
            assert adb.grouped_waiting == 3
        finally:
            gate.set()
        await held
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert outcomes[0] == 0 and isinstance(outcomes[1], ValueError) and outcomes[2] == 1
        records = await (await adb.stream("s")).read(0, limit=10)
        assert [r.value for r in records] == ["a", "b"] and records[0].txn == records[1].txn


def test_a_server_killed_under_concurrent_posts_keeps_every_answered_one(tmp_path: Path) -> None:
    """SIGKILL while eight clients POST as fast as they can (groups form and commit all the
    time): every answered POST is stored at the offset its answer named, offsets have no
    gaps, and nothing is stored twice. Unanswered POSTs may or may not be stored."""
    path = str(tmp_path / "kill.db")
    with sqlstream.open(path) as db:
        db.create_stream("k")
    proc = subprocess.Popen([sys.executable, "-m", "sqlstream", "--db", path, "serve", "--http", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    answered: dict[bytes, int] = {}
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        assert proc.stderr is not None
        url = proc.stderr.readline().split(" at ")[1].split("/v1/stream")[0] + "/v1/stream/k"

        def client(n: int) -> None:
            with httpx.Client(timeout=30) as c:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    body = f"c{n}-{i}".encode()
                    try:
                        r = c.post(url, content=body, headers={"content-type": "application/octet-stream"})
                    except httpx.TransportError:
                        return
                    if r.status_code != 204:
                        failures.append(f"{r.status_code} {r.text}")
                        return
                    with lock:
                        answered[body] = p.parse_offset(r.headers[p.NEXT_OFFSET]).position - 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for _ in range(6000):
            if len(answered) >= 300:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not failures and len(answered) >= 300
    stored: dict[Any, int] = {}
    with sqlstream.open(path) as db:
        records = db.stream("k").read(0, limit=1_000_000)
    assert [r.offset for r in records] == list(range(len(records)))
    for r in records:
        assert r.value not in stored, f"{r.value} stored twice"
        stored[r.value] = r.offset
    for body, offset in answered.items():
        assert stored.get(body) == offset, f"answered {body} at {offset}, stored at {stored.get(body)}"


@pytest.mark.anyio
async def test_run_grouped_waits_for_another_tasks_transaction_and_stays_out_of_it(tmp_path: Path) -> None:
    """A group never joins a transaction another task has open: it waits for it to end, so
    that transaction's rollback cannot take the group's writes with it."""
    async with await sqlstream.aio.open(str(tmp_path / "t.db")) as adb:
        stream = await adb.create_stream("s")
        opened, leave = asyncio.Event(), asyncio.Event()

        async def other() -> None:
            async with adb.transaction():
                await stream.append("rolled back")
                opened.set()
                await leave.wait()
                raise ValueError("roll back")

        task = asyncio.ensure_future(other())
        await opened.wait()
        grouped = asyncio.ensure_future(adb.run_grouped(lambda: adb.sync.stream("s").append("grouped")))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not grouped.done()  # waiting for the other transaction
        leave.set()
        with pytest.raises(ValueError):
            await task
        assert await grouped == 0
        assert [r.value for r in await stream.read(0, limit=10)] == ["grouped"]
