"""Archive files: shoebox's record format (version 1) and its checksummed version 2.

An archive is a plain sequence of records with no file header; ``docs/format.md``
specifies every byte. Version 1 is OpenStack shoebox's layout exactly, so files written
with ``version=1`` are read by an unmodified shoebox; version 2 keeps the same preamble
and adds flags and CRC-32s, so corruption and torn tails are told apart. Readers accept
both, and read gzip- or zstd-compressed files transparently.

Reading one record has four distinct outcomes besides success, each its own exception:
:class:`EndOfArchive` (clean end of file), :class:`TruncatedRecord` (the file ends inside
a record), :class:`BadMagic` (a record does not start with the magic number) and
:class:`ChecksumMismatch` (a version-2 record's bytes were damaged).

Shoebox's classes keep their names and keyword construction: :class:`ArchiveWriter`,
:class:`ArchiveReader` here; :class:`WritingRollManager`, :class:`ReadingRollManager` and
the roll checkers in :mod:`sqlstream.archive.rolling`; :class:`ArchiveCallback`,
:class:`CallbackList` and the built-in callbacks in :mod:`sqlstream.archive.callbacks`.
All are importable from :mod:`sqlstream.archive`.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from typing import IO, Any

from ..validation import MAX_OFFSET, check_count
from ..errors import (
    ArchiveError,
    BadMagic,
    ChecksumMismatch,
    CorruptArchive,
    EndOfArchive,
    InvalidArgument,
    InvalidValue,
    NoMoreFiles,
    PayloadTooLarge,
    RecordTooLarge,
    TruncatedRecord,
    UnsupportedVersion,
)

__all__ = [
    "MAGIC",
    "FLAG_ZLIB",
    "DEFAULT_MAX_RECORD_BYTES",
    "pack",
    "unpack",
    "open_archive",
    "ArchiveWriter",
    "ArchiveReader",
    "fsync_directory",
    "working_name",
    "is_working_name",
    "zstandard_module",
]

# The logger keeps its name from before the archive package, so logging configuration
# and log lines users rely on do not change.
log = logging.getLogger("sqlstream.archive")

MAGIC = 0x69867884
"""The int32 that starts every record (bytes ``84 78 86 69`` on disk: "EVNT" in decimal)."""

FLAG_ZLIB = 0x1
"""Version-2 flag: the payload is zlib-compressed (RFC 1950)."""

_KNOWN_FLAGS = FLAG_ZLIB
_INT32_MAX = 2**31 - 1

_PREAMBLE = struct.Struct("<ih")  # magic, version
_HEADER_V1 = struct.Struct("<iii")  # metadata block length, raw block length, 0 (end of header)
_HEADER_V2 = struct.Struct("<Iii")  # flags, metadata block length, raw block length
_CRC = struct.Struct("<I")
_INT = struct.Struct("<i")

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WORKING_PREFIX = "."
WORKING_SUFFIX = ".part"

# Reads of a length taken from a (possibly damaged) file are done in pieces, so a huge
# bogus length costs a short read at end of file rather than a huge allocation.
_READ_PIECE = 1 << 20

DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024
"""Readers refuse larger payloads unless told otherwise (the database's default too).

A compressed file (gzip, zstd, or a record with :data:`FLAG_ZLIB`) can declare or expand
to gigabytes from a few kilobytes, so every read is bounded before anything is
allocated or decompressed: a record over the limit raises :class:`RecordTooLarge`.
"""
# Metadata is small (stream, offset, key, headers...); allow it at least this much even
# when the payload limit is tiny.
_MIN_METADATA_LIMIT = 1 << 20


# --------------------------------------------------------------------------- one record


def _encode_text(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidValue(f"archive metadata maps str to str; {what} is a {type(value).__name__}: {value!r}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"archive metadata {what} is not valid Unicode: {exc}") from exc


def _metadata_block(metadata: Mapping[str, str]) -> bytes:
    if not isinstance(metadata, Mapping):
        raise InvalidValue(f"archive metadata must be a dict of str to str, not {type(metadata).__name__}")
    strings: list[bytes] = []
    for key, value in metadata.items():
        strings.append(_encode_text(key, "a key"))
        strings.append(_encode_text(value, f"the value of {key!r}"))
    # Shoebox writes 4 x the number of pairs here (its comment says "number of strings",
    # its code says len(metadata) * 4, and its reader expects that); we write the same.
    head = _INT.pack(len(metadata) * 4) + struct.pack(f"<{len(strings)}i", *(len(s) for s in strings))
    return head + b"".join(strings)


def pack(
    metadata: Mapping[str, str],
    payload: bytes | bytearray | memoryview | str,
    version: int = 2,
    *,
    compress: bool = False,
) -> bytes:
    """Encode one record: ``metadata`` (str -> str) and ``payload`` (bytes; str as UTF-8).

    ``version=1`` gives exactly the bytes shoebox writes; ``version=2`` (the default) adds
    flags and CRC-32s. ``compress=True`` (version 2 only) stores the payload
    zlib-compressed and sets :data:`FLAG_ZLIB`. Raises ``InvalidValue`` for metadata that
    is not str -> str and ``PayloadTooLarge`` for blocks over 2 GiB.
    """
    if isinstance(payload, str):
        payload = _encode_text(payload, "the payload")
    elif isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    elif not isinstance(payload, bytes):
        raise InvalidValue(f"an archive payload is bytes or str, not {type(payload).__name__}")
    if version not in (1, 2):
        raise InvalidArgument(f"archive format version is 1 or 2, not {version!r}")
    if compress and version == 1:
        raise InvalidArgument("version 1 has no flags, so it cannot mark a compressed payload", hint="use version=2")
    flags = 0
    if compress:
        payload = zlib.compress(payload)
        flags |= FLAG_ZLIB
    meta = _metadata_block(metadata)
    raw = _INT.pack(len(payload)) + payload if len(payload) <= _INT32_MAX - 4 else b""
    if not raw or len(meta) > _INT32_MAX:
        raise PayloadTooLarge("an archive record's metadata and payload must each be under 2 GiB")
    if version == 1:
        return _PREAMBLE.pack(MAGIC, 1) + _HEADER_V1.pack(len(meta), len(raw), 0) + meta + raw
    head = _PREAMBLE.pack(MAGIC, 2) + _HEADER_V2.pack(flags, len(meta), len(raw))
    return head + _CRC.pack(zlib.crc32(head)) + meta + raw + _CRC.pack(zlib.crc32(raw, zlib.crc32(meta)))


def _read_exact(fh: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at end of file."""
    if size <= _READ_PIECE:
        data = fh.read(size)
        if len(data) == size or not data:
            return data
        parts = [data]
        got = len(data)
    else:
        parts, got = [], 0
    while got < size:
        piece = fh.read(min(_READ_PIECE, size - got))
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _skip(fh: IO[bytes], size: int) -> int:
    """Read and discard up to ``size`` bytes; return how many there were."""
    got = 0
    while got < size:
        piece = fh.read(min(_READ_PIECE, size - got))
        if not piece:
            break
        got += len(piece)
    return got


class _Where:
    """Where a record is, for error messages: file name, record index, byte offset."""

    __slots__ = ("name", "index", "offset")

    def __init__(self, name: str, index: int, offset: int) -> None:
        self.name, self.index, self.offset = name, index, offset

    def __str__(self) -> str:
        return f"{self.name}: record {self.index} at byte {self.offset}"


def _parse_metadata(block: bytes, where: _Where) -> dict[str, str]:
    if len(block) < 4:
        raise CorruptArchive(f"{where}: metadata block of {len(block)} bytes is too short")
    (count,) = _INT.unpack_from(block)
    if count < 0 or count % 4:
        raise CorruptArchive(f"{where}: metadata count {count} is not 4 x a number of pairs")
    n = count // 2  # one length per key and per value
    if 4 + 4 * n > len(block):
        raise CorruptArchive(f"{where}: metadata count {count} does not fit its {len(block)}-byte block")
    lengths = struct.unpack_from(f"<{n}i", block, 4)
    pos = 4 + 4 * n
    if any(x < 0 for x in lengths) or pos + sum(lengths) != len(block):
        raise CorruptArchive(f"{where}: metadata string lengths do not add up to the block length")
    strings = []
    for length in lengths:
        try:
            strings.append(block[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise CorruptArchive(f"{where}: metadata string is not UTF-8: {exc}") from exc
        pos += length
    return dict(zip(strings[0::2], strings[1::2]))


def _read_record(fh: IO[bytes], where: _Where, limit: int | None) -> tuple[dict[str, str], bytes, int]:
    """Read one record; return (metadata, payload, bytes consumed).

    ``limit`` bounds the payload (after zlib decompression) and, with at least 1 MiB,
    the metadata block; it is checked against the declared lengths before reading, so
    memory stays under about twice the limit whatever the file declares.
    """
    pre = _read_exact(fh, _PREAMBLE.size)
    if not pre:
        raise EndOfArchive(f"{where.name}: end of archive after {where.index} record(s)")
    if len(pre) < _PREAMBLE.size:
        raise _torn(where, len(pre))
    magic, version = _PREAMBLE.unpack(pre)
    if magic != MAGIC:
        raise BadMagic(
            f"{where}: expected the record magic 0x69867884, found 0x{magic & 0xFFFFFFFF:08x}",
            hint="the file is not a sqlstream/shoebox archive, or it is damaged here",
        )
    if version == 1:
        head = _read_exact(fh, _HEADER_V1.size)
        if len(head) < _HEADER_V1.size:
            raise _torn(where, len(pre) + len(head))
        meta_len, raw_len, end_of_header = _HEADER_V1.unpack(head)
        if end_of_header != 0 or meta_len < 4 or raw_len < 4:
            raise CorruptArchive(f"{where}: invalid version-1 header {(meta_len, raw_len, end_of_header)}")
        flags, consumed = 0, len(pre) + len(head)
    elif version == 2:
        head = _read_exact(fh, _HEADER_V2.size + _CRC.size)
        if len(head) < _HEADER_V2.size + _CRC.size:
            raise _torn(where, len(pre) + len(head))
        (header_crc,) = _CRC.unpack_from(head, _HEADER_V2.size)
        if zlib.crc32(pre + head[: _HEADER_V2.size]) != header_crc:
            raise ChecksumMismatch(
                f"{where}: the record header's CRC-32 does not match",
                hint="the archive was damaged; records before this one are intact",
            )
        flags, meta_len, raw_len = _HEADER_V2.unpack_from(head)
        if meta_len < 4 or raw_len < 4:
            raise CorruptArchive(f"{where}: invalid version-2 header lengths {(meta_len, raw_len)}")
        if flags & ~_KNOWN_FLAGS:
            raise UnsupportedVersion(
                f"{where}: unknown record flags 0x{flags:08x}", hint="upgrade sqlstream to read this archive"
            )
        consumed = len(pre) + len(head)
    else:
        raise UnsupportedVersion(
            f"{where}: record format version {version} (this sqlstream reads versions 1 and 2)",
            hint="upgrade sqlstream to read this archive" if version > 2 else None,
        )
    if limit is not None:
        problem = None
        if raw_len - 4 > limit:
            problem = _too_large(where, f"declares a payload of {raw_len - 4:,} bytes", limit)
        elif meta_len > max(limit, _MIN_METADATA_LIMIT):
            problem = _too_large(where, f"declares {meta_len:,} bytes of metadata", max(limit, _MIN_METADATA_LIMIT))
        if problem is not None:
            # A file that ends within the limit is a torn tail with a bogus length (as
            # without a limit); one that goes on is refused. Read, discarding, in pieces.
            want = min(meta_len + raw_len, max(limit, _MIN_METADATA_LIMIT) + 1)
            got = _skip(fh, want)
            if got < want:
                raise _torn(where, consumed + got)
            raise problem
    meta = _read_exact(fh, meta_len)
    # The raw block's length prefix is read apart from the payload, so the payload is
    # not copied again to strip it.
    prefix = _read_exact(fh, 4) if len(meta) == meta_len else b""
    payload = _read_exact(fh, raw_len - 4) if len(prefix) == 4 else b""
    consumed += len(meta) + len(prefix) + len(payload)
    if len(meta) < meta_len or len(prefix) < 4 or len(payload) < raw_len - 4:
        raise _torn(where, consumed)
    if version == 2:
        tail = _read_exact(fh, _CRC.size)
        consumed += len(tail)
        if len(tail) < _CRC.size:
            raise _torn(where, consumed)
        if zlib.crc32(payload, zlib.crc32(prefix, zlib.crc32(meta))) != _CRC.unpack(tail)[0]:
            raise ChecksumMismatch(
                f"{where}: the record's CRC-32 does not match its bytes",
                hint="the archive was damaged; records before this one are intact",
            )
    metadata = _parse_metadata(meta, where)
    (length,) = _INT.unpack(prefix)
    if length != raw_len - 4:
        raise CorruptArchive(f"{where}: payload length {length} does not match its {raw_len}-byte block")
    if flags & FLAG_ZLIB:
        payload = _inflate(payload, where, limit)
    return metadata, payload, consumed


def _inflate(data: bytes, where: _Where, limit: int | None) -> bytes:
    """zlib-decompress a record payload, never producing more than ``limit`` + 1 bytes."""
    dobj = zlib.decompressobj()
    try:
        out = dobj.decompress(data, 0 if limit is None else limit + 1)
        if limit is not None and (len(out) > limit or dobj.unconsumed_tail):
            raise _too_large(where, "decompresses to more than the limit", limit)
        out += dobj.flush()
    except zlib.error as exc:
        raise CorruptArchive(f"{where}: compressed payload does not decompress: {exc}") from exc
    if not dobj.eof:
        raise CorruptArchive(f"{where}: compressed payload does not decompress: the zlib data is incomplete")
    return out


def _too_large(where: _Where, what: str, limit: int) -> RecordTooLarge:
    return RecordTooLarge(
        f"{where}: the record {what}; the limit is {limit:,} bytes",
        hint="if the archive is trusted, read it with a larger max_record_bytes "
             "(sqlstream.open(..., max_record_bytes=N) for import)",
    )


def _torn(where: _Where, got: int) -> TruncatedRecord:
    return TruncatedRecord(
        f"{where}: the file ends {got} byte(s) into the record (a torn last record)",
        hint="the writer probably stopped mid-record; the records before it are complete",
    )


def unpack(
    fileobj: IO[bytes], *, max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES
) -> tuple[dict[str, str], bytes]:
    """Read one record (either version) from a binary file object.

    Returns ``(metadata, payload)``. Raises :class:`EndOfArchive` when the file is at its
    end, :class:`TruncatedRecord` when it ends inside the record, :class:`BadMagic`,
    :class:`ChecksumMismatch` or :class:`CorruptArchive` for damaged bytes,
    :class:`UnsupportedVersion` for a version or flag this code does not know, and
    :class:`RecordTooLarge` for a payload over ``max_record_bytes`` (``None``: no limit
    but the format's 2 GiB).
    """
    limit = check_count(max_record_bytes, "max_record_bytes", maximum=MAX_OFFSET, optional=True)
    if not callable(getattr(fileobj, "read", None)):
        raise InvalidArgument(f"unpack reads from a binary file object, not {type(fileobj).__name__}",
                              hint="for bytes in memory, pass io.BytesIO(data)")
    name = getattr(fileobj, "name", None)
    try:
        offset = fileobj.tell()
    except (OSError, AttributeError, ValueError):
        offset = 0
    metadata, payload, _ = _read_record(fileobj, _Where(str(name) if name else "<archive>", 0, offset), limit)
    return metadata, payload


# --------------------------------------------------------------------------- files


def fsync_directory(path: str) -> None:
    """Make a rename or unlink in directory ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def working_name(path: str) -> str:
    """The hidden name a file is written under until it is complete: ``dir/.NAME.part``."""
    head, tail = os.path.split(path)
    return os.path.join(head, WORKING_PREFIX + tail + WORKING_SUFFIX)


def is_working_name(filename: str) -> bool:
    base = os.path.basename(filename)
    return base.startswith(WORKING_PREFIX) and base.endswith(WORKING_SUFFIX)


def zstandard_module() -> Any:
    """The optional ``zstandard`` module; :class:`ArchiveError` with an install hint if absent."""
    try:
        import zstandard
    except ImportError as exc:
        raise ArchiveError(
            "zstd needs the optional `zstandard` package", hint="pip install 'sqlstream[zstd]'"
        ) from exc
    return zstandard


def open_archive(filename: str | os.PathLike[str]) -> IO[bytes]:
    """Open an archive file for reading, decompressing gzip or zstd files transparently.

    The compression is recognised by the file's first bytes, not its name.
    """
    raw = open(filename, "rb")  # noqa: SIM115 - returned to the caller
    try:
        return _decompressing(raw)
    except BaseException:
        raw.close()
        raise


def _compression(raw: IO[bytes]) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (not compressed), by the first bytes ``raw`` can peek at."""
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    return "zstd" if head == ZSTD_MAGIC else None


def _decompressing(raw: IO[bytes]) -> IO[bytes]:
    compression = _compression(raw)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        return io.BufferedReader(_ZstdReader(raw))
    return raw


class _ZstdReader(io.RawIOBase):
    """Decompresses zstd frames one after another; a frame cut short raises EOFError.

    zstandard's own stream reader returns a clean end of file for a truncated frame,
    which would make a cut archive look complete. Two properties matter for hostile
    files: input is fed in small pieces, so one call never inflates more than
    ``_ZSTD_FEED`` x zstd's maximum ratio (an RLE block turns 4 bytes into 128 KiB:
    512 bytes in give at most 16 MiB out); and the output buffer is consumed through a
    moving position, never by re-slicing it, so reading N bytes costs O(N) (slicing
    ``buffer[n:]`` after each read made large records quadratic).
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._zstd = zstandard_module()
        self._dobj = self._zstd.ZstdDecompressor().decompressobj()
        self._input = b""  # compressed bytes read from the file; self._in_pos of them fed
        self._in_pos = 0
        self._buffer = b""  # decompressed bytes; self._pos of them already returned
        self._pos = 0
        self._started = False  # the current frame has consumed input

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._buffer):
            self._buffer, self._pos = b"", 0
            if self._dobj.eof:
                rest = self._dobj.unused_data + self._input[self._in_pos :]
                self._dobj = self._zstd.ZstdDecompressor().decompressobj()
                self._started = False
                self._input, self._in_pos = rest, 0
            if self._in_pos >= len(self._input):
                self._input, self._in_pos = self._raw.read(1 << 16), 0
                if not self._input:
                    if self._started and not self._dobj.eof:
                        raise EOFError("the zstd data ends before the end of its frame")
                    return 0
            piece = self._input[self._in_pos : self._in_pos + _ZSTD_FEED]
            self._in_pos += len(piece)
            self._started = True
            self._buffer = self._dobj.decompress(piece)
        n = min(len(b), len(self._buffer) - self._pos)
        b[:n] = memoryview(self._buffer)[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


_ZSTD_FEED = 512  # 16 MiB out at most per call; smaller feeds cost throughput


def _archive_path(filename: object) -> str:
    """``filename`` as a str path, else InvalidArgument."""
    try:
        path = os.fspath(filename)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgument(f"an archive file name is a str or os.PathLike, not {type(filename).__name__}") from None
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidArgument(f"an archive file name is a non-empty str without NUL, not {path!r}"[:300])
    return path


def _open_error(exc: OSError, filename: str, what: str) -> ArchiveError:
    """The ArchiveError for an OSError met opening an archive (``what``: "read" or "create")."""
    return ArchiveError(f"cannot {what} archive {filename[:300]!r}: {exc.strerror or exc}",
                        hint="check the path: the file (to read) or its folder (to create) must exist")


class ArchiveWriter:
    """Appends records to one archive file (shoebox's ``ArchiveWriter``).

    ``ArchiveWriter(filename, version=2)`` creates (or truncates) the file. Each
    :meth:`write` appends one whole record with a single ``write`` call. :meth:`close`
    flushes and, with ``sync=True`` (the default), fsyncs, so a closed archive is on disk.
    ``mode`` is the new file's permission bits (the umask still applies, as with
    ``open``); pass the database file's mode (e.g. ``0o600``) so an archive is no more
    readable than the data it came from. A file that exists is truncated and set to
    at most ``mode`` as well.
    """

    def __init__(self, filename: str | os.PathLike[str], *, version: int = 2, compress_records: bool = False,
                 mode: int = 0o666, **kwargs: Any) -> None:
        if version not in (1, 2):
            raise InvalidArgument(f"archive format version is 1 or 2, not {version!r}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise InvalidArgument(f"mode must be permission bits from 0 to 0o777, not {mode!r}")
        self.filename = _archive_path(filename)
        self.version = version
        self.compress_records = compress_records
        try:
            fd = os.open(self.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
        except OSError as exc:
            raise _open_error(exc, self.filename, "create") from exc
        try:
            current = os.fstat(fd).st_mode & 0o777
            if current & ~mode:  # an existing file keeps its bits on O_CREAT: narrow them
                os.fchmod(fd, current & mode)
            self._handle: IO[bytes] | None = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        self._size = 0
        self.records = 0

    def get_file_handle(self) -> IO[bytes]:
        """The open file (shoebox's roll checkers ask it for ``tell()``)."""
        if self._handle is None:
            raise ArchiveError(f"archive {self.filename} is closed")
        return self._handle

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, metadata: Mapping[str, str], payload: bytes | str) -> int:
        """Append one record; return its size in bytes."""
        data = pack(metadata, payload, self.version, compress=self.compress_records)
        self.get_file_handle().write(data)
        self._size += len(data)
        self.records += 1
        return len(data)

    def flush(self) -> None:
        self.get_file_handle().flush()

    def close(self, sync: bool = True) -> None:
        """Flush, fsync (unless ``sync=False``) and close. Idempotent."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        finally:
            handle.close()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArchiveReader:
    """Reads the records of one archive file in order (shoebox's ``ArchiveReader``).

    ``ArchiveReader(filename)`` or ``ArchiveReader(fileobj=f)``; gzip and zstd files are
    decompressed transparently. :meth:`read` returns ``(metadata, payload)`` and raises
    :class:`EndOfArchive` at a clean end; iterating yields records until then (and lets
    the other errors propagate).

    ``max_record_bytes`` (default 16 MiB, ``None`` for the format's 2 GiB) bounds every
    payload, decompressed: a record over it raises :class:`RecordTooLarge` (an
    ``ArchiveError`` and a ``PayloadTooLarge``) before its bytes are read or inflated,
    so a small hostile file cannot exhaust memory. Decompression streams in bounded
    pieces and takes time linear in the bytes read.
    """

    def __init__(self, filename: str | os.PathLike[str] | None = None, *, fileobj: IO[bytes] | None = None,
                 max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES, **kwargs: Any) -> None:
        if (filename is None) == (fileobj is None):
            raise InvalidArgument("give ArchiveReader a filename or a fileobj (one of them)")
        self.max_record_bytes = check_count(max_record_bytes, "max_record_bytes", maximum=MAX_OFFSET, optional=True)
        if fileobj is not None:
            self.filename = str(getattr(fileobj, "name", "<archive>"))
            raw = fileobj
        else:
            self.filename = _archive_path(filename)
            try:
                raw = open(self.filename, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise _open_error(exc, self.filename, "read") from exc
        try:
            # Compressed data is recognised when the file object can peek at its start.
            #: ``"gzip"``, ``"zstd"`` or None: the file's compression. Both formats check a
            #: hash of what they hold only at the end of a member or frame, so records
            #: read before it may be damaged; a reader that must not act on those reads
            #: the file through once first (as import does).
            self.compression = _compression(raw)
            self._handle: IO[bytes] | None = _decompressing(raw)
        except BaseException:
            if fileobj is None:
                raw.close()
            raise
        self.index = 0  # records read so far
        self.offset = 0  # bytes of (decompressed) archive consumed so far

    def get_file_handle(self) -> IO[bytes]:
        if self._handle is None:
            raise ArchiveError(f"archive {self.filename} is closed")
        return self._handle

    def read(self) -> tuple[dict[str, str], bytes]:
        """The next record as ``(metadata, payload)``; see :func:`unpack` for the errors."""
        where = _Where(self.filename, self.index, self.offset)
        try:
            metadata, payload, consumed = _read_record(self.get_file_handle(), where, self.max_record_bytes)
        except EOFError as exc:  # gzip/zstd stream cut short: a torn tail, not corruption
            if isinstance(exc, ArchiveError):
                raise
            raise TruncatedRecord(
                f"{where}: the compressed file ends early ({exc})",
                hint="the file was cut short; the records before this one are complete",
            ) from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise CorruptArchive(f"{where}: damaged gzip data: {exc}") from exc
        except ArchiveError:
            raise
        except Exception as exc:  # zstandard.ZstdError and friends
            if type(exc).__module__.startswith("zstandard") or "zstd" in type(exc).__name__.lower():
                raise CorruptArchive(f"{where}: damaged zstd data: {exc}") from exc
            raise
        self.index += 1
        self.offset += consumed
        return metadata, payload

    def __iter__(self) -> Iterator[tuple[dict[str, str], bytes]]:
        while True:
            try:
                yield self.read()
            except EndOfArchive:
                return

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
