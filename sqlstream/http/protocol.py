"""Durable Streams protocol rules as pure functions (no I/O, no sqlstream handles).

Parsing and formatting of what travels in headers and query strings (offset tokens,
TTL, RFC 3339 times, producer headers, cursors), JSON-mode bodies, and SSE frames. The
ASGI app (:mod:`sqlstream.http.app`) maps them onto the public API; everything here can
be tested without a network.

Offset tokens: the position before record ``n`` of a stream, whose bytes start at byte
position ``b`` of the stream, is ``%016d_%016d`` of (n, b): the reference server's
shape, opaque to clients, sortable as text, never the sentinels ``-1`` or ``now``,
URL-safe. Only ``n`` is read back; ``b`` is there for people reading logs.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import random
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

# The loopback rule is shared with the Kafka front: it lives in sqlstream.addresses.
from ..addresses import is_loopback as is_loopback
from ..fencing import KAFKA_PRODUCER_PREFIX

# Header names (lower case, as ASGI delivers them).
NEXT_OFFSET = "stream-next-offset"
UP_TO_DATE = "stream-up-to-date"
CLOSED = "stream-closed"
CURSOR = "stream-cursor"
TTL = "stream-ttl"
EXPIRES_AT = "stream-expires-at"
SEQ = "stream-seq"
FORKED_FROM = "stream-forked-from"
FORK_OFFSET = "stream-fork-offset"
FORK_SUB_OFFSET = "stream-fork-sub-offset"
PRODUCER_ID = "producer-id"
PRODUCER_EPOCH = "producer-epoch"
PRODUCER_SEQ = "producer-seq"
PRODUCER_EXPECTED_SEQ = "producer-expected-seq"
PRODUCER_RECEIVED_SEQ = "producer-received-seq"
SSE_ENCODING = "stream-sse-data-encoding"
WRITE_SECRET = "stream-write-secret"

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_OFFSET = re.compile(r"([0-9]{16})_[0-9]{16}")
_UINT = re.compile(r"0|[1-9][0-9]*")
MAX_SAFE = 2**53 - 1
# Cursor intervals (section 10.1): 20 s intervals counted from 2024-10-09T00:00:00Z.
_CURSOR_EPOCH = 1728432000.0
_CURSOR_INTERVAL = 20.0


class ProtocolError(Exception):
    """A request the protocol refuses: ``status`` and a message for the body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def format_offset(n: int, position: int) -> str:
    """The token of sqlstream offset ``n`` at byte ``position``."""
    return f"{n:016d}_{position:016d}"


class Offset(NamedTuple):
    """A parsed ``offset`` query value: ``start`` (-1: the beginning), ``now``, or a position."""

    position: int | None  # None for "now"; -1 for the beginning

    @property
    def now(self) -> bool:
        return self.position is None


def parse_offset(raw: str | None) -> Offset:
    """The ``offset`` query parameter (absent = the beginning); ``ProtocolError(400)`` if malformed."""
    if raw is None or raw == "-1":
        return Offset(-1)
    if raw == "now":
        return Offset(None)
    match = _OFFSET.fullmatch(raw)
    if not match:
        raise ProtocolError(400, f"malformed offset {raw!r}: use -1, now, or a Stream-Next-Offset value")
    return Offset(int(match.group(1)))


def parse_token(raw: str, what: str) -> int:
    """An offset token in a header (e.g. Stream-Fork-Offset); -1 means 0."""
    if raw == "-1":
        return 0
    match = _OFFSET.fullmatch(raw)
    if not match:
        raise ProtocolError(400, f"malformed {what} {raw!r}")
    return int(match.group(1))


def parse_uint(raw: str, what: str, maximum: int = MAX_SAFE) -> int:
    """A non-negative decimal integer without sign, leading zeros or exponent."""
    if not _UINT.fullmatch(raw.strip()) or int(raw) > maximum:
        raise ProtocolError(400, f"{what} must be a non-negative integer (no sign, leading zeros or decimals), "
                                 f"not {raw!r}")
    return int(raw)


def parse_rfc3339(raw: str) -> float:
    """An RFC 3339 timestamp (``Z`` or an offset) as seconds since the epoch."""
    text = raw.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", text):
        raise ProtocolError(400, f"Stream-Expires-At must be an RFC 3339 timestamp, not {raw!r}")
    text = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    frac = re.search(r"\.(\d+)", text)
    if frac and len(frac.group(1)) > 6:  # fromisoformat takes at most microseconds
        text = text.replace(frac.group(0), "." + frac.group(1)[:6])
    try:
        seconds = _dt.datetime.fromisoformat(text.replace("t", "T").replace(" ", "T")).timestamp()
    except (ValueError, OverflowError):
        raise ProtocolError(400, f"Stream-Expires-At is not a valid time: {raw!r}") from None
    if seconds > _LATEST:
        raise ProtocolError(400, f"Stream-Expires-At must be at most 9999-12-31T23:59:59Z, not {raw!r}")
    return seconds


