"""The ``[kafka]`` table of the serve TOML and ``--kafka HOST:PORT``, as :class:`Settings`.

::

    [kafka]
    listen = "127.0.0.1:9092"      # HOST:PORT; port 0 picks a free one
    advertised_host = "edge-1"     # the host clients are told to connect to (default: the bound one)
    advertised_port = 19092        # ... and the port (default: the bound one), e.g. behind a proxy
    auto_create_topics = true      # create a topic on first produce/metadata/fetch, as Kafka does
    default_partitions = 1         # partitions of an auto-created topic
    max_request_bytes = 104857600  # larger frames close the connection (logged)
    max_connections = 256
    username = "app"               # SASL/PLAIN; a password turns SASL on
    password = "secret"
    insecure = false               # true: allow a non-loopback address without SASL
    idle_timeout = 540             # seconds without a request before a connection is closed
    auth_timeout = 10              # seconds to complete SASL after connecting (SASL on)
    frame_timeout = 60             # seconds for a request frame to arrive whole after its first byte
    producer_expiry = 604800       # seconds an idle idempotent producer's state is kept (7 days)
    producer_expiry_check = 600    # seconds between two looks for expired producers

Validation is strict, as for the rest of the file: an unknown key, a wrong type or a
duration that is not finite and > 0 is a :class:`~sqlstream.streaming.config.ConfigError`
naming the file, table and key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidArgument
from ..validation import check_seconds
from ..streaming.config import ConfigError
from .handlers import Settings

__all__ = ["parse_listen", "settings_from_config"]

_KINDS: dict[str, Any] = {
    "listen": str, "advertised_host": str, "advertised_port": int, "auto_create_topics": bool, "default_partitions": int,
    "max_request_bytes": int, "max_connections": int, "username": str, "password": str, "insecure": bool,
    **{key: (int, float) for key in Settings.SECONDS if key != "group_initial_delay"},
}


_MAXIMUMS = {"advertised_port": 65535, "default_partitions": 10_000}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9092`` for IPv6) -> (host, port); raises ``InvalidArgument``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"{text!r} is not HOST:PORT", hint="e.g. --kafka 127.0.0.1:9092 (port 0: a free one)")
    return host, int(port)


def settings_from_config(table: Mapping[str, Any] | None, path: str = "<config>", *,
                         listen: str | None = None, insecure: bool = False) -> Settings:
    """Settings from a ``[kafka]`` table; ``listen``/``insecure`` (the command line) win."""
    settings = Settings()
    items: Mapping[str, Any] = table or {}
    for key, value in items.items():
        kind = _KINDS.get(key)
        if kind is None:
            raise ConfigError(path, "kafka", key, "unknown option", hint=f"known: {', '.join(sorted(_KINDS))}")
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            what = "an integer" if kind is int else "a number" if kind == (int, float) else kind.__name__
            raise ConfigError(path, "kafka", key, f"must be {what}, not {value!r}")
        if key in Settings.SECONDS:
            try:
                value = check_seconds(value, key, positive=True)
            except InvalidArgument as exc:
                raise ConfigError(path, "kafka", key, str(exc)) from None
        if kind is int and value < (0 if key == "default_partitions" else 1):
            raise ConfigError(path, "kafka", key, f"must be positive, not {value}")
        # Accepted, these only failed later: clients told to connect to a port TCP does not
        # have (every client of the listener), every auto-created topic refused.
        top = _MAXIMUMS.get(key)
        if top is not None and value > top:
            shown = f"{value}" if len(str(value)) <= 30 else f"a number of {len(str(value))} digits"
            raise ConfigError(path, "kafka", key, f"must be at most {top:,}, not {shown}")
        if key == "listen":
            try:
                settings.host, settings.port = parse_listen(value)
            except InvalidArgument as exc:
                raise ConfigError(path, "kafka", key, str(exc), hint=exc.hint) from None
        elif key == "username":
            settings.sasl_username = value
        elif key == "password":
            settings.sasl_password = value
        else:
            setattr(settings, key, value)
    if settings.default_partitions < 1:
        raise ConfigError(path, "kafka", "default_partitions", "must be at least 1")
    if listen is not None:
        settings.host, settings.port = parse_listen(listen)
    if insecure:
        settings.insecure = True
    return settings
