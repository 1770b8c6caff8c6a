"""Durable Streams subscriptions (pull-wake: claim, ack, release, generation fencing,
leases) served from sqlstream subscriptions, against a real uvicorn server on 127.0.0.1
(port 0) and a real HTTP client (httpx): an HTTP worker and a Python consumer share one
group, leases end in redelivery, stale acks are fenced, a Python append in another
process wakes a waiting worker, and bad input gets the protocol's 4xx."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import sqlstream  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402
from sqlstream.http import HttpConfig  # noqa: E402
from sqlstream.http import protocol as p  # noqa: E402
from sqlstream.http.server import HttpServer  # noqa: E402
from sqlstream.errors import ConcurrencyError  # noqa: E402
from sqlstream.http.subprotocol import AckRequest, DsError, glob_match, parse_config, runs, webhook_url_problem  # noqa: E402
from sqlstream.http.substore import DsStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _serving(path: str, config: HttpConfig, **headers: str) -> Iterator[httpx.Client]:
    """A server for the file at ``path`` (made if missing) and a client of its streams."""
    with sqlstream.open(path):
        pass
    srv = HttpServer(path, "127.0.0.1", 0, config)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url + "/v1/stream", timeout=20, headers=headers) as c:
            yield c
    finally:
        srv.stop(10)


@pytest.fixture
def client(db_path: str) -> Iterator[httpx.Client]:
    with _serving(db_path, HttpConfig(long_poll_timeout=10.0)) as c:
        yield c


def _json_stream(client: httpx.Client, name: str) -> None:
    assert client.put(f"/{name}", content=b"[]", headers={"content-type": "application/json"}).status_code == 201


def _subscribe(client: httpx.Client, sid: str, **config: Any) -> httpx.Response:
    body = {"type": "pull-wake", "wake_stream": "wake", **config}
    return client.put(f"/__ds/subscriptions/{sid}", json=body)


def _claim(client: httpx.Client, sid: str, worker: str, **extra: Any) -> httpx.Response:
    return client.post(f"/__ds/subscriptions/{sid}/claim", json={"worker": worker, **extra})


def _ack(client: httpx.Client, sid: str, claim: dict[str, Any], acks: list[tuple[str, str]],
         done: bool = True) -> httpx.Response:
    return client.post(f"/__ds/subscriptions/{sid}/ack", headers={"authorization": f"Bearer {claim['token']}"},
                       json={"wake_id": claim["wake_id"], "generation": claim["generation"], "done": done,
                             "acks": [{"stream": s, "offset": o} for s, o in acks]})


def _error(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def _claimed_values(client: httpx.Client, stream: dict[str, Any]) -> list[Any]:
    """What an exact HTTP worker processes: the messages of each claimed run, read over HTTP."""
    out: list[Any] = []
    for start, end in stream["claimed"]:
        a, b = p.parse_token(start, "start"), p.parse_token(end, "end")
        messages = client.get(f"/{stream['path']}", params={"offset": start}).json()
        out += messages[: b - a]
    return out


# ----------------------------------------------------------------- rules (pure)


def test_glob_patterns_match_segments() -> None:
    assert glob_match("events/*", "events/a") and not glob_match("events/*", "events/a/b")
    assert glob_match("events/**", "events") and glob_match("events/**", "events/a/b")
    assert glob_match("**/log", "a/b/log") and not glob_match("**/log", "a/b/log2")
    assert not glob_match("events/*", "eventsx/a")


def _glob_reference(pattern: str, path: str) -> bool:
    """The glob rule spelled out by recursion (exponential: small inputs only)."""
    pat = [s for s in pattern.split("/") if s]
    parts = [s for s in path.split("/") if s]

    def match(pi: int, si: int) -> bool:
        if pi == len(pat):
            return si == len(parts)
        if pat[pi] == "**":
            return any(match(pi + 1, i) for i in range(si, len(parts) + 1))
        return si < len(parts) and pat[pi] in ("*", parts[si]) and match(pi + 1, si + 1)

    return match(0, 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["*", "**", "a", "b"]), min_size=1, max_size=6),
       st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=6))
def test_glob_matches_the_reference_rule(pattern: list[str], path: list[str]) -> None:
    assert glob_match("/".join(pattern), "/".join(path)) == _glob_reference("/".join(pattern), "/".join(path))


def test_glob_with_many_double_stars_does_a_bounded_amount_of_work() -> None:
    # A pattern (accepted by PUT: under 400 characters) of 60 '**' against a stream of
    # 60 segments that it does not match: the recursive matcher tried every way to split
    # the path among the '**'s (C(120, 60) ways), on the database thread, for every
    # stream at create and on every pump look: the server hung. Counted in Python
    # events (calls and lines), not seconds; the tracer stops a runaway match at once.
    pattern = "/".join(["**"] * 60) + "/z"
    path = "/".join(["a"] * 60)
    events = 0

    class Runaway(Exception):
        pass

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal events
        events += 1
        if events > 200_000:
            raise Runaway
        return tracer

    sys.settrace(tracer)
    try:
        matched = glob_match(pattern, path)
    finally:
        sys.settrace(None)
    assert matched is False
    assert glob_match(pattern, path + "/z") is True


def test_offsets_group_into_runs() -> None:
    assert list(runs([1, 2, 3, 7, 9, 10])) == [(1, 4), (7, 8), (9, 11)]
    assert list(runs([])) == []


def test_webhook_urls_are_checked_against_ssrf() -> None:
    assert webhook_url_problem("http://10.0.0.1/hook") is not None
    assert webhook_url_problem("https://192.168.1.1/hook") is not None
    assert webhook_url_problem("ftp://example.com/") is not None
    assert webhook_url_problem("http://127.0.0.1:9/hook") is None
    assert webhook_url_problem("https://hooks.example.com/x") is None


@pytest.mark.parametrize("url", [
    "https://0x7f000001/", "https://2130706433/", "https://127.1/", "https://0177.0.0.1/", "https://10.1/",
    "https://0xa9.254.169.254/", "https://localhost./", "https://api.localhost/", "https://127.0.0.1./",
], ids=["hex", "decimal", "short", "octal", "short-private", "hex-octet", "localhost-dot", "sub-localhost",
        "trailing-dot"])
def test_webhook_urls_naming_a_private_address_in_another_spelling_are_refused(url: str) -> None:
    # The C resolver (inet_aton, behind getaddrinfo and so httpx) reads hex, octal, decimal
    # and short dotted forms as IPv4 addresses: https://0x7f000001/ is 127.0.0.1, and
    # https://10.1/ is 10.0.0.1. They passed as host names; so did "localhost." and
    # "*.localhost" (which resolvers answer with loopback).
    assert webhook_url_problem(url) is not None, url


# ----------------------------------------------------------------- the protocol's flow


def test_pull_wake_claim_ack_release(client: httpx.Client, db_path: str) -> None:
    _json_stream(client, "wake")
    created = _subscribe(client, "pool", pattern="events/*", lease_ttl_ms=30000)
    assert created.status_code == 201, created.text
    assert _subscribe(client, "pool", pattern="events/*", lease_ttl_ms=30000).status_code == 200
    assert _error(_subscribe(client, "pool", pattern="events/**")) == "SUBSCRIPTION_ALREADY_EXISTS"
    assert client.put("/events/a", content=b'{"n": 1}', headers={"content-type": "application/json"}).status_code == 201
    # The stream created after the subscription is linked from its first record, and a
    # wake event names the subscription in the wake stream.
    events = client.get("/wake", params={"offset": "-1", "live": "long-poll"}).json()
    assert events and events[0]["subscription_id"] == "pool" and events[0]["stream"] == "events/a"
    claim = _claim(client, "pool", "w1")
    assert claim.status_code == 200, claim.text
    c1 = claim.json()
    assert c1["generation"] == events[0]["generation"]
    busy = _claim(client, "pool", "w2")
    assert busy.status_code == 409 and busy.json()["error"]["current_holder"] == "w1"
    (stream,) = [s for s in c1["streams"] if s["path"] == "events/a"]
    assert stream["has_pending"] and _claimed_values(client, stream) == [{"n": 1}]
    acked = _ack(client, "pool", c1, [("events/a", stream["tail_offset"])])
    assert acked.status_code == 200 and acked.json() == {"ok": True, "next_wake": False}
    got = client.get("/__ds/subscriptions/pool").json()
    assert got["streams"] == [{"path": "events/a", "link_type": "glob", "acked_offset": stream["tail_offset"],
                               "subscription": "pool@events/a"}]
    # Nothing left: a claim finds no work.
    assert _error(_claim(client, "pool", "w1")) == "NO_PENDING_WORK"
    assert client.post("/events/a", content=b'{"n": 2}', headers={"content-type": "application/json"}).status_code == 204
    c2 = _claim(client, "pool", "w1").json()
    assert c2["generation"] > c1["generation"]
    released = client.post("/__ds/subscriptions/pool/release", headers={"authorization": f"Bearer {c2['token']}"},
                           json={"wake_id": c2["wake_id"], "generation": c2["generation"]})
    assert released.status_code == 204
    # Given back: claimable at once, by Python too, as a second delivery.
    with sqlstream.open(db_path) as db:
        batch = db.subscription("pool@events/a").fetch("py", timeout=10)
        assert [r.value for r in batch] == [{"n": 2}] and batch.attempts == {1: 2}


def test_a_claim_holds_at_most_max_claim_bytes_per_stream_and_the_rest_comes_next(db_path: str) -> None:
    """A claim read (and held) every record it took, up to max_records = 10,000 per linked
    stream, whatever their sizes; it takes fetch's byte budget now (max_claim_bytes): the
    first record always, then records while their sizes fit. What is left is claimed
    next, in order, so the worker still sees every record once."""
    with _serving(db_path, HttpConfig(max_claim_bytes=1000)) as client:
        _json_stream(client, "wake")
        _json_stream(client, "big")
        assert _subscribe(client, "pool", streams=["big"]).status_code == 201
        values = [{"n": i, "pad": "x" * 580} for i in range(5)]  # about 600 bytes each
        assert client.post("/big", json=values).status_code == 204
        seen: list[Any] = []
        holds = []
        for _ in range(10):
            claim = _claim(client, "pool", "w1", max_records=100)
            if claim.status_code != 200:
                assert _error(claim) == "NO_PENDING_WORK"
                break
            c = claim.json()
            (stream,) = [s for s in c["streams"] if s["path"] == "big"]
            got = _claimed_values(client, stream)
            holds.append(len(got))
            seen += got
            assert _ack(client, "pool", c, [("big", stream["tail_offset"])]).status_code == 200
        assert seen == values and holds == [1, 1, 1, 1, 1]


def test_http_and_python_consumers_share_one_group_exactly_once(client: httpx.Client, db_path: str) -> None:
    _json_stream(client, "wake")
    _json_stream(client, "orders")
    assert _subscribe(client, "billing", streams=["orders"]).status_code == 201
    total = 300
    seen: list[Any] = []
    with sqlstream.open(db_path) as db:
        orders = db.stream("orders")
        sub = db.subscription("billing@orders")  # the group behind the link: shared
        orders.extend([{"i": i} for i in range(total)])
        rounds = 0
        while len(seen) < total:
            rounds += 1
            assert rounds < 200
            claim = _claim(client, "billing", "http-worker", max_records=7)
            py = sub.fetch("py-worker", max_records=5)  # while the lease holds HTTP's records
            if claim.status_code == 200:
                c = claim.json()
                (stream,) = c["streams"]
                seen += _claimed_values(client, stream)
                assert _ack(client, "billing", c, [("orders", stream["tail_offset"])]).status_code == 200
            else:
                assert _error(claim) == "NO_PENDING_WORK"
            seen += [r.value for r in py]
            sub.ack(*py.offsets, attempts=py.attempts)
        info = sub.info()
    assert sorted(v["i"] for v in seen) == list(range(total))  # none lost, none twice
    assert info.pending == 0 and info.lag == 0 and info.acked == total


def test_an_http_release_gives_back_only_what_the_lease_held(client: httpx.Client, db_path: str) -> None:
    _json_stream(client, "wake")
    _json_stream(client, "q")
    assert _subscribe(client, "q", streams=["q"]).status_code == 201
    with sqlstream.open(db_path) as db:
        db.stream("q").extend([0, 1, 2, 3])
        sub = db.subscription("q@q")
        c = _claim(client, "q", "http", max_records=2).json()
        mine = sub.fetch("py", max_records=2)
        assert mine.offsets == [2, 3] and c["streams"][0]["claimed"] == [[p.format_offset(0, 0), p.format_offset(2, 2)]]
        released = client.post("/__ds/subscriptions/q/release", headers={"authorization": f"Bearer {c['token']}"},
                                json={"wake_id": c["wake_id"], "generation": c["generation"]})
        assert released.status_code == 204
        again = _claim(client, "q", "http").json()  # HTTP's two again; Python's stay Python's
        assert again["streams"][0]["claimed"] == [[p.format_offset(0, 0), p.format_offset(2, 2)]]
        assert sub.ack(*mine.offsets, attempts=mine.attempts).applied == (2, 3)
        assert [(e.offset, e.consumer, e.attempts) for e in sub.pending()] == [(0, "http", 2), (1, "http", 2)]


def test_an_ended_lease_redelivers_and_fences_its_holder(client: httpx.Client, db_path: str) -> None:
    _json_stream(client, "wake")
    _json_stream(client, "jobs")
    assert _subscribe(client, "jobs", streams=["jobs"], lease_ttl_ms=1000).status_code == 201
    with sqlstream.open(db_path) as db:
        db.stream("jobs").extend([{"job": 1}, {"job": 2}])
        c = _claim(client, "jobs", "slow").json()
        assert [s["has_pending"] for s in c["streams"]] == [True]
        # The HTTP worker never acks: once its lease ends, a Python consumer gets the
        # records (second delivery) — it waits on the ack deadline, not on a clock of ours.
        batch = db.subscription("jobs@jobs").fetch("py", max_records=10, timeout=30)
        assert [r.value for r in batch] == [{"job": 1}, {"job": 2}] and set(batch.attempts.values()) == {2}
        late = _ack(client, "jobs", c, [("jobs", c["streams"][0]["tail_offset"])])
        assert late.status_code == 409 and _error(late) == "FENCED"
        assert len(db.subscription("jobs@jobs").pending()) == 2  # the late ack acked nothing
        db.subscription("jobs@jobs").ack(*batch.offsets, attempts=batch.attempts)


def test_a_stale_generation_is_fenced(client: httpx.Client) -> None:
    _json_stream(client, "wake")
    _json_stream(client, "s")
    assert _subscribe(client, "g", streams=["s"]).status_code == 201
    client.post("/s", content=b"[1, 2]", headers={"content-type": "application/json"})
    old = _claim(client, "g", "w", max_records=1).json()
    assert _ack(client, "g", old, [], done=False).json() == {"ok": True, "next_wake": False}  # heartbeat
    released = client.post("/__ds/subscriptions/g/release", headers={"authorization": f"Bearer {old['token']}"},
                           json={"wake_id": old["wake_id"], "generation": old["generation"]})
    assert released.status_code == 204
    new = _claim(client, "g", "w", max_records=1).json()
    assert new["generation"] > old["generation"]
    tail = old["streams"][0]["tail_offset"]
    for stale in (old, {**new, "generation": old["generation"]}, {**new, "wake_id": old["wake_id"]}):
        refused = _ack(client, "g", stale, [("s", tail)])
        assert refused.status_code == 409 and _error(refused) == "FENCED", refused.text
    wrong = _ack(client, "g", {**new, "token": "not-the-token"}, [("s", tail)])
    assert wrong.status_code == 401 and _error(wrong) == "TOKEN_INVALID"
    assert _ack(client, "g", new, [("s", new["streams"][0]["tail_offset"])]).json()["ok"] is True


def test_a_python_append_in_another_process_wakes_a_waiting_worker(client: httpx.Client, db_path: str) -> None:
    _json_stream(client, "wake")
    _json_stream(client, "feed")
    assert _subscribe(client, "feed", streams=["feed"]).status_code == 201
    tail = client.head("/wake").headers["stream-next-offset"]
    result: dict[str, httpx.Response] = {}
    started = threading.Event()

    def worker() -> None:  # waits on the wake stream, as a pull-wake worker does
        started.set()
        result["r"] = client.get("/wake", params={"offset": tail, "live": "long-poll"})

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait()
    code = f"import sqlstream; sqlstream.open({db_path!r}).stream('feed').append({{'from': 'afar'}})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    thread.join(15)
    woke = result["r"]
    assert woke.status_code == 200, woke.status_code
    assert [e["subscription_id"] for e in woke.json()] == ["feed"]
    (stream,) = _claim(client, "feed", "w").json()["streams"]
    assert _claimed_values(client, stream) == [{"from": "afar"}]


def test_a_matching_stream_too_long_to_link_neither_stops_the_pump_nor_blocks_claims(client: httpx.Client) -> None:
    # The backing subscription "{id}@{path}" of a 100-character id and a 150-character
    # stream is over 200 characters: it cannot exist. Linking such a stream by the pattern
    # raised DsError in the pump (not a SqlstreamError: the pump task died, and no
    # subscription of the server was woken again) and in every claim (400, for ever).
    _json_stream(client, "wake")
    sid = "s" * 100
    assert _subscribe(client, sid, pattern="ev/**").status_code == 201
    assert _subscribe(client, "other", streams=["q"]).status_code == 201
    tail = client.head("/wake").headers["stream-next-offset"]
    assert client.put("/ev/" + "x" * 150, content=b"[1]", headers={"content-type": "application/json"}).status_code == 201
    assert client.put("/ev/a", content=b"[2]", headers={"content-type": "application/json"}).status_code == 201
    claim = _claim(client, sid, "w")
    assert claim.status_code == 200, claim.text
    assert [(s["path"], _claimed_values(client, s)) for s in claim.json()["streams"]] == [("ev/a", [2])]
    assert client.put("/q", content=b"[3]", headers={"content-type": "application/json"}).status_code == 201
    woke: list[Any] = []
    while not any(e["subscription_id"] == "other" for e in woke):  # the pump still wakes (long-polls)
        r = client.get("/wake", params={"offset": tail, "live": "long-poll"})
        assert r.status_code == 200, "the pump issued no wake for 'other'"
        woke += r.json()
        tail = r.headers["stream-next-offset"]


def test_state_lives_in_the_file_across_a_restart(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("wake", metadata={"content_type": "application/json"})
        db.create_stream("t", metadata={"content_type": "application/json"})
    with _serving(db_path, HttpConfig()) as c:
        assert _subscribe(c, "keep", streams=["t"]).status_code == 201
        c.post("/t", content=b'"x"', headers={"content-type": "application/json"})
        claim = _claim(c, "keep", "w").json()
    with _serving(db_path, HttpConfig()) as c:  # a second server on the same file
        assert _claim(c, "keep", "other").status_code == 409  # the lease survived
        ok = _ack(c, "keep", claim, [("t", claim["streams"][0]["tail_offset"])])
        assert ok.json() == {"ok": True, "next_wake": False}


# ----------------------------------------------------------------- bad input, safety


def test_bad_input_gets_the_protocols_4xx_and_changes_nothing(client: httpx.Client, db_path: str) -> None:
    _json_stream(client, "wake")
    _json_stream(client, "s")
    assert _subscribe(client, "ok", streams=["s"]).status_code == 201
    client.post("/s", content=b"[1, 2, 3]", headers={"content-type": "application/json"})
    claim = _claim(client, "ok", "w").json()
    base = "/__ds/subscriptions"
    auth = {"authorization": f"Bearer {claim['token']}"}
    cases: list[tuple[httpx.Response, int, str]] = [
        (client.get(f"{base}/nope"), 404, "SUBSCRIPTION_NOT_FOUND"),
        (_claim(client, "nope", "w"), 404, "SUBSCRIPTION_NOT_FOUND"),
        (client.get(f"{base}/bad@id"), 400, "INVALID_REQUEST"),
        (client.get(f"{base}/{'x' * 101}"), 400, "INVALID_REQUEST"),
        (client.get("/__ds/jwks.json"), 404, "NOT_FOUND"),
        (client.put(f"{base}/n", content=b"{"), 400, "INVALID_REQUEST"),
        (client.put(f"{base}/n", content=b"[1]"), 400, "INVALID_REQUEST"),
        (client.put(f"{base}/n", json={"type": "pull-wake", "streams": ["s"]}), 400, "INVALID_REQUEST"),
        (client.put(f"{base}/n", json={"type": "pull-wake", "wake_stream": "absent", "streams": ["s"]}), 400,
         "INVALID_REQUEST"),
        (_subscribe(client, "n", streams=["s"], lease_ttl_ms=10**30), 400, "INVALID_REQUEST"),
        (_subscribe(client, "n", streams=["s"], lease_ttl_ms=999), 400, "INVALID_REQUEST"),
        (_subscribe(client, "n", streams=["s"], lease_ttl_ms=1500.5), 400, "INVALID_REQUEST"),
        (_subscribe(client, "n"), 400, "INVALID_REQUEST"),
        (_subscribe(client, "n", streams=["__ds/x"]), 400, "INVALID_REQUEST"),
        (_subscribe(client, "n", streams=[7]), 400, "INVALID_REQUEST"),
        (client.put(f"{base}/n", json={"type": "webhook", "pattern": "a/*", "webhook": {"url": "http://10.0.0.1/"}}),
         400, "WEBHOOK_URL_REJECTED"),
        (client.put(f"{base}/n", json={"type": "webhook", "pattern": "a/*", "webhook": {"url": "http://127.0.0.1/"}}),
         400, "INVALID_REQUEST"),
        (_claim(client, "ok", ""), 400, "INVALID_REQUEST"),
        (_claim(client, "ok", "w", max_records=10**20), 400, "INVALID_REQUEST"),
        (_claim(client, "ok", "no spaces"), 400, "INVALID_REQUEST"),
        (_ack(client, "ok", {**claim, "generation": 10**30}, []), 400, "INVALID_REQUEST"),
        (_ack(client, "ok", {**claim, "generation": -1}, []), 400, "INVALID_REQUEST"),
        (_ack(client, "ok", claim, [("s", "garbage")]), 409, "INVALID_OFFSET"),
        (_ack(client, "ok", claim, [("s", "-1")]), 409, "INVALID_OFFSET"),
        (_ack(client, "ok", claim, [("s", p.format_offset(10**15, 0))]), 409, "INVALID_OFFSET"),
        (_ack(client, "ok", claim, [("other", p.format_offset(0, 0))]), 409, "INVALID_OFFSET"),
        (client.post(f"{base}/ok/ack", json={"wake_id": claim["wake_id"], "generation": claim["generation"]}),
         401, "TOKEN_INVALID"),
        (client.post(f"{base}/ok/ack", headers=auth, json={"generation": claim["generation"]}), 400,
         "INVALID_REQUEST"),
        (client.post(f"{base}/ok/ack", headers=auth, content=b"\xff"), 400, "INVALID_REQUEST"),
        (client.post(f"{base}/ok/callback", headers=auth,
                     json={"wake_id": claim["wake_id"], "generation": claim["generation"]}), 400, "INVALID_REQUEST"),
        (client.get(f"{base}/ok/claim"), 405, "INVALID_REQUEST"),
    ]
    for response, status, code in cases:
        assert (response.status_code, _error(response)) == (status, code), (response.request.url, response.text)
        assert response.json()["error"]["message"]  # a message a user can act on
    # Nothing changed: the claim still holds its three records and acks them.
    with sqlstream.open(db_path) as db:
        assert [e.offset for e in db.subscription("ok@s").pending("w")] == [0, 1, 2]
        assert [i.name for i in db.subscriptions()] == ["ok@s"]
    done = _ack(client, "ok", claim, [("s", claim["streams"][0]["tail_offset"])])
    assert done.json() == {"ok": True, "next_wake": False}


def test_control_routes_need_the_server_token_and_acks_the_claims(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    with sqlstream.open(path) as db:
        db.create_stream("wake", metadata={"content_type": "application/json"})
        db.create_stream("s", metadata={"content_type": "application/json"})
        db.stream("s").append(1)
    with _serving(path, HttpConfig(token="sekrit"), authorization="Bearer sekrit") as c:
        with httpx.Client(base_url=c.base_url, timeout=20) as anon:
            assert _subscribe(anon, "x", streams=["s"]).status_code == 401
            assert _subscribe(c, "x", streams=["s"], lease_ttl_ms=5000).status_code == 201
            c.post("/s", content=b"2", headers={"content-type": "application/json"})
            assert _claim(anon, "x", "w").status_code == 401
            claim = _claim(c, "x", "w").json()
            # The ack's bearer is the claim's token (the server token is not the claim's).
            assert _ack(c, "x", {**claim, "token": "sekrit"}, []).status_code == 401
            ok = _ack(anon, "x", claim, [("s", claim["streams"][0]["tail_offset"])])
            assert ok.json() == {"ok": True, "next_wake": False}


def test_deleting_a_subscription_deletes_its_groups(client: httpx.Client, db_path: str) -> None:
    _json_stream(client, "wake")
    _json_stream(client, "a")
    assert _subscribe(client, "d", streams=["a", "later"]).status_code == 201
    assert client.post("/__ds/subscriptions/d/streams", json={"streams": ["b"]}).status_code == 204
    assert client.delete("/__ds/subscriptions/d/streams/later").status_code == 204
    got = client.get("/__ds/subscriptions/d").json()
    assert [(s["path"], s["link_type"]) for s in got["streams"]] == [("a", "explicit"), ("b", "explicit")]
    with sqlstream.open(db_path) as db:
        assert [i.name for i in db.subscriptions()] == ["d@a"]  # b does not exist (yet)
    assert client.delete("/__ds/subscriptions/d").status_code == 204
    assert client.get("/__ds/subscriptions/d").status_code == 404
    with sqlstream.open(db_path) as db:
        assert db.subscriptions() == []


# ----------------------------------------------------------------- webhooks


class _Receiver:
    """A webhook receiver on 127.0.0.1 (port 0): records each POST, answers ``answer``
    (as JSON; bytes as they are)."""

    def __init__(self, answer: dict[str, Any] | bytes) -> None:
        calls: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        self.calls = calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                calls.put(({k.lower(): v for k, v in self.headers.items()}, body))
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next(self) -> tuple[dict[str, str], bytes]:
        return self.calls.get(timeout=30)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks_client(db_path: str) -> Iterator[httpx.Client]:
    with _serving(db_path, HttpConfig(webhooks=True)) as c:
        yield c


def _verified(client: httpx.Client, headers: dict[str, str], body: bytes) -> bool:
    """Whether the Webhook-Signature verifies with a key of the server's JWKS."""
    stamp, kid, signature = (part.split("=", 1)[1] for part in headers["webhook-signature"].split(","))
    (key,) = [k for k in client.get("/__ds/jwks.json").json()["keys"] if k["kid"] == kid]
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key["x"] + "=="))
    try:
        public.verify(base64.urlsafe_b64decode(signature + "=="), f"{stamp}.".encode() + body)
    except InvalidSignature:
        return False
    return True


