"""The Durable Streams HTTP front against a real uvicorn server on 127.0.0.1 (port 0) and a
real HTTP client (httpx): one stream model for HTTP and Python, live reads woken by any
process, and the safety limits (auth, secrets, 413, 431, 503, disconnects, SIGTERM).
The official conformance suite runs in tests/test_http_conformance.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import sqlstream  # noqa: E402
from sqlstream.errors import InvalidArgument  # noqa: E402
from sqlstream.http import HttpConfig  # noqa: E402
from sqlstream.http import protocol as p  # noqa: E402
from sqlstream.http.server import HttpServer, check_listen, parse_listen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(db_path: str) -> Iterator[HttpServer]:
    with sqlstream.open(db_path):
        pass  # the file exists before the server opens it
    srv = HttpServer(db_path, "127.0.0.1", 0, HttpConfig(long_poll_timeout=5.0, max_live=4))
    srv.start()
    yield srv
    srv.stop(10)


@pytest.fixture
def client(server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + "/v1/stream", timeout=20) as c:
        yield c


def _put(client: httpx.Client, name: str, ctype: str = "text/plain", body: bytes = b"", **headers: str) -> httpx.Response:
    return client.put(f"/{name}", content=body, headers={"content-type": ctype, **headers})


# ----------------------------------------------------------------- protocol rules (pure)


def test_offset_tokens_sort_as_their_offsets_and_parse_back() -> None:
    tokens = [p.format_offset(n, n * 7) for n in (0, 1, 9, 10, 99, 12345678)]
    assert sorted(tokens) == tokens
    assert [p.parse_offset(t).position for t in tokens] == [0, 1, 9, 10, 99, 12345678]
    assert p.parse_offset(None).position == -1 and p.parse_offset("now").now
    for bad in ("0,1", "abc", "00000001", "-2", "0000000000000000_0000000000000000/x"):
        with pytest.raises(p.ProtocolError):
            p.parse_offset(bad)


def test_json_bodies_flatten_one_level_and_refuse_empty_appends() -> None:
    assert p.parse_json_messages(b'[[1,2],{"a":1}]', allow_empty=False) == [[1, 2], {"a": 1}]
    assert p.parse_json_messages(b'{"a":1}', allow_empty=False) == [{"a": 1}]
    assert p.parse_json_messages(b"[]", allow_empty=True) == []
    for bad in (b"[]", b"{", b"NaN", b"\xff"):
        with pytest.raises(p.ProtocolError):
            p.parse_json_messages(bad, allow_empty=False)


def test_cursor_always_advances_past_an_echoed_one() -> None:
    now = 1_800_000_000.0
    current = int(p.cursor(None, now))
    assert int(p.cursor(str(current), now)) > current
    assert int(p.cursor(str(current + 500), now)) > current + 500
    assert int(p.cursor(str(current - 5), now)) == current


def test_listen_addresses_and_the_loopback_rule() -> None:
    assert parse_listen("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_listen(":0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9") == ("::1", 9)
    check_listen("127.0.0.1", None, False)
    check_listen("::1", None, False)
    check_listen("0.0.0.0", "tok", False)
    check_listen("0.0.0.0", None, True)
    with pytest.raises(InvalidArgument, match="without a token"):
        check_listen("0.0.0.0", None, False)
    with pytest.raises(InvalidArgument):
        parse_listen("host:port")


# ----------------------------------------------------------------- one stream model


def test_http_streams_are_sqlstream_streams(server: HttpServer, client: httpx.Client, db_path: str) -> None:
    assert _put(client, "orders", body=b"first").status_code == 201
    r = client.post("/orders", content=b"second", headers={"content-type": "text/plain"})
    assert r.status_code == 204
    with sqlstream.open(db_path) as db:
        recs = db.stream("orders").read()
        assert [(x.offset, x.value) for x in recs] == [(0, "first"), (1, "second")]
        db.stream("orders").append("third")  # from Python: HTTP readers see it at offset 2
    r = client.get("/orders", params={"offset": "-1"})
    assert r.text == "firstsecondthird"
    assert p.parse_offset(r.headers["stream-next-offset"]).position == 3
    mid = p.format_offset(1, len("first"))
    assert client.get("/orders", params={"offset": mid}).text == "secondthird"


def test_json_mode_keeps_messages_and_null(client: httpx.Client, db_path: str) -> None:
    _put(client, "j", "application/json", b'[{"a":1},"s"]')
    client.post("/j", content=b'[null, [1,2], 3.5, true]', headers={"content-type": "application/json"})
    assert client.get("/j").json() == [{"a": 1}, "s", None, [1, 2], 3.5, True]
    with sqlstream.open(db_path) as db:
        assert [r.value for r in db.stream("j").read()] == [{"a": 1}, "s", b"null", [1, 2], 3.5, True]
        db.stream("j").append({"from": "python"})
    assert client.get("/j").json()[-1] == {"from": "python"}
    assert client.post("/j", content=b"[]", headers={"content-type": "application/json"}).status_code == 400


def test_idempotent_producer_over_http(client: httpx.Client) -> None:
    _put(client, "p")
    hdr = {"content-type": "text/plain", "producer-id": "w", "producer-epoch": "0", "producer-seq": "0"}
    assert client.post("/p", content=b"a", headers=hdr).status_code == 200
    assert client.post("/p", content=b"a", headers=hdr).status_code == 204  # the retry
    gap = client.post("/p", content=b"c", headers={**hdr, "producer-seq": "5"})
    assert gap.status_code == 409 and gap.headers["producer-expected-seq"] == "1"
    client.post("/p", content=b"b", headers={**hdr, "producer-epoch": "1"})
    stale = client.post("/p", content=b"z", headers={**hdr, "producer-seq": "1"})
    assert stale.status_code == 403 and stale.headers["producer-epoch"] == "1"
    assert client.get("/p").text == "ab"


def test_kafka_producer_names_are_refused_over_http(client: httpx.Client, db_path: str) -> None:
    """``kafka:<id>`` rows in ``producers`` are the Kafka listener's: an HTTP producer using
    that name would move a Kafka producer's sequence on a shared stream."""
    _put(client, "shared")
    with sqlstream.open(db_path) as db:  # a Kafka producer's numbering, as the listener keeps it
        db.stream("shared").append_fenced(["k0"], producer="kafka:1000", epoch=0, seq=0)
    hdr = {"content-type": "text/plain", "producer-id": "kafka:1000", "producer-epoch": "0", "producer-seq": "1"}
    refused = client.post("/shared", content=b"h", headers=hdr)
    assert refused.status_code == 400 and "reserved" in refused.text
    with sqlstream.open(db_path) as db:
        assert [r.value for r in db.stream("shared").read(0)] == ["k0"]
        # The Kafka producer's next number is still 1.
        db.stream("shared").append_fenced(["k1"], producer="kafka:1000", epoch=0, seq=1)


