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
    for a background thread; :meth:`stop` first streams what was committed before it.
    ``stop_event`` (a ``threading.Event``) ends the run after the block in hand, without
    draining (for signal handlers). The Database is not closed by the runner.
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
        self._draining = threading.Event()  # set by stop(): finish what is committed, then end
        self._on_block: Callable[[str, int], None] | None = None  # catch-up progress, see run()

    @classmethod
    def from_config(cls, db: Database, config: StreamingConfig, *, stop_event: threading.Event | None = None) -> Runner:
        return cls(db, config.build(), stop_event=stop_event)

    # -------------------------------------------------------------- one service

    def _pending(self, service: Service, cursor: int, upto: int | None, *, retry: bool = True) -> int:
        """Write every block of ``service`` above ``cursor`` (up to ``upto``); return the new cursor.

        ``retry=False`` (a drain): a failure of a service without stop-node-on-error is
        recorded and ends its pass instead of being retried.
        """
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
                if not retry:
                    return cursor
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

    def _paced(self, service: Service, once: bool, errors: list[BaseException], halt: threading.Event, *,
               retry: bool = True) -> None:
        """Run a self-paced service (its own loop, in its own thread) with the same error rules.

        ``halt`` ends the service's own loop; the runner sets it when the run ends for any
        reason (the stop event, a drain, another service's error).
        """
        delay = BACKOFF_FIRST
        while not self.stop_event.is_set() and not halt.is_set():
            try:
                done = service.run_paced(self.store, halt, once)
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
                if not retry:
                    return
                halt.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.result[service.name] = self.result.get(service.name, 0) + done
            return

    def run(self, *, once: bool = False, progress: Callable[[int, int | None], None] | None = None) -> RunResult:
        """Process blocks until the stop event is set or :meth:`stop` drains the run
        (``once``: until caught up with the commits visible when called). Raises
        ServiceError from a stopping service, and RecordsTrimmed when retention removed
        records a service had not streamed.

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
        # Ends the self-paced services' live loops: set when the live run ends for any reason.
        halt = threading.Event()
        threads = [
            threading.Thread(target=self._paced, args=(s, once, errors, halt), name=f"sqlstream-streaming-{s.name}",
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
            while not self.stop_event.is_set() and not self._draining.is_set():
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
                while (not self.stop_event.is_set() and not self._draining.is_set()
                       and not self.store.wait_for_commit(seen, WAKE_SLICE)):
                    pass
            halt.set()
            for thread in threads:
                thread.join()
            if not once and self._draining.is_set() and not errors:
                self._drain(active, paced, cursors, errors)
        except BaseException:
            self.stop_event.set()
            halt.set()
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            raise
        finally:
            halt.set()
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

    def _drain(self, active: list[Service], paced: list[Service], cursors: dict[str, int],
               errors: list[BaseException]) -> None:
        """The last pass of a drained run: every service catches up with the commits visible
        now (at least those before :meth:`stop`), as ``run(once=True)`` would.

        Self-paced services with ``DRAINS_ON_STOP`` run their ``once`` pass (an archive closes
        the archive in hand); the JetStream relays do not (a stop never waits on a server).
        A failure is not retried here: it is recorded (or raised, with stop-node-on-error)
        and the next run resumes. The stop event still ends this pass early
        (``stop(drain=False)``).
        """
        upto = self.store.head()
        for service in active:
            cursors[service.name] = self._pending(service, cursors[service.name], upto, retry=False)
        for service in paced:
            if self.stop_event.is_set() or errors:
                break
            if service.DRAINS_ON_STOP:
                self._paced(service, True, errors, self.stop_event, retry=False)

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

    def stop(self, *, drain: bool = True) -> None:
        """Ask the run to end; returns at once (wait with :meth:`join`).

        ``drain=True`` (the default): the local services first write what was committed
        before this call -- block services (``file``) up to the newest commit, the
        ``archive`` service a final ``once`` pass that closes its archive in hand -- so
        ``append(); stop(); join()`` streams the append. The JetStream relays stop after
        the batch in hand instead (a stop never waits on a server). A failure while
        draining is recorded (or raised, with stop-node-on-error), not retried.
        ``drain=False`` ends the run after the block in hand (what ``serve`` does on
        SIGINT/SIGTERM). Either way the rest is streamed by the next run, since every
        cursor is durable. The run's thread notices a stop within half a second when idle.
        """
        if drain:
            self._draining.set()
        else:
            self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the background run to end; re-raise the error that stopped it."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
