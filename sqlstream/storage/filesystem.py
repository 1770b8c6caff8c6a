"""The filesystem storage driver: objects are files under a root directory.

Writes are atomic: data goes to a hidden temporary file in the target's directory, is
fsynced, and replaces the target with a rename; the directory is fsynced so the rename
survives a crash.

Nothing outside the root is ever read, written, moved or deleted, even while another
process changes the tree: paths are checked syntactically (no ``..``, absolute paths...)
and then resolved one component at a time, ``openat``-style. Each directory is opened
relative to the previous one's descriptor with ``O_DIRECTORY | O_NOFOLLOW``, and the last
component is opened, renamed or unlinked relative to its directory's descriptor, never
through a path string. A symbolic link anywhere in an object path is refused with
``InvalidObjectPath`` (the driver never creates links, so one is someone else's doing);
``delete_object`` of a link removes the link itself. A directory swapped for a link
after it was opened cannot redirect anything: the driver holds the real directory.
(A directory *moved* out of the root by someone who can write both places takes the
files written into it along; that is beyond what any path check can prevent.) This
needs POSIX ``openat``/``renameat``/``unlinkat`` (Linux, macOS, the BSDs). Files that are
not regular (FIFOs, devices) are not objects: reads give None and never block.

Permissions: objects are created with mode ``0o600`` (the ``mode`` option changes it;
the umask still applies) and the directories the driver creates with the matching
search bits (``0o700`` by default), so exported archives are no more readable than the
sqlstream database they came from, which is also ``0o600``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from ..errors import InvalidArgument, InvalidObjectPath, ObjectNotFound, ObjectPathConflict, StorageError
from . import CHUNK_SIZE, Chunk, Data, ObjectInfo, StorageDriver, check_path, chunk_spec, iter_data

log = logging.getLogger("sqlstream.storage")

_TMP_PREFIX = ".sqlstream-tmp-"
DEFAULT_MODE = 0o600
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the tree must not block; for regular files it is a no-op.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC


def _fsync_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _is_link_error(exc: OSError) -> bool:
    # O_NOFOLLOW on a link gives ELOOP (Linux, BSD); some systems say EMLINK or EFTYPE.
    return exc.errno in (errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", errno.ELOOP))


def _check_mode(mode: object) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise InvalidArgument(
            f"the filesystem driver's 'mode' is a permission int from 0 to 0o777, not {mode!r}",
            hint="e.g. 0o600 (the default: owner only) or 0o640",
        )
    if not mode & 0o600 == 0o600:
        raise InvalidArgument(f"the filesystem driver's 'mode' {mode:#o} must let the owner read and write")
    return mode


class _FileIterator:
    """Yields an open file's bytes in pieces and closes it at the end (or on close())."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh: IO[bytes] | None = fh

    def __iter__(self) -> _FileIterator:
        return self

    def __next__(self) -> bytes:
        if self._fh is None:
            raise StopIteration
        piece = self._fh.read(CHUNK_SIZE)
        if not piece:
            self.close()
            raise StopIteration
        return piece

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def __del__(self) -> None:
        self.close()


