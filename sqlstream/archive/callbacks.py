"""Archive callbacks: what happens to an archive file once a roll manager closes it.

Shoebox's plugin shape is kept: every callback is built from keyword arguments only (so
it can be named in configuration), ``on_open(filename)`` is told when an archive is
opened, and ``on_close(filename)`` returns the file's new location so the next callback
in a :class:`CallbackList` works on the right file. A callback that removes the local
file (delete, upload with ``delete_after_upload``) returns None, and the callbacks after
it are not called.

Every built-in callback is crash-safe: it writes under a hidden working name, fsyncs,
and renames, so an interrupted compression or move never leaves a half-written file
under a real archive name.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidArgument
from ..plugins import load_object
from ..storage import StorageDriver, get_driver, upload_file
from .format import fsync_directory, working_name, zstandard_module

# The logger keeps its name from before the archive package, so logging configuration
# and log lines users rely on do not change.
log = logging.getLogger("sqlstream.callbacks")

COMPRESSIONS = ("gzip", "zstd")
EXTENSIONS = {"gzip": ".gz", "zstd": ".zst"}
_COPY_CHUNK = 1 << 20


class ArchiveCallback:
    """Base class: notified when an archive is opened and closed. Built from keywords."""

    def __init__(self, **kwargs: Any) -> None:
        self.config = kwargs

    def on_open(self, filename: str) -> None:
        """An archive was opened; ``filename`` is the name it will have when complete."""

    def on_close(self, filename: str) -> str | None:
        """An archive was closed (complete, under its final name).

        Return where it is now: the same name, a new local path, or None if it no longer
        exists locally.
        """
        return filename


class CallbackList(ArchiveCallback):
    """Runs several callbacks in order, each on the location the previous one returned.

    ``CallbackList(callback_list="module:Class, module:Class", **kwargs)``: each class is
    imported and constructed with all of ``kwargs`` (each takes what it needs). A list
    may also hold callback instances or classes.
    """

    def __init__(self, callback_list: str | Sequence[Any] = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        items: Sequence[Any]
        if isinstance(callback_list, str):
            items = [s for s in (p.strip() for p in callback_list.split(",")) if s]
        else:
            items = callback_list
        self.callbacks: list[ArchiveCallback] = []
        for item in items:
            target = load_object(item) if isinstance(item, str) else item
            if isinstance(target, type):
                if not issubclass(target, ArchiveCallback):
                    raise InvalidArgument(f"{target.__qualname__} is not an ArchiveCallback subclass")
                target = target(**kwargs)
            if not isinstance(target, ArchiveCallback):
                raise InvalidArgument(f"{item!r} is not an ArchiveCallback")
            self.callbacks.append(target)

    def on_open(self, filename: str) -> None:
        for callback in self.callbacks:
            callback.on_open(filename)

    def on_close(self, filename: str) -> str | None:
        location: str | None = filename
        for callback in self.callbacks:
            if location is None:
                log.debug("%s not called: an earlier callback removed the file", type(callback).__name__)
                break
            location = callback.on_close(location)
        return location


# --------------------------------------------------------------------------- file helpers


def _fsync_dir(path: str) -> None:
    fsync_directory(path)


def _hidden(path: str) -> str:
    return working_name(path)


def _mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write_durably(target: str, fill: Any, mode: int = 0o600) -> str:
    """Write ``target`` via a hidden working file: ``fill(fh)``, fsync, rename, fsync dir.

    The file gets permission bits ``mode`` (callers pass their source file's, so a
    derived copy is never more readable than what it was made from).
    """
    work = _hidden(target)
    try:
        fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)  # a stale working file keeps its old mode through O_TRUNC
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(work, target)
    except BaseException:
        if os.path.exists(work):
            os.unlink(work)
        raise
    _fsync_dir(os.path.dirname(target))
    return target


def compress_file(path: str, compression: str = "gzip", level: int | None = None, *, remove: bool = True) -> str:
    """Compress ``path`` to ``path.gz`` / ``path.zst`` durably; remove the original; return the new path.

    The compressed file has the permission bits of ``path``.
    """
    if compression not in COMPRESSIONS:
        raise InvalidArgument(f"compression is one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    target = path + EXTENSIONS[compression]

    def fill(out: Any) -> None:
        with open(path, "rb") as src:
            if compression == "gzip":
                import gzip

                # mtime=0: the same archive always compresses to the same bytes.
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6 if level is None else level,
                                   mtime=0) as gz:
                    shutil.copyfileobj(src, gz, _COPY_CHUNK)
            else:
                zstd = zstandard_module()
                # write_checksum: each frame ends with a hash of its content, so a damaged v1
                # archive (no CRCs of its own) is detected when read; every zstd reader accepts it.
                cctx = zstd.ZstdCompressor(level=3 if level is None else level, write_checksum=True)
                with cctx.stream_writer(out, closefd=False) as writer:
                    shutil.copyfileobj(src, writer, _COPY_CHUNK)

    _write_durably(target, fill, _mode_of(path))
    if remove:
        os.unlink(path)
        _fsync_dir(os.path.dirname(path))
    return target


def move_file(path: str, directory: str) -> str:
    """Move ``path`` into ``directory`` (created if needed) durably, across filesystems too.

    A copy across filesystems keeps the permission bits of ``path``.
    """
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, os.path.basename(path))
    try:
        os.replace(path, target)
    except OSError:
        # Another filesystem: copy under a working name, then swap in and remove the source.
        def fill(out: Any) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, _COPY_CHUNK)

        _write_durably(target, fill, _mode_of(path))
        os.unlink(path)
    _fsync_dir(directory)
    _fsync_dir(os.path.dirname(path))
    return target


# --------------------------------------------------------------------------- built-ins


class ChangeExtensionCallback(ArchiveCallback):
    """Renames a closed archive, replacing its last extension with ``new_extension``."""

    def __init__(self, new_extension: str = ".done", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(new_extension, str) or "/" in new_extension or os.sep in new_extension:
            raise InvalidArgument(f"new_extension must be a file-name suffix such as '.done', not {new_extension!r}")
        self.new_extension = new_extension

    def on_close(self, filename: str) -> str | None:
        target = os.path.splitext(filename)[0] + self.new_extension
        os.replace(filename, target)
        _fsync_dir(os.path.dirname(target))
        return target


class MoveFileCallback(ArchiveCallback):
    """Moves a closed archive into ``destination_folder``."""

    def __init__(self, destination_folder: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if destination_folder is None:
            raise InvalidArgument("MoveFileCallback needs destination_folder=...")
        self.destination_folder = os.fspath(destination_folder)

    def on_close(self, filename: str) -> str | None:
        return move_file(filename, self.destination_folder)


class DeleteFileCallback(ArchiveCallback):
    """Deletes a closed archive (e.g. after an upload); later callbacks are not called."""

    def on_close(self, filename: str) -> str | None:
        os.unlink(filename)
        _fsync_dir(os.path.dirname(filename))
        return None


class CompressCallback(ArchiveCallback):
    """Compresses a closed archive to ``NAME.gz`` (``compression="gzip"``) or ``NAME.zst``.

    zstd needs the optional ``zstandard`` package (``pip install 'sqlstream[zstd]'``).
    Readers recognise compressed archives by their first bytes.
    """

    default_compression = "gzip"

    def __init__(self, compression: str | None = None, compress_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.compression = compression or self.default_compression
        if self.compression not in COMPRESSIONS:
            raise InvalidArgument(f"compression is one of {', '.join(COMPRESSIONS)}, not {self.compression!r}")
        if self.compression == "zstd":
            zstandard_module()  # fail at construction, not at the first roll
        self.compress_level = compress_level

    def on_close(self, filename: str) -> str | None:
        return compress_file(filename, self.compression, self.compress_level)


class GzipCallback(CompressCallback):
    """:class:`CompressCallback` with gzip (standard library)."""

    default_compression = "gzip"

    def __init__(self, compress_level: int | None = None, **kwargs: Any) -> None:
        kwargs.pop("compression", None)
        super().__init__(compression="gzip", compress_level=compress_level, **kwargs)


class ZstdCallback(CompressCallback):
    """:class:`CompressCallback` with zstd (the ``zstd`` extra)."""

    default_compression = "zstd"

    def __init__(self, compress_level: int | None = None, **kwargs: Any) -> None:
        kwargs.pop("compression", None)
        super().__init__(compression="zstd", compress_level=compress_level, **kwargs)


class UploadCallback(ArchiveCallback):
    """Uploads a closed archive to a storage driver as ``storage_prefix + file name``.

    ``storage`` is a :class:`~sqlstream.storage.StorageDriver` or a configuration dict
    for :func:`~sqlstream.storage.get_driver` (then a driver is opened per upload and
    closed after it). The upload is atomic (the object appears whole or not at all).
    Returns the local file, or None after deleting it with ``delete_after_upload=True``.
    """

    def __init__(
        self,
        storage: StorageDriver | Mapping[str, Any] | None = None,
        storage_prefix: str = "",
        delete_after_upload: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if storage is None:
            raise InvalidArgument("UploadCallback needs storage=<driver or config dict>")
        self.storage = storage
        self.storage_prefix = storage_prefix
        self.delete_after_upload = delete_after_upload
        self.uploaded: list[str] = []

    def on_close(self, filename: str) -> str | None:
        path = self.storage_prefix + os.path.basename(filename)
        if isinstance(self.storage, StorageDriver):
            upload_file(self.storage, path, filename)
        else:
            with get_driver(self.storage) as driver:
                upload_file(driver, path, filename)
        self.uploaded.append(path)
        if self.delete_after_upload:
            os.unlink(filename)
            _fsync_dir(os.path.dirname(filename))
            return None
        return filename


def check_compression(compression: str | None) -> None:
    """Refuse an unknown compression name, or zstd without its package, up front."""
    if compression is None:
        return
    if compression not in COMPRESSIONS:
        raise InvalidArgument(f"compression is one of {', '.join(COMPRESSIONS)} or None, not {compression!r}")
    if compression == "zstd":
        zstandard_module()


__all__ = [
    "ArchiveCallback",
    "CallbackList",
    "ChangeExtensionCallback",
    "MoveFileCallback",
    "DeleteFileCallback",
    "CompressCallback",
    "GzipCallback",
    "ZstdCallback",
    "UploadCallback",
    "compress_file",
    "move_file",
]