# ----------------------------------------------------------------- live reads


def test_a_python_append_in_another_process_wakes_a_long_poll(client: httpx.Client, db_path: str) -> None:
    _put(client, "live")
    tail = client.head("/live").headers["stream-next-offset"]
    result: dict[str, httpx.Response] = {}
    reader = threading.Thread(target=lambda: result.update(r=client.get(
        "/live", params={"offset": tail, "live": "long-poll"})))
    reader.start()
    time.sleep(0.3)
    code = f"import sqlstream; sqlstream.open({db_path!r}).stream('live').append('from afar')"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    reader.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "from afar"


def test_sse_tails_python_appends_and_ends_at_close(server: HttpServer, db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        s = db.create_stream("bin", metadata={"content_type": "application/octet-stream"})
        s.append(b"\x00\x01")
        events: list[tuple[str, str]] = []

        def read() -> None:
            with httpx.stream("GET", f"{server.url}/v1/stream/bin", params={"offset": "-1", "live": "sse"},
                              timeout=20) as r:
                assert r.headers["stream-sse-data-encoding"] == "base64"
                event = ""
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        events.append((event, line[5:]))

        t = threading.Thread(target=read)
        t.start()
        time.sleep(0.3)
        s.append(b"\xff")
        time.sleep(0.3)
        s.seal()
        t.join(10)
    data = b"".join(base64.b64decode(d) for e, d in events if e == "data")
    assert data == b"\x00\x01\xff"
    assert json.loads(events[-1][1])["streamClosed"] is True


async def _hang_up(url: str, params: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=5) as c:
        async with c.stream("GET", url, params=params) as r:
            if params["live"] == "sse":
                async for _ in r.aiter_bytes():
                    break  # the first event arrived: now hang up mid-stream


def test_clients_that_hang_up_leave_nothing_behind(server: HttpServer, client: httpx.Client) -> None:
    _put(client, "h")
    app = server.app

    def hang_ups(rounds: int) -> None:
        for mode in ("sse", "long-poll") * rounds:
            params = {"offset": "now", "live": mode}
            try:
                asyncio.run(asyncio.wait_for(_hang_up(f"{server.url}/v1/stream/h", params), 0.5))
            except (asyncio.TimeoutError, TimeoutError):
                pass  # the long-poll was still waiting: the client gave up on it
        deadline = time.monotonic() + 5
        while app.live and time.monotonic() < deadline:
            time.sleep(0.02)

    hang_ups(1)  # warm up: the file's wake-up watcher starts with the first live read
    threads = sorted(t.name for t in threading.enumerate())
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    hang_ups(5)
    assert app.live == 0
    assert sorted(t.name for t in threading.enumerate()) == threads
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) <= fds
    # The server still serves, and its wake-up registrations did not pile up.
    assert client.get("/h").status_code == 200


