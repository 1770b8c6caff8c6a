"""Durable Streams subscription requests as pure functions (no I/O, no sqlstream handles).

The rules of PROTOCOL.md sections 6 and 7 that need no file: subscription ids, stream
paths, glob patterns (``*`` one segment, ``**`` any number), webhook URL safety, the
bodies of create, claim, ack/release/callback requests, and the protocol's error
objects (:class:`DsError`: status, ``code``, message). :mod:`sqlstream.http.substore`
keeps the state; everything here can be tested without a database or a network.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import operator
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidName
from ..validation import check_name
from . import protocol as p

DEFAULT_LEASE_TTL_MS = 30_000
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
DEFAULT_CLAIM_RECORDS = 1000
MAX_CLAIM_RECORDS = 10_000
# A claim's byte budget per linked stream by default (HttpConfig.max_claim_bytes, passed
# to Subscription.fetch as max_bytes): the records a claim reads are bounded in bytes too.
DEFAULT_CLAIM_BYTES = 64 * 1024 * 1024
MAX_STREAMS = 1000
"""Explicit streams one request may name."""
# Subscription ids: a sqlstream name without '/' (it is one URL segment) or '@' (the
# separator of the backing subscription's name, which must stay unambiguous).
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-:=+]{0,99}")
ZERO_TOKEN = p.format_offset(0, 0)


class DsError(Exception):
    """A refused subscription request: HTTP ``status``, the protocol's error ``code``, a
    message, and extra fields of the error object (``current_holder``, ``generation``)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": str(self), **self.extra}}


def invalid(message: str) -> DsError:
    return DsError(400, "INVALID_REQUEST", message)


# ----------------------------------------------------------------- pure rules


def check_id(raw: str) -> str:
    """A subscription id from the URL; ``DsError(400)`` unless it is 1-100 of
    ``A-Z a-z 0-9 _ . - : = +`` (not starting with ``.-:=+``)."""
    if not _ID.fullmatch(raw):
        raise invalid(f"invalid subscription id {raw[:120]!r}: 1 to 100 characters of A-Z a-z 0-9 _ . - : = +, "
                       "starting with a letter, digit or _")
    return raw


def backing_name(sid: str, path: str) -> str:
    """The sqlstream subscription behind the link of ``sid`` to stream ``path``."""
    return f"{sid}@{path}"


def normalize_path(raw: object, what: str) -> str:
    """A stream-root-relative path as a stream name (slashes at either end dropped)."""
    if not isinstance(raw, str) or not raw.strip("/"):
        raise invalid(f"{what} must be a non-empty string (a stream path such as 'events/abc')")
    path = raw.strip("/")
    try:
        check_name(path, what)
    except InvalidName as exc:
        raise invalid(str(exc)) from None
    if path == "__ds" or path.startswith("__ds/"):
        raise invalid(f"{what} {path!r} is in the reserved __ds namespace")
    return path


def glob_match(pattern: str, path: str) -> bool:
    """``*`` matches one path segment, ``**`` zero or more, anything else itself.

    One pass over the pattern keeping the set of path prefixes matched so far: the work
    is (pattern segments x path segments), however many ``**`` the pattern holds (trying
    each way to share the path among them, as a recursive matcher does, is exponential)."""
    pat = [s for s in pattern.split("/") if s]
    parts = [s for s in path.split("/") if s]
    reach = [True] + [False] * len(parts)  # reach[i]: the segments so far match parts[:i]
    for seg in pat:
        if seg == "**":
            reach = list(accumulate(reach, operator.or_))
        else:
            reach = [False] + [r and (seg == "*" or seg == part) for r, part in zip(reach, parts)]
    return reach[-1]


