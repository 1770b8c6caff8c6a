"""The Kafka listener: asyncio sockets, limits, SASL gating and shutdown.

:class:`KafkaListener` serves one sqlstream file on one address. Per connection it reads
size-prefixed frames (a frame over ``max_request_bytes`` or a negative size closes the
connection with the reason logged), decodes them (:mod:`.protocol`), runs the handler
(:mod:`.handlers`) and writes the responses in request order, as Kafka clients expect
(requests are pipelined; handlers of one connection run one after another). A request
for an API or version this listener does not serve gets that API's response with
UNSUPPORTED_VERSION where the schema has an error code, else the connection is closed
with the reason logged; ApiVersions at an unknown version is answered in v0 with the
supported table, as Kafka does. An exception in a handler is logged and closes only
that connection: the listener never stops on a client's input.

Safety (README "Kafka"): binds 127.0.0.1 unless told otherwise; any other address
needs SASL/PLAIN credentials or ``insecure=True``. Connections beyond
``max_connections`` are closed at once (logged). With SASL configured, a connection may
send only ApiVersions, SaslHandshake and SaslAuthenticate until it has authenticated.

Timeouts (each closes the connection with the reason logged): ``idle_timeout`` seconds
waiting for the next request (a request being handled, such as a long-poll Fetch or a
JoinGroup, is not idleness); ``frame_timeout`` seconds for a frame to arrive whole once
its first byte has (a stalled or trickled frame); with SASL on, ``auth_timeout`` seconds
from connecting to a completed authentication. One timer per connection, re-armed per
wait (no task per read).

Shutdown (:meth:`KafkaListener.close`) aborts every connection's transport (buffered
responses a client does not read are dropped, not flushed) and cancels its task, so it
returns whatever the connections are doing: idle, mid-frame, mid-long-poll, or blocked
writing to a client that stopped reading.

:func:`start` runs a listener on its own thread and event loop (``sqlstream serve``, the
pytest fixture) and returns once it accepts connections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .. import aio
from ..addresses import is_loopback
from ..errors import InvalidArgument, SqlstreamError
from .handlers import Handlers, Session, Settings
from .protocol import SUPPORTED, ProtocolError, Request, build, encode_response, error_response, parse_request, response_schema

__all__ = ["KafkaListener", "RunningListener", "start", "check_bind"]

log = logging.getLogger("sqlstream.kafka")
_SIZE = struct.Struct(">i")
_PRE_AUTH = {17, 18, 36}  # SaslHandshake, ApiVersions, SaslAuthenticate
#: The largest frame taken before SASL authentication (Kafka's sasl.server.max.receive.size
#: default): the requests allowed then are small, and an unauthenticated client must not
#: make the listener buffer max_request_bytes per connection.
PRE_AUTH_MAX_BYTES = 512 * 1024


def check_bind(settings: Settings) -> None:
    """Refuse (``InvalidArgument``) a non-loopback address without SASL or ``insecure``."""
    host = settings.host
    if not is_loopback(host) and not settings.sasl and not settings.insecure:
        raise InvalidArgument(
            f"the Kafka listener would accept anyone on {host}: a non-loopback address needs SASL/PLAIN "
            "credentials or an explicit opt-out",
            hint="set [kafka] password (and username) in the config, or pass --insecure "
                 "(insecure = true) if the network is trusted")


class KafkaListener:
    """A Kafka-protocol listener on one sqlstream file (see the module docstring)."""

    def __init__(self, path: str | Path, settings: Settings | None = None, **db_options: Any) -> None:
        self.path = str(path)
        self.settings = settings or Settings()
        self.db_options = db_options
        self.adb: aio.AsyncDatabase | None = None
        self.handlers: Handlers | None = None
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        # Every open connection: its task and transport (aborted at close()).
        self.connections: dict[asyncio.Task[None], asyncio.WriteTransport] = {}
        self.upkeep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the file and start accepting connections (the port is then ``self.port``).

        Raises ``InvalidArgument`` (address policy, a duration that is not finite and > 0)
        and sqlstream errors opening the file."""
        check_bind(self.settings)
        self.settings.check()
        self.adb = await aio.open(self.path, **self.db_options)
        try:
            self.server = await asyncio.start_server(self._accept, self.settings.host, self.settings.port,
                                                     limit=1024 * 1024, reuse_address=True)
        except BaseException:
            await self.adb.close()
            raise
        self.port = self.server.sockets[0].getsockname()[1]
        self.handlers = Handlers(self.adb, self.settings, self.port)
        self.handlers.groups.start()
        self.upkeep = asyncio.get_running_loop().create_task(self._upkeep())
        log.info("kafka: listening on %s:%d for %s", self.settings.host, self.port, self.path)

    async def close(self) -> None:
        """Stop accepting, end every connection, close the file.

        Never waits for a client: transports are aborted (unsent responses dropped) and
        connection tasks cancelled, whatever they were waiting for."""
        if self.server is not None:
            self.server.close()
        if self.upkeep is not None:
            self.upkeep.cancel()
        tasks = list(self.connections) + ([self.upkeep] if self.upkeep is not None else [])
        for task, transport in list(self.connections.items()):
            transport.abort()
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.handlers is not None:
            self.handlers.groups.stop()
        if self.server is not None:
            await self.server.wait_closed()
        if self.adb is not None:
            await self.adb.close()

    async def _upkeep(self) -> None:
        """Every ``producer_expiry_check`` seconds, forget producers idle for
        ``producer_expiry`` (:meth:`KafkaStore.expire_producers`). A failure is logged
        and the next run tries again: upkeep never stops the listener."""
        assert self.handlers is not None
        store, settings = self.handlers.store, self.settings
        while True:
            await asyncio.sleep(settings.producer_expiry_check)
            try:
                states, ids = await self.handlers.adb.run_sync(store.expire_producers, settings.producer_expiry)
            except SqlstreamError as exc:
                log.warning("kafka: expiring idle producers failed (tried again later): %s", exc)
                continue
            if states or ids:
                log.info("kafka: forgot %d producer state(s) and %d producer id(s) idle for %g s (producer_expiry)",
                         states, ids, settings.producer_expiry)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if len(self.connections) >= self.settings.max_connections:
            log.warning("kafka: refused %s: %d connections open (max_connections)", name, len(self.connections))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer.transport
        watchdog = _Watchdog(writer.transport, name)
        try:
            await self._serve(reader, writer, Session(name), watchdog)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must not stop the listener: log it, drop this connection
            log.exception("kafka: connection %s closed after an internal error", name)
        finally:
            watchdog.disarm()
            self.connections.pop(task, None)
            writer.close()

    async def _read_frame(self, reader: asyncio.StreamReader, session: Session, watchdog: _Watchdog,
                          auth_deadline: float) -> bytes | None:
        """The next request frame, within the idle, frame and authentication timeouts
        (the watchdog closes the connection when one runs out: the read then fails).
        None when the frame is refused by its size (the reason logged)."""
        s = self.settings
        pre_auth = s.sasl and not session.authenticated
        unauthenticated = f"not authenticated within {s.auth_timeout:g} s of connecting (auth_timeout)"

        def auth_left() -> float:  # read afresh after every wait: the deadline does not move
            return auth_deadline - watchdog.loop.time() if pre_auth else math.inf

        if auth_left() < s.idle_timeout:
            watchdog.arm(auth_left(), unauthenticated)
        else:
            watchdog.arm(s.idle_timeout, f"no request for {s.idle_timeout:g} s (idle_timeout)")
        first = await reader.readexactly(1)
        if auth_left() < s.frame_timeout:
            watchdog.arm(auth_left(), unauthenticated)
        else:
            watchdog.arm(s.frame_timeout, f"a request frame did not arrive whole within {s.frame_timeout:g} s "
                                          "(frame_timeout)")
        (size,) = _SIZE.unpack(first + await reader.readexactly(3))
        limit = s.max_request_bytes
        if size < 0 or size > limit:
            log.warning("kafka: closing %s: a request frame of %d bytes (max_request_bytes %d)",
                        session.peer, size, limit)
            return None
        if pre_auth and size > PRE_AUTH_MAX_BYTES:
            log.warning("kafka: closing %s: a request frame of %d bytes before SASL authentication "
                        "(at most %d)", session.peer, size, PRE_AUTH_MAX_BYTES)
            return None
        frame = await reader.readexactly(size)
        watchdog.disarm()
        return frame

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session,
                     watchdog: _Watchdog) -> None:
        assert self.handlers is not None
        auth_deadline = watchdog.loop.time() + self.settings.auth_timeout
        while True:
            frame = await self._read_frame(reader, session, watchdog, auth_deadline)
            if frame is None:
                return
            try:
                req = parse_request(frame)
            except ProtocolError as exc:
                reply = self._refusal(exc)
                if reply is None:
                    log.warning("kafka: closing %s: %s", session.peer, exc)
                    log.debug("kafka: the frame from %s began %s", session.peer, frame[:256].hex())
                    return
                log.info("kafka: %s: %s", session.peer, exc)
                await self._send(writer, watchdog, reply)
                continue
            if self.settings.sasl and not session.authenticated and req.api_key not in _PRE_AUTH:
                log.warning("kafka: closing %s: %s before SASL authentication", session.peer, req.api_key)
                return
            body = await self.handlers.handle(req, session)
            if body is None:
                continue  # Produce with acks=0: no response
            await self._send(writer, watchdog, encode_response(
                req.api_key, req.version, req.correlation_id, build(response_schema(req.api_key, req.version), body)))
            if session.auth_failed:
                log.info("kafka: closing %s after a failed authentication", session.peer)
                return

    async def _send(self, writer: asyncio.StreamWriter, watchdog: _Watchdog, data: bytes) -> None:
        """Write a response; a client that stops reading its responses for
        ``idle_timeout`` seconds is idle too (the next read re-arms the watchdog)."""
        writer.write(data)
        watchdog.arm(self.settings.idle_timeout, f"a response unread for {self.settings.idle_timeout:g} s "
                                                 "(idle_timeout)")
        await writer.drain()

    def _refusal(self, exc: ProtocolError) -> bytes | None:
        if exc.api_key is None or exc.correlation_id is None:
            return None
        if exc.api_key == 18:  # ApiVersions at a version we do not know: answer in v0
            body = {"error_code": 35, "api_keys": [
                {"api_key": k, "min_version": lo, "max_version": hi}
                for k, (_, lo, hi) in sorted(SUPPORTED.items())]}
            return encode_response(18, 0, exc.correlation_id, build(response_schema(18, 0), body))
        if exc.version is None:
            return None
        try:
            resp = error_response(Request(exc.api_key, exc.version, exc.correlation_id, None, None), 35)
        except Exception:  # kio has no schema for this key or version
            return None
        if resp is None:
            return None
        return encode_response(exc.api_key, exc.version, exc.correlation_id, resp)


