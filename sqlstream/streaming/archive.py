"""The ``archive`` streaming service: ``db.export`` (rolled shoebox archives) run by ``serve``.

Configured like any streamer::

    [streamers.archive]
    keys = ["orders", "pay*"]        # stream names or globs
    dir = "archives"                 # where archives are written (with storage: staged)
    compress = "gzip"                # or "zstd"; omitted: none
    roll_size_mb = 64                # close an archive at this size (default 100)
    roll_minutes = 10                # ... or once it has been open this long
    template = "orders-%Y%m%dT%H%M%S.%fZ.events"
    storage = { driver = "filesystem", root = "uploaded" }
    storage_prefix = "app/"
    format_version = 2

The names follow ``sqlstream export`` (``--roll-size-mb`` is ``roll_size_mb``...). The
service is the export named after the streamer (``sqlstream export --status`` lists it
too): its progress is the export's own, kept per stream in ``export_streams`` and exact
after ``kill -9`` (see :mod:`sqlstream.archive.export`). The service's row in
``streaming_cursors`` mirrors it: its height is the last commit all of whose records (in
the exposed streams) are in *closed* archives, updated as archives close; so with large
``roll_size_mb`` the height advances in steps.

The service is self-paced: it runs the export with ``follow`` in a thread of its own,
woken by commits, and restarts it (closing the archive in hand) when the set of streams
its globs match changes. ``--once`` exports what is committed and closes the archive.
Records retention trimmed before they were archived stop the service with
:class:`~sqlstream.streaming.store.RecordsTrimmed` naming the range.
"""

from __future__ import annotations

import difflib
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..archive.callbacks import check_compression
from ..archive.export import ExportProgress, default_template, export
from ..archive.rolling import check_template
from ..errors import SqlstreamError
from ..records import check_name
from ..storage import load_driver_class, unknown_options
from .services import Option, OptionError, Output, Service, output_directory, resolve_path
from .store import Block, RecordsTrimmed, Store

__all__ = ["ArchiveService"]

WATCH_EVERY = 1.0  # seconds between checks for streams newly matching (or no longer matching) the keys
_STORAGE_PATHS = {"filesystem": "root", "sqlite": "path"}  # driver options that are local paths


class _Watch(threading.Event):
    """The export's stop signal: the runner's stop, or a change in the streams the keys match.

    ``export`` only calls ``is_set()`` between batches and idle waits, so the stream list
    is re-read at most every ``WATCH_EVERY`` seconds.
    """

    def __init__(self, stop: threading.Event, store: Store, keys: Sequence[str], names: list[str]) -> None:
        super().__init__()
        self.stop = stop
        self.store = store
        self.keys = keys
        self.names = names
        self.changed = False
        self._next = time.monotonic() + WATCH_EVERY

    def is_set(self) -> bool:
        if self.stop.is_set() or self.changed:
            return True
        now = time.monotonic()
        if now >= self._next:
            self._next = now + WATCH_EVERY
            self.changed = self.store.stream_names(self.keys) != self.names
        return self.changed


