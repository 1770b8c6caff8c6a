"""The ``{prefix}/__ds/...`` routes (Durable Streams subscriptions) and the wake pump.

:class:`SubscriptionRoutes` answers the reserved control paths (PROTOCOL.md sections 6
and 7) with JSON bodies, errors as ``{"error": {"code", "message"}}``; the rules and the
state live in :mod:`sqlstream.http.substore`, run on the AsyncDatabase's worker thread.

Authorization: with a server token, the control routes need it like every stream
request — except ``ack`` and ``release``, whose bearer is the claim's token instead (the
protocol puts it in ``Authorization``, and only a client that had the server token could
claim). The claim token is scoped to one subscription and one lease, and is kept hashed.

The pump (:meth:`SubscriptionRoutes.start`) issues wakes: while the file holds pull-wake
subscriptions it re-checks after every commit to the file by any process (through
sqlstream's wake-ups: a Python append in another process wakes it) and when a lease ends;
while it holds none it only looks every few seconds (and at once when this app creates
one), so a server without subscriptions pays nothing per commit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from .. import aio
from ..errors import DatabaseClosed, SqlstreamError
from ..logs import LazyLogger
from ..validation import check_name
from .substore import (
    DEFAULT_CLAIM_RECORDS,
    MAX_CLAIM_RECORDS,
    DsError,
    DsStore,
    check_id,
    normalize_path,
    parse_ack,
    parse_config,
    parse_json,
)

_log = LazyLogger("sqlstream.http")

# Seconds between looks for subscriptions created by other processes while none exist,
# and the longest the pump waits without a commit.
IDLE_RECHECK = 5.0
_ACTIONS = ("claim", "ack", "release", "callback")

Answer = tuple[int, dict[str, str], bytes]


def _json(status: int, body: Any) -> Answer:
    return status, {"content-type": "application/json", "cache-control": "no-store"}, json.dumps(body).encode()


def _empty(status: int = 204) -> Answer:
    return status, {"cache-control": "no-store"}, b""


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


class SubscriptionRoutes:
    """The ``__ds`` routes of one app and its wake pump."""

    def __init__(self) -> None:
        self._pump: asyncio.Task[None] | None = None
        self._created = asyncio.Event()

    # ----------------------------------------------------------------- routes

    async def handle(self, db: aio.AsyncDatabase, method: str, rel: str, headers: dict[str, str], body: bytes,
                     authorize: Callable[[], None]) -> Answer:
        """Answer a request for ``rel`` (the path under the stream prefix, starting ``__ds``).
        ``authorize()`` raises the app's 401 when the server token is missing or wrong."""
        try:
            return await self._route(db, method, rel, headers, body, authorize)
        except DsError as exc:
            return _json(exc.status, exc.body())

    async def _route(self, db: aio.AsyncDatabase, method: str, rel: str, headers: dict[str, str], body: bytes,
                     authorize: Callable[[], None]) -> Answer:
        parts = rel.split("/")
        if len(parts) < 3 or parts[1] != "subscriptions" or not parts[2]:
            authorize()
            raise DsError(404, "NOT_FOUND", f"no control route {rel!r} (subscriptions live under "
                                            "__ds/subscriptions/ID; webhook keys are not served)")
        sid, tail = parts[2], parts[3:]
        store = DsStore(db.sync)
        if len(tail) == 1 and tail[0] in ("ack", "release"):
            return await self._lease_action(db, store, method, tail[0], check_id(sid), headers, body)
        authorize()
        check_id(sid)
        if not tail:
            return await self._base(db, store, method, sid, body)
        if tail == ["streams"]:
            _allow(method, "POST")
            streams = parse_json(body).get("streams")
            if not isinstance(streams, list) or not streams:
                raise DsError(400, "INVALID_REQUEST", "streams must be a non-empty array of stream paths")
            paths = [normalize_path(s, "stream") for s in streams]
            await db.run_sync(store.add_streams, sid, paths)
            return _empty()
        if tail[0] == "streams":
            _allow(method, "DELETE")
            await db.run_sync(store.remove_stream, sid, normalize_path("/".join(tail[1:]), "stream"))
            return _empty()
        if tail == ["claim"]:
            _allow(method, "POST")
            request = parse_json(body)
            worker = request.get("worker")
            if not isinstance(worker, str) or not worker:
                raise DsError(400, "INVALID_REQUEST", "worker must be a non-empty string")
            try:
                check_name(worker, "worker")
            except SqlstreamError as exc:
                raise DsError(400, "INVALID_REQUEST", str(exc)) from None
            limit = request.get("max_records", DEFAULT_CLAIM_RECORDS)
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM_RECORDS:
                raise DsError(400, "INVALID_REQUEST", f"max_records must be an integer from 1 to {MAX_CLAIM_RECORDS}")
            return _json(200, await db.run_sync(store.claim, sid, worker, limit))
        if tail == ["callback"]:
            _allow(method, "POST")
            raise DsError(400, "INVALID_REQUEST", "callbacks belong to webhook subscriptions, which sqlstream "
                                                  "does not serve")
        raise DsError(404, "NOT_FOUND", f"no control route {rel!r}")

    async def _base(self, db: aio.AsyncDatabase, store: DsStore, method: str, sid: str, body: bytes) -> Answer:
        if method == "PUT":
            config = parse_config(parse_json(body))
            created = await db.run_sync(store.create, sid, config)
            if created:
                self._created.set()
            return _json(201 if created else 200, await db.run_sync(store.describe, sid))
        if method == "GET":
            return _json(200, await db.run_sync(store.describe, sid))
        if method == "DELETE":
            await db.run_sync(store.delete, sid)
            return _empty()
        raise DsError(405, "INVALID_REQUEST", f"method {method} not allowed here (PUT, GET or DELETE)")

    async def _lease_action(self, db: aio.AsyncDatabase, store: DsStore, method: str, action: str, sid: str,
                            headers: dict[str, str], body: bytes) -> Answer:
        _allow(method, "POST")
        token = _bearer(headers)
        if token is None:
            raise DsError(401, "TOKEN_INVALID", "Authorization must be 'Bearer <token of the claim>'")
        request = parse_ack(parse_json(body), with_acks=action == "ack")
        if action == "ack":
            next_wake = await db.run_sync(store.ack, sid, token, request)
            return _json(200, {"ok": True, "next_wake": next_wake})
        await db.run_sync(store.release, sid, token, request)
        return _empty()

    # ----------------------------------------------------------------- the pump

    def start(self, db: aio.AsyncDatabase) -> None:
        """Start the wake pump on the running loop (idempotent)."""
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run(db))

    async def stop(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            try:
                await pump
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it was logged; stopping anyway
                pass

    async def _run(self, db: aio.AsyncDatabase) -> None:
        store = DsStore(db.sync)
        while True:
            try:
                await self._step(db, store)
            except DatabaseClosed:
                return
            except SqlstreamError as exc:
                _log.warning("subscription wake pump: %s", exc)
                await asyncio.sleep(1.0)

    async def _step(self, db: aio.AsyncDatabase, store: DsStore) -> None:
        if await db.run_sync(store.count) == 0:
            self._created.clear()
            try:
                await asyncio.wait_for(self._created.wait(), IDLE_RECHECK)
            except asyncio.TimeoutError:
                pass
            return
        due = await db.run_sync(store.due)
        if due:
            await db.run_sync(store.tick, due)
            return
        lease_end = await db.run_sync(store.next_lease_end)
        timeout = IDLE_RECHECK if lease_end is None else min(IDLE_RECHECK, max(0.01, lease_end - time.time() + 0.01))
        await db.wait_for(lambda: store.due() or None, timeout)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise DsError(405, "INVALID_REQUEST", f"method {method} not allowed here ({allowed})")
