"""``sqlstream serve``: run the streaming services of a TOML config (sqlstream.streaming).

``serve --config FILE`` runs until SIGINT/SIGTERM (graceful: the block in hand is
finished, exit 0); ``--once`` processes everything committed so far and exits 0;
``--status`` prints each service's height, head and lag. The database is ``--db``, else
the config's ``[sqlstream] db``, else ``$SQLSTREAM_DB``, else ``./sqlstream.db``. A
service that stops on an error exits 1 with ``Error: streaming service 'NAME' stopped at
block H: ...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from ..errors import SchemaVersionError
from .args import DB_ENV, DEFAULT_DB, CommandFactory
from .output import CliError, dump, progress_bar

if TYPE_CHECKING:
    from ..streaming import StreamingConfig


def register(command: CommandFactory) -> None:
    sub = command(
        "serve",
        cmd_serve,
        "run the streaming services of a config file (e.g. the Cosmos ADR-038 file streamer)",
        "sqlstream --db app.db serve --config sqlstream.toml\n"
        "sqlstream --db app.db serve --config sqlstream.toml --once\n"
        "sqlstream --db app.db serve --config sqlstream.toml --status\n"
        "sqlstream --db app.db serve --http 127.0.0.1:4437",
        details="Runs until SIGINT/SIGTERM, woken by commits. Each service resumes after the\n"
                "last block it finished (its cursor is kept in the database).",
    )
    sub.add_argument("--config", metavar="FILE",
                     help="the TOML configuration (see README); optional with --kafka or --http")
    sub.add_argument("--http", metavar="HOST:PORT",
                     help="also serve the file over HTTP as Durable Streams (needs the http extra; "
                          "overrides [http] listen; loopback unless a token or --insecure)")
    sub.add_argument("--cors-origin", metavar="ORIGIN", action="append",
                     help="let browser pages of ORIGIN (e.g. https://app.example; '*': any page) use the "
                          "--http API; repeatable; overrides [http] cors_origins. Default: none without "
                          "a token, any with one")
    sub.add_argument("--kafka", metavar="HOST:PORT",
                     help="also serve the Kafka protocol on HOST:PORT (needs the kafka extra; "
                          "loopback unless SASL or --insecure)")
    sub.add_argument("--insecure", action="store_true",
                     help="let --kafka bind a non-loopback address without SASL credentials, and "
                          "--http one without a token")
    sub.add_argument("--skip-trimmed", action="store_true",
                     help="go past records retention trimmed before a service streamed them (logged); "
                          "without it the service stops naming them")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="process what is committed now, then exit")
    mode.add_argument("--status", action="store_true", help="print progress and lag per service, then exit")


def _database_path(args: argparse.Namespace, config_db: str | None) -> str:
    return str(args.db or config_db or os.environ.get(DB_ENV) or DEFAULT_DB)


def cmd_serve(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    # The streaming package is imported by the command that runs it, not by every
    # `sqlstream` invocation (start-up time; tests/test_startup.py).
    from ..streaming import Runner, StreamingConfig, load_config
    from ..streaming.runner import RunResult

    if args.config is None and args.kafka is None and args.http is None:
        raise CliError("serve needs --config FILE, --kafka HOST:PORT, --http HOST:PORT, or several",
                       hint="sqlstream --db app.db serve --kafka 127.0.0.1:9092")
    config = load_config(args.config) if args.config is not None else StreamingConfig("<none>", None)
    path = _database_path(args, config.db)
    if config.streamers and not os.path.exists(path):  # the Kafka listener alone creates the file
        raise CliError(f"no database at {os.path.abspath(path)}",
                       hint="give --db, or [sqlstream] db in the config, naming an existing database")
    if args.status:
        return _status_readonly(path, config, args, out, err)
    from ..database import open as open_database  # noqa: PLC0415 - the core, when a command runs

    with open_database(path) as db:
        services = config.build()
        for service in services:
            service.accept_trimmed = args.skip_trimmed
        stop = threading.Event()
        runner = Runner(db, services, stop_event=stop)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        # The catch-up (blocks committed before the start) gets a bar on a terminal; it
        # is closed once the services have caught up, so live serving prints nothing.
        bar = progress_bar(err, "serve: catching up", unit="block")
        catch_up = None
        if bar is not None:
            def catch_up(done: int, total: int | None) -> None:
                nonlocal bar
                if bar is None:
                    return
                bar.update(done, total)
                if total is not None and done >= total:
                    bar.close()
                    bar = None
        kafka = _start_kafka(args, config, path, err) if not args.once else None
        try:
            http = _start_http(args, config, path, err) if not args.once else None
        except BaseException:
            if kafka is not None:
                kafka.close()
            raise
        try:
            if services:
                result = runner.run(once=args.once, progress=catch_up)
            else:
                result = RunResult()
                while not stop.wait(0.5):  # only the listeners: until SIGINT/SIGTERM
                    if http is not None and http.wait(0):
                        raise CliError(f"the HTTP server stopped: {http.error!r}")
        finally:
            if http is not None:
                http.stop(10.0)  # drains: live reads answered, requests in hand finished
            if kafka is not None:
                kafka.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        if args.json:
            out.write(dump({"written": dict(result)}) + "\n")
        elif args.once:
            for service in services:
                state = "off (empty keys)" if not service.enabled else f"{result.get(service.name, 0)} {service.UNIT}"
                out.write(f"{service.name}: {state}\n")
    return 0


def _start_kafka(args: argparse.Namespace, config: StreamingConfig, path: str, err: IO[str]) -> Any:
    """The Kafka listener of ``--kafka`` or ``[kafka]``, running on its own thread (or None)."""
    if args.kafka is None and config.kafka is None:
        return None
    try:
        from .. import kafka
        from ..kafka.config import settings_from_config
    except ImportError as exc:
        raise CliError(f"the Kafka listener needs the kafka extra ({exc.name} is missing)",
                       hint='pip install "sqlstream[kafka]"') from None
    settings = settings_from_config(config.kafka, config.path, listen=args.kafka, insecure=args.insecure)
    running = kafka.start(path, settings)
    err.write(f"kafka: listening on {running.bootstrap_servers}\n")
    err.flush()
    return running


def _start_http(args: argparse.Namespace, config: StreamingConfig, path: str, err: IO[str]) -> Any:
    """The HTTP front of ``--http`` or ``[http]``, running on its own thread (or None)."""
    if args.http is None and config.http is None:
        return None
    try:
        # Imported here: uvicorn and prometheus_client are the optional extra "http".
        from ..http.config import http_settings
        from ..http.server import HttpServer, parse_listen
    except ImportError as exc:
        raise CliError(f"the HTTP front needs the http extra ({exc.name} is missing)",
                       hint='pip install "sqlstream[http]"') from None
    settings = http_settings(config.http, config.path)
    if args.cors_origin:
        settings.config.cors_origins = tuple(args.cors_origin)
    host, port = parse_listen(args.http or settings.listen)
    server = HttpServer(path, host, port, settings.config, insecure=args.insecure or settings.insecure)
    server.start()
    err.write(f"serving {path} at {server.url}{settings.config.prefix}/{{stream}}\n")
    err.flush()
    return server


def _status_readonly(path: str, config: Any, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """``--status`` reads only: the database is opened read-only and never migrated.

    A file from before the streaming schema (version < 5) cannot hold any cursor: every
    service is reported at height 0, with a note on stderr saying why.
    """
    from ..database import open as open_database  # noqa: PLC0415 - the core, when a command runs

    try:
        db = open_database(path, readonly=True)
    except SchemaVersionError as exc:
        if exc.hint is None:  # a newer schema than this sqlstream knows: not ours to read
            raise
        err.write(f"note: {path} has not been migrated to the streaming schema yet, so no service has run "
                  "on it; `serve` (without --status) migrates it\n")
        return _status(None, config, args, out)
    with db:
        return _status(db, config, args, out)


def _status(db: Any, config: Any, args: argparse.Namespace, out: IO[str]) -> int:
    from ..streaming import Store  # see cmd_serve

    store = Store(db) if db is not None else None
    known = {c.service: c for c in store.cursors()} if store is not None else {}
    head = store.head() if store is not None else 0
    for streamer in config.streamers:
        cursor = known.get(streamer.name)
        row = {
            "service": streamer.name,
            "kind": streamer.kind,
            "enabled": bool(streamer.keys),
            "height": cursor.height if cursor else 0,
            "head": head,
            "lag": cursor.lag if cursor else (None if streamer.kind == "jetstream-source" else head),
            "last_error": cursor.last_error if cursor else None,
        }
        if streamer.kind == "jetstream-source":
            # Its position is in JetStream, not in local commits (lag: messages left there).
            row["source"] = cursor.source if cursor else None
            row["source_sequence"] = cursor.source_sequence if cursor else None
            row["source_stored"] = cursor.source_stored if cursor else None
            # Poison messages: set aside (skipped, or in the dead-letter stream), the last named.
            row["source_poisoned"] = (cursor.source_poisoned or 0) if cursor else 0
            row["source_last_poison"] = cursor.source_last_poison if cursor else None
        elif streamer.kind == "jetstream":
            # Records sent again under the identity of the file this one was copied from.
            row["copied_resent"] = cursor.copied_resent if cursor else 0
        if args.json:
            out.write(dump(row) + "\n")
            continue
        error = f"  last error: {row['last_error']}" if row["last_error"] else ""
        lag = "?" if row["lag"] is None else row["lag"]
        off = "" if row["enabled"] else " (off)"
        if streamer.kind == "jetstream-source":
            where = (f"JetStream {row['source']} sequence {row['source_sequence']}, stored {row['source_stored']}"
                     if row["source"] is not None else "nothing stored yet")
            poison = (f", set aside {row['source_poisoned']} (last: {row['source_last_poison']})"
                      if row["source_poisoned"] else "")
            out.write(f"{row['service']} ({row['kind']}): {where}{poison}, lag {lag}{off}{error}\n")
        else:
            copied = (f", sent again after a copy {row['copied_resent']} (under the original's ids)"
                      if row.get("copied_resent") else "")
            out.write(f"{row['service']} ({row['kind']}): height {row['height']}, head {row['head']}, "
                      f"lag {lag}{copied}{off}{error}\n")
    return 0
