"""Webhook delivery of Durable Streams subscriptions: Ed25519 signatures, the JWKS, the POST.

Off by default (``[http] webhooks = true`` turns it on): a server that calls URLs its
clients name is a request forger in waiting, even with the protocol's URL rules (https
to public hosts, plain http only to localhost / 127.0.0.x; see
:func:`sqlstream.http.subprotocol.webhook_url_problem`).

Signing (PROTOCOL.md 6.5, 7.1): ``Webhook-Signature: t=<unix seconds>,kid=<kid>,
ed25519=<base64url signature of "<t>.<raw body>">``. The key pair is made when the app
starts and lives in memory only (the protocol's SHOULD persist is not met: a private key
would be a secret at rest in the file); ``kid`` is ``ds_`` + the RFC 7638 thumbprint of
the public key, published at ``{prefix}/__ds/jwks.json``. A restart publishes a new key;
receivers look keys up by ``kid`` in the JWKS, so they follow.

Delivery: one POST per wake (10 s for the whole call, a host name resolved and its addresses
checked at each call and the call made to the address checked, redirects not followed, at most 64 KiB of
the answer read). A 2xx answer of ``{"done": true}`` acks the wake's records; any other
answer (a longer one included) leaves the wake's lease to
run out, after which the pump calls again with a new wake (a retry every
``lease_ttl_ms``), and the records it held are claimable by any consumer meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..logs import LazyLogger

_log = LazyLogger("sqlstream.http")
TIMEOUT = 10.0
MAX_ANSWER_BYTES = 64 * 1024
"""The most of a webhook's answer read: the receiver is whoever the subscription names,
and only ``{"done": true}`` matters in what it says."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Signer:
    """An Ed25519 key pair for webhook signatures, made at construction (in memory)."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.x = _b64url(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        # RFC 7638: the required members in lexicographic order, no whitespace.
        thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": self.x}, separators=(",", ":"))
        self.kid = "ds_" + _b64url(hashlib.sha256(thumbprint.encode()).digest())

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set publishing the public key."""
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig", "alg": "EdDSA",
                          "x": self.x}]}

    def signing(self, jwks_url: str) -> dict[str, str]:
        """The ``webhook.signing`` metadata of a subscription."""
        return {"alg": "ed25519", "kid": self.kid, "jwks_url": jwks_url}

    def sign(self, body: bytes, now: float | None = None) -> str:
        """The ``Webhook-Signature`` header value for ``body``."""
        stamp = int(time.time() if now is None else now)
        signature = self._key.sign(f"{stamp}.".encode() + body)
        return f"t={stamp},kid={self.kid},ed25519={_b64url(signature)}"


async def post(client: httpx.AsyncClient, signer: Signer, url: str, payload: dict[str, Any],
               timeout: float = TIMEOUT) -> Any:
    """POST the signed ``payload``; the JSON of a 2xx answer (None when not 2xx, not JSON,
    over :data:`MAX_ANSWER_BYTES` (not read further), not complete within ``timeout``
    seconds from the start of the call, or the call failed: logged)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "webhook-signature": signer.sign(body)}
    try:
        # One deadline for the whole call: httpx's timeout bounds each read, so a receiver
        # that sends a byte now and then would hold the call (and its connection) for days,
        # and the pump starts another call for the subscription every time a lease ends.
        answer = await asyncio.wait_for(_exchange(client, url, body, headers, timeout), timeout)
    except httpx.HTTPError as exc:
        _log.warning("webhook %s: %s", url, exc)
        return None
    except asyncio.TimeoutError:
        _log.warning("webhook %s: no whole answer within %s s", url, timeout)
        return None
    if answer is None:
        return None
    try:
        return json.loads(answer)
    except (ValueError, RecursionError):
        return None


async def _pin(url: str) -> tuple[str, dict[str, str], dict[str, Any]] | str:
    """Where to connect for ``url``: (the URL with its host name replaced by an address it
    resolves to now, the Host header to send, the request's extensions: the TLS server
    name), or why not (a str). Every address the name resolves to must pass the rule the
    URL passed at creation (https: public; http: loopback), checked here because what a
    name resolves to is up to its DNS, and can change after the check (DNS rebinding):
    the call goes to the address checked, not to a second lookup's answer."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return url, {}, {}  # an address: checked when the subscription was made
    except ValueError:
        pass
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc}"
    addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    wanted = "loopback" if parts.scheme == "http" else "public"
    refused = [a for a in addresses if not (a.is_loopback if parts.scheme == "http" else a.is_global)]
    if not addresses or refused:
        return f"{host!r} resolves to {refused[0] if refused else 'no address'}, not a {wanted} address"
    # One address is called (not each in turn, as a client's happy eyeballs would): IPv4
    # first, which a receiver listening on 127.0.0.1 for http://localhost/ needs where
    # localhost resolves to ::1 first.
    first = min(addresses, key=lambda a: a.version)
    userinfo, at, _ = parts.netloc.rpartition("@")  # credentials in the URL go along
    netloc = userinfo + at + (f"[{first}]" if first.version == 6 else str(first)) + (f":{parts.port}" if parts.port else "")
    name = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), {"host": name}, {"sni_hostname": host}


async def _exchange(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                    timeout: float) -> bytes | None:
    """The POST (to the address :func:`_pin` checked) and the bytes of its 2xx answer (None:
    not called, not 2xx, or over the bound)."""
    target = await _pin(url)
    if isinstance(target, str):
        _log.warning("webhook %s not called: %s", url, target)
        return None
    address_url, extra, extensions = target
    answer = bytearray()
    async with client.stream("POST", address_url, content=body, headers={**headers, **extra}, timeout=timeout,
                             extensions=extensions) as response:
        if not 200 <= response.status_code < 300:
            _log.warning("webhook %s answered %d", url, response.status_code)
            return None
        async for chunk in response.aiter_bytes():
            answer += chunk
            if len(answer) > MAX_ANSWER_BYTES:
                _log.warning("webhook %s: an answer over %d bytes is not read", url, MAX_ANSWER_BYTES)
                return None
    return bytes(answer)
