"""Durable Streams subscriptions (the reserved ``__ds/subscriptions`` API) kept in the file.

A DS subscription links streams, by a glob ``pattern`` and/or explicit paths. Behind every
link whose stream exists is an ordinary sqlstream subscription named ``{id}@{path}``
(:func:`backing_name`): it holds the cursor and the deliveries, so an HTTP worker and a
Python consumer (``db.consumer("billing@orders", ...)``) share one group and no record is
delivered to both while either holds it. The tables of migration ``http_subscriptions``
keep only what the protocol adds: the configuration, the wake generation, the lease and
the links.

The mapping (pull-wake, PROTOCOL.md section 7; the request rules are in
:mod:`sqlstream.http.subprotocol`):

- *wake*: when an idle subscription (no wake in flight, no live lease) has a record a
  fetch could claim on any link, the generation goes up by one, a new ``wake_id`` is
  minted, and a wake event is appended to the subscription's ``wake_stream`` — all in
  one transaction (:meth:`DsStore.tick`, run by the app's pump on every commit to the
  file, from any process).
- *claim*: in one transaction, a ``fetch`` of each link's subscription for the worker
  (the worker's name is the sqlstream consumer name), each record's ack deadline set to
  the lease's end, and the lease (holder, hashed bearer token, end) recorded. The answer
  lists, per stream, where this claim's records start (``acked_offset``) and end
  (``tail_offset``), plus ``claimed``: the runs of offsets it holds (records between
  runs are held by other consumers).
- *ack*: acks the records the lease holds below each given offset (fenced by their
  delivery attempts), renews the lease (heartbeat), and with ``done`` gives back what is
  left (nack: claimable at once) and ends the lease — acks, give-backs and the lease's
  state commit together. *release*: gives everything back and ends the lease.
- *fencing*: an ack or release must carry the lease's bearer token, generation and
  ``wake_id`` while the lease lasts, else 401 ``TOKEN_INVALID`` / 409 ``FENCED``. After
  the lease ends its records' ack deadlines have passed too, so any consumer (HTTP or
  Python) may claim them again (redelivery, attempts + 1).

Webhook subscriptions (only when the app allows them) take the same path: the wake is a
lease held by the consumer ``webhook:{id}`` (:func:`webhook_consumer`), returned by
:meth:`DsStore.tick` as a :class:`Delivery` for the pump to POST; a ``{"done": true}``
answer acks the wake's records (:meth:`DsStore.finish_webhook`), a callback is an ack.
A delivery that fails leaves its lease to end; the next wake calls again.

Everything in :class:`DsStore` is synchronous and runs on the AsyncDatabase's worker
thread (``run_sync``); it uses the public API and the engine interface (``db.engine``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..connection import rows as _q
from ..errors import (
    AccessDenied,
    InvalidName,
    StreamGone,
    StreamNotFound,
    StreamSealed,
    SubscriptionExists,
    SubscriptionNotFound,
)
from ..logs import LazyLogger
from ..validation import check_name
from . import protocol as p
from .subprotocol import (
    DEFAULT_CLAIM_BYTES,
    DEFAULT_CLAIM_RECORDS,
    ZERO_TOKEN,
    AckRequest,
    Config,
    DsError,
    backing_name,
    glob_match,
    invalid,
    runs,
)

if TYPE_CHECKING:
    from ..database import Database
    from ..subscriptions import Subscription

_log = LazyLogger("sqlstream.http")

def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def _iso(us: int) -> str:
    moment = _dt.datetime.fromtimestamp(us / 1e6, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ----------------------------------------------------------------- state in the file

_COLUMNS = ("id, type, pattern, wake_stream, webhook_url, callback_base, lease_ttl_ms, description, config_hash, "
            "created_at, "
            "generation, wake_id, holder, token_hash, lease_until")


@dataclass
class _Row:
    id: str
    type: str
    pattern: str | None
    wake_stream: str | None
    webhook_url: str | None
    callback_base: str | None
    lease_ttl_ms: int
    description: str | None
    config_hash: str
    created_at: int
    generation: int
    wake_id: str | None
    holder: str | None
    token_hash: bytes | None
    lease_until: int | None

    def leased(self, now: int) -> bool:
        return self.holder is not None and self.lease_until is not None and self.lease_until > now


class DsStore:
    """The subscriptions of one file (see the module docstring). Every method is atomic:
    one that writes runs in one ``db.transaction()`` (an error rolls all of it back),
    :meth:`describe` in one read snapshot; each raises :class:`DsError` for what the
    protocol refuses."""

    def __init__(self, db: Database, max_claim_bytes: int = DEFAULT_CLAIM_BYTES) -> None:
        self.db = db
        self.max_claim_bytes = max_claim_bytes  # a claim's byte budget per linked stream

    # -- reading

    def _row(self, sid: str) -> _Row | None:
        with self.db.engine.snapshot() as conn:
            rows = _q(conn, f"SELECT {_COLUMNS} FROM ds_subscriptions WHERE id = ?", (sid,))
        return _Row(*rows[0]) if rows else None

    def _must(self, sid: str) -> _Row:
        row = self._row(sid)
        if row is None:
            raise DsError(404, "SUBSCRIPTION_NOT_FOUND", f"no subscription {sid!r}")
        return row

    def _links(self, sid: str) -> list[tuple[str, bool, bool]]:
        """(path, explicit, glob) of every link, by path."""
        with self.db.engine.snapshot() as conn:
            return [(r[0], bool(r[1]), bool(r[2])) for r in _q(conn,
                "SELECT path, explicit, glob FROM ds_subscription_links WHERE subscription = ? ORDER BY path",
                (sid,))]

    def _backing(self, row: _Row, path: str) -> Subscription | None:
        """The sqlstream subscription behind a link; created (from the stream's first
        record: the stream appeared after the link) when the stream exists and it does not."""
        name = backing_name(row.id, path)
        try:
            return self.db.subscription(name)
        except SubscriptionNotFound:
            pass
        try:
            return self.db.create_subscription(name, path, start="earliest", ack_timeout=row.lease_ttl_ms / 1000)
        except StreamNotFound:
            return None
        except (SubscriptionExists, InvalidName) as exc:
            _log.warning("subscription %s: stream %s cannot be served: %s", row.id, path, exc)
            return None

    def _token(self, path: str, n: int) -> str:
        """The offset token of the position before record ``n`` of stream ``path``; below
        the first retained record, that record's (a record retention removed is gone
        whether it was acked or not: a token below it would only read as 410 Gone)."""
        info = self.db.stream_info(path)
        if n >= info.next_offset:
            return p.format_offset(n, info.byte_length)
        if n <= info.first_offset:
            return p.format_offset(info.first_offset, info.first_position)
        records = self.db.stream(path).read(n, 1)
        return p.format_offset(n, records[0].position if records else info.first_position)

    def _acked(self, sid: str, path: str) -> str:
        """The token before which every record of the link was acked (read-only: a link whose
        subscription is yet to be made, from the stream's first record, is at that record)."""
        try:
            return self._token(path, self.db.subscription(backing_name(sid, path)).info().acked_frontier)
        except SubscriptionNotFound:
            try:
                return self._token(path, self.db.stream_info(path).first_offset)
            except StreamNotFound:
                return ZERO_TOKEN

    def describe(self, sid: str, signing: dict[str, str] | None = None) -> dict[str, Any]:
        """The GET answer (PROTOCOL.md 6.3); ``acked_offset``: every record before it was acked;
        ``signing``: the webhook signing metadata (alg, kid, jwks_url) to show. One read
        snapshot for all of it: consistent, and no wait behind (or hold on) the write lock."""
        with self.db.engine.snapshot():
            row = self._must(sid)
            streams = []
            for path, explicit, _glob in self._links(sid):
                streams.append({"path": path, "link_type": "explicit" if explicit else "glob",
                                "acked_offset": self._acked(sid, path), "subscription": backing_name(sid, path)})
        return {"id": row.id, "subscription_id": row.id, "type": row.type, "pattern": row.pattern,
                "streams": streams, "webhook": {"url": row.webhook_url, "signing": signing} if row.webhook_url else None,
                "wake_stream": row.wake_stream, "lease_ttl_ms": row.lease_ttl_ms,
                "created_at": _iso(row.created_at), "status": "active", "description": row.description}

    # -- configuration

    def create(self, sid: str, config: Config, *, webhooks: bool = False, callback_base: str | None = None) -> bool:
        """Create the subscription (True) or re-confirm an identical one (False); 409 when
        one exists with another configuration, 400 when the wake stream does not exist or
        it is a webhook one and ``webhooks`` is off. ``callback_base``: the stream root URL
        that webhook callback URLs start with."""
        db = self.db
        with db.transaction():
            row = self._row(sid)
            if row is not None:
                if row.config_hash != config.hash:
                    raise DsError(409, "SUBSCRIPTION_ALREADY_EXISTS",
                                  f"subscription {sid!r} exists with another configuration")
                return False
            if config.type == "webhook" and not webhooks:
                raise invalid("webhook subscriptions are off on this server (it would make outgoing requests): "
                               "use type pull-wake with a wake_stream, or set [http] webhooks = true")
            if config.wake_stream is not None:
                try:
                    db.stream_info(config.wake_stream)
                except StreamNotFound:
                    raise invalid(f"wake_stream {config.wake_stream!r} does not exist: create it first "
                                   "(a JSON stream: PUT with Content-Type: application/json)") from None
            with db.engine.write() as conn:
                conn.execute(
                    "INSERT INTO ds_subscriptions (id, type, pattern, wake_stream, webhook_url, callback_base, "
                    "lease_ttl_ms, description, config_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, config.type, config.pattern, config.wake_stream, config.webhook_url,
                     callback_base if config.type == "webhook" else None, config.lease_ttl_ms,
                     config.description, config.hash, db.engine.now_us()))
            row = self._must(sid)
            self._refuse_wake_loop(row, config.streams)
            for path in config.streams:
                self._link(row, path, explicit=True)
            if config.pattern is not None:
                for info in db.streams():
                    if self._matches(row, info.name):
                        self._link(row, info.name, explicit=False)
        return True

    def _matches(self, row: _Row, path: str) -> bool:
        """The pattern links ``path``: it matches, and the sqlstream subscription the link
        needs can exist (a stream whose ``{id}@{path}`` is over 200 characters cannot be
        served, and is left unlinked rather than refusing every claim and tick)."""
        return (row.pattern is not None and path != row.wake_stream and not path.startswith("__ds/")
                and glob_match(row.pattern, path) and _linkable(row.id, path))

    def _refuse_wake_loop(self, row: _Row, more: tuple[str, ...] | list[str] = ()) -> None:
        """400 when ``row`` (with the explicit links ``more`` added) would be part of a wake
        loop: a chain of subscriptions each of which links (explicitly, or by its pattern)
        the wake stream of the one before, back to the first. Every wake appends an event
        to the wake stream, which is new work for the next one in the chain: a loop wakes
        itself for ever, one event per turn, however fast its workers ack. Patterns count
        by name (a wake stream exists before its subscription, so a pattern that matches it
        links it at the next look), which includes a subscription linking its own wake
        stream explicitly. Other subscriptions are loop-free (each was checked when made or
        changed), so any new loop passes through ``row``: one search from it suffices."""
        with self.db.engine.snapshot() as conn:
            rows = {r[0]: _Row(*r) for r in _q(conn, f"SELECT {_COLUMNS} FROM ds_subscriptions")}
            linked: dict[str, set[str]] = {}
            for sid, path in _q(conn, "SELECT subscription, path FROM ds_subscription_links"):
                linked.setdefault(sid, set()).add(path)
        rows[row.id] = row
        linked.setdefault(row.id, set()).update(more)

        def feeds(source: _Row) -> list[_Row]:
            """The subscriptions for which a wake event of ``source`` is work."""
            wake = source.wake_stream
            if wake is None:
                return []
            return [r for r in rows.values() if wake in linked.get(r.id, ()) or self._matches(r, wake)]

        came_from: dict[str, _Row] = {}
        frontier = [row]
        while frontier:
            nxt = []
            for source in frontier:
                for target in feeds(source):
                    if target.id == row.id:
                        chain = [source]
                        while chain[-1].id != row.id:
                            chain.append(came_from[chain[-1].id])
                        chain.reverse()
                        steps = "; ".join(f"{a.id!r} wakes into {a.wake_stream!r}, which {b.id!r} links"
                                          for a, b in zip(chain, [*chain[1:], row]))
                        raise invalid(f"this configuration would make a wake loop ({steps}): every wake would "
                                      "be new work for the next, for ever. Use a wake stream no subscription "
                                      "of the loop links (a pattern never links its own subscription's)")
                    if target.id not in came_from:
                        came_from[target.id] = source
                        nxt.append(target)
            frontier = nxt

    def _link(self, row: _Row, path: str, *, explicit: bool, start: str = "latest") -> None:
        """Link ``path`` (idempotent; adds the link kind). A new link to an existing stream
        starts at its tail (``start``); its subscription is adopted if one exists already."""
        name = backing_name(row.id, path)
        if not _linkable(row.id, path):
            raise invalid(f"stream path {path!r} is too long to link to subscription {row.id!r} "
                           f"(the subscription {row.id}@{path} is over 200 characters)")
        db = self.db
        with db.engine.write() as conn:
            have = _q(conn, "SELECT 1 FROM ds_subscription_links WHERE subscription = ? AND path = ?", (row.id, path))
            column = "explicit" if explicit else "glob"
            if have:
                conn.execute(f"UPDATE ds_subscription_links SET {column} = 1 WHERE subscription = ? AND path = ?",
                             (row.id, path))
                return
            conn.execute(f"INSERT INTO ds_subscription_links (subscription, path, {column}, linked_at) "
                         "VALUES (?, ?, 1, ?)", (row.id, path, db.engine.now_us()))
        try:
            db.create_subscription(name, path, start=start, ack_timeout=row.lease_ttl_ms / 1000, exist_ok=True)
        except StreamNotFound:
            pass  # linked before its stream exists: the subscription starts at its first record
        except SubscriptionExists:
            raise DsError(409, "SUBSCRIPTION_ALREADY_EXISTS",
                          f"the sqlstream subscription {name!r} exists on another stream") from None

    def add_streams(self, sid: str, paths: list[str]) -> None:
        """Link ``paths`` explicitly; 400 when that closes a wake loop (:meth:`_refuse_wake_loop`)."""
        with self.db.transaction():
            row = self._must(sid)
            self._refuse_wake_loop(row, paths)
            for path in paths:
                self._link(row, path, explicit=True)

    def remove_stream(self, sid: str, path: str) -> None:
        """Drop the explicit link (a glob link stays while the pattern matches); a link that
        goes takes its sqlstream subscription with it."""
        db = self.db
        with db.transaction():
            row = self._must(sid)
            keep_glob = self._matches(row, path)
            with db.engine.write() as conn:
                if keep_glob:
                    conn.execute("UPDATE ds_subscription_links SET explicit = 0, glob = 1 WHERE subscription = ? AND path = ?",
                                 (sid, path))
                    return
                gone = _q(conn, "DELETE FROM ds_subscription_links WHERE subscription = ? AND path = ? RETURNING 1",
                          (sid, path))
            if gone:
                self._drop_backing(sid, path)

    def _drop_backing(self, sid: str, path: str) -> None:
        try:
            self.db.delete_subscription(backing_name(sid, path), force=True)
        except SubscriptionNotFound:
            pass

    def delete(self, sid: str) -> None:
        """Delete the subscription and the sqlstream subscriptions behind its links (idempotent)."""
        db = self.db
        with db.transaction():
            links = self._links(sid)
            with db.engine.write() as conn:
                conn.execute("DELETE FROM ds_subscriptions WHERE id = ?", (sid,))
            for path, _e, _g in links:
                self._drop_backing(sid, path)

    def _refresh_links(self, row: _Row) -> None:
        """Link the streams the pattern matches that appeared since (from their first record)."""
        if row.pattern is None:
            return
        linked = {path for path, _e, _g in self._links(row.id)}
        for info in self.db.streams():
            if info.name not in linked and self._matches(row, info.name):
                self._link(row, info.name, explicit=False,
                           start="earliest" if info.created_at * 1e6 >= row.created_at else "latest")

    # -- delivery

    def claim(self, sid: str, worker: str, max_records: int) -> dict[str, Any]:
        """Take the lease and claim records for ``worker`` (see the module docstring)."""
        db = self.db
        with db.transaction():
            row = self._must(sid)
            if row.type != "pull-wake":
                raise invalid(f"subscription {sid!r} is not pull-wake")
            if row.leased(db.engine.now_us()):
                raise DsError(409, "ALREADY_CLAIMED", f"worker {row.holder!r} holds the lease",
                              current_holder=row.holder, generation=row.generation)
            self._refresh_links(row)
            wake = self._take_lease(row, worker, max_records)
            if wake is None:
                with db.engine.write(wakes=False) as conn:  # the wake (if any) found its work done
                    conn.execute("UPDATE ds_subscriptions SET wake_id = NULL, holder = NULL, token_hash = NULL, "
                                 "lease_until = NULL WHERE id = ?", (sid,))
        if wake is None:  # raised after the commit: the cleared wake stays cleared
            raise DsError(409, "NO_PENDING_WORK", f"subscription {sid!r} has no records to claim")
        return wake

    def _take_lease(self, row: _Row, worker: str, max_records: int) -> dict[str, Any] | None:
        """Fetch every link's records for ``worker`` until the lease's end and record the
        lease; the claim's (or webhook's) body, or None when there was nothing to claim."""
        db = self.db
        now = db.engine.now_us()
        lease_s = row.lease_ttl_ms / 1000
        streams: list[dict[str, Any]] = []
        for path, explicit, _glob in self._links(row.id):
            sub = self._backing(row, path)
            entry: dict[str, Any] = {"path": path, "link_type": "explicit" if explicit else "glob"}
            batch = sub.fetch(worker, max_records, 0, max_bytes=self.max_claim_bytes) if sub is not None else None
            if sub is None or not batch:
                at = self._acked(row.id, path)
                entry.update(acked_offset=at, tail_offset=at, has_pending=False, claimed=[])
            else:
                sub.extend_deadline(*batch.offsets, seconds=lease_s)
                spans = [[self._token(path, a), self._token(path, b)] for a, b in runs(batch.offsets)]
                entry.update(acked_offset=spans[0][0], tail_offset=spans[-1][1], has_pending=True, claimed=spans)
            streams.append(entry)
        if not any(s["has_pending"] for s in streams):
            return None
        generation, wake_id = row.generation, row.wake_id
        if wake_id is None or row.holder is not None:  # no wake in flight, or its lease ended
            generation, wake_id = generation + 1, _wake_id()
        token = f"{generation}.{secrets.token_urlsafe(32)}"  # the generation: to tell stale from wrong
        with db.engine.write(wakes=False) as conn:
            conn.execute("UPDATE ds_subscriptions SET generation = ?, wake_id = ?, holder = ?, token_hash = ?, "
                         "lease_until = ? WHERE id = ?",
                         (generation, wake_id, worker, _hash(token), now + row.lease_ttl_ms * 1000, row.id))
        return {"wake_id": wake_id, "generation": generation, "token": token, "streams": streams,
                "lease_ttl_ms": row.lease_ttl_ms}

    def _fenced(self, sid: str, token: str | None, req: AckRequest, kind: str) -> _Row:
        """The subscription (of type ``kind``), if ``token``/``req`` belong to its live
        lease; else 401/409."""
        row = self._must(sid)
        if row.type != kind:
            raise invalid(f"subscription {sid!r} is {row.type}: "
                           + ("acks and releases are for pull-wake ones" if kind == "pull-wake" else
                              "callbacks are for webhook ones"))
        if not token or row.token_hash is None or not hmac.compare_digest(_hash(token), row.token_hash):
            if row.token_hash is None:
                raise DsError(409, "FENCED", f"subscription {sid!r} has no live lease (released, done or expired)")
            stale, _, _ = (token or "").partition(".")
            if stale.isdigit() and len(stale) < 20 and int(stale) < row.generation:
                raise DsError(409, "FENCED", f"the token is of generation {stale}; the current one is {row.generation}")
            raise DsError(401, "TOKEN_INVALID", "Authorization must be 'Bearer <token of the claim>'")
        if not row.leased(self.db.engine.now_us()):
            raise DsError(409, "FENCED", f"the lease of {row.holder!r} expired; claim again")
        if req.generation != row.generation or req.wake_id != row.wake_id:
            raise DsError(409, "FENCED", f"generation {req.generation} / wake {req.wake_id!r} is stale; "
                                         f"the current generation is {row.generation}")
        return row

    def _held(self, row: _Row) -> list[tuple[str, Subscription, dict[int, int]]]:
        """Per linked stream: its subscription and the records the lease holder holds (offset: attempts)."""
        assert row.holder is not None
        out = []
        for path, _e, _g in self._links(row.id):
            try:
                sub = self.db.subscription(backing_name(row.id, path))
            except SubscriptionNotFound:
                continue
            out.append((path, sub, {e.offset: e.attempts for e in sub.pending(row.holder)}))
        return out

    def ack(self, sid: str, token: str | None, req: AckRequest, kind: str = "pull-wake") -> bool:
        """Ack, heartbeat, and with ``done`` end the lease; True when there is more work (a
        pull-wake subscription then has a new wake issued; a webhook one is called again).
        ``kind="webhook"``: the callback of a webhook subscription, the same otherwise."""
        db = self.db
        with db.transaction():
            row = self._fenced(sid, token, req, kind)
            held = {path: (sub, mine) for path, sub, mine in self._held(row)}
            linked = {path for path, _e, _g in self._links(sid)}
            for path, n in req.acks:
                if path not in held:
                    if path in linked:
                        continue  # its stream (and group) was deleted since the claim: nothing left to ack
                    raise DsError(409, "INVALID_OFFSET", f"stream {path!r} is not linked to subscription {sid!r}")
                sub, mine = held[path]
                if n > db.stream_info(path).next_offset:
                    raise DsError(409, "INVALID_OFFSET", f"offset {n} is beyond the tail of stream {path!r}")
                done = {o: a for o, a in mine.items() if o < n}
                if done:
                    sub.ack(*done, attempts=done)
                    for o in done:
                        del mine[o]
            if not req.done:
                for sub, mine in held.values():
                    if mine:
                        sub.extend_deadline(*mine, seconds=row.lease_ttl_ms / 1000)
                with db.engine.write(wakes=False) as conn:
                    conn.execute("UPDATE ds_subscriptions SET lease_until = ? WHERE id = ?",
                                 (db.engine.now_us() + row.lease_ttl_ms * 1000, sid))
                return False
            return self._end_lease(row, held)

    def release(self, sid: str, token: str | None, req: AckRequest) -> bool:
        """Give back every record of the lease and end it; True when another wake was issued."""
        with self.db.transaction():
            row = self._fenced(sid, token, req, "pull-wake")
            return self._end_lease(row, {path: (sub, mine) for path, sub, mine in self._held(row)})

    def _end_lease(self, row: _Row, held: dict[str, tuple[Subscription, dict[int, int]]]) -> bool:
        for sub, mine in held.values():
            if mine:
                sub.nack(*mine)
        with self.db.engine.write() as conn:
            conn.execute("UPDATE ds_subscriptions SET wake_id = NULL, holder = NULL, token_hash = NULL, "
                         "lease_until = NULL WHERE id = ?", (row.id,))
        row.wake_id = row.holder = None
        if row.type == "webhook":
            return self._claimable(row) is not None  # the pump calls the webhook again
        return self._wake_if_pending(row)

    def finish_webhook(self, sid: str, wake_id: str, generation: int) -> None:
        """A webhook answered ``{"done": true}``: ack every record of that wake and end its
        lease — if it is still the current one (else nothing: it ended meanwhile)."""
        with self.db.transaction():
            row = self._row(sid)
            if (row is None or row.type != "webhook" or row.wake_id != wake_id or row.generation != generation
                    or not row.leased(self.db.engine.now_us())):
                return
            held = {path: (sub, mine) for path, sub, mine in self._held(row)}
            for sub, mine in held.values():
                if mine:
                    sub.ack(*mine, attempts=dict(mine))
                    mine.clear()
            self._end_lease(row, held)

    def _claimable(self, row: _Row) -> str | None:
        """The first linked stream with a record a fetch could claim now, or None."""
        for path, _e, _g in self._links(row.id):
            sub = self._backing(row, path)
            if sub is not None and sub.probe()[0]:
                return path
        return None

    def _wake_if_pending(self, row: _Row) -> bool:
        """Issue a wake (generation + 1, a wake event in the wake stream) if there is work."""
        path = self._claimable(row)
        if path is None:
            return False
        db = self.db
        generation, wake_id = row.generation + 1, _wake_id()
        with db.engine.write() as conn:
            conn.execute("UPDATE ds_subscriptions SET generation = ?, wake_id = ?, holder = NULL, token_hash = NULL, "
                         "lease_until = NULL WHERE id = ?", (generation, wake_id, row.id))
        if row.wake_stream is not None:
            event = {"type": "wake", "subscription_id": row.id, "stream": path, "generation": generation,
                     "ts": db.engine.now_us() // 1000}
            try:
                db.stream(row.wake_stream).append(event)
            except (StreamNotFound, StreamGone, StreamSealed, AccessDenied) as exc:
                # The wake stays issued: a worker that claims finds the work all the same.
                _log.warning("subscription %s: cannot append to its wake stream %s: %s", row.id, row.wake_stream, exc)
        return True

    # -- the pump

    def due(self) -> list[str]:
        """Read-only: the subscriptions a :meth:`tick` would act on (idle, or with an ended
        lease, and something to claim or a new stream to link)."""
        db = self.db
        now = db.engine.now_us()
        with db.engine.snapshot() as conn:
            rows = [_Row(*r) for r in _q(conn,
                f"SELECT {_COLUMNS} FROM ds_subscriptions WHERE "
                "(holder IS NULL OR lease_until <= ?) AND (wake_id IS NULL OR holder IS NOT NULL)", (now,))]
        if not rows:
            return []
        names = None
        out = []
        for row in rows:
            if row.holder is not None:  # an ended lease: its holder and token are cleared, work woken
                out.append(row.id)
                continue
            if row.pattern is not None:
                if names is None:
                    names = [i.name for i in db.streams()]
                linked = {path for path, _e, _g in self._links(row.id)}
                if any(n not in linked and self._matches(row, n) for n in names):
                    out.append(row.id)
                    continue
            for path, _e, _g in self._links(row.id):
                try:
                    sub = db.subscription(backing_name(row.id, path))
                except SubscriptionNotFound:
                    if _exists(db, path):
                        out.append(row.id)
                        break
                    continue
                if sub.probe()[0]:
                    out.append(row.id)
                    break
        return out

    def tick(self, sids: list[str]) -> list[Delivery]:
        """For each subscription: end an expired lease, link new streams, and if it is idle
        with work, issue a wake — pull-wake: a wake event in its wake stream; webhook: a
        lease held by the webhook's consumer, returned as a :class:`Delivery` for the
        caller to send. Each subscription in its own transaction."""
        db = self.db
        out: list[Delivery] = []
        for sid in sids:
            with db.transaction():
                row = self._row(sid)
                if row is None:
                    continue
                now = db.engine.now_us()
                if row.holder is not None and not row.leased(now):
                    with db.engine.write(wakes=False) as conn:
                        conn.execute("UPDATE ds_subscriptions SET wake_id = NULL, holder = NULL, token_hash = NULL, "
                                     "lease_until = NULL WHERE id = ?", (sid,))
                    row.wake_id = row.holder = None
                elif row.holder is not None or row.wake_id is not None:
                    continue
                self._refresh_links(row)
                if row.type == "pull-wake":
                    self._wake_if_pending(row)
                    continue
                wake = self._take_lease(row, webhook_consumer(sid), DEFAULT_CLAIM_RECORDS)
                if wake is not None and row.webhook_url is not None:
                    out.append(Delivery(row.webhook_url, sid, wake["wake_id"], wake["generation"], {
                        "subscription_id": sid, "wake_id": wake["wake_id"], "generation": wake["generation"],
                        "streams": wake["streams"],
                        "callback_url": f"{row.callback_base}/__ds/subscriptions/{sid}/callback",
                        "callback_token": wake["token"]}))
        return out

    def next_lease_end(self) -> float | None:
        """Seconds since the epoch at which the earliest live lease ends (None: none)."""
        with self.db.engine.snapshot() as conn:
            rows = _q(conn, "SELECT min(lease_until) FROM ds_subscriptions WHERE holder IS NOT NULL")
        return None if not rows or rows[0][0] is None else rows[0][0] / 1e6

    def count(self) -> int:
        """How many subscriptions the file holds."""
        with self.db.engine.snapshot() as conn:
            return int(_q(conn, "SELECT count(*) FROM ds_subscriptions")[0][0])


@dataclass(frozen=True)
class Delivery:
    """A webhook call to make: the URL, which wake it is, and the JSON body."""

    url: str
    subscription: str
    wake_id: str
    generation: int
    body: dict[str, Any]


def webhook_consumer(sid: str) -> str:
    """The sqlstream consumer name under which a webhook subscription's wakes hold records."""
    return f"webhook:{sid}"


def _exists(db: Database, path: str) -> bool:
    try:
        db.stream_info(path)
    except StreamNotFound:
        return False
    return True


def _linkable(sid: str, path: str) -> bool:
    """Whether the sqlstream subscription behind a link of ``sid`` to ``path`` can exist."""
    try:
        check_name(backing_name(sid, path), "subscription")
    except InvalidName:
        return False
    return True


def _wake_id() -> str:
    return "w_" + secrets.token_hex(12)
