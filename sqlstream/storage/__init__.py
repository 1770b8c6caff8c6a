"""Object storage drivers: zuul-registry's ``StorageDriver`` interface and its drivers.

The interface is zuul-registry's, method for method, so code written against it runs
here: ``list_objects``, ``get_object_size``, ``put_object``, ``get_object``,
``stream_object``, ``delete_object``, ``move_object``, ``cat_objects``. Three drivers:

* ``filesystem`` (:class:`~sqlstream.storage.filesystem.FilesystemDriver`,
  ``{"driver": "filesystem", "root": DIR}``): atomic writes, no path escapes the root.
* ``sqlite`` (:class:`~sqlstream.storage.sqlite.SqliteDriver`,
  ``{"driver": "sqlite", "path": DB}``): objects are sealed byte streams inside a
  sqlstream database; ``cat_objects`` and ``move_object`` only re-link rows.
* ``s3`` (:class:`~sqlstream.storage.s3.S3Driver`, the ``s3`` extra,
  ``{"driver": "s3", "bucket": NAME, ...}``).

:func:`get_driver` builds a driver from such a dict; other packages add drivers through
the ``sqlstream.storage_drivers`` entry-point group (name -> driver class).

Object paths are ``/``-separated relative paths (``"archives/2024/a.events"``). Every
driver refuses the same unsafe paths with ``InvalidObjectPath``: empty, absolute, with
``.`` or ``..`` components, empty components, backslashes or NUL bytes, longer than
1024 bytes, or with a component longer than 255 bytes (UTF-8; most filesystems' limit).
An object cannot also be a "directory": ``put_object("a/b/c")`` while an object ``a/b``
exists, or ``put_object("a")`` while objects exist under ``a/``, raise
``ObjectPathConflict`` on the filesystem and sqlite drivers (S3 keys are flat, so the s3
driver allows both).

zuul-registry 1.3 passes an upload id as a third argument: ``put_object``,
``move_object`` and ``cat_objects`` accept it as ``uuid`` (optional) and name it in
their debug log lines (logger ``sqlstream.storage``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, ClassVar, Union

from ..errors import InvalidArgument, InvalidObjectPath, ObjectNotFound, StorageError
from ..plugins import entry_points, load_object

__all__ = [
    "ObjectInfo",
    "StorageDriver",
    "get_driver",
    "check_path",
    "ENTRY_POINT_GROUP",
    "BUILTIN_DRIVERS",
    "unknown_options",
]

ENTRY_POINT_GROUP = "sqlstream.storage_drivers"
BUILTIN_DRIVERS = {
    "filesystem": "sqlstream.storage.filesystem:FilesystemDriver",
    "sqlite": "sqlstream.storage.sqlite:SqliteDriver",
    "s3": "sqlstream.storage.s3:S3Driver",
}
CHUNK_SIZE = 1 << 20  # bytes per piece when streaming objects
MAX_PATH = 1024  # S3's key limit; the same everywhere keeps paths portable between drivers
MAX_NAME = 255  # bytes per component: NAME_MAX of ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units)

Data = Union[bytes, bytearray, memoryview, Iterable[bytes]]
"""What ``put_object`` stores: bytes, or an iterable (e.g. a generator) of bytes."""
Chunk = Union[str, Mapping[str, Any]]
"""A ``cat_objects`` source: a path, or zuul's dict ``{"path": ..., "size": ..., "md5": ...}``."""


@dataclass(frozen=True)
class ObjectInfo:
    """One entry of :meth:`StorageDriver.list_objects` (zuul's ``ObjectInfo``).

    ``path`` is the full object path, ``name`` its last component, ``ctime`` the
    creation (or last-modified) time in seconds since the epoch (None where the backend
    has none, e.g. S3 "directories"), ``isdir`` whether it is a prefix of other objects.
    """

    path: str
    name: str
    ctime: float | None
    isdir: bool