def test_webhooks_are_off_by_default(client: httpx.Client) -> None:
    refused = client.put("/__ds/subscriptions/h", json={"type": "webhook", "pattern": "a/*",
                                                        "webhook": {"url": "http://127.0.0.1:9/hook"}})
    assert refused.status_code == 400 and "webhooks = true" in refused.json()["error"]["message"]
    assert client.get("/__ds/jwks.json").status_code == 404


def test_a_webhook_is_called_signed_and_done_acks(hooks_client: httpx.Client, db_path: str) -> None:
    receiver = _Receiver({"done": True})
    try:
        created = hooks_client.put("/__ds/subscriptions/h", json={
            "type": "webhook", "pattern": "events/*", "webhook": {"url": receiver.url}})
        assert created.status_code == 201
        signing = created.json()["webhook"]["signing"]
        assert signing["kid"].startswith("ds_") and signing["jwks_url"].endswith("/v1/stream/__ds/jwks.json")
        with sqlstream.open(db_path) as db:
            db.create_stream("events/py", metadata={"content_type": "application/json"}).append({"n": 1})
            headers, body = receiver.next()
            assert _verified(hooks_client, headers, body)
            assert not _verified(hooks_client, headers, body + b" ")
            wake = json.loads(body)
            (stream,) = wake["streams"]
            assert stream["path"] == "events/py" and stream["has_pending"]
            assert wake["callback_url"].endswith("/v1/stream/__ds/subscriptions/h/callback")
            sub = db.subscription("h@events/py")
            # "done": the wake's records get acked (by the server after the answer; waited
            # for through the file's wake-ups, not a clock).
            assert db.engine.wait_until(lambda: sub.info().acked == 1 or None, 30)
            assert sub.info().pending == 0
    finally:
        receiver.close()


