"""Store-and-forward between sqlstream and NATS JetStream, both directions, exactly once.

``jetstream`` (forward, :class:`JetStreamForward`): every record of the exposed local
streams is published to a JetStream stream, in commit order, with its key, headers,
content type, timestamp and origin in NATS headers and ``Nats-Msg-Id`` =
``{origin}-{incarnation}:{offset}:{stream}`` (:func:`message_id`): the origin is the
identity of the file that wrote the record (a copy made by ``backup()`` has its own, and
names the records it shares with its original as the original does, see
:mod:`sqlstream.lineage`), the incarnation tells apart streams of one name (deleted and
created again), so an id never names two different records. Publishing is asynchronous with at most ``max_in_flight``
unacknowledged messages; the durable cursor (``streaming_cursors``, a commit height)
advances only over blocks whose every record has its PubAck. After a crash the records
above the cursor are published again with the same ids, and the server's duplicate
window drops those it already stored -- so before resending, the service checks that
they were first published inside that window (``jetstream_sent``, migration 0006) and
refuses to start otherwise, naming the gap and the fix.

``jetstream-source`` (reverse, :class:`JetStreamSource`): a durable pull consumer on a
JetStream stream (optionally a subject filter) feeds one local stream; each fetched batch
is appended with ``dedup_id = "{js stream}:{sequence}"`` in the same transaction that
records the position (``jetstream_sources``), and acked only after the commit. A message
redelivered after ``kill -9`` is recognised by its dedup id and stored once. A poison
message (a damaged ``Sqlstream-Headers``, a key or value the local stream refuses) is set
aside in the same transaction -- counted, the last one named by stream and sequence in
``serve --status``, stored raw in the ``dead_letter`` stream if one is configured -- and
the messages after it are stored as usual. With ``create = true`` the service creates
its JetStream stream (``subjects``, default the ``filter_subject``) when it is missing.

Both run their asyncio loop (nats-py) in the thread the runner gives them
(self-paced: ``SELF_PACED = True``). The server being unreachable is never fatal: the services retry
with capped exponential backoff (0.1 s doubling up to ``backoff_max``), record the cause
as the cursor's ``last_error`` and resume where they were. A message the server rejects
(too large, no stream for the subject, ...) raises :class:`RelayError` naming the
record's stream and offset; with ``stop-node-on-error = false`` it is retried instead.
It is never skipped.

The records of one transaction are published as ONE atomic batch (ADR-50: headers
``Nats-Batch-Id``/``-Sequence``/``-Commit`` on ordinary messages) when the server (2.14+)
and the stream (``allow_atomic``) support it: stored all or none. A batch the server
refuses for a duplicate id (part of it is stored) is republished record by record, so
the duplicate window still makes the resend exactly-once. Otherwise records are
published one by one, and the relay logs why (see docs/architecture.md).

``keep_unforwarded``: forwarding pins (:mod:`sqlstream.retention`) keep retention from
trimming what JetStream has not acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import json
import logging
import math
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..clock import now_us
from ..errors import InvalidArgument, SqlstreamError
from ..records import check_name
from .services import Option, OptionError, Service
from ..lineage import Identity
from .store import Block, BlockRecord, SourceItem, Store

if TYPE_CHECKING:  # pragma: no cover
    import nats.aio.client
    import nats.js

__all__ = ["JetStreamForward", "JetStreamSource", "RelayError", "subject_token", "message_id", "record_headers"]

log = logging.getLogger("sqlstream.streaming.jetstream")

BACKOFF_FIRST = 0.1
HOUSEKEEPING_INTERVAL = 0.5  # seconds between pinning checks (keep_unforwarded), online or not
IDLE_CURSOR_INTERVAL = 1.0  # seconds between cursor writes moved over commits of other streams only
H_KEY = "Sqlstream-Key"
H_HEADERS = "Sqlstream-Headers"
H_TYPE = "Sqlstream-Content-Type"
H_TIME = "Sqlstream-Timestamp"
H_ORIGIN = "Sqlstream-Origin"
H_STREAM = "Sqlstream-Stream"
H_OFFSET = "Sqlstream-Offset"
H_INCARNATION = "Sqlstream-Incarnation"
H_MSG_ID = "Nats-Msg-Id"
H_BATCH_ID = "Nats-Batch-Id"  # atomic batch publish (ADR-50)
H_BATCH_SEQUENCE = "Nats-Batch-Sequence"
H_BATCH_COMMIT = "Nats-Batch-Commit"
ATOMIC_MAX_MESSAGES = 1000  # the server's limit per batch: larger transactions go one by one
ATOMIC_MAX_OPEN = 16  # batches awaiting their commit's PubAck (the server allows 50 per stream, counting
# the ones a killed predecessor left open until it abandons them after 10 s)
ATOMIC_INCOMPLETE = 10176  # "atomic publish batch is incomplete": a gap or an unknown batch
ATOMIC_DUPLICATE = 10201  # "atomic publish batch contains duplicate message id"
_RESERVED = ("nats-", "sqlstream-")
_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_\-]")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII without ':' or space


class RelayError(SqlstreamError):
    """The relay cannot go on: the server refused a record, the configuration or the
    credentials, or a resend would not be de-duplicated. ``height`` is the block, when known."""

    def __init__(self, message: str, *, hint: str | None = None, height: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.height = height


class _Transient(Exception):
    """A failure worth retrying (connection lost, timeout, no leader)."""


class _NoResponders(Exception):
    """A publish found no stream listening on its subject: either no stream takes the
    subject (``error``, fatal) or the stream's leader is being elected and has not
    subscribed yet (transient). The session asks the server which one it is."""

    def __init__(self, subject: str, error: RelayError) -> None:
        super().__init__(str(error))
        self.subject = subject
        self.error = error


def _nats() -> Any:
    try:
        import nats  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise RelayError("the jetstream services need the nats-py package",
                         hint='pip install "sqlstream[nats]"') from exc
    return nats


# ---------------------------------------------------------------- mapping records

def subject_token(name: str) -> str:
    """``name`` as one NATS subject token: every character outside ``[A-Za-z0-9_-]`` becomes ``_``."""
    return _TOKEN_BAD.sub("_", name) or "_"


def message_id(origin: int, stream: str, offset: int, incarnation: int | None = None) -> str:
    """The ``Nats-Msg-Id`` of a record: stable across resends, never the id of another record.

    ``origin`` is the identity of the file that wrote the record
    (:meth:`sqlstream.lineage.Identity.origin`), ``incarnation`` the stream's (None for a
    stream created before schema version 11, whose ids keep their old form
    ``{origin}:{offset}:{stream}``).
    """
    if incarnation is None:
        return f"{origin}:{offset}:{stream}"
    return f"{origin}-{incarnation}:{offset}:{stream}"


def record_headers(origin: int, record: BlockRecord) -> dict[str, str]:
    """The NATS headers that carry a record's metadata (see the module docstring);
    ``origin``: the identity of the file that wrote it.

    The record's own headers become NATS headers of the same name when every name is a
    valid, non-reserved header name and no value has a line break; otherwise they travel
    as one JSON object in ``Sqlstream-Headers``.
    """
    headers = {
        H_MSG_ID: message_id(origin, record.stream, record.offset, record.incarnation),
        H_ORIGIN: str(origin),
        H_STREAM: record.stream,
        H_OFFSET: str(record.offset),
        H_TYPE: record.content_type,
        H_TIME: str(record.timestamp),
    }
    if record.incarnation is not None:
        headers[H_INCARNATION] = str(record.incarnation)
    if record.key is not None:
        headers[H_KEY] = record.key
    if record.headers:
        own: dict[str, str] = json.loads(record.headers)
        native = all(
            _HEADER_NAME.match(k) and not k.lower().startswith(_RESERVED) and "\r" not in v and "\n" not in v
            for k, v in own.items()
        )
        if native:
            headers.update(own)
        else:
            headers[H_HEADERS] = json.dumps(own, separators=(",", ":"), ensure_ascii=False)
    return headers


def _value(content_type: str | None, data: bytes) -> Any:
    """A message body back as the value to append, by its content type."""
    if content_type == "text":
        return data.decode("utf-8")
    if content_type == "json":
        return json.loads(data)
    return bytes(data)


def _message_headers(headers: Mapping[str, str] | None) -> tuple[str | None, dict[str, str] | None, str | None]:
    """(key, record headers, content type) from a message's NATS headers.

    Raises ValueError, saying what is wrong, when ``Sqlstream-Headers`` is not a JSON
    object of strings (the message is poison: it cannot be stored as it was sent).
    """
    if not headers:
        return None, None, None
    key = headers.get(H_KEY)
    ctype = headers.get(H_TYPE)
    if H_HEADERS in headers:
        try:
            own: Any = json.loads(headers[H_HEADERS])
        except ValueError as exc:  # JSONDecodeError, or a number too long to convert
            raise ValueError(f"its {H_HEADERS} header is not valid JSON ({exc})") from None
        except RecursionError:
            raise ValueError(f"its {H_HEADERS} header nests too deeply") from None
        if not isinstance(own, dict) or not all(isinstance(v, str) for v in own.values()):
            raise ValueError(f"its {H_HEADERS} header is not a JSON object of strings")
    else:
        own = {k: v for k, v in headers.items() if not k.lower().startswith(_RESERVED)}
    return key, (own or None), ctype


# ---------------------------------------------------------------- shared options
#
# Every option is checked when the config is loaded (parse_config calls Option.check and
# prepare_options), so a value the relay could not use is refused before anything runs,
# as a ConfigError naming the option -- not retried for ever, nor found when it runs.

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MAX_SECONDS = 9_223_372_036.0  # the longest JetStream duration (int64 nanoseconds)
MAX_IN_FLIGHT = 65_536  # unacknowledged messages (held in memory); far past any gain
MAX_BATCH = 10_000  # messages per fetch and local transaction
_JS_NAME_BAD = re.compile(r"[\s.*>/\\\x00-\x1f\x7f]")


def _seconds(*, zero: bool = False, limit: float = MAX_SECONDS) -> Callable[[Any], str | None]:
    """An Option check: a finite number of seconds, positive (or ``zero`` allowed), at most ``limit``."""
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number of seconds, not {value!r}"
        if isinstance(value, int) and value > limit:  # before float(), which overflows past 1e308
            return f"must be at most {limit:g} seconds, not a number of {len(str(value))} digits"
        number = float(value)
        if math.isnan(number) or number < 0 or (number == 0 and not zero):
            return f"must be a {'non-negative' if zero else 'positive'} number of seconds, not {value!r}"
        if number > limit:
            return f"must be at most {limit:g} seconds, not {value!r}"
        return None
    return check


def _count(low: int, high: int) -> Callable[[Any], str | None]:
    """An Option check: an integer in [low, high]."""
    def check(value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"must be an integer from {low} to {high:,}, not {value!r}"
    return check


def _js_name(value: Any) -> str | None:
    """An Option check: a JetStream stream or consumer name."""
    if not isinstance(value, str) or not value or len(value) > 255 or _JS_NAME_BAD.search(value):
        return (f"{value!r} is not a JetStream name (1 to 255 characters, no spaces, dots, '*', '>', "
                "slashes or control characters)")
    return None


def _subject_problem(subject: str, *, wildcards: bool = True) -> str | None:
    tokens = subject.split(".")
    if any(t == "" or any(c.isspace() for c in t) for t in tokens):
        return f"{subject!r} is not a NATS subject (tokens are non-empty, separated by single dots, no spaces)"
    if not wildcards and any(t in ("*", ">") for t in tokens):
        return f"{subject!r} may not contain wildcards"
    if ">" in tokens[:-1]:
        return f"{subject!r}: '>' may only be the last token"
    return None


def _subjects(value: Any) -> str | None:
    """An Option check: a list of subjects (wildcards allowed)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"must be a list of subjects, not {value!r}"
    for subject in value:
        problem = _subject_problem(subject)
        if problem is not None:
            return problem
    return None