def check_path(path: object, *, allow_root: bool = False) -> str:
    """Return ``path`` normalised (no trailing ``/``) if it is a safe object path.

    Raises ``InvalidObjectPath`` for anything that could name something outside the
    store: absolute paths, ``.``/``..`` components, empty components, backslashes, NUL;
    and for text that is not valid Unicode (lone surrogates), which not every driver can store.
    ``allow_root`` admits ``""`` (the root, for ``list_objects``).
    """
    if not isinstance(path, str):
        raise InvalidObjectPath(f"an object path is a str, not {type(path).__name__}")
    if allow_root and path in ("", "/"):
        return ""
    if allow_root and path.endswith("/"):
        path = path[:-1]
    if not path:
        raise InvalidObjectPath("an object path cannot be empty")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # One rule for every driver: S3 keys and the sqlite driver's names are UTF-8 text.
        raise InvalidObjectPath(f"object path {path!r} is not valid Unicode (a lone surrogate)",
                                hint="object paths are UTF-8 text") from None
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InvalidObjectPath(f"object path is longer than {MAX_PATH} bytes: {path[:60]!r}...")
    if path.startswith("/"):
        raise InvalidObjectPath(f"object path {path!r} is absolute", hint="object paths are relative to the store's root")
    if "\\" in path or "\x00" in path:
        raise InvalidObjectPath(f"object path {path!r} contains a backslash or NUL byte")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidObjectPath(
                f"object path {path!r} has an empty, '.' or '..' component",
                hint="a path like 'dir/name' cannot point outside the store",
            )
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise InvalidObjectPath(
                f"object path component {part[:40]!r}... is longer than {MAX_NAME} bytes (UTF-8)",
                hint=f"split long names with '/' or shorten them: every driver keeps names to {MAX_NAME} bytes",
            )
    return path


def chunk_spec(chunk: Chunk) -> tuple[str, int | None, str | None]:
    """``(path, expected size or None, expected md5 hex or None)`` of a ``cat_objects`` source."""
    if isinstance(chunk, str):
        return check_path(chunk), None, None
    if isinstance(chunk, Mapping) and "path" in chunk:
        size, md5 = chunk.get("size"), chunk.get("md5")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise InvalidArgument(f"chunk size must be an int >= 0, not {size!r}")
        if md5 is not None and not isinstance(md5, str):
            raise InvalidArgument(f"chunk md5 must be a hex str, not {md5!r}")
        return check_path(chunk["path"]), size, md5.lower() if md5 else None
    raise InvalidArgument(f"a chunk is an object path or a dict with a 'path', not {chunk!r}")


def iter_data(data: Data) -> Iterator[bytes]:
    """The pieces of ``put_object``'s ``data`` as bytes (bytes-like values are one piece)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    if isinstance(data, str):
        raise InvalidArgument("put_object stores bytes; encode text first (e.g. text.encode())")
    for piece in data:
        if isinstance(piece, (bytes, bytearray, memoryview)):
            if len(piece):
                yield bytes(piece)
        else:
            raise InvalidArgument(f"put_object's iterable must yield bytes, not {type(piece).__name__}")


def iter_file(fh: IO[bytes], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Read ``fh`` in pieces until its end."""
    while True:
        piece = fh.read(chunk_size)
        if not piece:
            return
        yield piece


class StorageDriver(ABC):
    """Base class of storage drivers (zuul-registry's interface, with contracts).

    Drivers are built from one configuration dict (``Driver(conf)``; keyword arguments
    are merged into it). A driver may hold connections: use it as a context manager or
    call :meth:`close`. All paths go through :func:`check_path`. Every failure is a
    ``StorageError`` (``ObjectNotFound``, ``InvalidObjectPath``...), never a backend
    exception.
    """

    name = "abstract"
    #: The configuration keys the driver reads (besides ``driver``); None: not declared,
    #: any key is passed on. A config file naming another key is refused when it is loaded
    #: (:func:`unknown_options`), so a misspelt option is not silently ignored.
    OPTIONS: ClassVar[frozenset[str] | None] = None

    def __init__(self, conf: Mapping[str, Any] | None = None, **options: Any) -> None:
        self.conf: dict[str, Any] = {**(conf or {}), **options}

    @abstractmethod
    def list_objects(self, path: str) -> list[ObjectInfo]:
        """The objects and "directories" directly under ``path``, one level deep, sorted by name.

        ``""`` lists the root. A path that holds nothing gives ``[]``.
        """

    @abstractmethod
    def get_object_size(self, path: str) -> int | None:
        """The size in bytes of the object at ``path``, or None if there is none."""

    @abstractmethod
    def put_object(self, path: str, data: Data, uuid: str | None = None) -> None:
        """Store ``data`` (bytes, or an iterable of bytes) at ``path``, replacing any object there.

        Atomic: readers see the old object or the whole new one, never a part; if the
        iterable raises, nothing changes. ``ObjectPathConflict`` if an ancestor of
        ``path`` is an object or objects exist under ``path/`` (not on s3). ``uuid`` is
        zuul-registry 1.3's upload id, only logged.
        """

    @abstractmethod
    def get_object(self, path: str) -> bytes | None:
        """The whole object at ``path``, or None if there is none."""

    @abstractmethod
    def stream_object(self, path: str) -> tuple[int | None, Iterator[bytes] | None]:
        """``(size, iterator of bytes)`` for the object at ``path``; ``(None, None)`` if absent.

        The iterator yields the object as it was when this was called.
        """

    @abstractmethod
    def delete_object(self, path: str) -> None:
        """Delete the object at ``path``. Deleting what does not exist is not an error."""

    @abstractmethod
    def move_object(self, src_path: str, dst_path: str, uuid: str | None = None) -> None:
        """Move an object to ``dst_path`` (replacing what is there). ``ObjectNotFound`` if absent.

        ``ObjectPathConflict`` as for :meth:`put_object`; ``uuid`` is only logged.
        """

    @abstractmethod
    def cat_objects(self, path: str, chunks: Sequence[Chunk], uuid: str | None = None) -> None:
        """Concatenate ``chunks`` (paths, or zuul's ``{"path", "size", "md5"}`` dicts) into ``path``.

        The new object replaces any at ``path`` atomically and the sources are deleted
        afterwards. A missing source raises ``ObjectNotFound`` and changes nothing; a
        given ``size`` or ``md5`` that does not match raises ``StorageError``;
        ``ObjectPathConflict`` as for :meth:`put_object`. ``uuid`` is only logged.
        """

    def close(self) -> None:
        """Release connections the driver holds. Idempotent."""

    def __enter__(self) -> StorageDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, path: str) -> str:
        """A human-readable location for an object, e.g. for log lines and export results."""
        return f"{self.name}:{path}"