def test_a_webhook_callback_acks_and_stale_ones_are_fenced(hooks_client: httpx.Client, db_path: str) -> None:
    receiver = _Receiver({})
    try:
        assert hooks_client.put("/__ds/subscriptions/cb", json={
            "type": "webhook", "streams": ["jobs"], "webhook": {"url": receiver.url},
            "lease_ttl_ms": 60000}).status_code == 201
        assert hooks_client.put("/jobs", content=b'[{"job": 1}]',
                                headers={"content-type": "application/json"}).status_code == 201
        wake = json.loads(receiver.next()[1])
        ack = {"wake_id": wake["wake_id"], "generation": wake["generation"], "done": True,
               "acks": [{"stream": "jobs", "offset": wake["streams"][0]["tail_offset"]}]}
        auth = {"authorization": f"Bearer {wake['callback_token']}"}
        assert hooks_client.post(wake["callback_url"], headers=auth, json=ack).json() == {"ok": True,
                                                                                          "next_wake": False}
        stale = hooks_client.post(wake["callback_url"], headers=auth, json=ack)
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "FENCED"
        with sqlstream.open(db_path) as db:
            info = db.subscription("cb@jobs").info()
            assert (info.acked, info.pending) == (1, 0)
    finally:
        receiver.close()


# ----------------------------------------------------------------- the shared group, at random


OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 4)),
    st.tuples(st.just("claim"), st.integers(1, 2)),
    st.tuples(st.just("ack"), st.integers(0, 5)),   # how many of the claim's records
    st.tuples(st.just("done"), st.integers(0, 5)),
    st.tuples(st.just("release"), st.just(0)),
    st.tuples(st.just("fetch"), st.integers(1, 2)),
    st.tuples(st.just("py_ack"), st.integers(0, 4)),
    st.tuples(st.just("py_nack"), st.just(0)),
    st.tuples(st.just("expire"), st.just(0)),        # the clock passes every lease and deadline
), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_http_and_python_consumers_never_hold_or_ack_a_record_twice(tmp_path: Path, ops: list[tuple[str, int]]) -> None:
    """A model of one group shared by an HTTP worker (the store's claim/ack/release) and a
    Python consumer, with leases ending at random: no record is held by both at once, none
    is acked twice, and after draining every record was acked exactly once."""
    path = tmp_path / f"m{uuid.uuid4().hex}.db"
    with sqlstream.open(str(path)) as db:
        now = [1_000_000.0]
        db.engine.clock = lambda: now[0]
        db.create_stream("wake", metadata={"content_type": "application/json"})
        stream = db.create_stream("s", metadata={"content_type": "application/json"})
        store = DsStore(db)
        assert store.create("g", parse_config({"type": "pull-wake", "streams": ["s"], "wake_stream": "wake",
                                                "lease_ttl_ms": 1000}))
        sub = db.subscription("g@s")
        acked: list[int] = []
        lease: dict[str, Any] | None = None
        http_held: list[int] = []
        py_batch: dict[int, int] = {}
        appended = 0

        def ack_request(done: bool, upto: int | None) -> AckRequest:
            assert lease is not None
            acks = () if upto is None else (("s", upto),)
            return AckRequest(lease["wake_id"], lease["generation"], acks, done)

        for op, n in ops:
            if op == "append":
                stream.extend(list(range(appended, appended + n)))
                appended += n
            elif op == "claim":
                try:
                    lease = store.claim("g", "http", n)
                except DsError as exc:
                    assert exc.code in ("NO_PENDING_WORK", "ALREADY_CLAIMED")
                    continue
                http_held = [o for a, b in lease["streams"][0]["claimed"]
                             for o in range(p.parse_token(a, "a"), p.parse_token(b, "b"))]
                assert not set(http_held) & set(py_batch), "held by both"
            elif op in ("ack", "done", "release") and lease is not None:
                upto = http_held[n - 1] + 1 if 0 < n <= len(http_held) else None
                try:
                    if op == "release":
                        store.release("g", lease["token"], ack_request(False, None))
                    else:
                        store.ack("g", lease["token"], ack_request(op == "done", upto))
                except DsError as exc:
                    assert exc.code == "FENCED"  # its lease ended ("expire"): nothing applied
                    lease, http_held = None, []
                    continue
                if op != "release" and upto is not None:
                    acked += [o for o in http_held if o < upto]
                    http_held = [o for o in http_held if o >= upto]
                if op != "ack":
                    lease, http_held = None, []
            elif op == "fetch":
                batch = sub.fetch("py", max_records=n)
                assert not set(batch.offsets) & set(http_held), "held by both"
                py_batch.update(batch.attempts)
            elif op == "py_ack" and py_batch:
                chosen = dict(list(py_batch.items())[:n])
                try:
                    result = sub.ack(*chosen, attempts=chosen)
                    acked += list(result.applied)
                except ConcurrencyError:
                    pass  # delivered again since ("expire"): the old delivery must not count
                for o in chosen:
                    del py_batch[o]
            elif op == "py_nack" and py_batch:
                sub.nack(*py_batch)
                py_batch = {}
            elif op == "expire":
                now[0] += 2.0
                py_batch = {}  # both holds are void now: their records go to the next taker
                http_held = []
            assert len(acked) == len(set(acked)), "a record acked twice"
        # Drain: what is left is delivered and acked once.
        now[0] += 2.0
        while True:
            batch = sub.fetch("drain", max_records=100)
            if not batch:
                break
            acked += list(sub.ack(*batch.offsets, attempts=batch.attempts).applied)
        assert sorted(acked) == list(range(appended))