def test_live_connections_are_bounded_with_503_and_retry_after(server: HttpServer, client: httpx.Client) -> None:
    _put(client, "busy")
    url = f"{server.url}/v1/stream/busy"
    results: list[int] = []
    holders = [threading.Thread(target=lambda: results.append(httpx.get(
        url, params={"offset": "now", "live": "long-poll"}, timeout=20).status_code)) for _ in range(4)]
    for t in holders:
        t.start()
    deadline = time.monotonic() + 5
    while server.app.live < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = client.get("/busy", params={"offset": "now", "live": "sse"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    client.post("/busy", content=b"x", headers={"content-type": "text/plain"})  # releases the long-polls
    for t in holders:
        t.join(10)
    assert results == [200] * 4


# ----------------------------------------------------------------- limits and safety


def test_bodies_over_max_record_bytes_get_413_and_store_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "small.db")
    with sqlstream.open(path):
        pass
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(open_options={"max_record_bytes": 1000}))
    srv.start()
    try:
        with httpx.Client(base_url=srv.url + "/v1/stream") as c:
            _put(c, "s")
            assert c.post("/s", content=b"x" * 1001, headers={"content-type": "text/plain"}).status_code == 413
            chunked = c.post("/s", content=iter([b"x" * 600, b"x" * 600]), headers={"content-type": "text/plain"})
            assert chunked.status_code == 413
            assert c.post("/s", content=b"x" * 1000, headers={"content-type": "text/plain"}).status_code == 204
            assert len(c.get("/s").content) == 1000
    finally:
        srv.stop(10)


def test_oversized_headers_get_431(client: httpx.Client) -> None:
    r = client.get("/x", headers={"x-big": "a" * 17000})
    assert r.status_code in (431, 400)  # the app's bound (431) or h11's buffer before it (400)
    assert client.get("/x", headers={"x-big": "a" * 15000}).status_code == 404


