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

import httpx

from .. import aio
from ..errors import DatabaseClosed, SqlstreamError
from ..logs import LazyLogger
from ..validation import check_name
from .subprotocol import (
    DEFAULT_CLAIM_BYTES,
    DEFAULT_CLAIM_RECORDS,
    MAX_CLAIM_RECORDS,
    DsError,
    check_id,
    normalize_path,
    parse_ack,
    parse_config,
    parse_json,
)
from .substore import Delivery, DsStore
from .webhooks import Signer, post

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

    def __init__(self, *, webhooks: bool = False, max_claim_bytes: int = DEFAULT_CLAIM_BYTES) -> None:
        self.webhooks = webhooks
        self.max_claim_bytes = max_claim_bytes
        self.signer = Signer() if webhooks else None
        self._pump: asyncio.Task[None] | None = None
        self._created = asyncio.Event()
        self._calls: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._last_due: list[str] = []

    # ----------------------------------------------------------------- routes

    async def handle(self, db: aio.AsyncDatabase, method: str, rel: str, headers: dict[str, str], body: bytes,
                     base: str, authorize: Callable[[], None]) -> Answer:
        """Answer a request for ``rel`` (the path under the stream prefix, starting ``__ds``);
        ``base``: the stream root's URL as the client sees it (``http://host/v1/stream``).
        ``authorize()`` raises the app's 401 when the server token is missing or wrong."""
        try:
            return await self._route(db, method, rel, headers, body, base, authorize)
        except DsError as exc:
            return _json(exc.status, exc.body())

    async def _route(self, db: aio.AsyncDatabase, method: str, rel: str, headers: dict[str, str], body: bytes,
                     base: str, authorize: Callable[[], None]) -> Answer:
        parts = rel.split("/")
        if rel == "__ds/jwks.json" and self.signer is not None:
            # Public keys, no secret: served without the token, like /healthz, so that
            # webhook receivers can fetch them.
            _allow(method, "GET")
            return 200, {"content-type": "application/jwk-set+json", "cache-control": "public, max-age=300"}, \
                json.dumps(self.signer.jwks()).encode()
        if len(parts) < 3 or parts[1] != "subscriptions" or not parts[2]:
            authorize()
            raise DsError(404, "NOT_FOUND", f"no control route {rel!r} (subscriptions live under "
                                            "__ds/subscriptions/ID; webhook keys are not served)")
        sid, tail = parts[2], parts[3:]
        store = DsStore(db.sync, self.max_claim_bytes)
        if len(tail) == 1 and tail[0] in ("ack", "release", "callback"):
            return await self._lease_action(db, store, method, tail[0], check_id(sid), headers, body)
        authorize()
        check_id(sid)
        if not tail:
            return await self._base(db, store, method, sid, body, base)
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
        raise DsError(404, "NOT_FOUND", f"no control route {rel!r}")

    async def _base(self, db: aio.AsyncDatabase, store: DsStore, method: str, sid: str, body: bytes,
                    base: str) -> Answer:
        signing = None if self.signer is None else self.signer.signing(f"{base}/__ds/jwks.json")
        if method == "PUT":
            config = parse_config(parse_json(body))
            created = await db.run_sync(lambda: store.create(sid, config, webhooks=self.webhooks, callback_base=base))
            if created:
                self._created.set()
            return _json(201 if created else 200, await db.run_sync(store.describe, sid, signing))
        if method == "GET":
            return _json(200, await db.run_sync(store.describe, sid, signing))
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
        request = parse_ack(parse_json(body), with_acks=action != "release")
        if action != "release":
            kind = "pull-wake" if action == "ack" else "webhook"
            next_wake = await db.run_sync(store.ack, sid, token, request, kind)
            if next_wake:
                self._created.set()  # the pump: call the webhook again
            return _json(200, {"ok": True, "next_wake": next_wake})
        await db.run_sync(store.release, sid, token, request)
        return _empty()

    # ----------------------------------------------------------------- the pump

    def start(self, db: aio.AsyncDatabase) -> None:
        """Start the wake pump on the running loop (idempotent)."""
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run(db))

    async def stop(self) -> None:
        """Stop the pump and any webhook call in flight (their wakes' leases run out)."""
        pump, self._pump = self._pump, None
        tasks = [*self._calls, *([pump] if pump is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - logged already; stopping anyway
                pass
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _run(self, db: aio.AsyncDatabase) -> None:
        store = DsStore(db.sync, self.max_claim_bytes)
        while True:
            try:
                await self._step(db, store)
            except DatabaseClosed:
                return
            except (SqlstreamError, DsError) as exc:  # the pump serves every subscription: it carries on
                _log.warning("subscription wake pump: %s", exc)
                await asyncio.sleep(1.0)

    async def _step(self, db: aio.AsyncDatabase, store: DsStore) -> None:
        self._created.clear()  # set from here on: look again at once
        if await db.run_sync(store.count) == 0:
            try:
                await asyncio.wait_for(self._created.wait(), IDLE_RECHECK)
            except asyncio.TimeoutError:
                pass
            return
        due = await db.run_sync(store.due)
        if due and due == self._last_due:
            # Due again right after a tick: it could not act (a link whose subscription
            # cannot be made, a record set aside as damaged). Look again later, not now.
            await asyncio.sleep(1.0)
        self._last_due = due
        if due:
            for delivery in await db.run_sync(store.tick, due):
                task = asyncio.ensure_future(self._call(db, store, delivery))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
            return
        lease_end = await db.run_sync(store.next_lease_end)
        timeout = IDLE_RECHECK if lease_end is None else min(IDLE_RECHECK, max(0.01, lease_end - time.time() + 0.01))
        waiting = asyncio.ensure_future(db.wait_for(lambda: store.due() or None, timeout))
        nudged = asyncio.ensure_future(self._created.wait())
        try:
            await asyncio.wait({waiting, nudged}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            nudged.cancel()

    async def _call(self, db: aio.AsyncDatabase, store: DsStore, delivery: Delivery) -> None:
        """Call a webhook; a ``{"done": true}`` answer acks its wake."""
        assert self.signer is not None
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        answer = await post(self._client, self.signer, delivery.url, delivery.body)
        if isinstance(answer, dict) and answer.get("done") is True:
            try:
                await db.run_sync(store.finish_webhook, delivery.subscription, delivery.wake_id, delivery.generation)
            except SqlstreamError as exc:
                _log.warning("webhook %s: the done answer was not applied: %s", delivery.url, exc)
            self._created.set()  # more work may be waiting: look now


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise DsError(405, "INVALID_REQUEST", f"method {method} not allowed here ({allowed})")
