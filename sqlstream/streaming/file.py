"""The ``file`` streaming service: Cosmos SDK's ADR-038 file streamer over sqlstream commits.

Per block (commit) that touches an exposed stream it writes ``[prefix-]block-{height}-data``
and, with ``output-metadata``, ``[prefix-]block-{height}-meta`` into ``write_dir``. Both
formats are in docs/format.md. Each file is written under a temporary name and renamed
into place, so a reader never sees a partial file; with ``fsync`` the file and then the
directory are fsynced before the block counts as done. The bytes depend only on the
block's stored records, so a block redone after a crash is byte-identical.

Reading them back: :func:`decode_data` / :func:`decode_meta` (bytes in, values out) and
:func:`read_block` / :func:`read_block_meta` (by directory, height and prefix); the CLI's
``sqlstream block cat`` prints them as JSON lines.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..archive.export import dir_mode_for, make_dirs
from ..errors import CorruptBlockFile, InvalidArgument
from . import protobuf
from .services import Option, Output, Service, output_directory
from .store import Block

__all__ = ["FileService", "encode_data", "encode_meta", "file_name", "prefix_problem", "KVPair", "BlockMeta",
           "decode_data", "decode_meta", "read_block", "read_block_meta"]

log = logging.getLogger("sqlstream.streaming")


def file_name(prefix: str, height: int, kind: str) -> str:
    """``[prefix-]block-{height}-{kind}`` (kind ``data`` or ``meta``)."""
    return f"{prefix + '-' if prefix else ''}block-{height}-{kind}"


def encode_data(block: Block) -> bytes:
    """The data file: 8-byte big-endian length, then (uvarint length, StoreKVPair) per record,
    grouped by stream name in ascending order, write order within a stream."""
    body = bytearray()
    for name in sorted(block.streams):
        for record in block.streams[name]:
            key = record.key.encode("utf-8", "surrogateescape") if record.key is not None else b""
            message = protobuf.store_kv_pair(name, key, record.data)
            body += protobuf.uvarint(len(message))
            body += message
    return protobuf.frame(bytes(body))


def encode_meta(block: Block) -> bytes:
    """The meta file: 8-byte big-endian length, then one BlockMetadata message."""
    ranges = [(name, rs[0].offset, rs[-1].offset) for name, rs in sorted(block.streams.items()) if rs]
    return protobuf.frame(protobuf.block_metadata(block.height, block.commit_time_us, ranges))


@dataclass(frozen=True)
class KVPair:
    """One ``StoreKVPair`` of a data file: the stream (store key) and the record's key and
    stored bytes (text and JSON as UTF-8; no key: ``b""``). ``delete`` is Cosmos' flag,
    never set by sqlstream."""

    store_key: str
    key: bytes
    value: bytes
    delete: bool = False


@dataclass(frozen=True)
class BlockMeta:
    """A meta file: the block's height, commit time (µs since the epoch) and, per stream,
    the first and last offset (inclusive) of its records in the block."""

    height: int
    commit_time_us: int
    streams: tuple[tuple[str, int, int], ...]


def decode_data(data: bytes, name: str = "<data>") -> list[KVPair]:
    """The pairs of a data file's bytes, in file order (the inverse of :func:`encode_data`).

    Raises :class:`~sqlstream.errors.CorruptBlockFile` (naming ``name``) when the bytes are
    not a data file: a wrong length, a cut or malformed message.
    """
    try:
        body = protobuf.unframe(data)
        return [KVPair(*protobuf.parse_store_kv_pair(m)) for m in protobuf.split_delimited(body)]
    except ValueError as exc:
        raise CorruptBlockFile(f"{name}: not a block data file: {exc}",
                               hint="block data files are written by the file streaming service") from None


def decode_meta(data: bytes, name: str = "<meta>") -> BlockMeta:
    """A meta file's bytes as :class:`BlockMeta` (the inverse of :func:`encode_meta`);
    :class:`~sqlstream.errors.CorruptBlockFile` when they are not one."""
    try:
        height, commit_time, streams = protobuf.parse_block_metadata(protobuf.unframe(data))
    except ValueError as exc:
        raise CorruptBlockFile(f"{name}: not a block meta file: {exc}",
                               hint="block meta files are written by the file streaming service") from None
    return BlockMeta(height, commit_time, tuple(streams))


def _read(write_dir: str | os.PathLike[str], height: int, prefix: str, kind: str) -> tuple[str, bytes]:
    if isinstance(height, bool) or not isinstance(height, int) or height < 0:
        raise InvalidArgument(f"height is a block height (an int >= 0), not {height!r}")
    problem = prefix_problem(prefix)
    if problem is not None:
        raise InvalidArgument(f"prefix {problem}")
    if not isinstance(write_dir, (str, os.PathLike)):
        raise InvalidArgument(f"write_dir is a path, not {type(write_dir).__name__}")
    path = os.path.join(os.fspath(write_dir), file_name(prefix, height, kind))
    return path, read_file(path)


def read_file(path: str) -> bytes:
    """The bytes of the block file ``path``; InvalidArgument (with the OS's reason) if unreadable."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (OSError, ValueError) as exc:  # ValueError: NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidArgument(f"cannot read block file {path!r}: {reason}"[:400],
                              hint="a block that touched no exposed stream has no file") from None


