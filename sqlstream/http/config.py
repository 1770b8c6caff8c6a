"""The ``[http]`` table of a ``sqlstream serve`` config, validated into an :class:`HttpConfig`.

::

    [http]
    listen = "127.0.0.1:4437"     # HOST:PORT; another address than loopback needs a token
    prefix = "/v1/stream"         # stream URLs are {prefix}/{name}
    token = "..."                 # clients send Authorization: Bearer <token>
    insecure = false              # serve a non-loopback address without a token anyway
    long_poll_timeout = 20        # seconds
    sse_max_seconds = 60
    max_live = 1000               # open long-poll/SSE responses (more: 503 + Retry-After)
    max_header_bytes = 16384      # (more: 431)
    max_connections = 1024        # open connections (more: closed at once; 503 when that many requests run)
    header_timeout = 20           # seconds to send a request's headers, else the connection is closed
    max_chunk_bytes = 4194304     # bytes read and held at a time per response (a catch-up piece, an SSE event)
    max_response_bytes = 67108864 # per catch-up response (sent in pieces of max_chunk_bytes)
    max_messages_per_append = 10000  # messages in one JSON-mode POST/PUT (more: 413)
    max_claim_bytes = 67108864    # a subscription claim's bytes per linked stream (the first record always)
    web_view = true               # GET / : streams and a live tail
    metrics = true                # GET /metrics : Prometheus
    cors_origins = ["https://app.example"]  # browser pages of other origins allowed; "*": any
    allowed_hosts = ["myhost.local"]  # Host names served on loopback besides localhost/127.x/[::1]
    webhooks = false              # serve webhook subscriptions (the server POSTs to client-given URLs)

The token may also come from the environment variable ``SQLSTREAM_HTTP_TOKEN`` (which
wins), so it need not be written in a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..streaming.config import ConfigError
from .app import MAXIMUMS, NUMERIC_OPTIONS, HttpConfig, number_problem
from .server import DEFAULT_PORT

TOKEN_ENV = "SQLSTREAM_HTTP_TOKEN"
_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "listen": str, "prefix": str, "token": str, "insecure": bool, "long_poll_timeout": (int, float),
    "sse_max_seconds": (int, float), "max_live": int, "max_header_bytes": int, "max_chunk_bytes": int,
    "max_response_bytes": int,
    "web_view": bool, "metrics": bool, "cors_origins": list, "allowed_hosts": list,
    "max_connections": int, "header_timeout": (int, float), "max_messages_per_append": int,
    "webhooks": bool, "max_claim_bytes": int,
}


class HttpSettings(NamedTuple):
    listen: str
    insecure: bool
    config: HttpConfig


def http_settings(table: Mapping[str, Any] | None, path: str = "<config>") -> HttpSettings:
    """Validate an ``[http]`` table (None: all defaults); raises ``ConfigError``."""
    values: dict[str, Any] = {}
    for key, value in (table or {}).items():
        if key not in _OPTIONS:
            raise ConfigError(path, "http", key, "unknown option", hint=f"known: {', '.join(sorted(_OPTIONS))}")
        kind = _OPTIONS[key]
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise ConfigError(path, "http", key, f"has the wrong type: {value!r}")
        problem = number_problem(value, MAXIMUMS.get(key)) if key in NUMERIC_OPTIONS else None
        if problem is not None:
            raise ConfigError(path, "http", key, problem)
        if isinstance(value, list):
            if not all(isinstance(item, str) and item for item in value):
                raise ConfigError(path, "http", key, f"must be a list of non-empty strings, not {value!r}")
            value = tuple(value)
        values[key] = value
    token = os.environ.get(TOKEN_ENV) or values.pop("token", None)
    values.pop("token", None)
    listen = values.pop("listen", f"127.0.0.1:{DEFAULT_PORT}")
    insecure = values.pop("insecure", False)
    return HttpSettings(listen, insecure, HttpConfig(token=token or None, **values))
