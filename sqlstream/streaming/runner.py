"""Running streaming services: every block above each service's cursor, exactly once.

For each enabled service the runner reads the next block above the service's durable
cursor (one snapshot), calls ``write_block``, then advances the cursor in one committed
write. A crash between the two redoes the block on the next start, and services write
idempotently, so every block's output is written completely and exactly as once. When
nothing is pending the runner blocks until the next commit (woken like a blocked reader).

Errors: a service with ``stop-node-on-error = true`` stops the run with
:class:`ServiceError` naming the block and the cause; with ``false`` the error is logged
and kept as the cursor's ``last_error``, and the same block is retried with exponential
backoff (0.1 s doubling to 30 s) -- a block is never skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from ..database import Database
from ..errors import SqlstreamError
from .config import StreamingConfig
from .services import Service
from .store import Store

__all__ = ["Runner", "ServiceError", "RunResult"]

log = logging.getLogger("sqlstream.streaming")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
WAKE_SLICE = 0.5  # seconds between stop-event checks while blocked on a commit wait


class ServiceError(SqlstreamError):
    """A service with stop-node-on-error failed to write a block; ``service``/``height`` say which."""

    def __init__(self, service: str, height: int | None, cause: BaseException) -> None:
        where = f" at block {height}" if height is not None else ""
        super().__init__(
            f"streaming service {service!r} stopped{where}: {type(cause).__name__}: {cause}",
            hint=getattr(cause, "hint", None) or "fix the cause and run again: the service resumes with this block",
        )
        self.service = service
        self.height = height


class RunResult(dict[str, int]):
    """Blocks written per service name during one run."""


class Runner:
    """Runs services against one database until stopped (or, with ``once``, caught up).

    Use :meth:`run` in the calling thread, or :meth:`start` / :meth:`stop` / :meth:`join`
    for a background thread. ``stop_event`` (a ``threading.Event``) ends the run after the
    block in hand. The Database is not closed by the runner.
    """

    def __init__(self, db: Database, services: Sequence[Service], *, stop_event: threading.Event | None = None) -> None:
        self.db = db
        self.store = Store(db)
        self.services = list(services)
        self.stop_event = stop_event or threading.Event()
        self.error: BaseException | None = None
        self.result = RunResult()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, db: Database, config: StreamingConfig, *, stop_event: threading.Event | None = None) -> Runner:
        return cls(db, config.build(), stop_event=stop_event)

    # -------------------------------------------------------------- one service

    def _pending(self, service: Service, cursor: int, upto: int | None) -> int:
        """Write every block of ``service`` above ``cursor`` (up to ``upto``); return the new cursor."""
        delay = BACKOFF_FIRST
        while not self.stop_event.is_set():
            block = self.store.next_block(service.name, service.keys, cursor, upto)
            if block is None:
                return cursor
            try:
                service.write_block(block)
            except Exception as exc:  # noqa: BLE001 - every failure is reported or retried
                if service.stop_on_error:
                    raise ServiceError(service.name, block.height, exc) from exc
                message = f"block {block.height}: {type(exc).__name__}: {exc}"
                log.warning("streaming service %r failed, retrying in %.1fs: %s", service.name, delay, message)
                try:
                    self.store.record_error(service.name, message)
                except SqlstreamError:
                    log.exception("cannot record the error of streaming service %r", service.name)
                self.stop_event.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.store.advance(service.name, block.height)
            cursor = block.height
            self.result[service.name] = self.result.get(service.name, 0) + 1
            delay = BACKOFF_FIRST
        return cursor

    # -------------------------------------------------------------- the loop

    def run(self, *, once: bool = False) -> RunResult:
        """Process blocks until the stop event is set (``once``: until caught up with the
        commits visible when called). Raises ServiceError from a stopping service."""
        active = [s for s in self.services if s.enabled and s.BLOCKS]
        cursors = {s.name: self.store.cursor(s.name, s.KIND or type(s).__name__) for s in active}
        # Services with a loop of their own (BLOCKS = False) each get a thread; the first
        # one to fail stops the run.
        failures: list[tuple[Service, BaseException]] = []

        def serve(service: Service) -> None:
            try:
                service.serve(self.store, self.stop_event, once=once)
            except BaseException as exc:  # noqa: BLE001 - reported by run()
                failures.append((service, exc))
                self.stop_event.set()

        threads = [threading.Thread(target=serve, args=(s,), name=f"sqlstream-{s.name}", daemon=True)
                   for s in self.services if s.enabled and not s.BLOCKS]
        for thread in threads:
            thread.start()
        try:
            upto = self.store.head() if once else None
            while not self.stop_event.is_set():
                seen = self.store.head()
                for service in active:
                    cursors[service.name] = self._pending(service, cursors[service.name], upto)
                if once:
                    for thread in threads:
                        thread.join()
                    break
                # Everything up to `seen` is done; sleep until a later commit (or stop).
                while not self.stop_event.is_set() and not self.store.wait_for_commit(seen, WAKE_SLICE):
                    pass
        finally:
            if threads:
                self.stop_event.set()
                for thread in threads:
                    thread.join()
            for service in self.services:
                try:
                    service.close()
                except Exception:  # noqa: BLE001 - closing must not hide the run's outcome
                    log.exception("closing streaming service %r failed", service.name)
        if failures:
            service, exc = failures[0]
            if isinstance(exc, ServiceError):
                raise exc
            raise ServiceError(service.name, getattr(exc, "height", None), exc) from exc
        return self.result

    def start(self) -> threading.Thread:
        """Run in a daemon thread; :attr:`error` holds what stopped it, if anything."""

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self.error = exc

        self._thread = threading.Thread(target=target, name="sqlstream-streaming", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Ask the run to end after the block in hand (returns at once; see :meth:`join`)."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the background run to end; re-raise the error that stopped it."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
