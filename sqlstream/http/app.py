"""The Durable Streams ASGI application: one sqlstream file served over HTTP.

``create_app(path_or_db, config)`` returns a plain ASGI callable (raw ASGI, no framework:
long-lived responses and client disconnects are handled directly, and the app mounts
inside any ASGI app, Starlette and FastAPI included). Every stream URL
``{prefix}/{name}`` is the sqlstream stream ``name``: same records, same offsets.
It uses :mod:`sqlstream.aio`: statements run on the AsyncDatabase's worker thread (a
POST's lookups, checks and append as one job there, on the synchronous API), and live
reads (long-poll, SSE) wait on futures completed by sqlstream's wake-ups, so a record
appended by any process wakes them and no thread is parked per connection.

Contracts:

- A request's writes are one transaction (create + initial body + expiry + close; an
  append with its producer state, writer sequence and close). POSTs waiting for the
  database thread together commit together (group commit, ``AsyncDatabase.run_grouped``):
  each in its own savepoint, checked after the ones before it, answered only once the
  group's commit has returned; a refused POST changes nothing the others wrote.
- A client that goes away mid long-poll or mid SSE is noticed (``http.disconnect``) and
  its wait is cancelled at once: nothing stays behind (tasks, wake-up registrations).
- Limits: request bodies up to the file's ``max_record_bytes`` (413), request headers up
  to ``max_header_bytes`` (431), at most ``max_live`` open live reads (503 with
  ``Retry-After``); with a ``token`` every request but ``/healthz`` needs
  ``Authorization: Bearer <token>`` (401).
- ``close()`` ends every live read (long-polls answer 204, SSE streams end) and closes the
  database: the drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .. import aio
from ..database import Database
from ..errors import (
    AccessDenied,
    DamagedRecord,
    InvalidArgument,
    InvalidName,
    InvalidValue,
    OffsetOutOfRange,
    PayloadTooLarge,
    SequenceGap,
    SequenceRegression,
    SqlstreamError,
    StaleEpoch,
    StreamExists,
    StreamGone,
    StreamNotFound,
    StreamSealed,
)
from ..fencing import FencedAppend
from ..lifetimes import Lifetime
from ..records import StreamInfo
from ..streams import Stream
from ..validation import MAX_COUNT, MAX_LIMIT, MAX_TIMEOUT, check_name
from . import catchup
from . import protocol as p
from .metrics import Metrics
from .pages import Page, Tails, json_pieces, page_of
from .protocol import ProtocolError
from .subscriptions import SubscriptionRoutes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
# What a POST's database-thread work gives back: the response, and what to hand the live
# reads waiting at the stream's tail (None: nothing new), or the protocol's refusal.
_AppendOutcome = tuple["_Response", "tuple[_Stream, list[Any], FencedAppend] | None"]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_EXPOSED = ", ".join((
    "Stream-Next-Offset", "Stream-Up-To-Date", "Stream-Closed", "Stream-Cursor", "Stream-TTL",
    "Stream-Expires-At", "Stream-Write-Secret", "Stream-SSE-Data-Encoding", "Producer-Epoch", "Producer-Seq",
    "Producer-Expected-Seq", "Producer-Received-Seq", "ETag", "Location", "Content-Type", "Retry-After",
))
_ALLOWED_HEADERS = ", ".join((
    "Content-Type", "Authorization", "If-None-Match", "Stream-TTL", "Stream-Expires-At", "Stream-Seq",
    "Stream-Closed", "Stream-Forked-From", "Stream-Fork-Offset", "Stream-Fork-Sub-Offset", "Stream-Write-Secret",
    "Producer-Id", "Producer-Epoch", "Producer-Seq",
))
_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"


@dataclass
class HttpConfig:
    """How the HTTP front serves a file (the ``[http]`` table of ``sqlstream serve``)."""

    prefix: str = "/v1/stream"
    """URL path under which stream names live: ``{prefix}/{name}``."""
    token: str | None = None
    """When set, every request but ``/healthz`` needs ``Authorization: Bearer <token>``."""
    long_poll_timeout: float = 20.0
    """Seconds a long-poll waits for data before answering 204."""
    sse_max_seconds: float = 60.0
    """An SSE response ends after this long (clients reconnect; lets CDNs collapse)."""
    max_live: int = 1000
    """Open long-poll/SSE responses at most; more get 503 + Retry-After."""
    max_header_bytes: int = 16384
    """Total size of a request's headers; larger get 431."""
    max_chunk_bytes: int = 4 * 1024 * 1024
    """Bytes of records the server reads and holds at a time for one response: a long-poll
    response or an SSE data event carries about this many, a catch-up response is sent in
    pieces of this size, about two of them held at once (the first record always fits: a
    larger one comes alone). Larger pieces mean fewer hand-overs between the database
    thread and the event loop: on a loaded machine 4 MiB pieces read a 10 MB catch-up in
    two thirds of the wall time 1 MiB pieces took (benchmarks/findings.md)."""
    max_response_bytes: int = 64 * 1024 * 1024
    """A catch-up response carries about this many bytes at most (sent in pieces of
    ``max_chunk_bytes``); the client asks again for more."""
    web_view: bool = True
    """``GET /`` serves the live web view (streams, lag, a live tail)."""
    cache_control: str = "public, max-age=60, stale-while-revalidate=300"
    """Cache-Control of catch-up reads (``private, ...`` when a token is set)."""
    metrics: bool = True
    """``GET /metrics`` serves Prometheus metrics."""
    retry_after: int = 1
    """Seconds in the Retry-After of a 503."""
    max_messages_per_append: int = 10_000
    """Messages one JSON-mode POST or PUT may carry (an array body is flattened into one record
    per element, all in one transaction that holds the file's write lock); more get 413."""
    max_claim_bytes: int = 64 * 1024 * 1024
    """A subscription claim's byte budget per linked stream (``Subscription.fetch``'s
    ``max_bytes``): records while their sizes fit, the first always, besides the claim's
    ``max_records``."""
    max_connections: int = 1024
    """Open connections at most (:class:`~sqlstream.http.server.HttpServer`): more are closed
    when accepted, and 503 answers requests while that many run. Keep it above ``max_live``."""
    header_timeout: float = 20.0
    """Seconds a client has to send a request's headers (from connecting, or from the first
    byte of a request on a kept-alive connection); slower connections are closed."""
    cors_origins: tuple[str, ...] | None = None
    """Web origins (``https://app.example``) whose pages may call the API from a browser;
    ``"*"``: any page. None (the default): ``("*",)`` with a token (a browser never attaches
    a bearer token by itself, so a page needs the token to do anything), none without one
    (else any page the user visits could read, append to and delete the local streams).
    Same-origin pages (the web view) need no entry."""
    webhooks: bool = False
    """Serve webhook subscriptions (``__ds/subscriptions``): the server then POSTs signed wakes
    to the URLs clients give (https to public hosts, http to localhost / 127.0.0.x). Off:
    such a PUT gets 400, pull-wake subscriptions are served either way."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (besides localhost and loopback addresses) that requests may name in their
    ``Host`` header when the server listens on a loopback address; others get 421, so a
    DNS-rebinding page (evil.example resolving to 127.0.0.1) is not served."""
    open_options: dict[str, Any] = field(default_factory=dict)
    """Options for ``sqlstream.aio.open`` when the app opens the file itself."""

    def __post_init__(self) -> None:
        """Refuse numbers the server could not honour (``InvalidArgument`` naming the field)."""
        for name in NUMERIC_OPTIONS:
            problem = number_problem(getattr(self, name), MAXIMUMS.get(name))
            if problem is not None:
                raise InvalidArgument(f"HttpConfig.{name} {problem}")


