"""Network address rules shared by the protocol fronts (HTTP, Kafka): one place for each.

:func:`is_loopback` decides whether a listener's bind address reaches this machine only,
which is what lets a front run without authentication (DESIGN "Protocol fronts": loopback
by default; any other address needs credentials or an explicit opt-out). The HTTP front
also uses it for its Host-header check. Pure functions, no I/O: a name is never resolved
(``localhost`` is taken at its word, any other name is not loopback), so the answer
cannot change with the resolver's configuration.
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["is_loopback"]


@functools.lru_cache(maxsize=256)  # the HTTP front asks twice per request (its address, the Host header)
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, without port or brackets) names this machine only.

    ``localhost`` in any case, and every IPv4/IPv6 loopback address (``127.0.0.0/8``,
    ``::1``); any other name or address, and anything that does not parse, is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