def test_a_webhook_answer_is_read_only_up_to_a_bound(hooks_client: httpx.Client, db_path: str) -> None:
    # A receiver (the subscription's creator names it) answered {"done": true} and then
    # 64 MB of JSON whitespace: the server read every byte into memory, then acked. Now
    # it stops reading past a bound (the answer is not taken: the wake's lease runs out)
    # and closes the connection under the receiver's writes.
    outcome: queue.Queue[str] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["content-length"]))
            filler = b" " * (1 << 20)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(b'{"done": true}') + 64 * len(filler)))
            self.end_headers()
            try:
                self.wfile.write(b'{"done": true}')
                for _ in range(64):
                    self.wfile.write(filler)
                self.wfile.flush()
            except OSError:
                outcome.put("cut")
                return
            outcome.put("read whole")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        assert hooks_client.put("/__ds/subscriptions/big", json={
            "type": "webhook", "pattern": "big/*", "webhook": {"url": url}}).status_code == 201
        with sqlstream.open(db_path) as db:
            db.create_stream("big/a", metadata={"content_type": "application/json"}).append({"n": 1})
        assert outcome.get(timeout=60) == "cut"
        with sqlstream.open(db_path) as db:
            assert db.subscription("big@big/a").info().acked == 0
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------- wake loops


