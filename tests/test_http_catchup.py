"""Catch-up responses sent in pieces (sqlstream.http.catchup).

- A response of several pieces carries exactly the records of its range: the same bytes
  as one-page responses of the same range (tests/test_http_pages.py checks those against
  a per-record rendering), for every kind of record, JSON mode and not.
- Retention racing a response: records already sent may go; if records the response
  still has to send are removed, it is abandoned (no last body message: the client sees a
  failed response, never a short or holed body) and the retry gets 410.
- A damaged record found after the headers were sent abandons the response once; the
  retry ends before it, and a read at it is refused as before.
- A client that goes away mid-response: nothing more is sent (at most the piece read ahead
  is read), nothing stays open.

The ASGI-level tests drive the app object itself (its ASGI interface is the contract a
mounting app relies on), which lets them act between two body messages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import sqlstream  # noqa: E402
from sqlstream.http import HttpConfig, create_app  # noqa: E402
from sqlstream.http import protocol as p  # noqa: E402
from sqlstream.http.app import DurableStreamsApp  # noqa: E402
from sqlstream.http.server import HttpServer  # noqa: E402

PIECE = 64  # max_chunk_bytes: tiny, so that a response has many pieces
_names = itertools.count()


class Pair:
    """Two servers on one file: one page per response, and responses of several pieces."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pages = HttpServer(path, "127.0.0.1", 0, HttpConfig(max_chunk_bytes=PIECE, max_response_bytes=PIECE))
        self.pieces = HttpServer(path, "127.0.0.1", 0, HttpConfig(max_chunk_bytes=PIECE, max_response_bytes=5 * PIECE))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    path = str(tmp_path / "catchup.db")
    with sqlstream.open(path):
        pass
    servers = Pair(path)
    servers.pages.start()
    servers.pieces.start()
    yield servers
    servers.pieces.stop(10)
    servers.pages.stop(10)


def _responses(url: str, offset: str = "-1") -> list[httpx.Response]:
    out = []
    with httpx.Client(timeout=20) as client:
        while True:
            r = client.get(url, params={"offset": offset})
            assert r.status_code == 200, r.text
            out.append(r)
            offset = r.headers["stream-next-offset"]
            if r.headers.get("stream-up-to-date") == "true":
                return out


def _inner(body: bytes, json_mode: bool) -> bytes:
    if not json_mode:
        return body
    assert body[:1] == b"[" and body[-1:] == b"]"
    return body[1:-1]


values = (st.binary(max_size=30) | st.text(max_size=30) | st.just(b"null") | st.just(b"NaN")
          | st.dictionaries(st.text(max_size=3), st.integers(), max_size=3) | st.lists(st.booleans(), max_size=4))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(values, min_size=1, max_size=15), min_size=1, max_size=4),
       ctype=st.sampled_from(["application/json", "application/octet-stream", "text/plain"]))
def test_a_response_of_several_pieces_is_exactly_its_range(pair: Pair, batches: list[list[Any]], ctype: str) -> None:
    name = f"s{next(_names)}"
    json_mode = ctype == "application/json"
    with sqlstream.open(pair.path) as db:
        s = db.create_stream(name, metadata={"content_type": ctype})
        for batch in batches:
            s.extend(batch)
    pieced = _responses(f"{pair.pieces.url}/v1/stream/{name}")
    paged = _responses(f"{pair.pages.url}/v1/stream/{name}")
    sep = b"," if json_mode else b""
    # The same records, byte for byte, as one-page responses (whose bytes
    # tests/test_http_pages.py checks against a per-record rendering)...
    assert sep.join(x for x in (_inner(r.content, json_mode) for r in pieced) if x) == \
        sep.join(x for x in (_inner(r.content, json_mode) for r in paged) if x)
    # ...and each response exactly the records of its range [start, Stream-Next-Offset).
    start = p.format_offset(0, 0)
    for r in pieced:
        end = r.headers["stream-next-offset"]
        (a, a_pos), (b, b_pos) = (tuple(int(x) for x in t.split("_")) for t in (start, end))
        if json_mode:
            assert len(json.loads(r.content)) == b - a
        else:
            assert len(r.content) == b_pos - a_pos  # outside JSON mode the stored bytes are sent
        # One page, or more than one piece: then sent as it is read, without a length up front.
        first_page = httpx.get(f"{pair.pages.url}/v1/stream/{name}", params={"offset": start}, timeout=20)
        assert ("content-length" in r.headers) == (first_page.headers["stream-next-offset"] == end)
        start = end
    assert int(start.split("_")[0]) == sum(len(b) for b in batches)