def _local_name(value: Any) -> str | None:
    """An Option check: a valid local stream name."""
    try:
        check_name(value)
    except SqlstreamError as exc:
        return str(exc)
    return None


def _filter(value: Any) -> str | None:
    """An Option check: a subject filter, or "" for none."""
    if not isinstance(value, str):
        return f"must be a subject, not {value!r}"
    return None if value == "" else _subject_problem(value)


_CONNECTION_OPTIONS: dict[str, Option] = {
    "servers": Option("list", ["nats://127.0.0.1:4222"], help='e.g. servers = ["nats://hub:4222"]'),
    "stream": Option("str", required=True, help='the JetStream stream, e.g. stream = "EDGE"', check=_js_name),
    "creds": Option("path", None, help="a NATS .creds file (JWT and nkey seed)"),
    "nkey": Option("path", None, help="a file holding an nkey seed (SU...)"),
    "user": Option("str", None),
    "password": Option("str", None),
    "token": Option("str", None),
    "tls_ca": Option("path", None, help="CA certificate(s) to verify the server"),
    "tls_cert": Option("path", None, help="client certificate (with tls_key)"),
    "tls_key": Option("path", None, help="client private key (with tls_cert)"),
    "connect_timeout": Option("number", 2.0, help="seconds to wait for the server when connecting",
                              check=_seconds(limit=3600)),
    "backoff_max": Option("number", 30.0, help="the longest wait between reconnect attempts (seconds)",
                          check=_seconds(limit=86400)),
    "stop-node-on-error": Option("bool", True),
}


def _connection_problems(options: Mapping[str, Any]) -> None:
    """The checks of the connection options that involve more than one value (OptionError)."""
    servers = options["servers"]
    if not servers:
        raise OptionError("servers", "is empty", hint='e.g. servers = ["nats://hub:4222"]')
    for server in servers:
        if not re.match(r"^(nats|tls|ws|wss)://[^\s]+$", server):
            raise OptionError("servers", f"{server!r} is not a nats:// URL", hint='write servers = ["nats://host:4222"]')
    if (options["user"] is None) != (options["password"] is None):
        raise OptionError("user", "user and password go together", hint="give both, or neither")
    if (options["tls_cert"] is None) != (options["tls_key"] is None):
        raise OptionError("tls_cert", "tls_cert and tls_key go together", hint="give both, or neither")
    # A missing key or certificate file would otherwise surface only when the relay first
    # connects, as a retried error in --status: name it when the config loads instead.
    for key in ("creds", "nkey", "tls_ca", "tls_cert", "tls_key"):
        path = options[key]
        if path is not None and not os.path.isfile(path):
            raise OptionError(key, f"{path!r} is not a file", hint=f"check the {key} path (relative paths are "
                                                                    "read from the config file's folder)")


