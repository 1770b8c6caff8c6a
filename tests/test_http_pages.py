"""The HTTP front's fast read paths keep every byte of behaviour.

- Catch-up pages are built from the stored bytes (``Stream.read_raw``) without decoding
  records. The oracle is the per-record rendering the front used before (each record
  decoded by ``read()`` and encoded again) with the same page bound: bodies and
  ``Stream-Next-Offset`` tokens must be identical, for Hypothesis-generated JSON messages
  appended over HTTP and values of every kind appended from Python.
- An append over HTTP hands its records to the SSE readers waiting at its first offset
  directly on the event loop (counted by ``sqlstream_http_live_direct_total``); appends
  from elsewhere, and appends too large for one page, still reach them through the
  wake-ups and a read of the file.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
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
from sqlstream.http import HttpConfig  # noqa: E402
from sqlstream.http import protocol as p  # noqa: E402
from sqlstream.http.server import HttpServer  # noqa: E402
from sqlstream.raw import cut  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGE = 64  # max_chunk_bytes: small, so that bodies are cut into several pages
_names = itertools.count()


class Served:
    def __init__(self, path: str) -> None:
        self.path = path
        # One page per response (tests/test_http_catchup.py has responses of several pieces).
        config = HttpConfig(max_chunk_bytes=PAGE, max_response_bytes=PAGE, long_poll_timeout=5.0)
        self.http = HttpServer(path, "127.0.0.1", 0, config)
        self.url = self.http.url


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    path = str(tmp_path / "pages.db")
    with sqlstream.open(path):
        pass
    srv = Served(path)
    srv.http.start()
    yield srv
    srv.http.stop(10)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _old_piece(record: sqlstream.Record, json_mode: bool) -> bytes:
    """How the front rendered one decoded record before it read stored bytes."""
    value = record.value
    if isinstance(value, bytes):
        if not json_mode:
            return value
        try:
            _strict_json(value)  # NaN/Infinity are not JSON: the front sends such bytes as strings
        except (UnicodeDecodeError, ValueError, RecursionError):
            return _dumps(value.decode("utf-8", "replace"))
        return value
    if isinstance(value, str) and not json_mode:
        return value.encode("utf-8")
    return _dumps(value)


def _expected_pages(db_path: str, name: str, json_mode: bool) -> list[tuple[bytes, str]]:
    """(body, Stream-Next-Offset) of each catch-up page, from read() and the old rendering."""
    with sqlstream.open(db_path) as db:
        s = db.stream(name)
        records = s.read(0, 100_000)
        length = s.info().byte_length
    pages = []
    at = 0
    while at < len(records):
        pieces = [_old_piece(r, json_mode) for r in records[at:]]
        keep = cut([len(x) for x in pieces], PAGE)
        at += keep
        end = records[at].position if at < len(records) else length
        body = b"[" + b",".join(pieces[:keep]) + b"]" if json_mode else b"".join(pieces[:keep])
        pages.append((body, p.format_offset(at, end)))
    return pages


def _served_pages(client: httpx.Client, name: str) -> list[tuple[bytes, str]]:
    pages = []
    offset = "-1"
    while True:
        r = client.get(f"/{name}", params={"offset": offset})
        assert r.status_code == 200
        offset = r.headers["stream-next-offset"]
        pages.append((r.content, offset))
        if r.headers.get("stream-up-to-date") == "true":
            return pages


json_messages = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
python_values = (st.binary(max_size=12) | st.text(max_size=12) | st.just(b"null") | st.just(b'{"a": [1, 2]}')
                 | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(posts=st.lists(st.lists(json_messages, min_size=1, max_size=6), min_size=1, max_size=4),
       from_python=st.lists(python_values, max_size=6))
def test_json_catch_up_pages_are_byte_identical_to_per_record_rendering(
        server: Served, posts: list[list[Any]], from_python: list[Any]) -> None:
    name = f"j{next(_names)}"
    with httpx.Client(base_url=server.url + "/v1/stream", timeout=20) as client:
        assert client.put(f"/{name}", headers={"content-type": "application/json"}).status_code == 201
        for messages in posts:
            body = json.dumps(messages).encode()  # with spaces: the server stores each value compact
            assert client.post(f"/{name}", content=body, headers={"content-type": "application/json"}).is_success
        with sqlstream.open(server.path) as db:
            db.stream(name).extend(from_python)  # text, bytes (JSON or not), JSON: every stored kind
        served = _served_pages(client, name)
    assert served == _expected_pages(server.path, name, json_mode=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.binary(max_size=40) | st.text(max_size=40) | st.dictionaries(st.text(max_size=3),
                                                                                        st.integers()),
                       min_size=1, max_size=12),
       ctype=st.sampled_from(["application/octet-stream", "text/plain"]))
def test_byte_and_text_catch_up_pages_are_the_stored_bytes(server: Served, values: list[Any], ctype: str) -> None:
    name = f"b{next(_names)}"
    with sqlstream.open(server.path) as db:
        db.create_stream(name, metadata={"content_type": ctype}).extend(values)
    with httpx.Client(base_url=server.url + "/v1/stream", timeout=20) as client:
        served = _served_pages(client, name)
    assert served == _expected_pages(server.path, name, json_mode=False)


class _Sse:
    """An SSE reader on a thread: collects (event, data) pairs."""

    def __init__(self, url: str) -> None:
        self.events: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self.thread.start()

    def _read(self, url: str) -> None:
        with httpx.stream("GET", url, params={"offset": "now", "live": "sse"}, timeout=30) as r:
            event = ""
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    self.events.append((event, line[5:]))
                    if event == "control" and json.loads(line[5:]).get("streamClosed"):
                        return

    def data(self) -> list[str]:
        return [d for e, d in self.events if e == "data"]


def _until(condition: Any, what: str) -> None:
    """Wait for a condition of the running server (not a timing bound: the cap only ends a hang)."""
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def _direct(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("sqlstream_http_live_direct_total"))
    return float(line.split()[-1])


def test_an_http_append_wakes_an_sse_reader_directly_and_other_appends_through_the_file(
        server: Served) -> None:
    name = f"t{next(_names)}"
    tails = server.http.app.tails
    with httpx.Client(base_url=server.url, timeout=20) as client:
        client.put(f"/v1/stream/{name}", headers={"content-type": "text/plain"})
        sse = _Sse(f"{server.url}/v1/stream/{name}")
        before = _direct(client)
        _until(lambda: tails.waiting(name) == 1, "the SSE reader waits at the tail")
        client.post(f"/v1/stream/{name}", content=b"over http", headers={"content-type": "text/plain"})
        _until(lambda: sse.data() == ["over http"], "the record reached the SSE reader")
        assert _direct(client) == before + 1  # handed over on the loop, no read of the file

        _until(lambda: tails.waiting(name) == 1, "the SSE reader waits again")
        code = f"import sqlstream; sqlstream.open({server.path!r}).stream({name!r}).append('from python')"
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _until(lambda: sse.data() == ["over http", "from python"], "another process's record reached it")
        assert _direct(client) == before + 1  # woken through the file's wake-ups

        _until(lambda: tails.waiting(name) == 1, "the SSE reader waits again")
        big = b"y" * (PAGE + 10)  # one record larger than a page: a read sends it alone too
        client.post(f"/v1/stream/{name}", content=big, headers={"content-type": "text/plain"})
        _until(lambda: len(sse.data()) == 3, "the large record reached it")
        assert _direct(client) == before + 2
        client.post(f"/v1/stream/{name}", headers={"stream-closed": "true"})
        sse.thread.join(20)
    assert sse.data() == ["over http", "from python", big.decode()]
    control = [json.loads(d) for e, d in sse.events if e == "control"]
    assert control[-1]["streamClosed"] is True
    with sqlstream.open(server.path) as db:
        info = db.stream(name).info()
    assert control[-1]["streamNextOffset"] == p.format_offset(info.next_offset, info.byte_length)


def test_a_json_append_larger_than_a_page_is_read_from_the_file_in_bounded_pages(server: Served) -> None:
    name = f"k{next(_names)}"
    tails = server.http.app.tails
    messages = [{"n": i, "pad": "z" * 16} for i in range(6)]  # 6 x 29 bytes: three pages of 64
    with httpx.Client(base_url=server.url, timeout=20) as client:
        client.put(f"/v1/stream/{name}", headers={"content-type": "application/json"})
        sse = _Sse(f"{server.url}/v1/stream/{name}")
        _until(lambda: tails.waiting(name) == 1, "the SSE reader waits at the tail")
        before = _direct(client)
        client.post(f"/v1/stream/{name}", content=json.dumps(messages), headers={"content-type": "application/json"})
        _until(lambda: len(sse.data()) == 3, "the records reached the SSE reader")
        assert _direct(client) == before  # not handed over: it would not fit one page
        client.post(f"/v1/stream/{name}", headers={"stream-closed": "true"})
        sse.thread.join(20)
    pages = [json.loads(d) for d in sse.data()]
    assert [m for page in pages for m in page] == messages
    assert [len(page) for page in pages] == [2, 2, 2]


def _strict_json(body: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def test_bytes_that_python_parses_but_json_forbids_are_sent_as_strings(server: Served) -> None:
    # Python's json.loads takes NaN and Infinity; a JSON-mode page that forwarded such
    # bytes verbatim was not JSON ("[NaN]"), and every strict client failed on the page;
    # bytes nested deeper than Python's parser recurses raised RecursionError in the read.
    name = f"nan{next(_names)}"
    deep = b"[" * 100_000 + b"]" * 100_000
    stored = [b"NaN", b"[1,Infinity]", b"-Infinity", deep, b'{"ok":1}']
    with httpx.Client(base_url=server.url + "/v1/stream", timeout=20) as client:
        assert client.put(f"/{name}", headers={"content-type": "application/json"}).status_code == 201
        with sqlstream.open(server.path) as db:
            db.stream(name).extend(stored)
        bodies = [body for body, _ in _served_pages(client, name)]
    messages = [m for body in bodies for m in _strict_json(body)]
    assert messages == ["NaN", "[1,Infinity]", "-Infinity", deep.decode(), {"ok": 1}]
