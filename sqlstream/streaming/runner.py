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
from collections.abc import Callable, Sequence

from ..archive.export import file_mode_of
from ..database import Database
from ..errors import SqlstreamError
from .config import StreamingConfig
from .services import Service
from .store import RecordsTrimmed, Store

__all__ = ["Runner", "ServiceError", "RunResult"]

log = logging.getLogger("sqlstream.streaming")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
WAKE_SLICE = 0.5  # seconds between stop-event checks while blocked on a commit wait


class ServiceError(SqlstreamError):
    """A service with stop-node-on-error failed to write a block; ``service``/``height`` say which."""

    def __init__(self, service: str, height: int | None, cause: BaseException) -> None:
        where = f" at block {height}" if height is not None else ""
        # The cause's hint becomes this error's (shown once): not its str(), which has it too.
        text = str(cause.args[0]) if isinstance(cause, SqlstreamError) and cause.args else str(cause)
        super().__init__(
            f"streaming service {service!r} stopped{where}: {type(cause).__name__}: {text}",
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
        mode = file_mode_of(db.path)
        for service in self.services:
            service.file_mode = mode
        self.stop_event = stop_event or threading.Event()
        self.error: BaseException | None = None
        self.result = RunResult()
        self._thread: threading.Thread | None = None
        self._on_block: Callable[[str, int], None] | None = None  # catch-up progress, see run()

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
            self.store.advance(service.name, block.height, block)
            cursor = block.height
            if self._on_block is not None:
                self._on_block(service.name, cursor)
            self.result[service.name] = self.result.get(service.name, 0) + 1
            delay = BACKOFF_FIRST
        return cursor

    # -------------------------------------------------------------- the loop

    def _paced(self, service: Service, once: bool, errors: list[BaseException]) -> None:
        """Run a self-paced service (its own loop, in its own thread) with the same error rules."""
        delay = BACKOFF_FIRST
        while not self.stop_event.is_set():
            try:
                done = service.run_paced(self.store, self.stop_event, once)
            except Exception as exc:  # noqa: BLE001 - every failure is reported or retried
                height = self.store.cursor(service.name, service.KIND) + 1
                if service.stop_on_error or isinstance(exc, RecordsTrimmed):
                    errors.append(exc if isinstance(exc, RecordsTrimmed) else ServiceError(service.name, height, exc))
                    self.stop_event.set()  # stops the other services too, like a failing block
                    return
                message = f"block {height}: {type(exc).__name__}: {exc}"
                log.warning("streaming service %r failed, retrying in %.1fs: %s", service.name, delay, message)
                try:
                    self.store.record_error(service.name, message)
                except SqlstreamError:
                    log.exception("cannot record the error of streaming service %r", service.name)
                self.stop_event.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.result[service.name] = self.result.get(service.name, 0) + done
            return

    def run(self, *, once: bool = False, progress: Callable[[int, int | None], None] | None = None) -> RunResult:
        """Process blocks until the stop event is set (``once``: until caught up with the
        commits visible when called). Raises ServiceError from a stopping service, and
        RecordsTrimmed when retention removed records a service had not streamed.

        Self-paced services (``archive``) run in threads of their own meanwhile; the first
        error of one stops the whole run and is raised here.

        ``progress``, if given, follows the catch-up: ``progress(done, total)`` in heights
        (txn numbers) summed over the block services, from their cursors to the head seen
        when the run starts; called after each block, and with ``done == total`` once they
        have caught up (then never again: live blocks are not "progress"). Self-paced
        services are not counted.
        """
        active = [s for s in self.services if s.enabled]
        cursors = {s.name: self.store.cursor(s.name, s.KIND or type(s).__name__, s.keys) for s in active}
        paced = [s for s in active if s.SELF_PACED]
        active = [s for s in active if not s.SELF_PACED]
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=self._paced, args=(s, once, errors), name=f"sqlstream-streaming-{s.name}",
                             daemon=True)
            for s in paced
        ]
        try:
            for service in active + paced:
                service.start()
                if service.accept_trimmed and not service.SELF_PACED:
                    self.store.accept_trimmed(service.name, service.keys)
            for thread in threads:
                thread.start()
            upto = self.store.head() if once else None
            catching_up = progress is not None
            while not self.stop_event.is_set():
                seen = self.store.head()
                if catching_up and progress is not None:
                    reached = {s.name: min(cursors[s.name], seen) for s in active}
                    start = sum(reached.values())
                    total = len(active) * seen - start

                    def on_block(name: str, height: int, report: Callable[[int, int | None], None] = progress) -> None:
                        reached[name] = min(height, seen)
                        report(sum(reached.values()) - start, total)

                    progress(0, total)
                    self._on_block = on_block
                try:
                    for service in active:
                        cursors[service.name] = self._pending(service, cursors[service.name], upto)
                finally:
                    self._on_block = None
                if catching_up and progress is not None and not self.stop_event.is_set():
                    progress(total, total)
                catching_up = False
                if once:
                    for thread in threads:
                        thread.join()
                    break
                # Everything up to `seen` is done; sleep until a later commit (or stop).
                while not self.stop_event.is_set() and not self.store.wait_for_commit(seen, WAKE_SLICE):
                    pass
            for thread in threads:
                thread.join()
        except BaseException:
            self.stop_event.set()
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            raise
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
        if errors:
            raise errors[0]
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
