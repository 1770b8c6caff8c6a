"""Consumers: run a handler over a subscription, acking what it finishes and nacking what it fails.

Each worker loops: fetch a batch (blocking, woken by appends, acks and ack deadlines),
call ``handler(batch)``, then ack the whole batch if the handler returned or nack it if
the handler raised. A record is acked only after its handler call returned, so a crash
(or SIGKILL) while handling leaves it pending and it is redelivered after the ack
timeout: at-least-once. ``stop()`` is graceful: workers finish (and ack) the batch in
hand, then return.

A consumer that starts under a name takes back at once what an earlier incarnation under
that name left unacked (``Subscription.rejoin``): a named consumer restarted after a
crash gets its records again without waiting for their ack timeout. Its acks are fenced
(``ack(attempts=batch.attempts)``): a late ack of the old incarnation's delivery never
acks the new delivery of the same record.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConcurrencyError, InvalidArgument, LockTimeout
from .logs import LazyLogger
from .records import check_name
from .subscriptions import Batch, Subscription
from .validation import check_count, check_seconds, check_timeout

if TYPE_CHECKING:
    from .database import Database

log = LazyLogger("sqlstream.consumer")

Handler = Callable[[Batch], object]
"""``handler(batch)``: process a :class:`Batch` of records; return to ack, raise to nack."""

_names = itertools.count(1)

# Defaults of Consumer's options, named once: Database.consumer() spells them by name.
DEFAULT_BATCH = 100  # records per fetch, handed to the handler together
DEFAULT_CONCURRENCY = 1  # worker threads
DEFAULT_NACK_DELAY = 0.0  # seconds before a nacked record is redelivered


def default_consumer_name() -> str:
    """A name unique to this process: host, pid and a counter."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname()) or "host"
    return f"{host[:60]}-{os.getpid()}-{next(_names)}"


class Consumer:
    """Runs ``handler`` over a subscription with ``concurrency`` worker threads.

    ``run()`` blocks until ``stop()`` is called from another thread (or Ctrl-C, which stops
    gracefully and re-raises). ``start()`` runs the workers in the background (``start()``
    and ``run()`` first take back what an earlier incarnation under this name left
    unacked: ``Subscription.rejoin``); ``stop()``
    waits for them and re-raises the first error a worker met outside the handler (for
    example ``SubscriptionNotFound`` once the subscription is deleted). Also a context
    manager: ``with db.consumer(...):`` starts on entry and stops on exit.
    Handler exceptions are not errors of the consumer: they nack the batch (the exception
    text becomes the records' last error) and are logged on ``sqlstream.consumer``.
    A handler that may outlast the subscription's ``ack_timeout`` should call
    ``consumer.subscription.extend_deadline(*batch.offsets, seconds=...)``; otherwise its records are
    redelivered to another consumer meanwhile (at least once, not exactly once).
    """

    def __init__(
        self,
        db: Database,
        subscription: str | Subscription,
        handler: Handler,
        *,
        name: str | None = None,
        batch: int = DEFAULT_BATCH,
        concurrency: int = DEFAULT_CONCURRENCY,
        nack_delay: float = DEFAULT_NACK_DELAY,
    ) -> None:
        if not callable(handler):
            raise InvalidArgument("handler must be callable: handler(batch) -> None")
        check_count(batch, "batch")
        check_count(concurrency, "concurrency", maximum=1024)  # one thread each
        nack_delay = check_seconds(nack_delay, "nack_delay", positive=False)
        self.db = db
        self.subscription = subscription if isinstance(subscription, Subscription) else db.subscription(subscription)
        self.handler = handler
        self.name = check_name(name, "consumer") if name is not None else default_consumer_name()
        self.batch = batch
        self.concurrency = concurrency
        self.nack_delay = float(nack_delay)
        self.acked = 0
        self.nacked = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<sqlstream.Consumer {self.name!r} on {self.subscription.name!r}>"

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # ----------------------------------------------------------------- control

    def start(self) -> Consumer:
        """Start the workers in background threads and return at once."""
        if self.running:
            raise InvalidArgument(f"consumer {self.name!r} is already running")
        self.subscription.rejoin(self.name)
        self._stop.clear()
        self._error = None
        self._threads = [
            threading.Thread(target=self._worker, name=f"sqlstream-consumer:{self.name}:{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the workers to stop after their current batch, wait for them, re-raise their error.

        ``timeout`` bounds the wait (None: until they finish). Safe to call from a handler
        (it then only asks).
        """
        timeout = check_timeout(timeout)
        self._stop.set()
        self.db.engine.notifier.bump()  # wake workers blocked in fetch so they see the request
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)
        error, self._error = self._error, None
        if error is not None and current not in self._threads:
            raise error

    def run(self) -> None:
        """Consume until ``stop()`` is called; re-raise the first error a worker met.

        With ``concurrency`` 1 the handler runs in the calling thread. Ctrl-C stops the
        workers gracefully (each finishes its batch) and is re-raised.
        """
        self.subscription.rejoin(self.name)
        self._stop.clear()
        self._error = None
        extra = [
            threading.Thread(target=self._worker, name=f"sqlstream-consumer:{self.name}:{i}", daemon=True)
            for i in range(1, self.concurrency)
        ]
        self._threads = [threading.current_thread(), *extra]
        for thread in extra:
            thread.start()
        try:
            self._loop()
        except BaseException:
            self._stop.set()
            self.db.engine.notifier.bump()
            for thread in extra:
                thread.join()
            self._threads = extra
            raise
        for thread in extra:
            thread.join()
        self._threads = extra
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> Consumer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- workers

    def _worker(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - handed to stop()/run()
            with self._lock:
                if self._error is None:
                    self._error = exc
            self._stop.set()
            self.db.engine.notifier.bump()

    def _loop(self) -> None:
        sub = self.subscription
        stopping = self._stop.is_set
        while not stopping():
            try:
                batch = sub.fetch(self.name, self.batch, None, stop=stopping)
            except LockTimeout:
                log.warning("consumer %s: the database stayed locked; fetching again", self.name)
                continue
            if not batch:
                continue  # stop requested
            try:
                self.handler(batch)
            except Exception as exc:  # noqa: BLE001 - a failed record is nacked, not fatal
                log.warning("consumer %s: handler raised on offsets %s; nacking", self.name, batch.offsets,
                            exc_info=True)
                sub.nack(*batch.offsets, delay=self.nack_delay, error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.nacked += len(batch)
            except BaseException as exc:
                # Interrupted mid-batch: hand the records back at once rather than after
                # the ack timeout, then let the interruption through.
                sub.nack(*batch.offsets, error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.nacked += len(batch)
                raise
            else:
                try:
                    done = sub.ack(*batch.offsets, attempts=batch.attempts)
                except ConcurrencyError:
                    # Delivered again meanwhile (ack timeout, or a consumer rejoined under
                    # this name): that delivery is the one to ack.
                    log.warning("consumer %s: offsets %s were delivered again before the ack; not acked",
                                self.name, batch.offsets)
                    continue
                with self._lock:
                    self.acked += len(done.applied)