NUMERIC_OPTIONS = ("long_poll_timeout", "sse_max_seconds", "max_live", "max_header_bytes", "max_chunk_bytes",
                   "max_response_bytes",
                   "retry_after", "max_connections", "header_timeout", "max_messages_per_append",
                   "max_claim_bytes")
"""The :class:`HttpConfig` fields that are counts or seconds: finite and > 0."""

MAXIMUMS = {
    # Passed to the read and claim APIs as their byte budgets, which refuse more: a server
    # configured past them accepted the setting and then answered every read (or claim)
    # with 400.
    "max_chunk_bytes": MAX_COUNT, "max_response_bytes": MAX_LIMIT, "max_claim_bytes": MAX_LIMIT,
    # Seconds, as every timeout of the Python API (an int past float range would raise
    # OverflowError at every request that adds it to the clock).
    "long_poll_timeout": MAX_TIMEOUT, "sse_max_seconds": MAX_TIMEOUT, "header_timeout": MAX_TIMEOUT,
}
"""The largest value of the :data:`NUMERIC_OPTIONS` that have one."""


def number_problem(value: object, maximum: float | None = None) -> str | None:
    """Why ``value`` is not a usable count or number of seconds (None if it is): NaN would
    make every comparison false (a long-poll then fails with the Python API's error), inf
    a wait without end, 0 or less no service at all; past ``maximum``, more than the
    server can honour."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, not {value!r}"
    # An int is finite however large (math.isfinite would raise OverflowError past floats).
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        return f"must be a finite number > 0, not {value!r}"
    if maximum is not None and value > maximum:
        shown = f"{value!r}" if len(repr(value)) <= 30 else f"a number of {len(repr(value))} digits"
        return f"must be at most {maximum:,}, not {shown}"
    return None


class _Response:
    """Status, headers and body of a plain (non-streaming) response."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self.body = body


class _Stream:
    """What a request needs to know of a stream (one snapshot)."""

    __slots__ = ("name", "info", "content_type", "json", "ttl", "expires_at")

    def __init__(self, name: str, info: StreamInfo, ttl: float | None, expires_at: float | None) -> None:
        self.name = name
        self.info = info
        self.content_type = str(info.metadata.get("content_type") or p.DEFAULT_CONTENT_TYPE)
        self.json = p.is_json(self.content_type)
        self.ttl = ttl
        self.expires_at = expires_at

    @property
    def sealed(self) -> bool:
        return self.info.sealed_at is not None