def test_a_configuration_whose_wakes_feed_each_other_is_refused(client: httpx.Client, db_path: str) -> None:
    # A linked s1 and woke into s2; B linked s2 and woke into s1: every wake of one was
    # new work for the other, so the two woke each other for ever (one event per turn,
    # however fast the workers acked). Both PUTs were 201 before.
    for name in ("s1", "s2", "s3", "w/a", "w/b", "solo"):
        _json_stream(client, name)
    assert _subscribe(client, "A", streams=["s1"], wake_stream="s2").status_code == 201
    refused = _subscribe(client, "B", streams=["s2"], wake_stream="s1")
    assert (refused.status_code, _error(refused)) == (400, "INVALID_REQUEST"), refused.text
    assert "wake loop" in refused.json()["error"]["message"] and "'A'" in refused.json()["error"]["message"]
    # A chain that does not come back is fine: C consumes A's wakes, and wakes into s3.
    assert _subscribe(client, "C", streams=["s2"], wake_stream="s3").status_code == 201
    # ... until a link closes it: A linking s3 (C's wake stream) is refused, and changes nothing.
    closing = client.post("/__ds/subscriptions/A/streams", json={"streams": ["s1", "s3"]})
    assert (closing.status_code, _error(closing)) == (400, "INVALID_REQUEST"), closing.text
    assert [s["path"] for s in client.get("/__ds/subscriptions/A").json()["streams"]] == ["s1"]
    # Through patterns: each matches the other's wake stream (never its own).
    assert _subscribe(client, "P", pattern="w/*", wake_stream="w/a").status_code == 201
    by_glob = _subscribe(client, "Q", pattern="w/**", wake_stream="w/b")
    assert (by_glob.status_code, _error(by_glob)) == (400, "INVALID_REQUEST"), by_glob.text
    # A subscription linking its own wake stream explicitly is a loop of one.
    own = _subscribe(client, "O", streams=["solo"], wake_stream="solo")
    assert (own.status_code, _error(own)) == (400, "INVALID_REQUEST"), own.text
    with sqlstream.open(db_path) as db:  # nothing of the refused ones was made
        assert sorted(i.name for i in db.subscriptions()) == ["A@s1", "C@s2", "P@w/b"]
    for sid in ("B", "Q", "O"):
        assert client.get(f"/__ds/subscriptions/{sid}").status_code == 404