class ArchiveService(Service):
    """Exports the exposed streams to rolled archive files (see the module docstring)."""

    KIND: ClassVar[str] = "archive"
    SELF_PACED: ClassVar[bool] = True
    UNIT: ClassVar[str] = "archive(s)"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "dir": Option("path", required=True, help='the directory for the archives, e.g. dir = "archives"'),
        "template": Option("str", None),
        "roll_size_mb": Option("number", 100),
        "roll_minutes": Option("number", None),
        "compress": Option("str", None),
        "storage": Option("table", None),
        "storage_prefix": Option("str", ""),
        "format_version": Option("int", 2),
        "stop-node-on-error": Option("bool", True),
    }

    @classmethod
    def prepare_options(cls, options: dict[str, Any], base_dir: str) -> dict[str, Any]:
        """The checks ``db.export`` makes, done when the config is loaded; local storage paths
        are resolved against the config file's folder."""
        for key in ("roll_size_mb", "roll_minutes"):
            value = options[key]
            # An int is finite however large (math.isfinite of a huge one raises OverflowError).
            if value is not None and ((isinstance(value, float) and not math.isfinite(value)) or value <= 0):
                raise OptionError(key, f"must be a positive number, not {value!r}",
                                  hint="leave it out for the default")
        compress = options["compress"]
        try:
            check_compression(compress)
        except SqlstreamError as exc:
            raise OptionError("compress", f'must be "gzip" or "zstd", not {compress!r}'
                              if compress not in ("gzip", "zstd") else str(exc.args[0]), hint=exc.hint) from exc
        if options["template"] is not None:
            try:
                check_template(options["template"], "")
            except SqlstreamError as exc:
                raise OptionError("template", str(exc.args[0]), hint=exc.hint) from exc
        if options["format_version"] not in (1, 2):
            raise OptionError("format_version", f"must be 1 or 2, not {options['format_version']!r}",
                              hint="1: shoebox-compatible, no checksums; 2 (default): with checksums")
        storage = options["storage"]
        if storage is not None:
            driver = storage.get("driver")
            if not isinstance(driver, str) or not driver:
                raise OptionError("storage", "needs a driver", hint='e.g. storage = { driver = "filesystem", root = "up" }')
            try:
                driver_class = load_driver_class(driver)
            except SqlstreamError as exc:
                raise OptionError("storage", str(exc.args[0]), hint=exc.hint) from exc
            unknown = unknown_options(driver_class, storage)
            if unknown:
                known = sorted(driver_class.OPTIONS or ())
                close = difflib.get_close_matches(unknown[0], known, n=1)
                raise OptionError("storage", f"the {driver} driver has no option {unknown[0]!r}",
                                  hint=f"did you mean {close[0]!r}?" if close else f"its options: {', '.join(known)}")
            local = _STORAGE_PATHS.get(driver)
            if local is not None and isinstance(storage.get(local), str) and storage[local]:
                storage = {**storage, local: resolve_path(storage[local], base_dir)}
            options = {**options, "storage": storage}
        return options

    @classmethod
    def outputs(cls, name: str, options: Mapping[str, Any]) -> list[Output]:
        """Where the archives go, for the names of the template (the default one holds the
        streamer's name). With ``storage``, ``dir`` only stages them, in a folder of the
        export's own; a filesystem storage writes into ``root``/``storage_prefix``."""
        template = options.get("template") or default_template(name)
        storage = options.get("storage")
        prefix = str(options.get("storage_prefix") or "")
        if storage is None:
            return [Output(output_directory(str(options["dir"])), f"archives named {template!r}")]
        folder, _, head = prefix.rpartition("/")
        names = f"archives named {head + template!r}"
        if storage.get("driver") == "filesystem" and isinstance(storage.get("root"), str):
            return [Output(output_directory(os.path.join(storage["root"], folder)), names)]
        where = {k: v for k, v in sorted(storage.items()) if isinstance(v, (str, int, float, bool))}
        return [Output(f"storage {where} under {folder + '/' if folder else ''!r}", names)]

    def __init__(self, name: str, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        super().__init__(name, keys, options)
        check_name(name, "export")
        self.dir = str(self.options["dir"])

    def write_block(self, block: Block) -> None:  # pragma: no cover - self-paced
        raise NotImplementedError("the archive service is self-paced (run_paced)")

    def run_paced(self, store: Store, stop: threading.Event, once: bool) -> int:
        """Export until ``stop`` (``once``: what is committed now); return the archives closed.

        Raises :class:`RecordsTrimmed` when retention trimmed records before they were
        archived, and what ``db.export`` raises (``StorageError``, ``StorageFull``...).
        """
        files = 0
        while not stop.is_set():
            seen = store.head()
            names = store.stream_names(self.keys)
            if names:
                self._check_trimmed(store)
                watch = _Watch(stop, store, self.keys, names)
                closed = [0]

                def on_progress(p: ExportProgress) -> None:
                    if p.files != closed[0]:  # an archive closed: its records are durable
                        closed[0] = p.files
                        self._mirror(store)

                result = export(
                    store.db, names, self.dir, name=self.name, template=self.options["template"],
                    roll_size_mb=self.options["roll_size_mb"], roll_minutes=self.options["roll_minutes"],
                    compress=self.options["compress"], storage=self.options["storage"],
                    storage_prefix=self.options["storage_prefix"], follow=not once,
                    version=self.options["format_version"], stop=watch, progress=on_progress,
                )
                files += len(result.files)
                self._mirror(store)
                if result.skipped and not self.accept_trimmed:
                    # Trimmed while the export ran: it logged the ranges and went past them.
                    raise RecordsTrimmed(self.name, [], result.skipped)
                if watch.changed:
                    continue
            if once:
                break
            # Nothing to export (no matching stream yet, or all sealed): sleep until a commit.
            while not stop.is_set() and not store.wait_for_commit(seen, 0.5):
                pass
        return files

    def _mirror(self, store: Store) -> None:
        height = store.export_height(self.name)
        if height is not None:
            store.set_height(self.name, height)

    def _check_trimmed(self, store: Store) -> None:
        if self.accept_trimmed:
            return  # the export skips the gaps (and logs them)
        gaps = store.export_trimmed(self.name)
        if gaps:
            raise RecordsTrimmed(self.name, gaps)