class _Dir:
    """An open directory of the tree: its descriptor and its object path (for messages)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd, self.path = fd, path

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> _Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FilesystemDriver(StorageDriver):
    """Objects as files under ``root`` (created if missing).

    ``{"driver": "filesystem", "root": DIR, "mode": 0o600}``: ``mode`` is the permission of
    new objects (default ``0o600``, owner only); directories get the matching search bits.
    See the module docstring for how paths are resolved safely.
    """

    name = "filesystem"
    OPTIONS = frozenset({"root", "mode"})

    def __init__(self, conf: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(conf, **options)
        root = self.conf.get("root")
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise InvalidArgument("the filesystem driver needs 'root': the directory that holds the objects")
        self.mode = _check_mode(self.conf.get("mode", DEFAULT_MODE))
        # Every read or write bit gets its search bit: 0o600 -> 0o700, 0o640 -> 0o750.
        self.dir_mode = self.mode | ((self.mode & 0o444) >> 2)
        try:
            os.makedirs(root, mode=self.dir_mode, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the storage root {os.fspath(root)!r}: {exc.strerror}") from exc
        self.root = os.path.realpath(os.fspath(root))

    def describe(self, path: str) -> str:
        return os.path.join(self.root, path)

    # ----------------------------------------------------------------- safe resolution

    def _error(self, exc: OSError, path: str, what: str) -> StorageError:
        """The StorageError for an OSError met while working on object ``path``."""
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidObjectPath(f"object path {path!r} is too long for the filesystem at {self.root}")
        if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
            return StorageError(f"cannot {what} {self.describe(path)}: {exc.strerror}", hint="free disk space")
        return StorageError(f"cannot {what} {self.describe(path)}: {exc.strerror}")

    def _open_dir(self, parts: Sequence[str], path: str, *, create: bool) -> _Dir | None:
        """Open the directory ``parts`` under the root without following any link.

        ``create`` makes missing directories (mode ``dir_mode``); otherwise a missing one
        gives None. A component that is a link raises ``InvalidObjectPath``; one that is
        an object (a file) raises ``ObjectPathConflict`` when creating, else gives None.
        """
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise StorageError(f"cannot open the storage root {self.root}: {exc.strerror}") from exc
        done: list[str] = []
        try:
            for part in parts:
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    with contextlib.suppress(FileExistsError):  # a concurrent writer made it
                        os.mkdir(part, self.dir_mode, dir_fd=fd)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = next_fd
                done.append(part)
        except OSError as exc:
            part = parts[len(done)]
            here = "/".join([*done, part])
            is_link = False
            if exc.errno == errno.ENOTDIR or _is_link_error(exc):
                # Linux says ENOTDIR for a link opened with O_DIRECTORY | O_NOFOLLOW: look.
                with contextlib.suppress(OSError):
                    is_link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
            os.close(fd)
            if is_link or _is_link_error(exc):
                raise InvalidObjectPath(
                    f"object path {path!r}: {here!r} is a symbolic link; links are never followed",
                    hint="the storage root must hold only directories and objects",
                ) from None
            if exc.errno == errno.ENOTDIR:
                if not create:
                    return None
                raise ObjectPathConflict(
                    f"cannot store {path!r}: {here!r} is an object, not a directory",
                    hint="an object cannot also hold other objects; choose another path",
                ) from None
            raise self._error(exc, path, "open") from exc
        return _Dir(fd, "/".join(parts))

    def _split(self, path: str) -> tuple[list[str], str]:
        path = check_path(path)
        *parents, name = path.split("/")
        if name.startswith(_TMP_PREFIX):
            raise InvalidObjectPath(f"object names starting with {_TMP_PREFIX!r} are reserved for temporary files")
        return parents, name

    def _lstat(self, directory: _Dir, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _refuse_link(self, st: os.stat_result | None, path: str) -> None:
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise InvalidObjectPath(
                f"object path {path!r} is a symbolic link; links are never followed",
                hint="delete_object() removes the link itself",
                cli_hint="remove the link, or point the storage root elsewhere",
            )

    def _open_object(self, path: str) -> IO[bytes] | None:
        """Open the regular file at ``path`` for reading, or None if there is none."""
        parents, name = self._split(path)
        directory = self._open_dir(parents, path, create=False)
        if directory is None:
            return None
        with directory:
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=directory.fd)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            except OSError as exc:
                if _is_link_error(exc):
                    self._refuse_link(self._lstat(directory, name), path)
                raise self._error(exc, path, "read") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)  # a directory, FIFO, device...: not an object
                return None
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _write_atomically(self, path: str, pieces: Iterator[bytes], uuid: str | None) -> None:
        """Write ``pieces`` to a temporary file beside ``path`` and rename it into place."""
        parents, name = self._split(path)
        directory = self._open_dir(parents, path, create=True)
        assert directory is not None
        with directory:
            self._refuse_directory(directory, name, path)
            tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, self.mode,
                             dir_fd=directory.fd)
            except OSError as exc:
                raise self._error(exc, path, "write") from exc
            try:
                with os.fdopen(fd, "wb") as out:
                    for piece in pieces:
                        out.write(piece)
                    out.flush()
                    os.fsync(out.fileno())
                self._refuse_directory(directory, name, path)
                # rename() replaces a link at `name` by the new file; it never follows it.
                os.rename(tmp, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=directory.fd)
                if isinstance(exc, OSError):
                    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                        raise self._conflict(path) from None
                    raise self._error(exc, path, "write") from exc
                raise
            _fsync_fd(directory.fd)
        log.debug("filesystem put_object %s (upload %s)", self.describe(path), uuid)

    def _conflict(self, path: str) -> ObjectPathConflict:
        return ObjectPathConflict(
            f"cannot store object {path!r}: other objects are stored under {path + '/'!r}",
            hint="an object cannot also hold other objects; choose another path",
        )

    def _refuse_directory(self, directory: _Dir, name: str, path: str) -> None:
        """Make way for an object at ``name``: an empty directory goes, a non-empty one conflicts.

        An empty directory is what deleting a directory's last object leaves; the other
        drivers have no such remnant, so it does not block an object.
        """
        st = self._lstat(directory, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(name, dir_fd=directory.fd)
            except OSError:
                raise self._conflict(path) from None

    def _unlink(self, path: str) -> None:
        """Remove the object (or link) at ``path`` if it is there."""
        parents, name = self._split(path)
        directory = self._open_dir(parents, path, create=False)
        if directory is None:
            return
        with directory:
            st = self._lstat(directory, name)
            if st is None:
                return
            try:
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=directory.fd)  # only an empty "directory" goes, as in zuul
                else:
                    os.unlink(name, dir_fd=directory.fd)  # a link goes itself, never its target
            except (FileNotFoundError, NotADirectoryError):
                return  # deleted meanwhile
            except OSError as exc:
                raise self._error(exc, path, "delete") from exc
            _fsync_fd(directory.fd)

    # ----------------------------------------------------------------- the interface

    def list_objects(self, path: str) -> list[ObjectInfo]:
        prefix = check_path(path, allow_root=True)
        directory = self._open_dir(prefix.split("/") if prefix else [], prefix, create=False)
        if directory is None:
            return []
        out = []
        with directory:
            try:
                with os.scandir(directory.fd) as it:  # scandir works on a duplicate of the fd
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise self._error(exc, prefix, "list") from exc
            for entry in entries:
                if entry.name.startswith(_TMP_PREFIX):
                    continue
                st = self._lstat(directory, entry.name)
                if st is None:
                    continue
                out.append(ObjectInfo(
                    path=f"{prefix}/{entry.name}" if prefix else entry.name,
                    name=entry.name,
                    ctime=st.st_ctime,
                    isdir=stat.S_ISDIR(st.st_mode),
                ))
        return out

    def get_object_size(self, path: str) -> int | None:
        parents, name = self._split(path)
        directory = self._open_dir(parents, path, create=False)
        if directory is None:
            return None
        with directory:
            st = self._lstat(directory, name)
        self._refuse_link(st, path)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def put_object(self, path: str, data: Data, uuid: str | None = None) -> None:
        self._write_atomically(path, iter_data(data), uuid)

    def get_object(self, path: str) -> bytes | None:
        fh = self._open_object(path)
        if fh is None:
            return None
        with fh:
            return fh.read()

    def stream_object(self, path: str) -> tuple[int | None, Iterator[bytes] | None]:
        fh = self._open_object(path)
        if fh is None:
            return None, None
        # The open file keeps its content even if the object is replaced or deleted later.
        return os.fstat(fh.fileno()).st_size, _FileIterator(fh)

    def delete_object(self, path: str) -> None:
        self._unlink(path)

    def move_object(self, src_path: str, dst_path: str, uuid: str | None = None) -> None:
        src_parents, src_name = self._split(src_path)
        dst_parents, dst_name = self._split(dst_path)
        src_dir = self._open_dir(src_parents, src_path, create=False)
        st = None if src_dir is None else self._lstat(src_dir, src_name)
        try:
            self._refuse_link(st, src_path)
            if src_dir is None or st is None or not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(f"no object {src_path!r} to move", hint="check the path with list_objects()",
                                     cli_hint="check the object path")
            dst_dir = self._open_dir(dst_parents, dst_path, create=True)
            assert dst_dir is not None
            with dst_dir:
                self._refuse_directory(dst_dir, dst_name, dst_path)
                try:
                    os.rename(src_name, dst_name, src_dir_fd=src_dir.fd, dst_dir_fd=dst_dir.fd)
                except FileNotFoundError:
                    raise ObjectNotFound(f"no object {src_path!r} to move (deleted meanwhile)") from None
                except OSError as exc:
                    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                        raise self._conflict(dst_path) from None
                    raise self._error(exc, dst_path, "move an object to") from exc
                _fsync_fd(dst_dir.fd)
                _fsync_fd(src_dir.fd)
        finally:
            if src_dir is not None:
                src_dir.close()
        log.debug("filesystem move_object %s -> %s (upload %s)", src_path, self.describe(dst_path), uuid)

    def cat_objects(self, path: str, chunks: Sequence[Chunk], uuid: str | None = None) -> None:
        check_path(path)
        specs = [chunk_spec(c) for c in chunks]
        # Open every source first: a missing one fails before anything is written, and
        # an open file keeps its bytes even if a concurrent cat_objects deletes it.
        handles: list[IO[bytes]] = []
        try:
            for p, _, _ in specs:
                fh = self._open_object(p)
                if fh is None:
                    raise ObjectNotFound(f"cat_objects: no object {p!r}")
                handles.append(fh)

            def pieces() -> Iterator[bytes]:
                for fh, (p, size, md5) in zip(handles, specs):
                    got, digest = 0, hashlib.md5(usedforsecurity=False) if md5 else None
                    while True:
                        piece = fh.read(CHUNK_SIZE)
                        if not piece:
                            break
                        got += len(piece)
                        if digest is not None:
                            digest.update(piece)
                        yield piece
                    if size is not None and got != size:
                        raise StorageError(f"cat_objects: {p!r} has {got} bytes, not the expected {size}")
                    if digest is not None and digest.hexdigest() != md5:
                        raise StorageError(f"cat_objects: {p!r} does not match its md5 {md5}")

            self._write_atomically(path, pieces(), uuid)
        finally:
            for fh in handles:
                fh.close()
        for p in dict.fromkeys(p for p, _, _ in specs):
            if p != path:  # the target was one of its own sources: it is the result now
                self._unlink(p)  # gone already if a concurrent cat_objects of the same sources won
        log.debug("filesystem cat_objects %s from %d chunks (upload %s)", self.describe(path), len(specs), uuid)
