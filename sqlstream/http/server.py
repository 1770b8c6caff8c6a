"""Serving the app: uvicorn on a socket we bind, safe defaults, a draining stop.

Why uvicorn: the most used ASGI server, maintained by the Encode team (who also keep
h11, httpx and Starlette), with a plain programmatic API (``uvicorn.Server``) that runs
on a socket we bind ourselves (so port 0 works and the real port is known), a pure
Python HTTP/1.1 parser (h11) with a bounded header buffer, and an optional C parser
(httptools) and uvloop when installed. Hypercorn (HTTP/2) and Granian (Rust) were the
alternatives: HTTP/2 buys little for this protocol, and neither is as widely deployed.

Why h11 and not httptools, although h11 is most of the event loop's CPU per request
(httptools took the loop thread's CPU per POST from 0.44 to 0.27 ms with eight clients,
benchmarks/findings.md): neither httptools nor uvicorn's protocol for it bounds the bytes
of a request's headers. h11 refuses an incomplete request head past
``h11_max_incomplete_event_size``; uvicorn's httptools protocol has no counterpart, it
appends every header and URL piece llhttp reports, and httptools joins the pieces of one
header value without a limit, so a client could make the server hold a request head as
large as it likes before the app's 431 check ever runs.

Safety: loopback by default; any other address needs a bearer token unless the caller
says ``insecure=True`` (:func:`check_listen`). Request headers are bounded both by h11's
buffer and by the app (431); bodies by the file's ``max_record_bytes`` (413). Open
connections are bounded by ``max_connections`` (more are closed as soon as they are
accepted; uvicorn's ``limit_concurrency``, the same number, answers 503 when that many
requests run), and a request's headers must arrive within ``header_timeout`` seconds of
the connection (or of its first byte on a kept-alive one), else the connection is closed:
uvicorn has no such timeout of its own (``timeout_keep_alive`` runs only between
requests), so the h11 protocol is subclassed (:func:`_bounded_h11`). Not bounded in time:
a request body being received (bounded in size) and the server's answer being read.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import InvalidArgument
from .app import DurableStreamsApp, HttpConfig, create_app
from .protocol import is_loopback

DEFAULT_PORT = 4437


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (loopback) or ``[v6]:PORT`` as (host, port); ``InvalidArgument`` if not."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"listen address {text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:4437")
    return host, int(port)


def check_listen(host: str, token: str | None, insecure: bool) -> None:
    """Refuse a non-loopback address without a token unless ``insecure`` (``InvalidArgument``)."""
    if not is_loopback(host) and not token and not insecure:
        raise InvalidArgument(
            f"refusing to serve HTTP on {host} without a token: anyone who can reach it could read and write",
            hint="set [http] token (clients send Authorization: Bearer <token>), or pass --insecure",
        )


def _bounded_h11(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout and a hard bound on open connections."""

    class BoundedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections:
                transport.close()  # connection_lost removes it from the count
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._arm()  # headers not complete yet (or a kept-alive connection's next request begun)
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return BoundedH11Protocol


class HttpServer:
    """One uvicorn server for one file, run on a background thread.

    ``start()`` returns once the socket accepts connections (``port`` is then the real
    port). ``stop()`` drains: live reads end (long-polls answer, SSE streams close), the
    requests in hand finish (up to ``grace`` seconds), the database closes.
    """

    def __init__(self, path: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 config: HttpConfig | None = None, *, insecure: bool = False, grace: float = 5.0,
                 log_level: str = "warning") -> None:
        self.config = config or HttpConfig()
        check_listen(host, self.config.token, insecure)
        self.app: DurableStreamsApp = create_app(path, self.config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
        # accepted sockets whose proto says TCP, and they inherit ours. With it on, a response
        # (written as headers, then body) held its body back until the client ACKed the
        # headers, which a kept-alive client delays by ~40 ms: every catch-up page, answer
        # and append response after a connection's first few took 40+ ms instead of ~1 ms.
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_level=log_level, access_log=False, lifespan="on",
            http=_bounded_h11(self.config.header_timeout, self.config.max_connections),
            limit_concurrency=self.config.max_connections,
            h11_max_incomplete_event_size=self.config.max_header_bytes + 1024,
            timeout_graceful_shutdown=int(grace) or 1, server_header=False,
            # Past clients' own idle timeouts (undici 4 s, browsers ~60 s), so a client never
            # sends a request on a kept-alive connection that the server is closing.
            timeout_keep_alive=75,
        ))
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Serve on a background thread; return when it accepts connections."""
        self.thread = threading.Thread(target=self._run, name="sqlstream-http", daemon=True)
        self.thread.start()
        waited = 0.0
        while not self.server.started and self.thread.is_alive() and waited < timeout:
            self.thread.join(0.01)
            waited += 0.01
        if not self.server.started:
            self.stop()
            raise InvalidArgument(f"the HTTP server did not start: {self.error!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start() / wait()
            self.error = exc

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop (idempotent); returns when the server thread has ended."""
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.app.begin_drain)
            except RuntimeError:
                pass  # the loop has just stopped
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.sock.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (True) or ``timeout`` passes (False)."""
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()


def serve(path: str, listen: str = f"127.0.0.1:{DEFAULT_PORT}", config: HttpConfig | None = None,
          **options: Any) -> HttpServer:
    """Start an :class:`HttpServer` for ``path`` on ``listen`` and return it (running)."""
    host, port = parse_listen(listen)
    server = HttpServer(path, host, port, config, **options)
    server.start()
    return server