def test_token_required_when_set(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    with sqlstream.open(path):
        pass
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(token="s3cret"))
    srv.start()
    try:
        assert httpx.put(srv.url + "/v1/stream/a").status_code == 401
        assert httpx.put(srv.url + "/v1/stream/a", headers={"authorization": "Bearer nope"}).status_code == 401
        ok = httpx.put(srv.url + "/v1/stream/a", content=b"data", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 201
        got = httpx.get(srv.url + "/v1/stream/a", headers={"authorization": "Bearer s3cret"})
        assert got.headers["cache-control"].startswith("private")
        assert httpx.get(srv.url + "/healthz").status_code == 200
    finally:
        srv.stop(10)


def test_secret_streams_take_writes_only_with_their_secret_header(client: httpx.Client) -> None:
    r = _put(client, "log", **{"stream-write-secret": "new"})
    secret = r.headers["stream-write-secret"]
    assert client.post("/log", content=b"x", headers={"content-type": "text/plain"}).status_code == 403
    bad = {"content-type": "text/plain", "stream-write-secret": "wrong"}
    assert client.post("/log", content=b"x", headers=bad).status_code == 403
    assert client.delete("/log").status_code == 403
    good = {"content-type": "text/plain", "stream-write-secret": secret}
    assert client.post("/log", content=b"x", headers=good).status_code == 204
    assert client.get("/log").text == "x"  # reads need no secret


def test_healthz_metrics_and_web_view(server: HttpServer, client: httpx.Client, db_path: str) -> None:
    _put(client, "m", body=b"abc")
    with sqlstream.open(db_path) as db:
        sub = db.create_subscription("billing", "m")
        db.stream("m").append(b"d")
        sub.fetch("w1", max_records=1)  # one pending, one not yet delivered
    root = httpx.Client(base_url=server.url)
    assert root.get("/healthz").text == "ok\n"
    text = root.get("/metrics").text
    assert 'sqlstream_stream_records{stream="m"} 2.0' in text
    assert 'sqlstream_stream_bytes{stream="m"} 4.0' in text
    assert 'sqlstream_subscription_pending{stream="m",subscription="billing"} 1.0' in text
    assert 'sqlstream_subscription_lag{stream="m",subscription="billing"} 1.0' in text
    assert "sqlstream_http_requests_total" in text and "sqlstream_http_live_connections" in text
    page = root.get("/")
    assert page.status_code == 200 and "EventSource" in page.text
    assert root.get("/streams.json").json()[0]["name"] == "m"
    root.close()


def test_cli_serve_http_drains_on_sigterm(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.db")
    with sqlstream.open(path) as db:
        db.create_stream("s")
    proc = subprocess.Popen([sys.executable, "-m", "sqlstream", "--db", path, "serve", "--http", "127.0.0.1:0",
                             "--cors-origin", "https://app.example"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = line.split(" at ")[1].split("/v1/stream")[0]
        # --cors-origin lets that page's requests through, and only that page's.
        for origin, status in (("https://app.example", 200), ("https://other.example", 403)):
            got = httpx.get(url + "/v1/stream/s", params={"offset": "-1"}, headers={"origin": origin})
            assert got.status_code == status and got.headers.get("access-control-allow-origin") == (
                origin if status == 200 else None)
        result: dict[str, httpx.Response] = {}
        poll = threading.Thread(target=lambda: result.update(r=httpx.get(
            url + "/v1/stream/s", params={"offset": "now", "live": "long-poll"}, timeout=30)))
        poll.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        poll.join(15)
        assert proc.wait(15) == 0
        assert result["r"].status_code == 204  # the live read was answered, not cut
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.db")
    with sqlstream.open(path):
        pass
    proc = subprocess.run([sys.executable, "-m", "sqlstream", "--db", path, "serve", "--http", "0.0.0.0:0"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and "without a token" in proc.stderr and "Traceback" not in proc.stderr


def test_reads_below_retention_get_410_gone(client: httpx.Client, db_path: str) -> None:
    _put(client, "r", body=b"a")
    for part in (b"b", b"c"):
        client.post("/r", content=part, headers={"content-type": "text/plain"})
    with sqlstream.open(db_path) as db:
        db.trim("r", 2)
    assert client.get("/r", params={"offset": p.format_offset(0, 0)}).status_code == 410
    assert client.get("/r", params={"offset": p.format_offset(2, 2)}).text == "c"
    assert client.get("/r").text == "c"  # -1: from the first retained record


def test_deleting_a_stream_ends_its_live_readers(server: HttpServer, client: httpx.Client) -> None:
    _put(client, "gone")
    done: list[str] = []

    def sse() -> None:
        with httpx.stream("GET", f"{server.url}/v1/stream/gone", params={"offset": "now", "live": "sse"},
                          timeout=20) as r:
            done.append("".join(r.iter_text()))

    def poll() -> None:
        done.append(str(httpx.get(f"{server.url}/v1/stream/gone", params={"offset": "now", "live": "long-poll"},
                                  timeout=20).status_code))

    readers = [threading.Thread(target=sse), threading.Thread(target=poll)]
    for t in readers:
        t.start()
    deadline = time.monotonic() + 5
    while server.app.live < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.delete("/gone").status_code == 204
    for t in readers:
        t.join(10)
    assert "404" in done and any("event: control" in d for d in done)
    # The server counts a connection out after its last byte went: the client may be first.
    deadline = time.monotonic() + 10
    while server.app.live and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.app.live == 0


# ----------------------------------------------------------------- browser and network safety (findings B1-B5)


def test_other_web_pages_get_no_cors_access_without_a_token(server: HttpServer, client: httpx.Client) -> None:
    assert _put(client, "private", body=b"secret data").status_code == 201
    evil = {"origin": "https://evil.example"}
    pre = client.options("/private", headers={**evil, "access-control-request-method": "DELETE"})
    assert "access-control-allow-origin" not in pre.headers and "access-control-allow-methods" not in pre.headers
    read = client.get("/private", params={"offset": "-1"}, headers=evil)
    assert read.status_code == 403 and "access-control-allow-origin" not in read.headers
    # A "simple" POST (no preflight) from another page is refused, not stored.
    post = client.post("/private", content=b" and more", headers={**evil, "content-type": "text/plain"})
    assert post.status_code == 403
    assert client.get("/private", params={"offset": "-1"}).content == b"secret data"
    # The server's own pages (same origin, the web view) keep working.
    same = client.get("/private", params={"offset": "-1"}, headers={"origin": server.url})
    assert same.status_code == 200 and same.content == b"secret data"


def test_cors_origins_opt_in_and_the_token_default(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    with sqlstream.open(path) as db:
        db.create_stream("s").append(b"x")
    app_origin = {"origin": "https://app.example"}
    for config, origin, allowed in (
        (HttpConfig(cors_origins=("https://app.example",)), app_origin, True),
        (HttpConfig(cors_origins=("https://app.example",)), {"origin": "https://other.example"}, False),
        (HttpConfig(token="t0ken"), {"origin": "https://any.example"}, True),  # bearer token: "*"
        (HttpConfig(token="t0ken", cors_origins=()), app_origin, False),
    ):
        srv = HttpServer(path, "127.0.0.1", 0, config)
        srv.start()
        try:
            with httpx.Client(base_url=srv.url + "/v1/stream", timeout=20,
                              headers={"authorization": "Bearer t0ken"}) as c:
                pre = c.options("/s", headers={**origin, "access-control-request-method": "POST",
                                               "access-control-request-private-network": "true"})
                got = c.get("/s", params={"offset": "-1"}, headers=origin)
        finally:
            srv.stop(10)
        if allowed:
            assert pre.headers["access-control-allow-origin"] == origin["origin"]
            assert "POST" in pre.headers["access-control-allow-methods"]
            assert pre.headers["access-control-allow-private-network"] == "true"
            assert got.status_code == 200 and got.headers["access-control-allow-origin"] == origin["origin"]
        else:
            assert pre.status_code == 403 and got.status_code == 403
            assert "access-control-allow-origin" not in got.headers


def test_a_loopback_server_serves_only_loopback_host_names(tmp_path: Path) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is same-origin
    to itself; its requests name Host: evil.example, which a loopback server must not serve."""
    path = str(tmp_path / "h.db")
    with sqlstream.open(path) as db:
        db.create_stream("private").append(b"secret data")
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(allowed_hosts=("box.internal",)))
    srv.start()
    try:
        url = srv.url + "/v1/stream/private"
        for host, served in ((f"127.0.0.1:{srv.port}", True), (f"localhost:{srv.port}", True), ("[::1]", True),
                             ("LocalHost", True), (f"box.internal:{srv.port}", True),
                             ("evil.example", False), (f"evil.example:{srv.port}", False), ("127.0.0.1.evil.example", False)):
            got = httpx.get(url, params={"offset": "-1"}, headers={"host": host, "origin": f"http://{host}"})
            assert (got.status_code, got.content == b"secret data") == ((200, True) if served else (421, False)), host
        posted = httpx.post(url, content=b"!", headers={"host": "evil.example", "content-type": "text/plain"})
        assert posted.status_code == 421
        assert httpx.get(url, params={"offset": "-1"}).content == b"secret data"
    finally:
        srv.stop(10)


def test_numeric_options_must_be_finite_and_positive_when_loaded() -> None:
    import tomllib

    from sqlstream.http.app import NUMERIC_OPTIONS
    from sqlstream.http.config import http_settings
    from sqlstream.streaming.config import ConfigError

    assert {"long_poll_timeout", "sse_max_seconds", "max_live"} <= set(NUMERIC_OPTIONS)
    for key in NUMERIC_OPTIONS:
        for text in ("nan", "inf", "-inf", "0", "-1", "0.0"):
            table = tomllib.loads(f"[http]\n{key} = {text}\n")["http"]
            with pytest.raises(ConfigError) as caught:
                http_settings(table, "serve.toml")
            assert caught.value.key == key and key in str(caught.value)
            with pytest.raises(InvalidArgument, match=key):
                HttpConfig(**{key: table[key]})
    assert http_settings({"long_poll_timeout": 0.5}).config.long_poll_timeout == 0.5


def test_numeric_options_past_what_the_server_honours_are_refused_when_loaded() -> None:
    """A max_chunk_bytes past what reads take (1e9) or a max_claim_bytes past 2**62 was
    accepted, then every catch-up read (every claim) answered 400; an integer too large
    for a float (TOML integers have no bound in tomllib) raised a raw OverflowError from
    the check itself. Refused when loaded, naming the option; seconds at most 1e9, as
    every timeout of the Python API."""
    from sqlstream.http.config import http_settings
    from sqlstream.streaming.config import ConfigError

    assert http_settings({"max_live": 10**400}).config.max_live == 10**400  # a count: no maximum
    for key, value in (("max_chunk_bytes", 2**40), ("max_claim_bytes", 2**63), ("max_response_bytes", 2**63),
                       ("long_poll_timeout", 10**400), ("sse_max_seconds", 2e9)):
        with pytest.raises(ConfigError, match=key):
            http_settings({key: value}, "serve.toml")
        with pytest.raises(InvalidArgument, match=f"{key} must be at most"):
            HttpConfig(**{key: value})
    assert HttpConfig(max_chunk_bytes=10**9, max_claim_bytes=2**62).max_claim_bytes == 2**62


def test_the_servers_connections_send_without_waiting_for_acks(server: HttpServer, client: httpx.Client) -> None:
    """Mechanism: the server's connections have Nagle's algorithm off (TCP_NODELAY).

    A response goes out as two writes, its headers and then its body; with Nagle on, the
    body waited for the client's ACK of the headers, which a client on a kept-alive
    connection delays by ~40 ms (delayed ACK), so every catch-up page, long-poll answer and
    append response after a connection's first few took 40+ ms instead of ~1 ms. asyncio
    turns Nagle off only on accepted sockets whose ``proto`` says TCP, and the socket the
    server binds itself had proto 0. White box: the connections are uvicorn's (its
    ``server_state``); their transports' sockets carry the option."""
    _put(client, "s", body=b"x")
    for _ in range(3):  # past the first few exchanges, where Linux ACKs at once anyway
        assert client.get("/s", params={"offset": "-1"}).content == b"x"
    connections = list(server.server.server_state.connections)
    assert connections, "the client's kept-alive connection is not among the server's"
    for connection in connections:
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, "Nagle is on for a connection"


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) rather than leaving it open; waits up
    to the socket's timeout (generous: what is tested is that the close happens at all)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_are_bounded_and_slow_headers_time_out(tmp_path: Path) -> None:
    """Slowloris: half-sent requests are closed after header_timeout (a long-poll, whose headers
    are complete, is not), and connections past max_connections are closed when accepted."""
    path = str(tmp_path / "s.db")
    with sqlstream.open(path) as db:
        db.create_stream("s").append(b"x")
    half = b"GET /v1/stream/s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(header_timeout=0.5, long_poll_timeout=1.5))
    srv.start()
    try:
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        slow.sendall(half)
        assert _closed_by_server(silent) and _closed_by_server(slow)
        with httpx.Client(base_url=srv.url + "/v1/stream", timeout=30) as c:
            assert c.get("/s", params={"offset": "-1"}).content == b"x"
            # A kept-alive connection's next request is bounded the same way; a long-poll is not.
            polled = c.get("/s", params={"offset": "now", "live": "long-poll"})
            assert polled.status_code == 204
        for s in (silent, slow):
            s.close()
    finally:
        srv.stop(10)
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(max_connections=4, header_timeout=600))
    srv.start()
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(4)]
    try:
        for s in held:
            s.sendall(half)
        extra = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(6)]
        assert all(_closed_by_server(s) for s in extra)
        for s in held[1:] + extra:
            s.close()
        held = held[:1]
        got = None
        for _attempt in range(100):  # the server notices the closes on its own loop
            try:
                got = httpx.get(srv.url + "/v1/stream/s", params={"offset": "-1"})
            except httpx.TransportError:
                continue
            break
        assert got is not None and got.content == b"x"
    finally:
        for s in held:
            s.close()
        srv.stop(10)


def test_json_appends_carry_at_most_max_messages_per_append(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    with sqlstream.open(path):
        pass
    assert HttpConfig().max_messages_per_append == 10_000
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig(max_messages_per_append=5))
    srv.start()
    try:
        with httpx.Client(base_url=srv.url + "/v1/stream", timeout=20) as c:
            json_type = {"content-type": "application/json"}
            refused = c.put("/born", content=json.dumps(list(range(6))).encode(), headers=json_type)
            assert refused.status_code == 413 and "max_messages_per_append" in refused.text
            assert c.head("/born").status_code == 404
            assert c.put("/j", content=json.dumps(list(range(5))).encode(), headers=json_type).status_code == 201
            too_many = c.post("/j", content=json.dumps(list(range(6))).encode(), headers=json_type)
            assert too_many.status_code == 413 and "at most 5" in too_many.text
            assert c.post("/j", content=json.dumps([[0] * 100] * 5).encode(), headers=json_type).status_code == 204
    finally:
        srv.stop(10)
    with sqlstream.open(path) as db:
        assert db.stream("j").info().count == 10


def test_an_expiry_past_year_9999_is_refused_and_one_stored_earlier_still_answers(client: httpx.Client,
                                                                                 db_path: str) -> None:
    """9999-12-31T23:59:59.999999Z rounded past year 9999 when stored: the stream was
    created, then every answer about it (the PUT's own, HEAD, GET) was a 500. Now the PUT
    is a 400 that creates nothing, and a later time already in a file (SQL, an earlier
    version) shows as the last second RFC 3339 has."""
    r = _put(client, "late", **{p.EXPIRES_AT: "9999-12-31T23:59:59.999999Z"})
    assert r.status_code == 400 and "9999-12-31T23:59:59Z" in r.text
    assert client.head("/late").status_code == 404
    assert _put(client, "last", **{p.EXPIRES_AT: "9999-12-31T23:59:59Z"}).status_code == 201
    conn = apsw.Connection(db_path)  # a time past year 9999, as SQL outside sqlstream can store
    try:
        conn.set_busy_timeout(10_000)
        conn.execute("UPDATE stream_lifetimes SET expires_at = 10 * 253402300800000000")
    finally:
        conn.close()
    for method in ("HEAD", "GET"):
        r = client.request(method, "/last")
        assert r.status_code == 200 and r.headers[p.EXPIRES_AT] == "9999-12-31T23:59:59.000Z"


def test_sse_text_events_carry_cr_and_crlf_as_lf_and_base64_events_are_exact() -> None:
    """The README's row on SSE and carriage returns: SSE ends a line at CR, LF or CRLF, so
    a text event cannot carry a CR; base64 events (other content types) are exact."""
    assert p.sse_data("a\r\nb\rc\n".encode(), text=True) == b"event: data\ndata:a\ndata:b\ndata:c\ndata:\n\n"
    event = p.sse_data(b"a\r\nb\rc", text=False)
    assert base64.b64decode(event.split(b"data:")[1].strip()) == b"a\r\nb\rc"
