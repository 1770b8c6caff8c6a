"""Serving the app: uvicorn on a socket we bind, safe defaults, a draining stop.

Why uvicorn: the most used ASGI server, maintained by the Encode team (who also keep
h11, httpx and Starlette), with a plain programmatic API (``uvicorn.Server``) that runs
on a socket we bind ourselves (so port 0 works and the real port is known), a pure
Python HTTP/1.1 parser (h11) with a bounded header buffer, and an optional C parser
(httptools) and uvloop when installed. Hypercorn (HTTP/2) and Granian (Rust) were the
alternatives: HTTP/2 buys little for this protocol, and neither is as widely deployed.

Safety: loopback by default; any other address needs a bearer token unless the caller
says ``insecure=True`` (:func:`check_listen`). Request headers are bounded both by h11's
buffer and by the app (431); bodies by the file's ``max_record_bytes`` (413).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import uvicorn

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
        self.sock = socket.socket(family, socket.SOCK_STREAM)
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
