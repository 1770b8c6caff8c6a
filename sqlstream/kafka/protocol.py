"""Kafka wire framing on kio's generated message types, sans I/O.

kio (Aiven) generates one frozen dataclass per message, version and nested struct from
Apache Kafka's own JSON message schemas, with a native reader and a writer that handle
flexible versions and tagged fields. This module adds what a broker needs around it:

- :func:`parse_request`: a request frame (without its 4-byte size) -> :class:`Request`
  (api key, version, correlation id, client id and the decoded body);
- :func:`encode_response`: a response body -> the frame to send (size prefix, response
  header v0 or v1 as the API version requires: ApiVersions always uses v0);
- :func:`build`: a response entity of any version from a plain dict, so a handler writes
  one dict for every version it supports: keys the version lacks are dropped, fields the
  dict lacks take the schema default (or 0/""/()/None), ints become the timedelta,
  datetime, error code and UUID types kio writes.

``SUPPORTED`` is the table ApiVersions advertises: per API key, the versions this listener
serves (within what kio has). Versions that carry topic ids instead of names (Fetch 13+,
Produce 13+) are not offered, so every client talks in topic names.
"""

from __future__ import annotations

import datetime
import struct
import types
import typing
import uuid
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import lru_cache
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import TZAware, i32Timedelta, i64Timedelta

__all__ = [
    "ProtocolError",
    "Request",
    "SUPPORTED",
    "API_NAMES",
    "parse_request",
    "encode_response",
    "build",
    "error_response",
]

# api key -> (name, lowest version, highest version) served.
SUPPORTED: dict[int, tuple[str, int, int]] = {
    0: ("Produce", 3, 12),
    1: ("Fetch", 4, 12),
    2: ("ListOffsets", 1, 9),
    3: ("Metadata", 0, 12),
    8: ("OffsetCommit", 2, 9),
    9: ("OffsetFetch", 1, 7),
    10: ("FindCoordinator", 0, 4),
    11: ("JoinGroup", 0, 9),
    12: ("Heartbeat", 0, 4),
    13: ("LeaveGroup", 0, 5),
    14: ("SyncGroup", 0, 5),
    15: ("DescribeGroups", 0, 5),
    16: ("ListGroups", 0, 4),
    17: ("SaslHandshake", 0, 1),
    18: ("ApiVersions", 0, 4),
    19: ("CreateTopics", 2, 7),
    20: ("DeleteTopics", 1, 6),
    22: ("InitProducerId", 0, 4),
    32: ("DescribeConfigs", 1, 4),
    36: ("SaslAuthenticate", 0, 2),
    37: ("CreatePartitions", 0, 3),
}
API_NAMES = {key: name for key, (name, _, _) in SUPPORTED.items()}
_SIZE = struct.Struct(">i")
_HEADER_START = struct.Struct(">hhi")


class ProtocolError(Exception):
    """A frame this listener cannot read; the connection is closed with this reason logged.

    ``correlation_id``/``api_key``/``version`` are set when the header was readable, so
    the caller may answer with an error response instead.
    """

    def __init__(self, message: str, *, api_key: int | None = None, version: int | None = None,
                 correlation_id: int | None = None) -> None:
        super().__init__(message)
        self.api_key = api_key
        self.version = version
        self.correlation_id = correlation_id


@dataclass(frozen=True)
class Request:
    """A decoded request: header fields and the kio body entity."""

    api_key: int
    version: int
    correlation_id: int
    client_id: str | None
    body: Any


def parse_request(frame: bytes) -> Request:
    """Decode one request frame (the bytes after the size prefix).

    Raises :class:`ProtocolError` for an API or version outside ``SUPPORTED`` (with the
    header fields set, so the caller can answer) and for bytes kio cannot decode.
    """
    if len(frame) < _HEADER_START.size:
        raise ProtocolError(f"a request of {len(frame)} bytes is shorter than a request header")
    api_key, version, correlation_id = _HEADER_START.unpack_from(frame)
    where = {"api_key": api_key, "version": version, "correlation_id": correlation_id}
    served = SUPPORTED.get(api_key)
    if served is None:
        raise ProtocolError(f"API key {api_key} is not supported by this listener", **where)
    name, low, high = served
    if not low <= version <= high:
        raise ProtocolError(f"{name} v{version} is not supported (this listener serves v{low}-v{high})", **where)
    schema = _request_schema(api_key, version)
    header_type = RequestHeaderV2 if schema.__flexible__ else RequestHeaderV1
    try:
        header, used = _reader(header_type)(frame, 0)
        body, size = _reader(schema)(frame, used)
    except Exception as exc:  # kio raises several types for truncated or invalid input
        raise ProtocolError(f"{name} v{version}: the request does not decode: {type(exc).__name__}: {exc}",
                            **where) from exc
    # Bytes after the body are ignored, as Kafka's own request parsing does (librdkafka
    # sends a few after Metadata v12's body).
    return Request(api_key, version, correlation_id, header.client_id, body)