def load_driver_class(name: str) -> type[StorageDriver]:
    if name in BUILTIN_DRIVERS:
        cls = load_object(BUILTIN_DRIVERS[name])
    else:
        found = [ep for ep in entry_points(ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            known = sorted(set(BUILTIN_DRIVERS) | {ep.name for ep in entry_points(ENTRY_POINT_GROUP)})
            raise InvalidArgument(
                f"no storage driver named {name!r} (known: {', '.join(known)})",
                hint=f"install the package that provides it (entry-point group {ENTRY_POINT_GROUP!r})",
            )
        try:
            cls = found[0].load()
        except Exception as exc:
            raise StorageError(f"storage driver {name!r} failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, StorageDriver)):
        raise InvalidArgument(f"storage driver {name!r} is not a StorageDriver subclass: {cls!r}")
    return cls


def unknown_options(cls: type[StorageDriver], config: Mapping[str, Any]) -> list[str]:
    """The keys of a storage configuration ``{"driver": NAME, ...}`` that driver class ``cls``
    does not read (none when it does not declare :attr:`StorageDriver.OPTIONS`), sorted."""
    if cls.OPTIONS is None:
        return []
    return sorted(str(k) for k in config if k != "driver" and k not in cls.OPTIONS)


def get_driver(config: Mapping[str, Any] | StorageDriver) -> StorageDriver:
    """Build the driver a configuration dict names: ``{"driver": NAME, ...options}``.

    Built-in names: ``filesystem`` (``root``), ``sqlite`` (``path``), ``s3`` (``bucket``,
    ``prefix``, ``endpoint_url``, ``region_name``, credentials). Other names are looked
    up in the ``sqlstream.storage_drivers`` entry-point group. A driver instance is
    returned as it is.
    """
    if isinstance(config, StorageDriver):
        return config
    if not isinstance(config, Mapping):
        raise InvalidArgument(f"a storage configuration is a dict with a 'driver' key, not {type(config).__name__}")
    name = config.get("driver")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(
            "the storage configuration has no 'driver'", hint='e.g. {"driver": "filesystem", "root": "/srv/archives"}'
        )
    cls = load_driver_class(name)
    return cls({k: v for k, v in config.items() if k != "driver"})


def upload_file(driver: StorageDriver, path: str, filename: str | os.PathLike[str]) -> None:
    """Store a local file as an object, streaming it in pieces."""
    with open(filename, "rb") as fh:
        driver.put_object(path, iter_file(fh))


def download_file(driver: StorageDriver, path: str, filename: str | os.PathLike[str]) -> int:
    """Write an object to a local file; return its size. ``ObjectNotFound`` if absent.

    A new file is created with mode 0600 (owner only), like a sqlstream database.
    """
    size, pieces = driver.stream_object(path)
    if pieces is None:
        raise ObjectNotFound(f"no object {driver.describe(path)}")
    total = 0
    fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    with open(fd, "wb") as out:
        for piece in pieces:
            out.write(piece)
            total += len(piece)
    return total