def test_acked_offset_after_retention_trimmed_unacked_records_is_readable(client: httpx.Client, db_path: str) -> None:
    # Retention removed records 0-5 that the group had not acked: GET showed acked_offset
    # as offset 0 (with the byte position of record 6), and a read from it was 410 Gone.
    _json_stream(client, "wake")
    _json_stream(client, "r")
    assert _subscribe(client, "ret", streams=["r"]).status_code == 201
    with sqlstream.open(db_path) as db:
        db.stream("r").extend([{"i": i} for i in range(10)])
        db.trim("r", 6)
        first = db.stream_info("r")
        assert first.first_offset == 6
    (link,) = client.get("/__ds/subscriptions/ret").json()["streams"]
    assert link["acked_offset"] == p.format_offset(6, first.first_position)
    read = client.get("/r", params={"offset": link["acked_offset"]})
    assert read.status_code == 200 and read.json() == [{"i": i} for i in range(6, 10)]
    claim = _claim(client, "ret", "w").json()
    (stream,) = claim["streams"]
    assert stream["acked_offset"] == link["acked_offset"] and _claimed_values(client, stream) == read.json()
    assert _ack(client, "ret", claim, [("r", stream["tail_offset"])]).status_code == 200


def test_a_webhook_answer_nested_too_deep_is_not_taken() -> None:
    # 30,000 nested arrays (under the 64 KiB answer bound) make Python's JSON parser raise
    # RecursionError: it escaped post(), so the call's task died with it (asyncio logged a
    # never-retrieved exception). Now such an answer is "not JSON": not taken, like any other.
    import asyncio

    from sqlstream.http.webhooks import MAX_ANSWER_BYTES, Signer, post

    deep = b"[" * 30_000 + b"]" * 30_000
    assert len(deep) <= MAX_ANSWER_BYTES
    for answer, taken in ((deep, None), (b'{"done": true}', {"done": True})):
        receiver = _Receiver(answer)
        try:
            async def call() -> Any:
                async with httpx.AsyncClient() as http:
                    return await post(http, Signer(), receiver.url, {"wake_id": "w"})

            assert asyncio.run(call()) == taken
        finally:
            receiver.close()