# ----------------------------------------------------------------- the ASGI interface, between pieces


class Exchange:
    """One GET driven through the app's ASGI interface; ``on_body`` runs after each body message."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.bodies: list[bytes] = []
        self.completed = False
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if not hasattr(self, "_asked"):
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def run(self, app: DurableStreamsApp, name: str, offset: str, on_body: Any = None) -> None:
        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
                return
            self.bodies.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.completed = True
            elif on_body is not None:
                await on_body(self)

        scope = {"type": "http", "method": "GET", "path": f"/v1/stream/{name}", "root_path": "", "scheme": "http",
                 "query_string": f"offset={offset}".encode(), "headers": [(b"host", b"127.0.0.1")],
                 "server": ("127.0.0.1", 80)}
        await app(scope, self.receive, send)

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)


def _fill(path: str, name: str, count: int = 200) -> None:
    with sqlstream.open(path) as db:
        db.create_stream(name, metadata={"content_type": "application/json"}).extend(
            [{"i": i, "pad": "x" * 30} for i in range(count)])


def _metric(app: DurableStreamsApp, name: str) -> float:
    value = app.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def _app(path: str) -> DurableStreamsApp:
    return create_app(path, max_chunk_bytes=1000, max_response_bytes=1 << 20)


def test_retention_of_records_already_sent_does_not_end_the_response(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    _fill(path, "r")

    async def main() -> Exchange:
        app = _app(path)
        ex = Exchange()
        trimmed = []

        async def trim_sent(ex: Exchange) -> None:
            if not trimmed and len(ex.body) > 1:  # the first piece is out: trim exactly what it held
                sent = len(json.loads(ex.body + b"]"))
                with sqlstream.open(path) as db:
                    db.trim("r", sent)
                trimmed.append(sent)

        try:
            await ex.run(app, "r", "-1", trim_sent)
        finally:
            await app.close()
        assert trimmed and 0 < trimmed[0] < 200
        return ex

    ex = asyncio.run(main())
    assert ex.status == 200 and ex.completed
    assert [v["i"] for v in json.loads(ex.body)] == list(range(200))
    assert p.parse_offset(ex.headers[p.NEXT_OFFSET]).position == 200


def test_a_response_whose_records_are_removed_meanwhile_is_abandoned_and_the_retry_gets_410(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    _fill(path, "r")

    async def main() -> tuple[Exchange, Exchange, float, float]:
        app = _app(path)
        ex = Exchange()

        async def trim_ahead(ex: Exchange) -> None:
            if len(ex.body) > 1 and len(ex.bodies) == 2:  # "[" and the first piece are out
                with sqlstream.open(path) as db:
                    db.trim("r", 150)  # records the response has still to send

        try:
            await ex.run(app, "r", "-1", trim_ahead)
            retry = Exchange()
            await retry.run(app, "r", p.format_offset(0, 0))
            return ex, retry, _metric(app, "sqlstream_http_catch_up_abandoned_total"), \
                _metric(app, "sqlstream_http_catch_up_streaming")
        finally:
            await app.close()

    ex, retry, abandoned, streaming = asyncio.run(main())
    assert ex.status == 200 and not ex.completed  # no last body message: the connection is closed
    assert abandoned == 1 and streaming == 0
    sent = json.loads(ex.body + b"]")  # what did go out is the start of the range, in order
    assert [v["i"] for v in sent] == list(range(len(sent))) and len(sent) < 150
    assert retry.status == 410


def _read_twice_then_at(path: str, stream: str, offset: int) -> list[Exchange]:
    """Two catch-up reads from the start, then one at ``offset``, in one app, in order."""

    async def main() -> list[Exchange]:
        app = _app(path)
        try:
            out = []
            for start in ("-1", "-1", p.format_offset(offset, 0)):
                ex = Exchange()
                await ex.run(app, stream, start)
                out.append(ex)
            return out
        finally:
            await app.close()

    return asyncio.run(main())


def test_a_damaged_record_found_mid_response_abandons_it_once_then_the_retry_ends_before_it(tmp_path: Path) -> None:
    path = str(tmp_path / "d.db")
    _fill(path, "d")
    conn = sqlite3.connect(path)  # damage only another tool can do: JSON that does not parse
    conn.execute("UPDATE chunks SET data = '{bad' WHERE offset = 120")
    conn.commit()
    conn.close()

    first, retry, at_damage = _read_twice_then_at(path, "d", 120)
    assert first.status == 200 and not first.completed
    assert retry.status == 200 and retry.completed
    assert [v["i"] for v in json.loads(retry.body)] == list(range(120))
    assert p.parse_offset(retry.headers[p.NEXT_OFFSET]).position == 120
    assert retry.headers.get(p.UP_TO_DATE) is None
    assert at_damage.status == 422 and b"record 120 of stream" in at_damage.body


@pytest.mark.parametrize("live", ["", "&live=long-poll", "&live=sse"])
def test_a_read_at_a_damaged_record_is_refused_once_and_for_all_with_the_offset_to_skip_it(
        tmp_path: Path, live: str) -> None:
    """Every read mode at a damaged record answers 422 (not a 5xx that clients retry for
    ever, nor, for SSE, a 200 that ends at once and is reconnected for ever), naming the
    record, with the offset after it in the text and in Stream-Next-Offset; a read from
    there goes on."""
    path = str(tmp_path / "d.db")
    _fill(path, "d")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE chunks SET data = '{bad' WHERE offset = 120")
    conn.commit()
    conn.close()
    with sqlstream.open(path) as db:
        after = db.stream("d").read_raw(121, 1).position

    async def main() -> list[Exchange]:
        app = _app(path)
        try:
            out = []
            async def leave(ex: Exchange) -> None:
                ex.gone.set()  # a live read: one piece is enough

            for offset in (p.format_offset(120, 0), p.format_offset(121, after)):
                ex = Exchange()
                await ex.run(app, "d", offset + live, leave)
                out.append(ex)
            return out
        finally:
            await app.close()

    at_damage, skipped = asyncio.run(main())
    token = p.format_offset(121, after)
    assert at_damage.status == 422, at_damage.body
    assert at_damage.headers[p.NEXT_OFFSET] == token
    assert b"record 120 of stream 'd' is damaged" in at_damage.body and token.encode() in at_damage.body
    assert at_damage.headers["cache-control"] == "no-store"
    assert skipped.status == 200 and b'"i":121' in skipped.body and b'"i":120' not in skipped.body


def test_a_record_whose_payload_row_is_gone_is_never_left_out_of_a_body(tmp_path: Path) -> None:
    """A record whose value is gone (plain SQL deleted its payloads row) used to vanish
    from a catch-up body (the joined read's group_concat skips NULLs) while the next
    offset counted it: the client lost it without a sign. Now the body ends before it
    and a read at it is refused, naming it."""
    path = str(tmp_path / "m.db")
    with sqlstream.open(path) as db:
        db.create_stream("m", metadata={"content_type": "application/json"}).extend(
            [{"i": i, "pad": "x" * 2000} for i in range(5)])  # out of their rows
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM payloads WHERE offset = 2")
    conn.commit()
    conn.close()

    first, retry, at_gone = _read_twice_then_at(path, "m", 2)
    # As for any damaged record met mid-response: abandoned once (never completed with a
    # hole), then the retry ends before it.
    assert first.status == 200 and not first.completed
    assert [v["i"] for v in json.loads(b"".join(first.bodies) + b"]")] == [0, 1]
    assert retry.status == 200 and retry.completed
    assert [v["i"] for v in json.loads(b"".join(retry.bodies))] == [0, 1]
    assert p.parse_offset(retry.headers[p.NEXT_OFFSET]).position == 2
    assert at_gone.status >= 400 and b"record 2 of stream 'm'" in b"".join(at_gone.bodies)


def test_a_client_that_goes_away_mid_response_is_sent_nothing_more(tmp_path: Path) -> None:
    path = str(tmp_path / "g.db")
    _fill(path, "g")

    async def main() -> tuple[Exchange, float, list[str]]:
        app = _app(path)
        ex = Exchange()

        async def leave(ex: Exchange) -> None:
            if len(ex.bodies) == 2:  # "[" and the first piece
                ex.gone.set()
                for _ in range(5):
                    await asyncio.sleep(0)  # the app's disconnect watcher sees it

        try:
            await ex.run(app, "g", "-1", leave)
            for _ in range(10):
                await asyncio.sleep(0)  # a cancelled task finishes
            # The request's own tasks (its disconnect watcher, the piece read ahead), not
            # the app's subscription wake pump, which lives as long as the app.
            mine = {"_disconnect", "AsyncDatabase.run_sync", "AsyncDatabase._call"}
            left = [t.get_coro().__qualname__ for t in asyncio.all_tasks()  # type: ignore[union-attr]
                    if t.get_coro().__qualname__ in mine]  # type: ignore[union-attr]
            return ex, _metric(app, "sqlstream_http_catch_up_streaming"), left
        finally:
            await app.close()

    ex, streaming, left = asyncio.run(main())
    assert not ex.completed and len(ex.bodies) == 2  # nothing after the first piece
    assert streaming == 0 and left == []


def test_a_real_client_dropping_a_pieced_response_leaves_nothing_open(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    with sqlstream.open(path) as db:
        db.create_stream("c", metadata={"content_type": "application/json"}).extend(
            [{"pad": "y" * 1000}] * 4000)  # 4 MB: more than the sockets buffer
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(max_chunk_bytes=16384))
    srv.start()
    try:
        url = f"{srv.url}/v1/stream/c"
        with httpx.stream("GET", url, params={"offset": "-1"}, timeout=20) as r:
            assert r.status_code == 200 and "content-length" not in r.headers
            next(r.iter_raw())  # some of the body, then the connection is closed
        app = srv.app
        for _ in range(2000):  # until the server has noticed (the cap only ends a hang)
            if _metric(app, "sqlstream_http_catch_up_streaming") == 0:
                break
            time.sleep(0.005)
        assert _metric(app, "sqlstream_http_catch_up_streaming") == 0
        whole = httpx.get(url, params={"offset": "-1"}, timeout=20)  # and it still serves
        assert whole.status_code == 200 and len(json.loads(whole.content)) == 4000
    finally:
        srv.stop(10)


def test_a_response_whose_file_is_closed_meanwhile_is_abandoned_not_raised(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    _fill(path, "x")

    async def main() -> tuple[Exchange, float]:
        app = _app(path)
        ex = Exchange()

        async def close_file(ex: Exchange) -> None:
            if len(ex.bodies) == 2:  # "[" and the first piece: the app's file goes away
                await app.close()

        # Before: DatabaseClosed reached the error handler, which began a second response.
        await ex.run(app, "x", "-1", close_file)
        return ex, _metric(app, "sqlstream_http_catch_up_abandoned_total")

    ex, abandoned = asyncio.run(main())
    assert ex.status == 200 and not ex.completed and abandoned == 1