def webhook_url_problem(url: str) -> str | None:
    """Why a webhook URL is unsafe (PROTOCOL.md 6.2, against SSRF), or None: https to a
    public host, or http only to localhost / 127.0.0.x."""
    try:
        parts = urlsplit(url)
        # A fully qualified name's final dot names the same host ("localhost." is localhost).
        host = (parts.hostname or "").lower().removesuffix(".")
    except ValueError:
        return "webhook.url must be a valid URL"
    if parts.scheme == "http":
        if host == "localhost" or re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", host):
            return None
        return "http webhook URLs are allowed only for localhost or 127.0.0.x"
    if parts.scheme != "https" or not host:
        return "webhook.url must be an https URL"
    if host == "localhost" or host.endswith(".localhost"):  # resolvers answer *.localhost with loopback (RFC 6761)
        return "https webhook URLs must not name localhost"
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = _inet_aton(host)
    if address is None:
        return None  # a host name (what it resolves to is not checked: see the README)
    if not address.is_global:
        return "webhook.url must not target private, loopback or link-local addresses"
    return None


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address the C resolver reads ``host`` as, or None for a name. inet_aton
    (behind getaddrinfo, so behind the HTTP client) takes hex, octal, decimal and short
    dotted forms: ``0x7f000001``, ``2130706433``, ``127.1`` and ``0177.0.0.1`` are all
    127.0.0.1, which ``ipaddress`` does not parse. Only digits, dots and ``x``/hex digits
    can be such a form: a name with other letters is never read as an address."""
    if not re.fullmatch(r"[0-9a-fx.]+", host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class Config:
    """A subscription's normalised configuration (what PUT compares to re-confirm)."""

    type: str
    pattern: str | None
    streams: tuple[str, ...]
    wake_stream: str | None
    webhook_url: str | None
    lease_ttl_ms: int
    description: str | None

    @property
    def hash(self) -> str:
        canonical = {"type": self.type, "pattern": self.pattern, "streams": sorted(set(self.streams)),
                     "webhook": self.webhook_url, "wake_stream": self.wake_stream,
                     "lease_ttl_ms": self.lease_ttl_ms, "description": self.description}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def parse_json(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (empty: ``{}``)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise invalid("the body must be a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{what} must be an integer from {low} to {high}, not {str(value)[:40]}")
    return value


def parse_config(body: dict[str, Any]) -> Config:
    """The body of a create PUT (PROTOCOL.md 6.2); ``DsError`` naming the bad field."""
    kind = body.get("type")
    if kind not in ("webhook", "pull-wake"):
        raise invalid('type must be "webhook" or "pull-wake"')
    pattern = body.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern.strip("/") or len(pattern) > 400:
            raise invalid("pattern must be a non-empty glob of at most 400 characters, such as 'events/*'")
        pattern = pattern.strip("/")
    raw_streams = body.get("streams", [])
    if not isinstance(raw_streams, list) or len(raw_streams) > MAX_STREAMS:
        raise invalid(f"streams must be an array of at most {MAX_STREAMS} stream paths")
    streams = tuple(normalize_path(s, "stream") for s in raw_streams)
    if pattern is None and not streams:
        raise invalid("give a pattern, streams, or both")
    lease = _int(body.get("lease_ttl_ms", DEFAULT_LEASE_TTL_MS), "lease_ttl_ms", MIN_LEASE_TTL_MS, MAX_LEASE_TTL_MS)
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 1000):
        raise invalid("description must be a string of at most 1000 characters")
    webhook_url = wake_stream = None
    if kind == "webhook":
        hook = body.get("webhook")
        url = hook.get("url") if isinstance(hook, dict) else None
        if not isinstance(url, str) or not url:
            raise invalid("webhook subscriptions need webhook.url")
        problem = webhook_url_problem(url)
        if problem is not None:
            raise DsError(400, "WEBHOOK_URL_REJECTED", problem)
        webhook_url = url
    else:
        wake_stream = normalize_path(body.get("wake_stream"), "wake_stream")
    return Config(kind, pattern, streams, wake_stream, webhook_url, lease, description)


@dataclass(frozen=True)
class AckRequest:
    """The body of an ack, release or callback: the wake it belongs to, acks, done."""

    wake_id: str
    generation: int
    acks: tuple[tuple[str, int], ...]
    done: bool


def parse_ack(body: dict[str, Any], *, with_acks: bool) -> AckRequest:
    wake_id = body.get("wake_id")
    if not isinstance(wake_id, str) or not wake_id or len(wake_id) > 100:
        raise invalid("wake_id must be the wake_id of the claim (a string)")
    generation = _int(body.get("generation"), "generation", 0, p.MAX_SAFE)
    acks: list[tuple[str, int]] = []
    raw = body.get("acks", []) if with_acks else []
    if not isinstance(raw, list) or len(raw) > MAX_STREAMS:
        raise invalid(f"acks must be an array of at most {MAX_STREAMS} {{stream, offset}} objects")
    for item in raw:
        if not isinstance(item, dict):
            raise invalid("each ack is an object {stream, offset}")
        path = normalize_path(item.get("stream", item.get("path")), "ack stream")
        offset = item.get("offset")
        if not isinstance(offset, str):
            raise DsError(409, "INVALID_OFFSET", f"the ack of {path!r} needs an offset token (a string)")
        try:
            acks.append((path, p.parse_token(offset, "offset") if offset != "-1" else -1))
        except p.ProtocolError:
            raise DsError(409, "INVALID_OFFSET", f"malformed offset {offset[:80]!r} in the ack of {path!r}: "
                                                 "use a tail_offset or Stream-Next-Offset value") from None
        if acks[-1][1] < 0:
            raise DsError(409, "INVALID_OFFSET", "an ack offset must not be -1")
    done = body.get("done", False)
    if not isinstance(done, bool):
        raise invalid("done must be true or false")
    return AckRequest(wake_id, generation, tuple(acks), done)


def runs(offsets: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted offsets as (start, end) runs of consecutive ones, end exclusive."""
    start = prev = None
    for o in offsets:
        if prev is not None and o == prev + 1:
            prev = o
            continue
        if start is not None and prev is not None:
            yield start, prev + 1
        start = prev = o
    if start is not None and prev is not None:
        yield start, prev + 1