class _Relay(Service):
    """Connection handling shared by both directions."""

    SELF_PACED: ClassVar[bool] = True
    DRAINS_ON_STOP: ClassVar[bool] = False  # a stop never waits on the server
    UNIT: ClassVar[str] = "run(s)"

    @classmethod
    def prepare_options(cls, options: dict[str, Any], base_dir: str) -> dict[str, Any]:
        """The checks that involve several options, made when the config is loaded."""
        _connection_problems(options)
        return options

    def __init__(self, name: str, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        super().__init__(name, keys, options)
        try:  # built without parse_config (the Python API): the same checks
            for key, spec in self.OPTIONS.items():
                if spec.check is not None and key in self.options and self.options[key] is not None:
                    problem = spec.check(self.options[key])
                    if problem is not None:
                        raise OptionError(key, problem, hint=spec.help or None)
            self.prepare_options(self.options, ".")
            self.prepare_keys(self.keys, self.options)
        except OptionError as exc:
            raise InvalidArgument(f"[streamers.{name}] {exc.key}: {exc.problem}", hint=exc.hint) from None
        o = self.options
        self.servers: list[str] = list(o["servers"])
        self.stream: str = str(o["stream"])
        self.backoff_max = max(BACKOFF_FIRST, float(o["backoff_max"]))
        self.connected = threading.Event()  # for tests and status: set while connected

    # -- connecting

    def _tls(self) -> ssl.SSLContext | None:
        o = self.options
        if not (o["tls_ca"] or o["tls_cert"]) and not any(s.startswith("tls://") for s in self.servers):
            return None
        try:
            context = ssl.create_default_context(cafile=o["tls_ca"])
            if o["tls_cert"]:
                context.load_cert_chain(o["tls_cert"], o["tls_key"])
        except (OSError, ssl.SSLError) as exc:
            raise RelayError(f"streamer {self.name!r}: cannot load the TLS files: {exc}",
                             hint="check tls_ca, tls_cert and tls_key") from exc
        return context

    async def _connect(self) -> nats.aio.client.Client:
        client_module = _nats()
        o = self.options

        causes: list[Exception] = []

        async def quiet(exc: Exception) -> None:  # nats-py would print them otherwise
            log.debug("streamer %r: %s", self.name, exc)
            causes.append(exc)

        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "allow_reconnect": False,  # reconnects are ours: backoff, resend, visible lag
            # nats-py retries the INITIAL connect too, max_reconnect_attempts (default 60)
            # times per server, reconnect_time_wait (2 s) apart: two minutes stuck in
            # connect(), the failure unseen. Two quick tries per server; the backoff is ours.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.05,
            "connect_timeout": float(o["connect_timeout"]),
            "error_cb": quiet,
            "name": f"sqlstream {self.name}",
        }
        for option, arg in (("creds", "user_credentials"), ("nkey", "nkeys_seed"), ("user", "user"),
                            ("password", "password"), ("token", "token")):
            if o[option] is not None:
                kwargs[arg] = o[option]
        tls = self._tls()
        if tls is not None:
            kwargs["tls"] = tls
        try:
            client: nats.aio.client.Client = await client_module.connect(**kwargs)
            return client
        except Exception as exc:  # noqa: BLE001 - sorted into fatal and transient below
            text = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, client_module.errors.NoServersError) and causes:  # say why not
                text = f"{type(causes[-1]).__name__}: {causes[-1]}"
            lowered = text.lower()
            if "authorization" in lowered or "authentication" in lowered or "credentials" in lowered \
                    or "nkey" in lowered or "user authentication" in lowered:
                raise RelayError(f"streamer {self.name!r}: the server refused the credentials ({exc})",
                                 hint="check user/password, token, creds or nkey in the config") from exc
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise RelayError(f"streamer {self.name!r}: cannot read a credentials file: {exc}",
                                 hint="check the creds/nkey paths") from exc
            raise _Transient(f"cannot connect to {', '.join(self.servers)}: {text}") from exc

    # -- the retry loop

    def run_paced(self, store: Store, stop: threading.Event, once: bool) -> int:
        """The runner's entry point for a self-paced service: :meth:`serve`, counted as one run."""
        self.serve(store, stop, once=once)
        return 1

    def serve(self, store: Store, stop: threading.Event, *, once: bool = False) -> None:
        """Run until ``stop`` (``once``: until caught up); retry transient failures with backoff."""
        asyncio.run(self._serve(store, stop, once))

    async def _serve(self, store: Store, stop: threading.Event, once: bool) -> None:
        delay = BACKOFF_FIRST
        # The cursor row first: it is where a failure to connect at all is shown.
        await asyncio.to_thread(store.cursor, self.name, self.KIND, self.keys)
        await self._housekeeping(store, start=True)
        while not stop.is_set():
            try:
                nc = await self._connect()
            except _Transient as exc:
                await self._failed(store, stop, str(exc), delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            except RelayError as exc:  # e.g. the credentials refused
                await self._relay_failed(store, stop, exc, delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self.connected.set()
            try:
                done = await self._session(nc, store, stop, once)
                delay = BACKOFF_FIRST
                if done:
                    return
            except _Transient as exc:
                await self._failed(store, stop, str(exc), delay)
                delay = min(delay * 2, self.backoff_max)
            except RelayError as exc:
                await self._relay_failed(store, stop, exc, delay)
                delay = min(delay * 2, self.backoff_max)
            finally:
                self.connected.clear()
                try:
                    await asyncio.wait_for(nc.close(), 2)
                except Exception:  # noqa: BLE001 - the connection is gone either way
                    pass

    async def _failed(self, store: Store, stop: threading.Event, message: str, delay: float) -> None:
        log.warning("streamer %r: %s; retrying in %.1fs", self.name, message, delay)
        try:
            await asyncio.to_thread(self._record_error, store, message)
        except SqlstreamError:
            log.exception("cannot record the error of streamer %r", self.name)
        end = time.monotonic() + delay
        while not stop.is_set() and time.monotonic() < end:
            await self._housekeeping(store)  # e.g. pin a stream created while the server is away
            await _sleep(stop, min(HOUSEKEEPING_INTERVAL, end - time.monotonic()))

    async def _relay_failed(self, store: Store, stop: threading.Event, exc: RelayError, delay: float) -> None:
        """A failure retrying will not fix: kept as the service's last error (``serve --status``,
        ``streaming_progress``), then raised (``stop-node-on-error``) or retried after ``delay``."""
        message = str(exc)  # the message and its hint, once
        if not self.stop_on_error:
            await self._failed(store, stop, message, delay)
            return
        try:
            await asyncio.to_thread(self._record_error, store, message)
        except SqlstreamError:
            log.exception("cannot record the error of streamer %r", self.name)
        raise exc

    async def _housekeeping(self, store: Store, *, start: bool = False) -> None:
        """Local bookkeeping that must go on while the server is away (``start``: at startup)."""

    def _record_error(self, store: Store, message: str) -> None:
        store.record_error(self.name, message)

    async def _session(self, nc: nats.aio.client.Client, store: Store, stop: threading.Event, once: bool) -> bool:
        raise NotImplementedError

    def write_block(self, block: Block) -> None:
        raise NotImplementedError(f"{type(self).__name__} runs its own loop")


async def _sleep(stop: threading.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set (checked every 50 ms)."""
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))


def _atomic_server(nc: nats.aio.client.Client) -> bool:
    """Whether the connected server has atomic batch publish WITH Nats-Msg-Id de-duplication.

    Batches came in 2.12.0 without de-duplication (a resend of a stored batch would be
    stored again); it was added later (nats-server PR 7391). 2.14 is the first release
    known to have both.
    """
    version = nc.connected_server_version
    try:
        return (int(version.major), int(version.minor)) >= (2, 14)
    except (TypeError, ValueError):  # a version it does not parse: assume an old server
        return False


def _is_transient_api_error(exc: BaseException) -> bool:
    """Errors of a healthy configuration in a sick cluster: no leader, timeouts, closed connections."""
    nats = _nats()
    if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
                        nats.errors.StaleConnectionError, nats.errors.UnexpectedEOF, ConnectionError,
                        nats.errors.OutboundBufferLimitError)):
        return True
    code = getattr(exc, "code", None)
    # 10005 "no suitable peers for placement": a replicated stream asked of a cluster whose
    # peers have not all joined yet (it is forming, or a node is down). Retried, with the
    # cause in last_error, so a relay started with its cluster does not stop for good.
    return code in (503, 408, 504) or getattr(exc, "err_code", None) == 10005


# ---------------------------------------------------------------- forward


class _Pending:
    """A published block awaiting its PubAcks: ``entries`` pairs each publish (one record, or
    the records of an atomic batch) with the future of its PubAck (the batch's commit's)."""

    __slots__ = ("height", "entries", "sent_at", "next_offsets", "atomic", "copied")

    def __init__(self, height: int, sent_at: float, next_offsets: dict[int, int]) -> None:
        self.height = height
        self.next_offsets = next_offsets
        self.entries: list[tuple[list[BlockRecord], asyncio.Future[Any]]] = []
        self.sent_at = sent_at
        self.atomic = 0  # 1 when published as an atomic batch
        self.copied = 0  # records sent under the identity of the file this one was copied from


def _where(records: Sequence[BlockRecord]) -> str:
    """Records named by stream and offset: "stream 'a' offset 3", "stream 'a' offsets 3..7"."""
    spans: dict[str, list[int]] = {}
    for record in records:
        spans.setdefault(record.stream, []).append(record.offset)
    parts = [f"stream {name!r} offset {offs[0]}" if len(offs) == 1 else f"stream {name!r} offsets {offs[0]}..{offs[-1]}"
             for name, offs in spans.items()]
    return ", ".join(parts)


def _batch_error(exc: BaseException) -> int | None:
    """The error code of a refused atomic batch (0 when it has none), None for other errors."""
    description = str(getattr(exc, "description", "") or "")
    code = getattr(exc, "err_code", None)
    if code in (ATOMIC_INCOMPLETE, ATOMIC_DUPLICATE) or description.startswith("atomic publish"):
        return int(code or 0)
    return None


class _Acks:
    """Asynchronous JetStream publishing with a PubAck future per message.

    nats-py's ``publish_async`` cannot be used: when the server answers with an error
    (a refused message, an atomic batch refused for a duplicate id, ...) its reply
    handler raises instead of failing the future, which then never completes (the error
    only reaches ``error_cb``). Here the replies come to one wildcard inbox and resolve
    their futures, errors included (as nats-py's APIError subclasses, or
    NoStreamResponseError when no stream listens). At most ``limit`` are pending;
    :meth:`publish` waits up to ``stall`` seconds for room, then raises _Transient.
    """

    def __init__(self, nc: nats.aio.client.Client, limit: int, stall: float) -> None:
        self.nc = nc
        self.limit = limit
        self.stall = stall
        self.prefix = nc.new_inbox()
        self.futures: dict[str, asyncio.Future[Any]] = {}
        self.counter = 0
        self.room = asyncio.Event()
        self.sub: Any = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.prefix + ".*", cb=self._reply)

    async def _reply(self, msg: Any) -> None:
        nats = _nats()
        future = self.futures.pop(msg.subject[len(self.prefix) + 1:], None)
        self.room.set()
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        if not msg.data:  # a message of an atomic batch, received (ADR-50: an empty reply)
            future.set_result(None)
            return
        try:
            response = json.loads(msg.data)
            if "error" in response:
                nats.js.errors.APIError.from_error(response["error"])  # raises the matching subclass
            future.set_result(nats.js.api.PubAck.from_response(response))
        except Exception as exc:  # noqa: BLE001 - the publish failed: its owner decides
            future.set_exception(exc)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> asyncio.Future[Any]:
        """Publish with a reply subject of ours; the future is the PubAck (or the server's error)."""
        end = time.monotonic() + self.stall
        while len(self.futures) >= self.limit:
            self.room.clear()
            left = end - time.monotonic()
            if left <= 0:
                raise _Transient(f"{self.limit} messages unacknowledged for {self.stall:g}s")
            try:
                await asyncio.wait_for(self.room.wait(), left)
            except asyncio.TimeoutError:
                pass
        self.counter += 1
        token = str(self.counter)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures[token] = future
        try:
            await self.nc.publish(subject, data, reply=f"{self.prefix}.{token}", headers=headers)
        except BaseException:
            self.futures.pop(token, None)
            raise
        return future

    async def close(self) -> None:
        for future in self.futures.values():
            future.cancel()
        self.futures.clear()
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone: nothing to undo then
                pass


class JetStreamForward(_Relay):
    """Forwards local streams to a JetStream stream (see the module docstring).

    The cursor is the highest commit height whose records all have a PubAck, written at
    most every ``cursor_interval`` seconds and whenever the pipeline drains. Memory is
    bounded by ``max_in_flight`` messages plus one block.
    """

    KIND: ClassVar[str] = "jetstream"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        **_CONNECTION_OPTIONS,
        "subject": Option("str", "sqlstream.{device}.{stream}",
                          help="the subject template: {device} and {stream} (a NATS token) are filled in"),
        "device": Option("str", None, help="this device's name in subjects (default: the host name)"),
        "subjects": Option("list", [], help="the stream's subjects when it is created (default: from `subject`)",
                           check=_subjects),
        "create": Option("bool", True, help="create the JetStream stream if it is missing"),
        "replicas": Option("int", 1, help="replicas of a stream this service creates (1 to 5)", check=_count(1, 5)),
        "duplicate_window": Option("number", 120.0, help="duplicate window (s) of a stream this service creates",
                                   check=_seconds()),
        "max_in_flight": Option("int", 256, help=f"unacknowledged messages at most (1 to {MAX_IN_FLIGHT:,})",
                                check=_count(1, MAX_IN_FLIGHT)),
        "ack_timeout": Option("number", 5.0, help="seconds to wait for a PubAck before reconnecting",
                              check=_seconds(limit=3600)),
        "cursor_interval": Option("number", 0.2, help="seconds between cursor writes at most",
                                  check=_seconds(zero=True, limit=3600)),
        "allow_duplicates": Option("bool", False,
                                   help="start even when a resend may fall outside the duplicate window"),
        "keep_unforwarded": Option("bool", False,
                                   help="local retention keeps every record JetStream has not acknowledged"),
        "atomic": Option("bool", True, help="publish the records of one transaction as one atomic batch "
                                            "where the server (2.14+) and the stream (allow_atomic) support it"),
    }

    @classmethod
    def prepare_options(cls, options: dict[str, Any], base_dir: str) -> dict[str, Any]:
        """The checks that involve several options, and the subject template, made when the config is loaded."""
        options = super().prepare_options(options, base_dir)
        template = options["subject"]
        try:
            probe = template.format(device="d", stream="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise OptionError("subject", f"{template!r} is not a valid template ({exc})",
                              hint="use only {device} and {stream}, e.g. \"edge.{device}.{stream}\"") from None
        if not probe or _subject_problem(probe, wildcards=False) is not None:
            raise OptionError("subject", f"{template!r} does not make a valid subject",
                              hint='tokens are separated by single dots, e.g. "edge.{device}.{stream}"')
        return options

    def __init__(self, name: str, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        super().__init__(name, keys, options)
        o = self.options
        self.device = subject_token(str(o["device"] or socket.gethostname().split(".")[0]))
        self.template = str(o["subject"])
        self.max_in_flight = int(o["max_in_flight"])
        self.ack_timeout = float(o["ack_timeout"])
        self.identity = Identity(0)
        #: Instrumentation (benchmarks/jetstream.py): called with each record the moment its
        #: PubAck arrives, in the relay's event loop thread; it must not block.
        self.on_ack: Callable[[BlockRecord], None] | None = None
        self._subjects: dict[str, str] = {}
        self._pinned_at = 0.0
        #: Whether this session publishes transactions as atomic batches, and if not (with
        #: the ``atomic`` option on) why not: ``atomic_off`` (also logged once).
        self.atomic = False
        self.atomic_off: str | None = None
        self._atomic_refused: str | None = None
        self._incomplete: set[int] = set()  # blocks whose atomic batch came back incomplete

    async def _housekeeping(self, store: Store, *, start: bool = False) -> None:
        keep = bool(self.options["keep_unforwarded"])
        if keep or start:  # at start without it: release the pins an earlier run left
            try:
                await asyncio.to_thread(store.pin_unforwarded, self.name, self.keys, keep)
            except SqlstreamError:
                log.exception("streamer %r: cannot update its retention pins", self.name)
            self._pinned_at = time.monotonic()

    def subject(self, stream: str) -> str:
        """The subject a record of local ``stream`` is published on."""
        subject = self._subjects.get(stream)
        if subject is None:
            subject = self._subjects[stream] = self.template.format(device=self.device, stream=subject_token(stream))
        return subject

    def stream_subjects(self) -> list[str]:
        """The subjects of a stream this service creates: ``subjects``, else the template's wildcard."""
        if self.options["subjects"]:
            return list(self.options["subjects"])
        tokens = self.template.format(device=self.device, stream="\0").split(".")
        if tokens[-1] == "\0":
            tokens[-1] = ">"
        return [".".join("*" if "\0" in t else t for t in tokens)]

    async def _ensure_stream(self, nc: nats.aio.client.Client) -> float:
        """Make sure the stream exists (creating it if allowed); return its duplicate window (s)."""
        nats = _nats()
        jsm = nc.jsm(timeout=self.ack_timeout)
        try:
            info = await jsm.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            if not self.options["create"]:
                raise RelayError(f"streamer {self.name!r}: JetStream stream {self.stream!r} does not exist",
                                 hint="create it (nats stream add) or set create = true") from None
            from nats.js.api import StreamConfig  # noqa: PLC0415 - optional dependency

            config = StreamConfig(name=self.stream, subjects=self.stream_subjects(),
                                  num_replicas=int(self.options["replicas"]),
                                  duplicate_window=float(self.options["duplicate_window"]),
                                  allow_atomic=True if self.options["atomic"] and _atomic_server(nc) else None)
            try:
                info = await jsm.add_stream(config)
            except nats.js.errors.APIError as exc:
                if _is_transient_api_error(exc):
                    raise _Transient(f"cannot create stream {self.stream!r}: {exc}") from exc
                raise RelayError(f"streamer {self.name!r}: cannot create JetStream stream {self.stream!r}: {exc}",
                                 hint="check `subjects` (they may overlap another stream's) and the account limits"
                                 ) from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            raise _Transient(f"JetStream is not available: {exc}") from exc
        except nats.errors.NoRespondersError as exc:
            raise RelayError(f"streamer {self.name!r}: the server at {', '.join(self.servers)} has no JetStream",
                             hint="start nats-server with -js (or enable JetStream for the account)") from exc
        except nats.errors.TimeoutError as exc:
            raise _Transient(f"JetStream did not answer: {exc}") from exc
        except nats.js.errors.APIError as exc:
            if _is_transient_api_error(exc):
                raise _Transient(f"JetStream stream info failed: {exc}") from exc
            raise RelayError(f"streamer {self.name!r}: JetStream refused stream info for {self.stream!r}: {exc}",
                             hint="check the account's JetStream permissions") from exc
        self._choose_atomic(nc, bool(info.config.allow_atomic))
        window = info.config.duplicate_window
        return float(window) if window else 120.0

    def _choose_atomic(self, nc: nats.aio.client.Client, allowed: bool) -> None:
        """Use atomic batches when asked, the server has them and the stream allows them; log why not, once."""
        if not self.options["atomic"]:
            self.atomic, off = False, None
        elif self._atomic_refused:
            self.atomic, off = False, self._atomic_refused
        elif not _atomic_server(nc):
            self.atomic, off = False, (f"nats-server {nc.connected_server_version} is older than 2.14 (atomic "
                                       "batches with de-duplication)")
        elif not allowed:
            self.atomic, off = False, (f"JetStream stream {self.stream!r} does not allow atomic publish "
                                       f"(nats stream edit {self.stream} --allow-batch, or allow_atomic in its config)")
        else:
            self.atomic, off = True, None
        if off is not None and off != self.atomic_off:
            log.warning("streamer %r: the records of a transaction are published one by one, not as an atomic "
                        "batch: %s", self.name, off)
        self.atomic_off = off

    async def _check_window(self, nc: nats.aio.client.Client, store: Store, cursor: int,
                            window: float) -> dict[str, int]:
        """Make sure resending the records above ``cursor`` stores none twice.

        Inside the duplicate window the server drops repeats: nothing to do. Outside it,
        the server is asked for the last message of each forwarded stream's subject: when
        it is this file's, every record up to its offset is stored (one publisher sends a
        subject's messages in order), and the returned {stream: offset} are skipped. A
        message of the file this one was copied from counts only up to the last record the
        two share; one of an earlier stream of the same name (another incarnation) means
        nothing of this stream is stored yet. When that cannot be known, RelayError names
        the gap and the fixes.
        """
        if self.options["allow_duplicates"]:
            return {}
        marks = await asyncio.to_thread(store.sent_marks, self.name)
        first = marks.earliest_unacked(cursor) if marks else None
        if first is None:
            return {}
        age = (now_us() - first) / 1e6
        if age < window:
            return {}
        nats = _nats()
        jsm = nc.jsm(timeout=self.ack_timeout)
        incarnations = await asyncio.to_thread(store.stream_incarnations, self.keys)
        subjects: dict[str, str] = {}
        skip: dict[str, int] = {}
        problem = ""
        for name, incarnation in incarnations.items():
            subject = self.subject(name)
            if subjects.setdefault(subject, name) != name:
                problem = f"streams {subjects[subject]!r} and {name!r} share subject {subject!r}"
                break
            try:
                msg = await jsm.get_last_msg(self.stream, subject)
            except nats.js.errors.NotFoundError:
                continue  # nothing of this stream is stored: resending it is safe
            except (nats.js.errors.APIError, nats.errors.TimeoutError, asyncio.TimeoutError) as exc:
                raise _Transient(f"cannot read the last message on {subject!r}: {exc}") from exc
            headers = msg.headers or {}
            origin = headers.get(H_ORIGIN, "")
            if not origin.isdigit() or not self.identity.owns(int(origin)) or headers.get(H_STREAM) != name:
                problem = f"the last message on {subject!r} is not from stream {name!r} of this file"
                break
            if headers.get(H_INCARNATION) != (None if incarnation is None else str(incarnation)):
                if int(origin) == self.identity.file_id:
                    continue  # an earlier stream of this name: nothing of this one is stored
                problem = f"the last message on {subject!r} is from another stream named {name!r}"
                break
            offset = int(headers[H_OFFSET])
            upto = self.identity.upto(int(origin))
            if upto is not None:  # the original's: the records the two files share, at most
                offset = min(offset, await asyncio.to_thread(store.last_offset_upto, name, upto))
            skip[name] = offset
        if not problem:
            return skip
        block = await asyncio.to_thread(store.next_block, self.name, self.keys, cursor)
        where = ""
        if block is not None:
            name = min(block.streams)
            where = f" (from stream {name!r} offset {block.streams[name][0].offset}, block {block.height})"
        raise RelayError(
            f"streamer {self.name!r}: records above block {cursor}{where} may have been published "
            f"{age:.0f}s ago without an acknowledgement, longer than JetStream stream {self.stream!r}'s "
            f"duplicate window ({window:g}s), and {problem}: resending them could store them twice",
            hint=f"raise the stream's duplicate window above {age:.0f}s (nats stream edit {self.stream} "
                 "--dupe-window=...) and start again, or set allow_duplicates = true to resend anyway",
            height=cursor + 1,
        )

    async def _session(self, nc: nats.aio.client.Client, store: Store, stop: threading.Event, once: bool) -> bool:
        self.identity = await asyncio.to_thread(store.identity)
        window = await self._ensure_stream(nc)
        cursor = await asyncio.to_thread(store.cursor, self.name, self.KIND, self.keys)
        skip = await self._check_window(nc, store, cursor, window)
        js = _Acks(nc, self.max_in_flight, self.ack_timeout)
        await js.start()
        upto = await asyncio.to_thread(store.head) if once else None
        pending: collections.deque[_Pending] = collections.deque()
        batches = 0  # atomic batches in pending (the server keeps at most 50 open per stream)
        read = cursor  # the last block published (acked or not)
        marked = -1  # sent marks cover blocks up to here
        last_write = time.monotonic()
        acked = cursor
        acked_offsets: dict[int, int] = {}  # stream id -> offset after its last acked record
        copied = 0  # acked records of blocks the file shares with its original (counted at the next save)
        idle_saved = time.monotonic()

        async def harvest(wait: bool) -> None:
            nonlocal acked, batches, copied
            while pending:
                head = pending[0]
                futures = [future for _records, future in head.entries]
                if wait and not all(f.done() for f in futures):
                    left = head.sent_at + self.ack_timeout - time.monotonic()
                    await asyncio.wait(futures, timeout=max(0.0, left))
                if not all(f.done() for f in futures):
                    if time.monotonic() - head.sent_at > self.ack_timeout:
                        waiting = next(r for (r, f) in head.entries if not f.done())
                        raise _Transient(f"no PubAck within {self.ack_timeout:g}s for {_where(waiting)} "
                                         f"(block {head.height})")
                    return
                entries: list[tuple[list[BlockRecord], asyncio.Future[Any]]] = []
                for records, future in head.entries:
                    exc = future.exception()
                    if exc is None:
                        entries.append((records, future))
                    elif len(records) > 1 and _batch_error(exc) == ATOMIC_DUPLICATE:
                        # Some of the transaction is stored already: an earlier attempt got
                        # through (atomic: all of it) before its PubAck was lost, or was
                        # published one by one. Each record again, by itself: the duplicate
                        # window drops what is stored and only what is missing is added.
                        for record in records:
                            entries.append(([record], await self._publish(js, record, head.height)))
                    else:
                        self._publish_failed(records, head.height, exc)
                if len(entries) != len(head.entries):
                    head.entries, head.sent_at = entries, time.monotonic()
                    continue
                pending.popleft()
                batches -= head.atomic
                acked = head.height
                acked_offsets.update(head.next_offsets)
                copied += head.copied

        def probe(after: int) -> tuple[int, list[Block]]:
            """The head, then the blocks above ``after``: up to ``max_in_flight`` records (at
            least one block) per thread hop, so that their publishes leave in few writes."""
            return store.next_blocks(self.name, self.keys, after, upto, max_records=self.max_in_flight)

        def mark(acked: int) -> int:
            head = store.head()
            store.mark_sent(self.name, acked, head)
            return head

        async def save(force: bool) -> None:
            nonlocal cursor, last_write, copied
            if acked > cursor and (force or time.monotonic() - last_write >= float(self.options["cursor_interval"])):
                # With where it is in each stream: retention may trim what is forwarded
                # (and, with keep_unforwarded, only that) without the relay taking it for a loss.
                await asyncio.to_thread(store.advance, self.name, acked, Block(acked, next_offsets=dict(acked_offsets)),
                                        copied=copied)
                acked_offsets.clear()
                copied = 0
                cursor = acked
                last_write = time.monotonic()
            if time.monotonic() - self._pinned_at >= HOUSEKEEPING_INTERVAL:
                await self._housekeeping(store)

        ahead: asyncio.Future[tuple[int, list[Block]]] | None = None
        try:
            while not stop.is_set():
                if ahead is not None:
                    seen, blocks = await ahead
                    ahead = None
                else:
                    seen, blocks = await asyncio.to_thread(probe, read)
                if not blocks:
                    await harvest(wait=True)
                    while pending:
                        await harvest(wait=True)
                    # Everything up to the head seen (or `upto`) that touches the forwarded
                    # streams is acked: the commits above the last block are not owed (the
                    # lag counts what the relay owes). Moved quietly while serving: at most
                    # every IDLE_CURSOR_INTERVAL, so other streams' commits cost few writes.
                    owed = acked > cursor
                    reached = seen if upto is None else min(seen, upto)
                    if once and upto is not None and seen > upto:
                        # Commits after the start (e.g. another service's): not owed when
                        # they touch none of the forwarded streams; owed (left) otherwise.
                        head, later = await asyncio.to_thread(
                            store.next_blocks, self.name, self.keys, read, None, max_records=1)
                        if not later:
                            reached = head
                    if reached > acked:
                        acked = read = reached
                    if once or owed or time.monotonic() - idle_saved >= IDLE_CURSOR_INTERVAL:
                        idle_saved = time.monotonic()
                        await save(force=True)
                    elif time.monotonic() - self._pinned_at >= HOUSEKEEPING_INTERVAL:
                        await self._housekeeping(store)
                    if once:
                        return True
                    if not nc.is_connected:  # noticed while idle too: the status shows it at once
                        raise _Transient(f"connection lost: {nc.last_error or 'closed'}")
                    # Woken by any commit after the head read BEFORE looking for a block: one
                    # made while the PubAcks were awaited must not wait for the next one.
                    await asyncio.to_thread(store.wait_for_commit, max(seen, read), 0.2)
                    continue
                if blocks[-1].height > marked:
                    marked = await asyncio.to_thread(mark, acked)
                # Read the next blocks (in a worker thread, SQLite releasing the GIL) while
                # these are published.
                ahead = asyncio.ensure_future(asyncio.to_thread(probe, blocks[-1].height))
                for block in blocks:
                    item = _Pending(block.height, time.monotonic(), block.next_offsets)
                    records = [record for name in sorted(block.streams) for record in block.streams[name]
                               if record.offset > skip.get(name, -1)]  # skipped: the server has them
                    if block.height <= self.identity.copied_at:
                        item.copied = len(records)
                    if self.atomic and 1 < len(records) <= ATOMIC_MAX_MESSAGES:
                        while batches >= ATOMIC_MAX_OPEN:
                            await harvest(wait=True)
                        commit = await self._publish_batch(nc, js, records, block.height, item)
                        item.entries.append((records, commit))
                        item.atomic = 1
                        batches += 1
                    else:
                        for record in records:
                            item.entries.append(([record], await self._publish(js, record, block.height)))
                    pending.append(item)
                    read = block.height
                await harvest(wait=False)
                await save(force=False)
            await harvest(wait=True)
            await save(force=True)
            return True
        except _NoResponders as exc:
            raise await self._no_responders(nc, exc) from exc.error.__cause__
        finally:
            if ahead is not None:  # a read in flight: let it end (bounded) so the store is free
                await asyncio.wait({ahead}, timeout=2)
                if ahead.done() and not ahead.cancelled():
                    ahead.exception()  # retrieved: it is moot now
                ahead.cancel()
            for item in pending:
                for _records, future in item.entries:
                    future.cancel()
            await js.close()

    async def _publish(self, js: _Acks, record: BlockRecord, height: int) -> asyncio.Future[Any]:
        """Publish one record asynchronously; the future is its PubAck."""
        nats = _nats()
        try:
            headers = record_headers(self.identity.origin(height), record)
            future = await js.publish(self.subject(record.stream), record.data, headers)
        except nats.errors.MaxPayloadError as exc:
            self._publish_failed([record], height, exc)
            raise  # not reached: _publish_failed raises
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError, ConnectionError) as exc:
            raise _Transient(f"connection lost: {type(exc).__name__}: {exc}") from exc
        if self.on_ack is not None:
            future.add_done_callback(functools.partial(self._acked, [record]))
        return future

    async def _publish_batch(self, nc: nats.aio.client.Client, js: _Acks, records: list[BlockRecord], height: int,
                             item: _Pending) -> asyncio.Future[Any]:
        """Publish the records of one transaction as ONE atomic batch (ADR-50): each with ``Nats-Batch-Id`` (new at every attempt: an abandoned attempt's
        id must not be continued) and ``Nats-Batch-Sequence`` 1..n, the last also with
        ``Nats-Batch-Commit: 1``. The server stores all of them or none at the commit; the
        future is the commit's PubAck (the others are sent without a reply subject, as
        the protocol allows: a gap or a loss fails the commit; after a batch of this block
        came back incomplete, each is sent with one and its future goes into ``item``)."""
        nats = _nats()
        batch_id = secrets.token_urlsafe(16)
        last = len(records)
        checked = height in self._incomplete
        for n, record in enumerate(records, 1):
            headers = record_headers(self.identity.origin(height), record)
            headers[H_BATCH_ID] = batch_id
            headers[H_BATCH_SEQUENCE] = str(n)
            if n < last:
                try:
                    if checked:  # each acknowledged (an empty reply) or refused by itself
                        item.entries.append(([record], await js.publish(self.subject(record.stream), record.data,
                                                                        headers)))
                    else:
                        await nc.publish(self.subject(record.stream), record.data, headers=headers)
                except nats.errors.MaxPayloadError as exc:
                    self._publish_failed([record], height, exc)
                except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
                        ConnectionError) as exc:
                    raise _Transient(f"connection lost: {type(exc).__name__}: {exc}") from exc
                continue
            headers[H_BATCH_COMMIT] = "1"
            try:
                future = await js.publish(self.subject(record.stream), record.data, headers)
            except nats.errors.MaxPayloadError as exc:
                self._publish_failed([record], height, exc)
                raise  # not reached: _publish_failed raises
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError, ConnectionError) as exc:
                raise _Transient(f"connection lost: {type(exc).__name__}: {exc}") from exc
            if self.on_ack is not None:
                future.add_done_callback(functools.partial(self._acked, records))
            return future
        raise AssertionError("an atomic batch has at least two records")

    async def _no_responders(self, nc: nats.aio.client.Client, exc: _NoResponders) -> Exception:
        """The error to raise for a publish nobody answered: RelayError when no stream takes
        the subject, _Transient when one does (its leader is being elected: in a cluster
        only the stream leader listens on the subjects, so a publish between the old
        leader's death, or the stream's creation, and the new leader's subscription finds
        no responders)."""
        nats = _nats()
        try:
            owner = await nc.jsm(timeout=self.ack_timeout).find_stream_name_by_subject(exc.subject)
        except nats.js.errors.NotFoundError:
            return exc.error
        except Exception as lookup:  # noqa: BLE001 - the cluster is sick: retry, do not guess
            return _Transient(f"no stream answered on {exc.subject!r} and the stream lookup failed: "
                              f"{type(lookup).__name__}: {lookup}")
        return _Transient(f"JetStream stream {owner!r} takes {exc.subject!r} but did not answer "
                          "(its leader is being elected)")

    def _acked(self, records: list[BlockRecord], future: asyncio.Future[Any]) -> None:
        if self.on_ack is not None and not future.cancelled() and future.exception() is None:
            for record in records:
                self.on_ack(record)

    def _publish_failed(self, records: list[BlockRecord], height: int, exc: BaseException) -> None:
        """Classify a failed publish of ``records`` (one, or an atomic batch): transient
        (retry) or RelayError naming the record(s) by stream and offset."""
        nats = _nats()
        record = records[-1]
        where = _where(records)
        if _is_transient_api_error(exc):
            raise _Transient(f"publish of {where} failed: {type(exc).__name__}: {exc}") from exc
        batch_error = _batch_error(exc)
        if batch_error == ATOMIC_INCOMPLETE:
            # A message of the batch was lost (the leader changed) or refused: the others
            # go without a reply subject, so the server could not say which, nor why. The
            # next attempt asks a reply for each, and a refused record is then named.
            self._incomplete.add(height)
            raise _Transient(f"the atomic batch of {where} was not completed: {exc}") from exc
        if batch_error is not None and len(records) > 1:
            # The stream no longer takes atomic batches (or not this one): publish one by one.
            self.atomic = False
            self._atomic_refused = f"the server refused the atomic batch of {where}: {exc}"
            raise _Transient(f"the server refused the atomic batch of {where}: {exc}; resending one by one") from exc
        if isinstance(exc, nats.errors.MaxPayloadError):
            problem = f"its {len(record.data)}-byte payload (with headers) exceeds the server's max_payload"
            hint = "raise max_payload on the server, or keep records smaller"
        elif isinstance(exc, nats.js.errors.NoStreamResponseError):
            problem = f"no JetStream stream takes subject {self.subject(record.stream)!r}"
            hint = f"add the subject to stream {self.stream!r}'s subjects, or change `subject`"
        elif isinstance(exc, nats.js.errors.APIError) and getattr(exc, "description", None):
            problem = f"{exc.description} (JetStream error {exc.err_code})"
            hint = "see the server's error; the record is retried when you start again, never skipped"
        else:
            problem = f"{type(exc).__name__}: {exc}"
            hint = "see the server's error; the record is retried when you start again, never skipped"
        error = RelayError(f"streamer {self.name!r}: the server refused {where}: {problem}", hint=hint,
                           height=height)
        error.__cause__ = exc
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            raise _NoResponders(self.subject(record.stream), error)  # the session decides which
        raise error


# ---------------------------------------------------------------- reverse


class JetStreamSource(_Relay):
    """Stores a JetStream stream's messages in one local stream (see the module docstring).

    ``keys`` names that one local stream (created if missing). The durable consumer
    (``durable``, default the streamer name) is created with explicit acks if missing.
    """

    KIND: ClassVar[str] = "jetstream-source"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        **_CONNECTION_OPTIONS,
        "filter_subject": Option("str", "", help="only messages on these subjects (wildcards allowed)",
                                 check=_filter),
        "durable": Option("str", None, help="the durable consumer's name (default: the streamer's name)",
                          check=_js_name),
        "batch": Option("int", 256, help=f"messages fetched and stored per transaction (1 to {MAX_BATCH:,})",
                        check=_count(1, MAX_BATCH)),
        "ack_wait": Option("number", 30.0, help="seconds before an unacked message is redelivered",
                           check=_seconds(limit=86400)),
        "create": Option("bool", False, help="create the JetStream stream (with `subjects`) if it is missing"),
        "subjects": Option("list", [], help="the subjects of a stream this service creates (default: "
                                            "[filter_subject])", check=_subjects),
        "replicas": Option("int", 1, help="replicas of a stream this service creates (1 to 5)", check=_count(1, 5)),
        "dead_letter": Option("str", None, help="a local stream for messages that cannot be stored (poison); "
                                                "default: they are skipped (counted and named in serve --status)",
                              check=_local_name),
    }

    @classmethod
    def prepare_options(cls, options: dict[str, Any], base_dir: str) -> dict[str, Any]:
        """The checks that involve several options, made when the config is loaded."""
        options = super().prepare_options(options, base_dir)
        if options["create"] and not (options["subjects"] or options["filter_subject"]):
            raise OptionError("create", "needs the subjects of the stream to create",
                              hint='add subjects = ["cmd.>"] (or a filter_subject)')
        return options

    @classmethod
    def prepare_keys(cls, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        """A jetstream-source writes ONE local stream, named (no glob), not its dead-letter stream."""
        if len(keys) > 1 or any(c in k for k in keys for c in "*?["):
            raise OptionError("keys", f"a jetstream-source writes ONE local stream, not {list(keys)!r}",
                              hint='e.g. keys = ["commands"]')
        problem = _local_name(keys[0]) if keys else None
        if problem is not None:
            raise OptionError("keys", problem)
        if keys and options.get("dead_letter") == keys[0]:
            raise OptionError("dead_letter", "must not be the stream it stores into", hint="name another local stream")

    def __init__(self, name: str, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        super().__init__(name, keys, options)
        self.target = self.keys[0] if self.keys else ""
        self.durable = subject_token(str(self.options["durable"] or name))
        self.batch = int(self.options["batch"])
        self.dead_letter: str | None = self.options["dead_letter"]
        self.generation = 0  # which stream of the name `stream` (Store.source_generation)

    def _item(self, headers: Mapping[str, str] | None, data: bytes, seq: int) -> SourceItem:
        """The record to store for message ``seq``, or (``problem`` set) why it cannot be one."""
        where = f"JetStream stream {self.stream!r} sequence {seq}"
        # A stream created again under its name numbers from 1 again: its ids name it.
        dedup_id = f"{self.stream}:{seq}" if not self.generation else f"{self.stream}#{self.generation}:{seq}"
        try:
            key, own, ctype = _message_headers(headers)
        except ValueError as exc:
            return SourceItem(None, None, None, dedup_id, where, str(exc), data)
        try:
            value = _value(ctype, data)
        except (UnicodeDecodeError, ValueError, RecursionError):
            value = data  # a body that is not what its content type says: kept as sent
        return SourceItem(value, key, own, dedup_id, where, None, data)

    async def _create_stream(self, jsm: Any) -> None:
        """Create the JetStream stream (``create = true``): ``subjects``, else the filter."""
        nats = _nats()
        from nats.js.api import StreamConfig  # noqa: PLC0415 - optional dependency

        subjects = list(self.options["subjects"]) or [self.options["filter_subject"]]
        try:
            await jsm.add_stream(StreamConfig(name=self.stream, subjects=subjects,
                                              num_replicas=int(self.options["replicas"])))
        except nats.js.errors.APIError as exc:
            if _is_transient_api_error(exc):
                raise _Transient(f"cannot create stream {self.stream!r}: {exc}") from exc
            if getattr(exc, "err_code", None) == 10058:  # created meanwhile (same name): use it
                return
            raise RelayError(f"streamer {self.name!r}: cannot create JetStream stream {self.stream!r}: {exc}",
                             hint="check `subjects` (they may overlap another stream's) and the account limits"
                             ) from exc
        log.info("streamer %r: created JetStream stream %r (subjects %s)", self.name, self.stream, subjects)

    async def _stream_created(self, jsm: Any) -> int | None:
        """When the server created JetStream stream ``stream`` (µs since the epoch), creating
        it first with ``create = true``; None when the server does not say. A missing stream
        without ``create`` raises RelayError."""
        nats = _nats()
        try:
            try:
                info = await jsm.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                if not self.options["create"]:
                    raise
                await self._create_stream(jsm)
                info = await jsm.stream_info(self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise RelayError(f"streamer {self.name!r}: JetStream stream {self.stream!r} does not exist",
                             hint="create it on the server, or set create = true (with subjects) in the "
                                  "config, or fix `stream`") from exc
        except nats.js.errors.APIError as exc:
            if _is_transient_api_error(exc):
                raise _Transient(f"cannot read stream {self.stream!r}: {exc}") from exc
            raise RelayError(f"streamer {self.name!r}: cannot read JetStream stream {self.stream!r}: {exc}") from exc
        except (nats.errors.TimeoutError, asyncio.TimeoutError) as exc:
            raise _Transient(f"JetStream did not answer: {exc}") from exc
        created = getattr(info, "created", None)
        if not isinstance(created, datetime.datetime):
            return None
        if created.tzinfo is None:
            created = created.replace(tzinfo=datetime.timezone.utc)
        return (created - _EPOCH) // datetime.timedelta(microseconds=1)

    async def _session(self, nc: nats.aio.client.Client, store: Store, stop: threading.Event, once: bool) -> bool:
        nats = _nats()
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: PLC0415 - optional dependency

        timeout = float(self.options["connect_timeout"]) + 3
        js = nc.jetstream(timeout=timeout)
        jsm = nc.jsm(timeout=timeout)
        # A JetStream stream deleted and created again under its name numbers its messages
        # from 1 again: the position (and the dedup ids) of the earlier one do not apply.
        created = await self._stream_created(jsm)
        self.generation = await asyncio.to_thread(store.source_generation, self.name, self.stream, created)
        known = await asyncio.to_thread(store.source_position, self.name)
        position = known[1] if known is not None and known[0] == self.stream else 0
        # The local position is the truth: everything up to it is stored, nothing above.
        # The consumer is recreated to deliver from position + 1, so messages arrive in
        # stream order even after a crash (a redelivery of an old unacked message would
        # otherwise come after newer ones).
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                                ack_wait=float(self.options["ack_wait"]),
                                max_ack_pending=max(1000, self.batch * 4),
                                filter_subject=self.options["filter_subject"] or None,
                                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if position else DeliverPolicy.ALL,
                                opt_start_seq=position + 1 if position else None)
        try:
            try:
                await jsm.delete_consumer(self.stream, self.durable)
            except nats.js.errors.NotFoundError as exc:
                if getattr(exc, "err_code", None) == 10059:  # the stream itself is missing
                    if not self.options["create"]:
                        raise
                    await self._create_stream(jsm)
            await jsm.add_consumer(self.stream, config)
            sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise RelayError(f"streamer {self.name!r}: JetStream stream {self.stream!r} does not exist",
                             hint="create it on the server, or set create = true (with subjects) in the "
                                  "config, or fix `stream`") from exc
        except nats.errors.NoRespondersError as exc:
            raise RelayError(f"streamer {self.name!r}: the server has no JetStream",
                             hint="start nats-server with -js") from exc
        except nats.js.errors.APIError as exc:
            if _is_transient_api_error(exc):
                raise _Transient(f"cannot create the consumer: {exc}") from exc
            raise RelayError(f"streamer {self.name!r}: cannot create durable consumer {self.durable!r} "
                             f"on {self.stream!r}: {exc}", hint="check filter_subject and the permissions") from exc
        except (nats.errors.TimeoutError, asyncio.TimeoutError) as exc:
            raise _Transient(f"JetStream did not answer: {exc}") from exc
        await asyncio.to_thread(store.clear_error, self.name)  # connected and bound: working again
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if once:
                    return True
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError, ConnectionError) as exc:
                raise _Transient(f"connection lost: {exc}") from exc
            except nats.js.errors.APIError as exc:
                if _is_transient_api_error(exc):
                    raise _Transient(f"fetch failed: {exc}") from exc
                raise RelayError(f"streamer {self.name!r}: fetch from {self.stream!r} failed: {exc}") from exc
            items: list[SourceItem] = []
            top = 0
            pending = int(msgs[-1].metadata.num_pending) if msgs else None
            for msg in msgs:
                seq = int(msg.metadata.sequence.stream)
                if seq <= position:  # stored already (its ack was lost or late)
                    continue
                items.append(self._item(msg.headers, bytes(msg.data), seq))
                top = max(top, seq)
            if items:
                # Poison messages are set aside in the same transaction (counted, named).
                await asyncio.to_thread(store.append_from_source, self.name, self.stream, self.target, items, top,
                                        pending, dead_letter=self.dead_letter)
                position = top
            # Acked only after the commit: a crash before this line redelivers, and the
            # dedup ids (and the position) store each message once.
            for msg in msgs:
                await msg.ack()
            await nc.flush()
        return True