@lru_cache(maxsize=None)
def _request_schema(api_key: int, version: int) -> Any:
    return load_request_schema(api_key, version)


@lru_cache(maxsize=None)
def response_schema(api_key: int, version: int) -> Any:
    """The kio response class of ``api_key`` at ``version``."""
    return load_response_schema(api_key, version)


@lru_cache(maxsize=None)
def _reader(cls: Any) -> Any:
    return entity_reader(cls)


@lru_cache(maxsize=None)
def _writer(cls: Any) -> Any:
    return entity_writer(cls)


class _Parts(list):  # type: ignore[type-arg]
    """What kio's writers write to: each field's bytes kept by reference (``write`` is
    ``list.append``), so a Fetch response's records are copied once, into the frame."""

    write = list.append


def encode_response(api_key: int, version: int, correlation_id: int, body: Any) -> bytes:
    """The frame for a response entity: size, response header (v0, or v1 for flexible
    versions except ApiVersions, whose header is always v0), body."""
    parts = _Parts()
    parts.append(b"")  # the size, once known
    parts.append(_SIZE.pack(correlation_id))
    if type(body).__flexible__ and api_key != 18:
        parts.append(b"\0")  # the header's empty tagged-field section
    writer: Any = _writer
    writer(type(body))(parts, body)
    parts[0] = _SIZE.pack(sum(map(len, parts)))
    return b"".join(parts)


def build(cls: Any, data: dict[str, Any]) -> Any:
    """An instance of kio entity ``cls`` from ``data`` (see the module docstring)."""
    spec = _spec(cls)
    kwargs: dict[str, Any] = {}
    for name, (kind, inner, default) in spec.items():
        if name in data:
            value = data[name]
            # None where this version's field is not nullable (e.g. an error message
            # before the version that made it nullable): the field's empty value.
            kwargs[name] = _implicit(kind, inner) if value is None and kind == "plain" else _convert(kind, inner, value)
        elif default is not MISSING:
            continue
        else:
            kwargs[name] = _implicit(kind, inner)
    return cls(**kwargs)


def _convert(kind: str, inner: Any, value: Any) -> Any:
    if kind == "entity":
        return None if value is None else (value if is_dataclass(value) else build(inner, value))
    if kind == "entities":
        if value is None:
            return None
        return tuple(v if is_dataclass(v) else build(inner, v) for v in value)
    if kind == "error":
        return ErrorCode(int(value))
    if kind == "timedelta":
        return value if isinstance(value, datetime.timedelta) else inner.parse(datetime.timedelta(milliseconds=value))
    if kind == "datetime":
        if value is None or isinstance(value, datetime.datetime):
            return value
        if value < 0:
            return None
        return TZAware.parse(datetime.datetime.fromtimestamp(value / 1000, datetime.timezone.utc))
    if kind == "uuid":
        return value if value is None or isinstance(value, uuid.UUID) else uuid.UUID(bytes=bytes(value))
    return value


def _implicit(kind: str, inner: Any) -> Any:
    if kind in ("entities", "tuple"):
        return ()
    if kind == "error":
        return ErrorCode.none
    if kind == "timedelta":
        return inner.parse(datetime.timedelta(0))
    if kind in ("datetime", "uuid", "entity", "optional"):
        return None
    if inner is bool:
        return False
    # Subclasses too: kio types names as str subclasses (TopicName, GroupId, ...).
    if isinstance(inner, type) and issubclass(inner, str):
        return ""
    if isinstance(inner, type) and issubclass(inner, bytes):
        return b""
    if isinstance(inner, type) and issubclass(inner, float):
        return 0.0
    return 0


@lru_cache(maxsize=None)
def _spec(cls: Any) -> dict[str, tuple[str, Any, Any]]:
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[str, Any, Any]] = {}
    for f in fields(cls):
        t = hints[f.name]
        default = f.default if f.default is not MISSING else (
            f.default_factory if f.default_factory is not MISSING else MISSING)
        out[f.name] = _classify(t) + (default,)
    return out


def _classify(t: Any) -> tuple[str, Any]:
    optional = False
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        optional = len(args) != len(typing.get_args(t))
        t = args[0]
    if typing.get_origin(t) is tuple:
        inner = typing.get_args(t)[0]
        return ("entities", inner) if is_dataclass(inner) else ("tuple", inner)
    if is_dataclass(t):
        return "entity", t
    if t is ErrorCode:
        return "error", t
    if isinstance(t, type) and issubclass(t, datetime.timedelta):
        return "timedelta", t if t in (i32Timedelta, i64Timedelta) else i32Timedelta
    if isinstance(t, type) and issubclass(t, datetime.datetime):
        return "datetime", t
    if t is uuid.UUID:
        return "uuid", t
    return ("optional" if optional else "plain"), t


def error_response(request: Request, code: int) -> Any | None:
    """A response to ``request`` with every error code field set to ``code``, or None
    when the response has no such field (the caller then closes the connection)."""
    cls = response_schema(request.api_key, request.version)
    if "error_code" not in _spec(cls):
        return None
    return build(cls, {"error_code": code})