class _Watchdog:
    """One connection's timer: when the current wait outlasts its deadline, the reason is
    logged and the transport aborted (the pending read then fails and the connection's
    task ends). Re-arming replaces the timer; a timer handle costs far less than a task
    per read."""

    def __init__(self, transport: asyncio.WriteTransport, peer: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.peer = peer
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, seconds: float, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(max(0.0, seconds), self._expire, reason)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self, reason: str) -> None:
        self.timer = None
        log.warning("kafka: closing %s: %s", self.peer, reason)
        self.transport.abort()


class RunningListener:
    """A listener on its own thread and loop (from :func:`start`); ``close()`` stops it."""

    def __init__(self, listener: KafkaListener, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.listener = listener
        self.loop = loop
        self.thread = thread

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def path(self) -> str:
        """The sqlstream file it serves."""
        return self.listener.path

    @property
    def bootstrap_servers(self) -> str:
        host = self.listener.settings.host
        return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def close(self) -> None:
        """Stop the listener and its thread (blocks until both ended)."""
        if self.loop.is_closed():
            return
        done = asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop)
        try:
            done.result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()

    def __enter__(self) -> RunningListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(path: str | Path, settings: Settings | None = None, **db_options: Any) -> RunningListener:
    """Run a :class:`KafkaListener` on a new thread; return once it accepts connections.

    Raises what :meth:`KafkaListener.start` raises (the thread is then gone)."""
    listener = KafkaListener(path, settings, **db_options)
    loop = asyncio.new_event_loop()
    started: Future[None] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(listener.start())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="sqlstream-kafka", daemon=True)
    thread.start()
    try:
        started.result()
    except SqlstreamError:
        thread.join()
        raise
    return RunningListener(listener, loop, thread)