def test_an_ack_naming_a_linked_stream_deleted_since_the_claim_applies_the_rest(client: httpx.Client,
                                                                                db_path: str) -> None:
    # The claim held records of s and t; s was deleted meanwhile (its group with it). The
    # worker's ack naming both was refused whole with 409 INVALID_OFFSET "stream 's' is
    # not linked" (GET still lists the link), so nothing of t was acked and the lease
    # stayed until it ran out. Deleted records need no ack: the rest applies.
    for name in ("wake", "s", "t"):
        _json_stream(client, name)
    assert _subscribe(client, "del", streams=["s", "t"]).status_code == 201
    client.post("/s", content=b"[1]", headers={"content-type": "application/json"})
    client.post("/t", content=b"[2]", headers={"content-type": "application/json"})
    claim = _claim(client, "del", "w").json()
    tails = {s["path"]: s["tail_offset"] for s in claim["streams"]}
    assert client.delete("/s").status_code == 204
    acked = _ack(client, "del", claim, [("s", tails["s"]), ("t", tails["t"])])
    assert acked.status_code == 200, acked.text
    with sqlstream.open(db_path) as db:
        info = db.subscription("del@t").info()
        assert (info.acked, info.pending) == (1, 0)
    assert _error(_claim(client, "del", "w")) == "NO_PENDING_WORK"  # the lease ended with the done ack


def test_a_webhook_answer_trickled_byte_by_byte_is_cut_at_the_calls_deadline() -> None:
    # httpx's timeout bounds each read: a receiver that sent its answer a byte at a time,
    # each within the timeout, held the call (and its connection) until it chose to stop
    # (64 KiB at a byte per 9 s: days), and the pump starts another call every time the
    # wake's lease ends. Now the call has one deadline: the connection is closed under
    # the receiver's writes, and the answer is not taken.
    import asyncio

    from sqlstream.http.webhooks import Signer, post

    outcome: queue.Queue[str] = queue.Queue()
    answer = b'{"done": true}' + b" " * 40

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            try:
                for i in range(len(answer)):  # 54 bytes, 0.1 s apart: 5.4 s, each read well within 0.5 s
                    self.wfile.write(answer[i:i + 1])
                    self.wfile.flush()
                    threading.Event().wait(0.1)
            except OSError:
                outcome.put("cut")
                return
            outcome.put("sent whole")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async def call() -> Any:
            async with httpx.AsyncClient() as http:
                return await post(http, Signer(), f"http://127.0.0.1:{server.server_address[1]}/hook",
                                  {"wake_id": "w"}, timeout=0.5)

        assert asyncio.run(call()) is None
        assert outcome.get(timeout=60) == "cut"
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_host_name_resolving_to_a_private_address_is_not_called() -> None:
    # The URL rule looks at the URL only: https://NAME/ passed for any name, and the call
    # went wherever NAME resolved to then (this machine's own name resolves to loopback
    # here; a name's DNS can answer anything, and change its answer after the check).
    # Now the call resolves the name, checks every address, and connects to the one checked.
    import asyncio
    import socket

    from sqlstream.http.webhooks import Signer, post

    name = socket.gethostname()
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    if not any(addr.startswith("127.") for addr in resolved) or webhook_url_problem(f"https://{name}/") is not None:
        pytest.skip(f"this machine's name {name!r} does not resolve to 127.x only ({resolved})")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    try:
        async def call() -> Any:
            async with httpx.AsyncClient() as http:
                return await post(http, Signer(), f"https://{name}:{listener.getsockname()[1]}/hook", {"wake_id": "w"})

        assert asyncio.run(call()) is None
        with pytest.raises(BlockingIOError):  # nobody connected (the TCP handshake would be queued)
            listener.accept()
    finally:
        listener.close()


def test_a_webhook_by_host_name_is_called_at_the_checked_address_with_its_name_as_host() -> None:
    import asyncio

    from sqlstream.http.webhooks import Signer, post

    receiver = _Receiver({"done": True})
    try:
        url = receiver.url.replace("127.0.0.1", "localhost")
        assert webhook_url_problem(url) is None

        async def call() -> Any:
            async with httpx.AsyncClient() as http:
                return await post(http, Signer(), url, {"wake_id": "w"})

        assert asyncio.run(call()) == {"done": True}
        headers, _body = receiver.next()
        assert headers["host"] == url.split("/")[2]  # localhost:PORT, though the call went to 127.0.0.1
    finally:
        receiver.close()


def test_describing_a_subscription_neither_waits_for_nor_takes_the_write_lock(tmp_path: Path) -> None:
    """GET of a subscription reads one snapshot: answered while another connection holds
    the write lock (it used to run in db.transaction(), BEGIN IMMEDIATE, and time out)."""
    import apsw

    path = str(tmp_path / "describe.db")
    db = sqlstream.open(path, busy_timeout=0.05)
    try:
        db.create_stream("wake", metadata={"content_type": "application/json"})
        stream = db.create_stream("s", metadata={"content_type": "application/json"})
        stream.extend([{"n": 1}, {"n": 2}])
        store = DsStore(db)
        assert store.create("g", parse_config({"type": "pull-wake", "streams": ["s"], "wake_stream": "wake"}))
        before = store.describe("g")
        writer = apsw.Connection(path)
        writer.execute("BEGIN IMMEDIATE")
        try:
            writer.execute("DELETE FROM ds_subscription_links")  # uncommitted: the snapshot must not see it
            held = store.describe("g")
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert held == before and [s["path"] for s in held["streams"]] == ["s"]
    finally:
        db.close()


def test_nested_snapshots_of_a_thread_read_one_state_of_the_file(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.append(b"a")
    other = sqlstream.open(db.path)
    try:
        with db.engine.snapshot():
            first = db.stream_info("s").next_offset
            other.stream("s").append(b"b")  # committed by another connection meanwhile
            assert db.stream_info("s").next_offset == first == 1  # the inner read joins the outer one
            assert [r.value for r in s.read(0, 10)] == [b"a"]
        assert db.stream_info("s").next_offset == 2
    finally:
        other.close()
