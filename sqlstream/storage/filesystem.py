"""The filesystem storage driver: objects are files under a root directory.

Writes are atomic: data goes to a hidden temporary file in the target's directory, is
fsynced, and replaces the target with ``os.replace``; the directory is fsynced so the
rename survives a crash. Every path is checked twice: syntactically (no ``..``,
absolute paths...) and after resolving symlinks, so nothing outside the root is read,
written or deleted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from ..errors import InvalidArgument, InvalidObjectPath, ObjectNotFound, StorageError
from . import CHUNK_SIZE, Chunk, Data, ObjectInfo, StorageDriver, check_path, chunk_spec, iter_data

_TMP_PREFIX = ".sqlstream-tmp-"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


class FilesystemDriver(StorageDriver):
    """Objects as files under ``root`` (created if missing): ``{"driver": "filesystem", "root": DIR}``."""

    name = "filesystem"

    def __init__(self, conf: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(conf, **options)
        root = self.conf.get("root")
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise InvalidArgument("the filesystem driver needs 'root': the directory that holds the objects")
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(os.fspath(root))

    def describe(self, path: str) -> str:
        return os.path.join(self.root, path)

    def _local(self, path: str, *, allow_root: bool = False) -> str:
        """The file for an object path, refusing any that resolves outside the root."""
        path = check_path(path, allow_root=allow_root)
        full = os.path.realpath(os.path.join(self.root, path))
        if full != self.root and os.path.commonpath([self.root, full]) != self.root:
            raise InvalidObjectPath(f"object path {path!r} resolves outside the storage root {self.root}")
        if os.path.basename(full).startswith(_TMP_PREFIX):
            raise InvalidObjectPath(f"object names starting with {_TMP_PREFIX!r} are reserved for temporary files")
        return full

    def _write_atomically(self, target: str, pieces: Iterator[bytes]) -> None:
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            with open(tmp, "xb") as out:
                for piece in pieces:
                    out.write(piece)
                out.flush()
                os.fsync(out.fileno())
            if os.path.isdir(target):
                raise StorageError(f"cannot replace directory {target} with an object")
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)

    def list_objects(self, path: str) -> list[ObjectInfo]:
        prefix = check_path(path, allow_root=True)
        local = self._local(prefix, allow_root=True)
        try:
            entries = sorted(os.scandir(local), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for entry in entries:
            if entry.name.startswith(_TMP_PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append(ObjectInfo(
                path=f"{prefix}/{entry.name}" if prefix else entry.name,
                name=entry.name,
                ctime=st.st_ctime,
                isdir=entry.is_dir(follow_symlinks=False),
            ))
        return out

    def get_object_size(self, path: str) -> int | None:
        local = self._local(path)
        try:
            st = os.stat(local)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if os.path.isdir(local) else st.st_size

    def put_object(self, path: str, data: Data) -> None:
        self._write_atomically(self._local(path), iter_data(data))

    def get_object(self, path: str) -> bytes | None:
        local = self._local(path)
        try:
            with open(local, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def stream_object(self, path: str) -> tuple[int | None, Iterator[bytes] | None]:
        local = self._local(path)
        try:
            fh = open(local, "rb")  # noqa: SIM115 - closed by the iterator
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None, None
        # The open file keeps its content even if the object is replaced or deleted later.
        return os.fstat(fh.fileno()).st_size, _FileIterator(fh)

    def delete_object(self, path: str) -> None:
        local = self._local(path)
        try:
            if os.path.isdir(local) and not os.path.islink(local):
                os.rmdir(local)  # only an empty "directory" goes, as in zuul
            else:
                os.unlink(local)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {local}: {exc.strerror}") from exc
        _fsync_dir(os.path.dirname(local))

    def move_object(self, src_path: str, dst_path: str) -> None:
        src, dst = self._local(src_path), self._local(dst_path)
        if not os.path.isfile(src):
            raise ObjectNotFound(f"no object {src_path!r} to move", hint="check the path with list_objects()")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
        _fsync_dir(os.path.dirname(dst))
        if os.path.dirname(src) != os.path.dirname(dst):
            _fsync_dir(os.path.dirname(src))

    def cat_objects(self, path: str, chunks: Sequence[Chunk]) -> None:
        target = self._local(path)
        specs = [chunk_spec(c) for c in chunks]
        sources = [(self._local(p), p, size, md5) for p, size, md5 in specs]
        # Open every source first: a missing one fails before anything is written, and
        # an open file keeps its bytes even if a concurrent cat_objects deletes it.
        handles: list[IO[bytes]] = []
        try:
            for local, p, _, _ in sources:
                try:
                    handles.append(open(local, "rb"))  # noqa: SIM115
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    raise ObjectNotFound(f"cat_objects: no object {p!r}") from None

            def pieces() -> Iterator[bytes]:
                for fh, (_, p, size, md5) in zip(handles, sources):
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

            self._write_atomically(target, pieces())
        finally:
            for fh in handles:
                fh.close()
        for local, _, _, _ in sources:
            if local == target:
                continue  # the target was one of its own sources: it is the result now
            try:
                os.unlink(local)
            except FileNotFoundError:
                pass  # a concurrent cat_objects of the same sources got there first
        for directory in {os.path.dirname(s[0]) for s in sources}:
            _fsync_dir(directory)
