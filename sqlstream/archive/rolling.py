"""Roll managers and roll checkers: writing and reading archives as a sequence of files.

Shoebox's names and keyword construction: :class:`WritingRollManager`,
:class:`ReadingRollManager`, :class:`SizeRollChecker`, :class:`TimeRollChecker`,
:class:`NeverRollChecker`. All are re-exported by :mod:`sqlstream.archive`.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import EndOfArchive, InvalidArgument, NoMoreFiles, SqlstreamError, TruncatedRecord
from .format import ArchiveReader, ArchiveWriter, fsync_directory, is_working_name, working_name

if TYPE_CHECKING:
    from .callbacks import ArchiveCallback

log = logging.getLogger("sqlstream.archive")


# --------------------------------------------------------------------------- roll checkers


class RollChecker:
    """Decides when a writing roll manager closes its archive and starts the next.

    Built from keyword arguments (plugins are constructed from configuration).
    :meth:`start` is called when an archive is opened, :meth:`check` after each write.
    """

    def __init__(self, **kwargs: Any) -> None:
        pass

    def start(self, archive: ArchiveWriter) -> None:
        """An archive was just opened."""

    def check(self, archive: ArchiveWriter) -> bool:
        """True when ``archive`` should be closed now."""
        return False

    def seconds_left(self) -> float | None:
        """Seconds until this checker wants a roll regardless of writes (None: never)."""
        return None


class NeverRollChecker(RollChecker):
    """Never rolls: one archive until the manager is closed."""


class SizeRollChecker(RollChecker):
    """Rolls once the archive has reached ``roll_size_mb`` MiB (so files end just past it)."""

    def __init__(self, roll_size_mb: float = 1000, **kwargs: Any) -> None:
        if isinstance(roll_size_mb, bool) or not isinstance(roll_size_mb, (int, float)) or roll_size_mb <= 0:
            raise InvalidArgument(f"roll_size_mb must be a positive number, not {roll_size_mb!r}")
        self.roll_size_mb = roll_size_mb
        self.roll_bytes = int(roll_size_mb * 1024 * 1024)

    def check(self, archive: ArchiveWriter) -> bool:
        return archive.size >= self.roll_bytes


class TimeRollChecker(RollChecker):
    """Rolls once an archive has been open ``roll_minutes`` minutes (fractions allowed).

    Time is measured with a monotonic clock, so wall-clock jumps do not roll or delay.
    """

    def __init__(self, roll_minutes: float = 60, **kwargs: Any) -> None:
        if isinstance(roll_minutes, bool) or not isinstance(roll_minutes, (int, float)) or roll_minutes <= 0:
            raise InvalidArgument(f"roll_minutes must be a positive number, not {roll_minutes!r}")
        self.roll_minutes = roll_minutes
        self.deadline: float | None = None

    def start(self, archive: ArchiveWriter) -> None:
        self.deadline = time.monotonic() + self.roll_minutes * 60.0

    def check(self, archive: ArchiveWriter) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


class AnyRollChecker(RollChecker):
    """Rolls when any of its checkers would (size *or* time)."""

    def __init__(self, checkers: list[RollChecker] | None = None, **kwargs: Any) -> None:
        self.checkers = list(checkers or [])

    def start(self, archive: ArchiveWriter) -> None:
        for c in self.checkers:
            c.start(archive)

    def check(self, archive: ArchiveWriter) -> bool:
        return any(c.check(archive) for c in self.checkers)

    def seconds_left(self) -> float | None:
        left = [s for s in (c.seconds_left() for c in self.checkers) if s is not None]
        return min(left) if left else None


# --------------------------------------------------------------------------- roll managers


def render_template(template: str, now: _dt.datetime | None = None) -> str:
    """A file name from a strftime template in UTC, with ``' '``, ``'/'``, ``':'`` -> ``_``."""
    name = (now or _dt.datetime.now(_dt.timezone.utc)).strftime(template)
    for ch in (" ", "/", ":"):
        name = name.replace(ch, "_")
    if not name or name in (".", ".."):
        raise InvalidArgument(f"the file name template {template!r} gives the unusable name {name!r}")
    return name


_NAME_MAX = 255  # bytes in one file name on common filesystems
_NAME_SLACK = len("_0001") + len(".part") + 2  # a collision suffix and a working name


def check_template(template: object, extension: str) -> None:
    """Refuse a file name template that cannot give a file name, before anything is written."""
    if not isinstance(template, str):
        raise InvalidArgument(f"template is a strftime string, not {type(template).__name__}")
    try:
        template.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"template {template!r} is not valid Unicode (lone surrogate)") from None
    if "\0" in template:
        raise InvalidArgument(f"template {template!r} contains a NUL character")
    try:
        rendered = render_template(template)
    except (ValueError, UnicodeError) as exc:
        if isinstance(exc, SqlstreamError):
            raise
        raise InvalidArgument(f"template {template!r} is not a usable strftime template: {exc}") from None
    size = len((rendered + extension).encode("utf-8")) + _NAME_SLACK
    if size > _NAME_MAX:
        raise InvalidArgument(
            f"template {template!r} gives file names of {size - _NAME_SLACK} bytes; the limit is "
            f"{_NAME_MAX - _NAME_SLACK}",
            hint="use a shorter template",
        )


def candidate_names(base: str) -> Iterator[str]:
    """``base``, then ``root_0001.ext``, ``root_0002.ext``...: sorted by name, they stay in order."""
    yield base
    root, ext = os.path.splitext(base)
    n = 1
    while True:
        yield f"{root}_{n:04d}{ext}"
        n += 1


def claim_working_file(
    directory: str, base: str, taken: set[str] | None = None, mode: int = 0o644
) -> tuple[str, str]:
    """Create a new working file for a not-yet-existing final name; return (final, working).

    The working file is created with ``O_EXCL``, so two writers never share one, and
    permission bits ``mode`` (less any the umask removes).
    """
    for name in candidate_names(base):
        final = os.path.join(directory, name)
        if taken is not None and final in taken:
            continue
        if os.path.lexists(final):
            continue
        work = working_name(final)
        try:
            fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return final, work
    raise AssertionError("unreachable")  # pragma: no cover


def publish(work: str, final: str) -> str:
    """Give a complete working file its final name without overwriting anything; return it.

    A hard link refuses an existing name atomically; if another writer took ``final`` in
    the meantime, the next free candidate name is used. Falls back to rename where the
    filesystem has no hard links.
    """
    directory, base = os.path.split(final)
    for name in candidate_names(base):
        target = os.path.join(directory, name)
        try:
            os.link(work, target)
        except FileExistsError:
            continue
        except OSError:
            if os.path.lexists(target):
                continue
            os.replace(work, target)
            break
        os.unlink(work)
        break
    fsync_directory(directory)
    return target


class WritingRollManager:
    """Writes records to a sequence of archive files, rolling over as the checker says.

    ``WritingRollManager(filename_template, roll_checker, directory=".",
    archive_callback=None, version=2)``. File names come from the strftime template in
    UTC with ``' '``, ``'/'`` and ``':'`` replaced by ``_``; when a name is taken (two
    rolls within the template's resolution), ``_0001``, ``_0002``... is put before the
    extension, so name order stays write order. Each file is written under a hidden
    working name (``.NAME.part``) and renamed when closed, so a reader never sees a
    half-written archive under an archive name. The callback's ``on_open`` gets the
    archive's final name when it is opened, ``on_close`` the closed file's name, and
    returns its new location. Archives are created with permission bits ``file_mode``
    (default 0o644, less the umask): pass the mode of the data they hold, e.g. 0o600.
    """

    def __init__(
        self,
        filename_template: str,
        roll_checker: RollChecker | None = None,
        directory: str | os.PathLike[str] = ".",
        archive_class: type[ArchiveWriter] = ArchiveWriter,
        archive_callback: ArchiveCallback | None = None,
        version: int = 2,
        file_mode: int = 0o644,
        **kwargs: Any,
    ) -> None:
        if isinstance(file_mode, bool) or not isinstance(file_mode, int) or not 0 <= file_mode <= 0o777:
            raise InvalidArgument(f"file_mode is permission bits such as 0o600, not {file_mode!r}")
        if not isinstance(directory, (str, os.PathLike)):
            raise InvalidArgument(f"directory is a path, not {type(directory).__name__}")
        self.file_mode = file_mode
        self.filename_template = filename_template
        self.roll_checker = roll_checker if roll_checker is not None else NeverRollChecker()
        self.directory = os.fspath(directory)
        self.archive_class = archive_class
        self.archive_callback = archive_callback
        self.version = version
        self.active_archive: ArchiveWriter | None = None
        self.active_filename: str | None = None
        self._working: str | None = None
        self._used: set[str] = set()
        self.closed_files: list[str | None] = []  # what each close's callbacks returned
        check_template(filename_template, "")  # refuse a template that gives an unusable name now
        os.makedirs(self.directory, exist_ok=True)

    def _make_filename(self) -> str:
        return os.path.join(self.directory, render_template(self.filename_template))

    def get_active_archive(self) -> ArchiveWriter:
        """The open archive, opening a new one (and telling the callback) if needed."""
        if self.active_archive is None:
            base = render_template(self.filename_template)
            final, work = claim_working_file(self.directory, base, self._used, self.file_mode)
            try:
                archive = self.archive_class(work, version=self.version)
            except BaseException:
                os.unlink(work)
                raise
            self.active_archive, self.active_filename, self._working = archive, final, work
            self._used.add(final)
            self.roll_checker.start(archive)
            if self.archive_callback is not None:
                self.archive_callback.on_open(final)
        return self.active_archive

    def write(self, metadata: Mapping[str, str], payload: bytes | str) -> None:
        """Append one record; roll over afterwards if the checker says so."""
        archive = self.get_active_archive()
        archive.write(metadata, payload)
        if self.roll_checker.check(archive):
            self.close()

    def close(self) -> str | None:
        """Close the active archive: fsync, rename to its final name, run the callbacks.

        Returns the location the callbacks report (None if nothing was open or a callback
        removed the file). Safe to call when nothing is open.
        """
        archive, work, final = self.active_archive, self._working, self.active_filename
        if archive is None or work is None or final is None:
            return None
        self.active_archive = self.active_filename = self._working = None
        archive.close()
        final = publish(work, final)
        self._used.add(final)
        location: str | None = final
        if self.archive_callback is not None:
            location = self.archive_callback.on_close(final)
        self.closed_files.append(location)
        return location

    def __enter__(self) -> WritingRollManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReadingRollManager:
    """Reads every archive whose file name matches a pattern, in name order.

    ``ReadingRollManager("test_*.events", directory=".")``: the fnmatch pattern is
    matched against file names (a pattern with a directory part, ``"logs/*.events"``,
    is taken relative to ``directory``). Hidden working files (``.NAME.part``) are never
    read. :meth:`read` continues across files and raises :class:`NoMoreFiles` at the end.
    Empty files are skipped; a file whose last record is torn yields its complete
    records and is then skipped with a warning (listed in :attr:`skipped`); a corrupt
    file (bad magic, bad checksum) raises, naming the file and byte offset.
    """

    def __init__(
        self,
        filename_template: str,
        directory: str | os.PathLike[str] = ".",
        archive_class: type[ArchiveReader] = ArchiveReader,
        archive_callback: ArchiveCallback | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(filename_template, str) or not filename_template or "\x00" in filename_template:
            raise InvalidArgument(f"the pattern is a file name glob (a non-empty str without NUL), not "
                                  f"{filename_template!r}"[:300], hint='e.g. ReadingRollManager("test_*.events")')
        if not isinstance(directory, (str, os.PathLike)):
            raise InvalidArgument(f"directory is a path, not {type(directory).__name__}")
        self.filename_template = filename_template
        sub, pattern = os.path.split(filename_template)
        self.directory = os.path.join(os.fspath(directory), sub)
        self.pattern = pattern
        self.archive_class = archive_class
        self.archive_callback = archive_callback
        self.active_archive: ArchiveReader | None = None
        self.active_filename: str | None = None
        self.skipped: list[tuple[str, str]] = []  # (file, reason)
        self.files_to_read = matching_files(self.directory, pattern)

    def get_active_archive(self) -> ArchiveReader:
        if self.active_archive is None:
            if not self.files_to_read:
                raise NoMoreFiles(f"no more archives matching {self.filename_template!r} in {self.directory}")
            self.active_filename = self.files_to_read.pop(0)
            self.active_archive = self.archive_class(self.active_filename)
            if self.archive_callback is not None:
                self.archive_callback.on_open(self.active_filename)
        return self.active_archive

    def read(self) -> tuple[dict[str, str], bytes]:
        """The next record from the current or a following file; ``NoMoreFiles`` at the end."""
        while True:
            archive = self.get_active_archive()
            try:
                return archive.read()
            except EndOfArchive:
                self.close()
            except TruncatedRecord as exc:
                log.warning("skipping the torn end of %s: %s", archive.filename, exc)
                self.skipped.append((archive.filename, str(exc)))
                self.close()

    def __iter__(self) -> Iterator[tuple[dict[str, str], bytes]]:
        while True:
            try:
                yield self.read()
            except NoMoreFiles:
                return

    def close(self) -> None:
        """Close the current file (the next read opens the next one)."""
        archive, name = self.active_archive, self.active_filename
        self.active_archive = self.active_filename = None
        if archive is not None:
            archive.close()
            if self.archive_callback is not None and name is not None:
                self.archive_callback.on_close(name)

    def __enter__(self) -> ReadingRollManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def matching_files(directory: str, pattern: str) -> list[str]:
    """Paths of the regular files in ``directory`` whose names match ``pattern``, sorted by name."""
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    out = []
    for name in sorted(names):
        path = os.path.join(directory, name)
        if fnmatch.fnmatchcase(name, pattern) and not is_working_name(name) and os.path.isfile(path):
            out.append(path)
    return out