def read_block(write_dir: str | os.PathLike[str], height: int, prefix: str = "") -> list[KVPair]:
    """The pairs of block ``height`` that a file service with ``write_dir`` and ``prefix`` wrote.

    Reads the whole file (a block is one commit). Raises ``InvalidArgument`` when there is
    no such file (a block that touched no exposed stream has none) and
    ``CorruptBlockFile`` when it is damaged.
    """
    path, data = _read(write_dir, height, prefix, "data")
    return decode_data(data, path)


def read_block_meta(write_dir: str | os.PathLike[str], height: int, prefix: str = "") -> BlockMeta:
    """The meta file of block ``height`` (written with ``output-metadata``); errors as :func:`read_block`."""
    path, data = _read(write_dir, height, prefix, "meta")
    return decode_meta(data, path)


def prefix_problem(prefix: object) -> str | None:
    """What makes ``prefix`` unusable in a file name (None: usable).

    A prefix is part of a file name inside ``write_dir``; a path separator in it could place
    files anywhere (``/../../etc/x``), so separators are refused, as are NUL and a leading
    ``.`` (the working files' names).
    """
    if not isinstance(prefix, str):
        return f"must be a string, not {prefix!r}"
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(sep in prefix for sep in seps) or "\x00" in prefix:
        return f"must be a file name part without '/', '\\' or NUL, not {prefix!r}"
    if prefix.startswith("."):
        return f"must not start with '.', not {prefix!r} (names starting with '.' are the working files)"
    if len(prefix.encode("utf-8", "surrogatepass")) > 200:
        return "is too long (at most 200 bytes: it is part of a file name)"
    return None


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileService(Service):
    """Writes each block's records as Cosmos ``StoreKVPair`` files (see the module docstring)."""

    KIND: ClassVar[str] = "file"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "write_dir": Option("path", required=True, help='the directory for the block files, e.g. write_dir = "out"'),
        "prefix": Option("str", "", check=prefix_problem,
                         help='a plain file name part, e.g. prefix = "app" (app-block-12-data)'),
        "output-metadata": Option("bool", True),
        "stop-node-on-error": Option("bool", True),
        "fsync": Option("bool", False),
    }

    def __init__(self, name: str, keys: Sequence[str], options: Mapping[str, Any]) -> None:
        super().__init__(name, keys, options)
        self.write_dir: str = str(self.options["write_dir"])
        self.prefix: str = str(self.options.get("prefix") or "")
        problem = prefix_problem(self.prefix)
        if problem is not None:
            raise InvalidArgument(f"streamer {name!r}: prefix {problem}", hint=self.OPTIONS["prefix"].help)
        self.output_metadata = bool(self.options.get("output-metadata", True))
        self.fsync = bool(self.options.get("fsync", False))

    @classmethod
    def outputs(cls, name: str, options: Mapping[str, Any]) -> list[Output]:
        """``write_dir``, for the names of the prefix: distinct prefixes never share a name.

        ``[P-]block-H-KIND`` read from the right gives back KIND, the digits H and so P,
        and a temporary name is that name between ``.`` and ``.HEX8.tmp``; so two prefixes
        that differ give disjoint names, final or temporary.
        """
        prefix = str(options.get("prefix") or "")
        return [Output(output_directory(str(options["write_dir"])), f"block files with prefix {prefix!r}")]

    def temp_pattern(self) -> re.Pattern[str]:
        """The names of this service's temporary files: ``.[prefix-]block-H-KIND.HEX8.tmp``."""
        head = re.escape(self.prefix + "-") if self.prefix else ""
        return re.compile(rf"\.{head}block-[0-9]+-(?:data|meta)\.[0-9a-f]{{8}}\.tmp")

    def start(self) -> None:
        """Delete temporary files a killed run of this service left in ``write_dir``.

        Only regular files named in this service's own pattern (its prefix) are touched:
        another service's files, folders or links under such names, or anything else in
        the directory, stay. Assumes one running
        ``serve`` per service (the durable cursor enforces that too).
        """
        try:
            names = os.listdir(self.write_dir)
        except OSError:
            return  # no directory yet, or not one: writing the first block reports it
        pattern = self.temp_pattern()
        for name in names:
            if pattern.fullmatch(name):
                path = os.path.join(self.write_dir, name)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        # Not a file this service wrote (it writes regular files only): a
                        # folder or link someone made under a look-alike name stays.
                        log.warning("streaming service %r: leaving %s, which is not a regular file", self.name,
                                    path)
                        continue
                    log.info("streaming service %r: removing %s, left by an interrupted run", self.name, name)
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def write_block(self, block: Block) -> None:
        """Write the block's data (and meta) file atomically; fsync when configured.

        Raises OSError when the directory cannot be created or written.
        """
        make_dirs(self.write_dir, dir_mode_for(self.file_mode))
        self._write(file_name(self.prefix, block.height, "data"), encode_data(block))
        if self.output_metadata:
            self._write(file_name(self.prefix, block.height, "meta"), encode_meta(block))
        if self.fsync:
            _fsync_dir(self.write_dir)

    def _write(self, name: str, content: bytes) -> None:
        final = os.path.join(self.write_dir, name)
        tmp = os.path.join(self.write_dir, f".{name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