class DurableStreamsApp:
    """The ASGI application (see the module docstring). Create with :func:`create_app`."""

    def __init__(self, target: str | aio.AsyncDatabase, config: HttpConfig | None = None) -> None:
        self.config = config or HttpConfig()
        self.prefix = "/" + self.config.prefix.strip("/") if self.config.prefix.strip("/") else ""
        self._path = target if isinstance(target, str) else None
        self._db = None if isinstance(target, str) else target
        self._owns_db = isinstance(target, str)
        self._opening = asyncio.Lock()
        self._closing = asyncio.Event()
        self.live = 0
        self.tails = Tails()
        self.damage = catchup.Damage()
        self.metrics = Metrics()
        self.subscriptions = SubscriptionRoutes(webhooks=self.config.webhooks,
                                                max_claim_bytes=self.config.max_claim_bytes)
        if self.config.token is not None and self.config.cache_control.startswith("public"):
            self.config.cache_control = "private" + self.config.cache_control[len("public"):]

    # ----------------------------------------------------------------- lifecycle

    async def db(self) -> aio.AsyncDatabase:
        """The AsyncDatabase, opened on first use (on the serving loop)."""
        if self._db is None:
            async with self._opening:
                if self._db is None:
                    assert self._path is not None
                    self._db = await aio.open(self._path, **self.config.open_options)
        if not self._closing.is_set():
            self.subscriptions.start(self._db)  # the wake pump (idempotent)
        return self._db

    def begin_drain(self) -> None:
        """Make every live read end now (long-polls answer, SSE streams close); call on the loop."""
        self._closing.set()

    async def close(self) -> None:
        """End every live read, then close the database if the app opened it."""
        self._closing.set()
        await self.subscriptions.stop()
        for _ in range(200):  # live reads end at their next step; wait a little for them
            if self.live == 0:
                break
            await asyncio.sleep(0.01)
        if self._owns_db and self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        status = await self._http(scope, receive, send)
        self.metrics.request(scope["method"], status, time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.db()
                except SqlstreamError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----------------------------------------------------------------- routing

    def cors_allows(self, origin: str | None) -> bool:
        """Whether a browser page of ``origin`` may read answers and send any request (CORS)."""
        allowed = self.config.cors_origins
        if allowed is None:
            allowed = ("*",) if self.config.token is not None else ()
        return origin is not None and ("*" in allowed or origin in allowed)

    def host_allowed(self, scope: Scope, host: str | None) -> bool:
        """Whether a request naming ``host`` may be served: always unless the connection came to a
        loopback address, where only loopback names, addresses and ``allowed_hosts`` are (DNS rebinding)."""
        server = scope.get("server")
        if host is None or not server or not p.is_loopback(str(server[0])):
            return True
        name = p.host_name(host)
        return p.is_loopback(name) or name in (h.lower() for h in self.config.allowed_hosts)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> int:
        headers = _headers(scope)
        if not self.host_allowed(scope, headers.get("host")):
            return await _send(send, _error(421, f"this server does not serve the host {headers.get('host')!r} "
                                                 "(it listens on loopback; [http] allowed_hosts lists other names)"),
                               {})
        origin = headers.get("origin")
        if origin is not None and not self.cors_allows(origin):
            # Refused, not just answered without CORS headers: a "simple" cross-origin POST
            # (text/plain, forms) has no preflight, so it would append before the browser
            # withheld the answer. A same-origin page (the web view) sends its own origin.
            del headers["origin"]
            if origin != f"{scope.get('scheme', 'http')}://{headers.get('host', '')}":
                return await _send(send, _error(403, f"cross-origin requests from {origin} are not allowed "
                                                     "(the server's [http] cors_origins lists the allowed ones)"),
                                   headers)
        method = scope["method"]
        path: str = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        try:
            if sum(len(k) + len(v) for k, v in scope["headers"]) > self.config.max_header_bytes:
                raise ProtocolError(431, "request headers too large")
            if method == "OPTIONS":
                return await _send(send, _Response(204, {"access-control-max-age": "86400"}), headers)
            if path == "/healthz":
                await (await self.db()).query("SELECT 1")
                return await _send(send, _Response(200, {"content-type": "text/plain"}, b"ok\n"), headers)
            if path == self.prefix + "/__ds" or path.startswith(self.prefix + "/__ds/"):
                body = await self._body(receive, headers) if method in ("PUT", "POST") else b""
                base = f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}{root}{self.prefix}"
                status, h, payload = await self.subscriptions.handle(
                    await self.db(), method, path[len(self.prefix) + 1:], headers, body, base,
                    lambda: self._authorize(headers))
                return await _send(send, _Response(status, h, payload), headers)
            self._authorize(headers)
            if path.startswith(self.prefix + "/") and len(path) > len(self.prefix) + 1:
                name = path[len(self.prefix) + 1:]
                return await self._stream_request(method, name, scope, headers, receive, send)
            if method in ("GET", "HEAD"):
                response = await self._site(path, headers)
                if response is not None:
                    if method == "HEAD":
                        response.body = b""
                    return await _send(send, response, headers)
            raise ProtocolError(404, "not found")
        except ProtocolError as exc:
            return await _send(send, _error(exc.status, str(exc), exc.headers), headers)
        except DamagedRecord as exc:
            return await _send(send, await self._damaged(exc), headers)
        except SqlstreamError as exc:
            return await _send(send, _from_sqlstream(exc), headers)

    async def _damaged(self, exc: DamagedRecord) -> _Response:
        """The answer to a read that starts at a damaged record (one another tool broke:
        text that is not UTF-8, JSON that does not parse, a payload row gone).

        Not a 5xx: the read fails the same way every time until someone repairs or
        skips the record, and clients retry a 5xx for ever (an EventSource too), which
        hid the damage behind a retry loop. 422 with the record named, why, and the
        offset to read on from to skip it (also as ``Stream-Next-Offset``, so a client
        that decides to skip need not parse the text); ``no-store``.
        """
        db = await self.db()
        after = exc.offset + 1
        try:
            position = (await db.run_sync(lambda: db.sync.stream(exc.stream).read_raw(after, 1))).position
        except SqlstreamError:  # the next record is damaged too: the token's offset is what counts
            position = 0
        skip = p.format_offset(after, position)
        reason = str(exc.args[0]).split("; nothing was read")[0]
        return _error(422, f"{reason}; nothing was read. To skip it, read on from offset={skip}; "
                           "`sqlstream check` on the server lists every damaged record",
                      {p.NEXT_OFFSET: skip})

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.config.token is None:
            return
        given = headers.get("authorization", "")
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(),
                                                                   self.config.token.encode()):
            raise ProtocolError(401, "missing or wrong bearer token", {"www-authenticate": "Bearer"})

    async def _site(self, path: str, headers: dict[str, str]) -> _Response | None:
        if path == "/metrics" and self.config.metrics:
            db = await self.db()
            body, ctype = self.metrics.render(await db.streams(), await db.subscriptions(),
                                              await _streaming_status(db), self.live)
            return _Response(200, {"content-type": ctype, "cache-control": "no-store"}, body)
        if path == "/" and self.config.web_view:
            page = importlib.resources.files("sqlstream.http").joinpath("view.html").read_bytes()
            page = page.replace(b"{{PREFIX}}", self.prefix.encode())
            return _Response(200, {"content-type": "text/html; charset=utf-8", "cache-control": "no-store",
                                   "content-security-policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                              "script-src 'unsafe-inline'"}, page)
        if path == "/streams.json" and self.config.web_view:
            db = await self.db()
            infos = await db.streams()
            listing = [{"name": i.name, "records": i.count, "bytes": i.byte_length, "next_offset": i.next_offset,
                        "closed": i.sealed_at is not None,
                        "content_type": i.metadata.get("content_type", p.DEFAULT_CONTENT_TYPE),
                        "lag_seconds": None if i.last_append_at is None else max(0.0, time.time() - i.last_append_at)}
                       for i in infos]
            return _Response(200, {"content-type": "application/json", "cache-control": "no-store"},
                             json.dumps(listing).encode())
        return None

    async def _stream_request(self, method: str, name: str, scope: Scope, headers: dict[str, str],
                              receive: Receive, send: Send) -> int:
        try:
            check_name(name)
        except InvalidName as exc:
            raise ProtocolError(400, str(exc)) from None
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1"),
                                                keep_blank_values=True).items()}
        if method == "PUT":
            body = await self._body(receive, headers)
            base = f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}{scope.get('root_path', '')}"
            return await _send(send, await self._create(name, headers, body, base), headers)
        if method == "POST":
            body = await self._body(receive, headers)
            return await _send(send, await self._append(name, headers, body), headers)
        if method == "HEAD":
            return await _send(send, await self._head(name), headers)
        if method == "DELETE":
            return await _send(send, await self._delete(name, headers), headers)
        if method == "GET":
            return await self._read(name, headers, query, receive, send)
        raise ProtocolError(405, f"method {method} not allowed", {"allow": _METHODS})

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = (await self.db()).sync.max_record_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(413, f"request body of {declared} bytes exceeds the limit of {limit}")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ProtocolError(400, "client went away before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProtocolError(413, f"request body exceeds the limit of {limit} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    # ----------------------------------------------------------------- stream lookups

    async def _find(self, name: str, *, touch: bool) -> _Stream:
        """The stream, or ProtocolError: 404 (absent or expired: then retired), 410 (soft-deleted).
        One hop to the database thread (:func:`_lookup`)."""
        db = await self.db()
        return await db.run_sync(_lookup, db.sync, name, touch)

    def _stream_headers(self, st: _Stream, end: tuple[int, int] | None = None) -> dict[str, str]:
        """Content type, Stream-Next-Offset (``end`` = (offset, byte position), default the
        tail), Stream-Closed, Stream-TTL / Stream-Expires-At."""
        h = {"content-type": st.content_type, p.NEXT_OFFSET: p.format_offset(*(end or _tail(st.info)))}
        if st.sealed:
            h[p.CLOSED] = "true"
        if st.ttl is not None:
            h[p.TTL] = str(int(st.ttl))
        if st.expires_at is not None:
            h[p.EXPIRES_AT] = p.format_rfc3339(st.expires_at)
        return h

    # ----------------------------------------------------------------- PUT

    async def _create(self, name: str, headers: dict[str, str], body: bytes, base: str) -> _Response:
        db = await self.db()
        ctype_given = headers.get("content-type")
        ttl = expires_at = None
        if p.TTL in headers:
            ttl = p.parse_uint(headers[p.TTL], "Stream-TTL")
        if p.EXPIRES_AT in headers:
            expires_at = p.parse_rfc3339(headers[p.EXPIRES_AT])
        if ttl is not None and expires_at is not None:
            raise ProtocolError(400, "give Stream-TTL or Stream-Expires-At, not both")
        closed = p.is_true(headers.get(p.CLOSED))
        secret = p.WRITE_SECRET in headers
        fork = await self._fork_request(headers, ctype_given)
        ctype = (ctype_given or "").strip() or (fork[2] if fork else p.DEFAULT_CONTENT_TYPE)
        if fork is not None and p.media_type(ctype) != p.media_type(fork[2]):
            raise ProtocolError(409, f"a fork has its source's content type {fork[2]!r}")
        meta: dict[str, Any] = {"content_type": ctype}
        if fork is not None:
            meta.update(forked_from=fork[0], fork_offset=fork[1], fork_sub_offset=fork[3])
        existing = await self._existing(name, meta, ttl, expires_at, closed)
        if existing is not None:
            return existing
        values = self._values(ctype, body, allow_empty_json=True) if body else []
        try:
            async with db.transaction():
                if fork is not None:
                    source, offset, _src_ctype, sub = fork
                    stream = await self._fork(db, name, source, offset, sub, meta, ttl, expires_at)
                else:
                    stream = await db.create_stream(name, metadata=meta, secret=secret)
                    if ttl is not None or expires_at is not None:
                        await db.set_expiry(name, ttl=ttl, expires_at=expires_at)
                if values or closed:
                    await stream.append_fenced(values, seal=closed)
        except StreamExists:
            existing = await self._existing(name, meta, ttl, expires_at, closed)
            if existing is not None:
                return existing
            raise ProtocolError(409, f"stream {name!r} exists with another configuration") from None
        st = await self._find(name, touch=False)
        h = self._stream_headers(st)
        h["location"] = base + self.prefix + "/" + name
        if stream.write_secret is not None:
            h[p.WRITE_SECRET] = stream.write_secret
        return _Response(201, h)

    async def _fork_request(self, headers: dict[str, str],
                            ctype: str | None) -> tuple[str, int | None, str, int] | None:
        """(source name, fork offset or None for its tail, source content type, sub-offset) of a fork PUT."""
        if p.FORKED_FROM not in headers:
            if p.FORK_OFFSET in headers or p.FORK_SUB_OFFSET in headers:
                raise ProtocolError(400, "Stream-Fork-Offset needs Stream-Forked-From")
            return None
        source_path = headers[p.FORKED_FROM].strip()
        source = source_path[len(self.prefix) + 1:] if source_path.startswith(self.prefix + "/") else source_path.lstrip("/")
        try:
            check_name(source)
        except InvalidName:
            raise ProtocolError(404, f"no source stream at {source_path!r}") from None
        offset = p.parse_token(headers[p.FORK_OFFSET].strip(), "Stream-Fork-Offset") if p.FORK_OFFSET in headers else None
        sub = p.parse_uint(headers[p.FORK_SUB_OFFSET], "Stream-Fork-Sub-Offset") if p.FORK_SUB_OFFSET in headers else 0
        db = await self.db()
        try:
            life = await db.lifetime(source)
            info = await db.stream_info(source)
        except StreamNotFound:
            raise ProtocolError(404, f"no source stream {source!r}") from None
        if life.deleted:
            raise ProtocolError(409, f"source stream {source!r} was deleted")
        if life.expired:
            raise ProtocolError(404, f"source stream {source!r} expired")
        if offset is not None and offset > info.next_offset:
            raise ProtocolError(400, f"fork offset is past the end of {source!r}")
        src_ctype = str(info.metadata.get("content_type") or p.DEFAULT_CONTENT_TYPE)
        return source, offset, src_ctype, sub

    async def _fork(self, db: aio.AsyncDatabase, name: str, source: str, offset: int | None, sub: int,
                    meta: dict[str, Any], ttl: int | None, expires_at: float | None) -> aio.AsyncStream:
        info = await db.stream_info(source)
        at = info.next_offset if offset is None else offset
        partial = 0
        if sub:
            if p.is_json(meta["content_type"]):
                at += sub  # JSON mode: one message per record
                if at > info.next_offset:
                    raise ProtocolError(400, "Stream-Fork-Sub-Offset is past the end of the source")
            else:
                partial = sub
        try:
            stream = await db.fork_stream(name, source, at, partial=partial, metadata=meta,
                                          ttl=None if ttl is None else float(ttl), expires_at=expires_at)
        except OffsetOutOfRange as exc:
            raise ProtocolError(400, str(exc)) from None
        except InvalidArgument as exc:
            raise ProtocolError(400, str(exc)) from None
        except StreamGone as exc:
            raise ProtocolError(409, str(exc)) from None
        return stream

    async def _existing(self, name: str, meta: dict[str, Any], ttl: int | None, expires_at: float | None,
                        closed: bool) -> _Response | None:
        """200 when ``name`` exists with this configuration, 409 when with another; None if absent."""
        db = await self.db()
        try:
            life = await db.lifetime(name)
            info = await db.stream_info(name)
        except StreamNotFound:
            return None
        if life.deleted:
            raise ProtocolError(409, f"stream {name!r} was deleted but forks still use it; its name is taken")
        if life.expired:
            try:
                await db.retire_stream(name)
            except (StreamNotFound, StreamGone):
                pass
            else:
                return None
        st = _Stream(name, info, life.ttl, life.expires_at)
        have = info.metadata
        same = (p.media_type(str(have.get("content_type", p.DEFAULT_CONTENT_TYPE))) == p.media_type(meta["content_type"])
                and st.sealed == closed and _same_fork(have, meta) and _same_expiry(life, ttl, expires_at))
        if not same:
            raise ProtocolError(409, f"stream {name!r} exists with another configuration")
        return _Response(200, self._stream_headers(st))

    # ----------------------------------------------------------------- POST

    def _values(self, ctype: str, body: bytes, *, allow_empty_json: bool = False) -> list[Any]:
        """A request body as record values: JSON messages, text (text/*) or bytes."""
        if p.is_json(ctype):
            messages = p.parse_json_messages(body, allow_empty=allow_empty_json,
                                             limit=self.config.max_messages_per_append)
            return [_json_value(m) for m in messages]
        if p.media_type(ctype).startswith("text/"):
            try:
                return [body.decode("utf-8")]
            except UnicodeDecodeError:
                return [body]
        return [body]

    async def _append(self, name: str, headers: dict[str, str], body: bytes) -> _Response:
        db = await self.db()
        closing = p.is_true(headers.get(p.CLOSED))
        producer = p.parse_producer(headers)
        # The body is parsed here, on the loop, as the Content-Type it names: the stream's own
        # type is known only on the database thread, and the parse (a JSON array of thousands
        # of messages) is better done there than on the thread every write queues for. The
        # stream's check compares media types, which is all the parse depends on; a failed
        # parse is raised there, in its place among the checks.
        given = headers.get("content-type")
        parsed: list[Any] | ProtocolError | None = None
        if body and given:
            try:
                parsed = self._values(given, body)
            except ProtocolError as exc:
                parsed = exc
        outcome = await db.run_grouped(self._append_now, db.sync, name, headers, body, closing, producer, given, parsed)
        if isinstance(outcome, ProtocolError):
            raise outcome
        response, publish = outcome
        if publish is not None:
            self._publish(*publish)
        return response

    def _append_now(self, sdb: Database, name: str, headers: dict[str, str], body: bytes, closing: bool,
                    producer: p.Producer | None, given: str | None,
                    parsed: list[Any] | ProtocolError | None) -> _AppendOutcome | ProtocolError:
        """A POST's work on the database thread, as one member of a group commit: the lookup
        (lifetime, TTL touch, stream info), the protocol's checks, the write secret, the
        fenced append. A refusal is returned, not raised, so the member's savepoint is kept:
        what the request wrote before it (a TTL touch, the retirement of an expired stream)
        stays written, as when each of them committed on its own."""
        try:
            st = _lookup(sdb, name, True)
            if not body and not closing:
                raise ProtocolError(400, "an append needs a body (or Stream-Closed: true to close)")
            if st.sealed and not producer:
                if not body:
                    return _Response(204, self._stream_headers(st)), None
                raise ProtocolError(409, f"stream {name!r} is closed", self._closed_headers(st))
            values: list[Any] = []
            if body:
                if not given:
                    raise ProtocolError(400, "an append with a body needs a Content-Type")
                if p.media_type(given) != p.media_type(st.content_type):
                    if not st.sealed:
                        raise ProtocolError(409, f"stream {name!r} holds {st.content_type}, not {given}")
                    parsed = self._values(st.content_type, body)
                if isinstance(parsed, ProtocolError):
                    raise parsed
                assert parsed is not None
                values = parsed
            stream = _writable(sdb, st, headers)
            try:
                result = stream.append_fenced(
                    values, producer=producer.producer if producer else None,
                    epoch=producer.epoch if producer else None, seq=producer.seq if producer else None,
                    writer_seq=headers.get(p.SEQ), seal=closing)
            except StreamSealed:
                st = _lookup(sdb, name, False)
                raise ProtocolError(409, f"stream {name!r} is closed", self._closed_headers(st)) from None
            except StaleEpoch as exc:
                raise ProtocolError(403, str(exc), {p.PRODUCER_EPOCH: str(exc.current_epoch)}) from None
            except SequenceGap as exc:
                raise ProtocolError(409, str(exc), {p.PRODUCER_EXPECTED_SEQ: str(exc.expected),
                                                    p.PRODUCER_RECEIVED_SEQ: str(exc.received)}) from None
            except SequenceRegression as exc:
                raise ProtocolError(409, str(exc)) from None
            except InvalidArgument as exc:
                raise ProtocolError(400, str(exc)) from None
        except ProtocolError as exc:
            return exc
        publish = (st, values, result) if not result.duplicate and (result.offsets or closing) else None
        h = {p.NEXT_OFFSET: p.format_offset(result.next_offset, result.byte_length)}
        if result.sealed or (result.duplicate and st.sealed):
            h[p.CLOSED] = "true"
        elif result.duplicate:
            if sdb.stream_info(name).sealed_at is not None:
                h[p.CLOSED] = "true"
        if producer:
            h[p.PRODUCER_EPOCH] = str(result.epoch)
            h[p.PRODUCER_SEQ] = str(result.seq)
            return _Response(200 if result.offsets else 204, h), publish
        return _Response(204, h), publish

    def _publish(self, st: _Stream, values: list[Any], result: FencedAppend) -> None:
        """Hand the records just committed to the live reads waiting at their first offset
        (see :class:`~sqlstream.http.pages.Tails`); called on the loop right after the
        commit, before anything else can run on it."""
        first = result.offsets.start if result.offsets else result.next_offset

        def render() -> list[bytes]:
            if st.json:
                return json_pieces([None if v == b"null" else v for v in values])
            return [v.encode("utf-8") if isinstance(v, str) else v for v in values]

        self.tails.publish(st.name, first, (result.next_offset, result.byte_length), result.sealed, render, st.json,
                           self.config.max_chunk_bytes)

    def _closed_headers(self, st: _Stream) -> dict[str, str]:
        return {p.CLOSED: "true", p.NEXT_OFFSET: p.format_offset(*_tail(st.info))}

    # ----------------------------------------------------------------- HEAD, DELETE

    async def _head(self, name: str) -> _Response:
        st = await self._find(name, touch=False)
        h = self._stream_headers(st)
        h["cache-control"] = "no-store"
        return _Response(200, h)

    async def _delete(self, name: str, headers: dict[str, str]) -> _Response:
        db = await self.db()
        st = await self._find(name, touch=False)
        if st.info.secret:
            await db.run_sync(_writable, db.sync, st, headers)
        try:
            await db.retire_stream(name)
        except StreamGone:
            raise ProtocolError(410, f"stream {name!r} was deleted") from None
        return _Response(204)

    # ----------------------------------------------------------------- GET

    async def _read(self, name: str, headers: dict[str, str], query: dict[str, str], receive: Receive,
                    send: Send) -> int:
        live = query.get("live")
        if live not in (None, "long-poll", "sse"):
            raise ProtocolError(400, f"live must be long-poll or sse, not {live!r}")
        if live is not None and "offset" not in query:
            raise ProtocolError(400, f"live={live} needs an offset")
        offset = p.parse_offset(query.get("offset"))
        st = await self._find(name, touch=True)
        start = st.info.next_offset if offset.now else max(offset.position or 0, 0)
        if offset.position is not None and offset.position >= 0 and start > st.info.next_offset:
            raise ProtocolError(400, f"offset is past the end of stream {name!r}")
        if start < st.info.first_offset and not (offset.position == -1 and st.info.first_offset >= start):
            raise ProtocolError(410, f"offset {start} was removed by retention; the first retained offset is "
                                     f"{p.format_offset(st.info.first_offset, st.info.first_position)}")
        if offset.position == -1:
            start = st.info.first_offset
        if live == "sse":
            return await self._sse(st, start, query.get("cursor"), headers, receive, send)
        if live == "long-poll":
            return await self._long_poll(st, start, query.get("cursor"), headers, receive, send)
        if offset.now:
            h = self._stream_headers(st)
            h.update({p.UP_TO_DATE: "true", "cache-control": "no-store"})
            return await _send(send, _Response(200, h, b"[]" if st.json else b""), headers)
        return await self._read_catch_up(st, start, headers, receive, send)

    async def _page(self, st: _Stream, start: int) -> Page:
        """Up to ``max_chunk_bytes`` from ``start`` (one read of the stored bytes, on the
        database thread, in one snapshot with the stream's tail and seal state)."""
        db = await self.db()
        return await db.run_sync(self._page_now, st.name, st.json, start)

    def _page_now(self, name: str, json_mode: bool, start: int) -> Page:
        """The page at ``start`` (database thread); ``ProtocolError(410)`` below retention."""
        db = self._db
        assert db is not None
        return catchup.read_piece(db.sync, name, json_mode, start, self.config.max_chunk_bytes).page

    def _catch_up_headers(self, st: _Stream, start: int, end: tuple[int, int], up_to_date: bool, closed: bool,
                          empty: bool) -> dict[str, str]:
        h = self._stream_headers(st, end)
        h.pop(p.CLOSED, None)
        if up_to_date:
            h[p.UP_TO_DATE] = "true"
        if closed:
            h[p.CLOSED] = "true"
        h["etag"] = p.etag(str(st.info.created_at), start, end[0], closed)
        h["cache-control"] = self.config.cache_control if not empty and not closed else "no-store"
        return h

    async def _catch_up(self, st: _Stream, start: int, headers: dict[str, str], page: Page | None = None) -> _Response:
        """A catch-up response of one page (``page``, or the one read at ``start``)."""
        if page is None:
            page = await self._page(st, start)
        h = self._catch_up_headers(st, start, page.end, page.up_to_date, page.closed, page.inner is None)
        if headers.get("if-none-match") == h["etag"]:
            return _Response(304, h)
        payload = page.payload
        if payload is None:
            payload = b"[]" if st.json else b""
        return _Response(200, h, payload)

    async def _read_catch_up(self, st: _Stream, start: int, headers: dict[str, str], receive: Receive,
                             send: Send) -> int:
        """A catch-up GET: up to ``max_response_bytes``, sent in pieces of ``max_chunk_bytes``
        (:mod:`sqlstream.http.catchup` says how, and what a client sees if retention runs
        meanwhile)."""
        db = await self.db()
        config = self.config
        plan = await db.run_sync(catchup.plan, db.sync, st.name, st.json, start, config.max_chunk_bytes,
                                 config.max_response_bytes, self.damage)
        if not plan.pieces:
            return await _send(send, await self._catch_up(st, start, headers, plan.first.page), headers)
        h = self._catch_up_headers(st, start, plan.end, plan.up_to_date, plan.closed, False)
        if headers.get("if-none-match") == h["etag"]:
            return await _send(send, _Response(304, h), headers)
        # No Content-Length: the length of a JSON-mode body is known only once every piece
        # is read (text records are rendered), so the server sends it chunked.
        await send({"type": "http.response.start", "status": 200, "headers": _raw_headers(h, headers)})
        disconnected = asyncio.ensure_future(_disconnect(receive))
        ahead: asyncio.Future[catchup.Piece | None] | None = None
        self.metrics.catch_up_open.inc()
        try:
            piece = plan.first
            await send({"type": "http.response.body", "body": b"[" if st.json else b"", "more_body": True})
            while True:
                assert piece.page.inner is not None
                at = piece.page.end
                # The next piece is read on the database thread while this one goes out
                # (send waits while the transport's buffer is full): two pieces at most.
                ahead = None if at[0] >= plan.end[0] else asyncio.ensure_future(db.run_sync(
                    catchup.next_piece, db.sync, st.name, st.json, plan, at, config.max_chunk_bytes, self.damage))
                await send({"type": "http.response.body", "body": piece.page.inner, "more_body": True})
                if ahead is None:
                    break
                if disconnected.done():
                    return 499  # nobody to answer: nothing more is sent or read
                try:
                    following = await ahead
                except SqlstreamError:  # the file closed under it (a stop that did not wait)
                    following = None
                ahead = None
                if following is None:
                    # Abandoned (see sqlstream.http.catchup): no last body message, so
                    # the server closes the connection and the client retries.
                    self.metrics.catch_up_abandoned.inc()
                    return 200
                piece = following
                if st.json:
                    await send({"type": "http.response.body", "body": b",", "more_body": True})
            await send({"type": "http.response.body", "body": b"]" if st.json else b"", "more_body": False})
            return 200
        finally:
            if ahead is not None:
                ahead.cancel()
            self.metrics.catch_up_open.dec()
            disconnected.cancel()

    def _enter_live(self) -> None:
        if self.live >= self.config.max_live:
            raise ProtocolError(503, "too many live connections", {"retry-after": str(self.config.retry_after)})
        self.live += 1
        self.metrics.live(self.live)

    def _leave_live(self) -> None:
        self.live -= 1
        self.metrics.live(self.live)

    async def _wait(self, st: _Stream, at: int, timeout: float, disconnected: asyncio.Future[None]) -> Page | None:
        """Wait until a record at ``at`` exists or the stream is sealed (then its page),
        ``timeout`` passes, the client goes away or the app closes (then None).

        Two sources, first wins: an append over HTTP in this app hands its page over on the
        loop (:class:`~sqlstream.http.pages.Tails`); any other commit, from any process,
        wakes ``wait_for``, whose check reads the page on the database thread."""
        db = await self.db()
        handed = self.tails.watch(st.name, at)  # before the first check: see Tails

        def check() -> Page | None:
            page = self._page_now(st.name, st.json, at)
            return page if page.payload is not None or page.sealed else None

        reader = asyncio.ensure_future(db.wait_for(check, timeout))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            pending: set[asyncio.Future[Any]] = {reader, handed, disconnected, closing}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.tails.forget(st.name, handed)
            closing.cancel()
            if not reader.done():
                reader.cancel()
        if handed.done():
            self.metrics.live_direct.inc()
            return handed.result()
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if isinstance(exc, StreamNotFound):
                raise ProtocolError(404, f"stream {st.name!r} was deleted")
            if exc is not None:
                raise exc
            return reader.result()
        return None

    async def _long_poll(self, st: _Stream, start: int, client_cursor: str | None, headers: dict[str, str],
                         receive: Receive, send: Send) -> int:
        if start >= st.info.next_offset and st.sealed:
            h = self._stream_headers(st)
            h.update({p.UP_TO_DATE: "true", "cache-control": "no-store"})
            return await _send(send, _Response(204, h), headers)
        if start < st.info.next_offset:
            response = await self._catch_up(st, start, headers)
            response.headers[p.CURSOR] = p.cursor(client_cursor)
            return await _send(send, response, headers)
        self._enter_live()
        disconnected = asyncio.ensure_future(_disconnect(receive))
        try:
            page = await self._wait(st, start, self.config.long_poll_timeout, disconnected)
            if disconnected.done():
                return 499  # nobody to answer
            if page is not None and page.payload is not None:
                response = await self._catch_up(st, start, headers, page)
                response.headers[p.CURSOR] = p.cursor(client_cursor)
                return await _send(send, response, headers)
            db = await self.db()
            try:
                st.info = await db.stream_info(st.name)
            except StreamNotFound:
                raise ProtocolError(404, f"stream {st.name!r} was deleted") from None
            if start < st.info.next_offset:
                response = await self._catch_up(st, start, headers)
                response.headers[p.CURSOR] = p.cursor(client_cursor)
                return await _send(send, response, headers)
            h = self._stream_headers(st)
            h.update({p.UP_TO_DATE: "true", "cache-control": "no-store"})
            if not st.sealed:
                h[p.CURSOR] = p.cursor(client_cursor)
            return await _send(send, _Response(204, h), headers)
        finally:
            disconnected.cancel()
            self._leave_live()

    async def _sse(self, st: _Stream, start: int, client_cursor: str | None, headers: dict[str, str],
                   receive: Receive, send: Send) -> int:
        # The first page before the response starts: a read that cannot begin (a damaged
        # record at `start`) is answered with its status, which an EventSource does not
        # retry, instead of a 200 that ends at once, for ever.
        page: Page | None = await self._page(st, start)
        self._enter_live()
        disconnected = asyncio.ensure_future(_disconnect(receive))
        try:
            h = {"content-type": "text/event-stream", "cache-control": "no-cache"}
            text = p.is_text(st.content_type)
            if not text:
                h[p.SSE_ENCODING] = "base64"
            await send({"type": "http.response.start", "status": 200, "headers": _raw_headers(h, headers)})
            deadline = time.monotonic() + self.config.sse_max_seconds
            at = start
            cur = p.cursor(client_cursor)
            first = True
            while not disconnected.done() and not self._closing.is_set():
                if page is None:
                    page = await self._page(st, at)
                at = page.end[0]
                control: dict[str, Any] = {"streamNextOffset": p.format_offset(*page.end)}
                if page.closed:
                    control.update(streamClosed=True, upToDate=True)
                else:
                    control["streamCursor"] = cur
                    if page.up_to_date:
                        control["upToDate"] = True
                frame = b"" if page.payload is None else p.sse_data(page.payload, text=text)
                if page.payload is not None or page.closed or first:
                    await send({"type": "http.response.body", "body": frame + p.sse_event("control", json.dumps(
                        control, separators=(",", ":"))), "more_body": True})
                    first = False
                if page.closed:
                    break
                if not page.up_to_date:
                    page = None
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                page = await self._wait(st, at, remaining, disconnected)
            if not disconnected.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 200
        except (ProtocolError, SqlstreamError):
            # The response has started: a stream deleted (or the file closed) under a live
            # SSE ends it; the client reconnects and gets the status then.
            if not disconnected.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 200
        finally:
            disconnected.cancel()
            self._leave_live()


def create_app(target: str | aio.AsyncDatabase, config: HttpConfig | None = None, **options: Any) -> DurableStreamsApp:
    """The ASGI app serving ``target`` (a path, opened on first use; or an open AsyncDatabase,
    which the caller keeps and closes). ``options`` set :class:`HttpConfig` fields."""
    if config is None:
        config = HttpConfig(**options)
    elif options:
        raise InvalidArgument("give an HttpConfig or keyword options, not both")
    return DurableStreamsApp(target, config)


# ----------------------------------------------------------------- helpers


def _lookup(sdb: Database, name: str, touch: bool) -> _Stream:
    """Database thread: the stream ``name`` (its TTL window restarted when ``touch``), or
    ProtocolError: 404 (absent, or expired: then retired), 410 (soft-deleted)."""
    try:
        life = sdb.lifetime(name)
        if life.deleted:
            raise ProtocolError(410, f"stream {name!r} was deleted")
        if life.expired:
            try:
                sdb.retire_stream(name)
            except (StreamNotFound, StreamGone):
                pass
            raise ProtocolError(404, f"stream {name!r} expired")
        if touch and life.ttl is not None:
            sdb.touch(name)
        info = sdb.stream_info(name)
    except StreamNotFound:
        raise ProtocolError(404, f"no stream {name!r}") from None
    return _Stream(name, info, life.ttl, life.expires_at)


def _writable(sdb: Database, st: _Stream, headers: dict[str, str]) -> Stream:
    """Database thread: a handle that may write ``st``; a secret stream needs its secret in
    Stream-Write-Secret (403). A handle on a stream the request has just found is made
    without asking the file again (appends raise ``StreamNotFound`` if it went away)."""
    if not st.info.secret:
        return Stream(sdb, st.name)
    secret = headers.get(p.WRITE_SECRET, "")
    try:
        stream = sdb.writer(secret)
    except (StreamNotFound, InvalidValue):
        raise ProtocolError(403, f"stream {st.name!r} takes writes only with its Stream-Write-Secret") from None
    if stream.name != st.name:
        raise ProtocolError(403, f"stream {st.name!r} takes writes only with its Stream-Write-Secret")
    return stream


def _tail(info: StreamInfo) -> tuple[int, int]:
    return info.next_offset, info.byte_length


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        key = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        out[key] = out[key] + ", " + value if key in out else value
    return out


def _raw_headers(h: dict[str, str], request: dict[str, str]) -> list[tuple[bytes, bytes]]:
    out = dict(h)
    out.setdefault("x-content-type-options", "nosniff")
    out["vary"] = "Origin"
    origin = request.get("origin")  # present only when CORS allows it (DurableStreamsApp._http)
    if origin is None:
        out.setdefault("cross-origin-resource-policy", "same-origin")
        return [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in out.items()]
    out.setdefault("cross-origin-resource-policy", "cross-origin")
    out["access-control-allow-origin"] = origin
    out["access-control-expose-headers"] = _EXPOSED
    if request.get("access-control-request-method") is not None:
        out["access-control-allow-methods"] = _METHODS
        out["access-control-allow-headers"] = request.get("access-control-request-headers") or _ALLOWED_HEADERS
        if request.get("access-control-request-private-network") == "true":
            out["access-control-allow-private-network"] = "true"
    return [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in out.items()]


async def _send(send: Send, response: _Response, request: dict[str, str]) -> int:
    body = response.body
    h = dict(response.headers)
    if response.status not in (204, 304):
        h["content-length"] = str(len(body))
    await send({"type": "http.response.start", "status": response.status, "headers": _raw_headers(h, request)})
    await send({"type": "http.response.body", "body": body if response.status not in (204, 304) else b""})
    return response.status


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> _Response:
    h = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}
    h.update(headers or {})
    return _Response(status, h, (message + "\n").encode("utf-8"))