# The last whole second RFC 3339 can show (sqlstream.lifetimes.MAX_EXPIRES_AT).
_LATEST = 253402300799


def format_rfc3339(seconds: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC with milliseconds (a time past the last
    second year 9999 has, which a file written before that limit may hold, shows as it)."""
    moment = _dt.datetime.fromtimestamp(min(seconds, _LATEST), _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def is_true(raw: str | None) -> bool:
    """A boolean protocol header: exactly ``true``, any case; anything else is absent."""
    return raw is not None and raw.strip().lower() == "true"


def media_type(content_type: str | None) -> str:
    """The comparable part of a Content-Type: the media type, lower case, without parameters."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """SSE carries text/* and JSON streams as UTF-8; everything else base64."""
    mt = media_type(content_type)
    return mt.startswith("text/") or mt == "application/json"


class Producer(NamedTuple):
    producer: str
    epoch: int
    seq: int


def parse_producer(headers: Mapping[str, str]) -> Producer | None:
    """The three producer headers (all or none), validated; None when absent."""
    present = [h for h in (PRODUCER_ID, PRODUCER_EPOCH, PRODUCER_SEQ) if h in headers]
    if not present:
        return None
    if len(present) != 3:
        raise ProtocolError(400, "Producer-Id, Producer-Epoch and Producer-Seq go together")
    pid = headers[PRODUCER_ID]
    if not pid.strip():
        raise ProtocolError(400, "Producer-Id must not be empty")
    if pid.startswith(KAFKA_PRODUCER_PREFIX):
        # Those rows are the Kafka listener's producers on the same streams.
        raise ProtocolError(400, f"Producer-Id must not start with {KAFKA_PRODUCER_PREFIX!r}: "
                                 "that prefix is reserved for the Kafka listener's producers")
    return Producer(pid, parse_uint(headers[PRODUCER_EPOCH], "Producer-Epoch"),
                    parse_uint(headers[PRODUCER_SEQ], "Producer-Seq"))


def no_constants(name: str) -> Any:
    """``json.loads``'s ``parse_constant``: NaN, Infinity and -Infinity are not JSON (ValueError)."""
    raise ValueError(f"{name} is not JSON")


def parse_json_messages(body: bytes, *, allow_empty: bool, limit: int | None = None) -> list[Any]:
    """A JSON-mode body as messages: one value, or an array flattened one level.

    ``ProtocolError(400)`` for invalid JSON (NaN/Infinity included) and, unless
    ``allow_empty`` (PUT), an empty array; ``ProtocolError(413)`` for more than ``limit``
    messages (they would be stored in one transaction, holding the file's write lock).
    """
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(400, f"body is not valid JSON: {exc}") from None
    if isinstance(value, list):
        if not value and not allow_empty:
            raise ProtocolError(400, "an empty JSON array appends nothing")
        if limit is not None and len(value) > limit:
            raise ProtocolError(413, f"the JSON array holds {len(value)} messages; one request appends at most "
                                     f"{limit} (max_messages_per_append): send them in several requests")
        return value
    return [value]


# One encoder for every message: json.dumps with non-default options builds a new
# JSONEncoder per call, which was most of a JSON catch-up read's time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def json_text(value: Any) -> str:
    """A JSON value as compact UTF-8 text (sqlstream stores JSON records the same way)."""
    return _ENCODER.encode(value)


def json_array(items: Iterable[str]) -> bytes:
    """Messages (each JSON text) as one JSON array."""
    return ("[" + ",".join(items) + "]").encode("utf-8")


def cursor(client_cursor: str | None, now: float | None = None) -> str:
    """The Stream-Cursor for a live response: the current 20 s interval, strictly past the
    client's echoed cursor when that is not behind (so CDN cache keys always advance)."""
    interval = int(((time.time() if now is None else now) - _CURSOR_EPOCH) // _CURSOR_INTERVAL)
    if client_cursor is not None and client_cursor.isdigit():
        echoed = int(client_cursor)
        if echoed >= interval:
            interval = echoed + max(1, round(random.uniform(1, 3600) / _CURSOR_INTERVAL))
    return str(interval)


def sse_event(event: str, data: str) -> bytes:
    """One SSE event; every line of ``data`` becomes its own ``data:`` line."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return (f"event: {event}\n" + "".join(f"data:{line}\n" for line in lines) + "\n").encode("utf-8")


def sse_data(payload: bytes, *, text: bool) -> bytes:
    """A data event: UTF-8 text as is, anything else base64 (76-character lines)."""
    if text:
        return sse_event("data", payload.decode("utf-8", "replace"))
    encoded = base64.b64encode(payload).decode("ascii")
    return sse_event("data", "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76)))


def etag(stream_id: str, start: int, end: int, closed: bool) -> str:
    """``"{stream}:{start}:{end}[:c]"``: changes with the range and with closure."""
    return f'"{stream_id}:{start}:{end}{":c" if closed else ""}"'


def host_name(header: str) -> str:
    """The host of a ``Host`` header without its port (``[::1]:80`` -> ``::1``), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header