def _from_sqlstream(exc: SqlstreamError) -> _Response:
    """The protocol's answer to a sqlstream error that no handler mapped."""
    status = 500
    if isinstance(exc, StreamNotFound):
        status = 404
    elif isinstance(exc, StreamGone):
        status = 410
    elif isinstance(exc, (StreamExists, StreamSealed)):
        status = 409
    elif isinstance(exc, PayloadTooLarge):
        status = 413
    elif isinstance(exc, AccessDenied):
        status = 403
    elif isinstance(exc, (InvalidArgument, InvalidValue, InvalidName)):
        status = 400
    elif isinstance(exc, OffsetOutOfRange):
        status = 410
    return _error(status, str(exc))


async def _disconnect(receive: Receive) -> None:
    """Returns when the client has gone away (the request body was read before)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _streaming_status(db: aio.AsyncDatabase) -> list[tuple[Any, ...]]:
    """The streaming services' and relays' lag and last error (the ``streaming_progress`` view)."""
    try:
        result = await db.query("SELECT service, kind, lag, last_error FROM streaming_progress")
    except SqlstreamError:
        return []
    return [tuple(r) for r in result.rows]


def _json_value(message: Any) -> Any:
    """A JSON message as a record value: sqlstream stores None as nothing, so JSON null is
    kept as the bytes ``null`` (read back as JSON null)."""
    return b"null" if message is None else message


def _same_fork(have: dict[str, Any], want: dict[str, Any]) -> bool:
    """A fork PUT matches an existing stream forked from the same source at the same point
    (an omitted fork offset means "the tail", which matches the existing fork's)."""
    if have.get("forked_from") != want.get("forked_from"):
        return False
    if want.get("forked_from") is None:
        return True
    return ((want.get("fork_offset") is None or have.get("fork_offset") == want.get("fork_offset"))
            and have.get("fork_sub_offset", 0) == want.get("fork_sub_offset", 0))


def _same_expiry(life: Lifetime, ttl: int | None, expires_at: float | None) -> bool:
    """The requested expiry matches (a fork asked for none matches the one it inherited)."""
    if ttl is None and expires_at is None and life.source is not None:
        return True
    return (life.ttl or None) == (None if ttl is None else float(ttl)) and _same_time(life.expires_at, expires_at)


def _same_time(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 0.001
