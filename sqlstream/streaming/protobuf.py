"""The protobuf wire format of the file service's messages, encoded and decoded by hand.

Only what the two messages need: varint (wire type 0) and length-delimited (wire type 2)
fields, proto3 style (a field holding its default value -- 0, false, empty -- is omitted).
Output is deterministic: fields in field-number order, so equal inputs give equal bytes.
The messages are documented in docs/format.md.

Decoding is pure (bytes in, values out) and strict about what it cannot read: a
truncated varint or field, a wire type other than 0 or 2, or a varint over 64 bits
raises ``ValueError`` (the file reader turns it into
:class:`~sqlstream.errors.CorruptBlockFile`). Unknown field numbers are skipped, as
protobuf readers do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

__all__ = ["uvarint", "store_kv_pair", "block_metadata", "frame",
           "read_uvarint", "fields", "parse_store_kv_pair", "parse_block_metadata", "unframe", "split_delimited"]


def uvarint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a protobuf base-128 varint."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"a uvarint holds 0..2**64-1, not {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return uvarint(number << 3) + uvarint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    return uvarint((number << 3) | 2) + uvarint(len(value)) + value if value else b""


def store_kv_pair(store_key: str, key: bytes, value: bytes, delete: bool = False) -> bytes:
    """A ``cosmos.base.store.v1beta1.StoreKVPair``: 1 store_key, 2 delete, 3 key, 4 value."""
    return (
        _bytes_field(1, store_key.encode("utf-8"))
        + _varint_field(2, int(delete))
        + _bytes_field(3, key)
        + _bytes_field(4, value)
    )


def block_metadata(height: int, commit_time_us: int, streams: Sequence[tuple[str, int, int]]) -> bytes:
    """sqlstream's ``BlockMetadata``: 1 height, 2 commit_time_us, 3 repeated StreamRange.

    ``StreamRange``: 1 stream (string), 2 first_offset, 3 last_offset (both inclusive).
    """
    body = _varint_field(1, height) + _varint_field(2, commit_time_us)
    for name, first, last in streams:
        entry = _bytes_field(1, name.encode("utf-8")) + _varint_field(2, first) + _varint_field(3, last)
        body += uvarint((3 << 3) | 2) + uvarint(len(entry)) + entry
    return body


def frame(payload: bytes) -> bytes:
    """``payload`` behind its length as 8 bytes, big-endian (both files' framing)."""
    return len(payload).to_bytes(8, "big") + payload


# --------------------------------------------------------------------------- decoding


def read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint starting at ``data[pos]`` and the position after it; ValueError if cut
    short or longer than 10 bytes (64 bits)."""
    value = shift = 0
    for index in range(pos, min(len(data), pos + 10)):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise ValueError(f"varint at byte {pos} is over 64 bits")
            return value, index + 1
        shift += 7
    raise ValueError(f"varint at byte {pos} is cut short" if len(data) < pos + 10 else
                     f"varint at byte {pos} is longer than 10 bytes")


def fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) per field of ``message``: an int (varint) or bytes (length-delimited)."""
    pos = 0
    while pos < len(message):
        tag, pos = read_uvarint(message, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = read_uvarint(message, pos)
            yield number, value
        elif wire == 2:
            length, pos = read_uvarint(message, pos)
            if length > len(message) - pos:
                raise ValueError(f"field {number} of {length} bytes at byte {pos} runs past the message's end")
            yield number, message[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"wire type {wire} (field {number}) is not used by these messages")


def _text(value: int | bytes, what: str) -> str:
    if not isinstance(value, bytes):
        raise ValueError(f"{what} is a varint, not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None


def _number(value: int | bytes, what: str) -> int:
    if not isinstance(value, int):
        raise ValueError(f"{what} is length-delimited, not a varint")
    return value


def _blob(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"{what} is a varint, not bytes")
    return value


def parse_store_kv_pair(message: bytes) -> tuple[str, bytes, bytes, bool]:
    """The inverse of :func:`store_kv_pair`: (store_key, key, value, delete)."""
    store_key, key, value, delete = "", b"", b"", False
    for number, raw in fields(message):
        if number == 1:
            store_key = _text(raw, "store_key")
        elif number == 2:
            delete = bool(_number(raw, "delete"))
        elif number == 3:
            key = _blob(raw, "key")
        elif number == 4:
            value = _blob(raw, "value")
    return store_key, key, value, delete


def parse_block_metadata(message: bytes) -> tuple[int, int, list[tuple[str, int, int]]]:
    """The inverse of :func:`block_metadata`: (height, commit_time_us, [(stream, first, last)])."""
    height = commit_time = 0
    streams: list[tuple[str, int, int]] = []
    for number, raw in fields(message):
        if number == 1:
            height = _number(raw, "height")
        elif number == 2:
            commit_time = _number(raw, "commit_time_us")
        elif number == 3:
            name, first, last = "", 0, 0
            for sub, value in fields(_blob(raw, "a StreamRange")):
                if sub == 1:
                    name = _text(value, "stream")
                elif sub == 2:
                    first = _number(value, "first_offset")
                elif sub == 3:
                    last = _number(value, "last_offset")
            streams.append((name, first, last))
    return height, commit_time, streams


def unframe(data: bytes) -> bytes:
    """The inverse of :func:`frame`; ValueError unless the length matches the bytes after it."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes: shorter than the 8-byte length that starts the file")
    length = int.from_bytes(data[:8], "big")
    if length != len(data) - 8:
        raise ValueError(f"the file says {length:,} bytes follow its length, but {len(data) - 8:,} do"
                         + (" (cut short?)" if length > len(data) - 8 else ""))
    return data[8:]


def split_delimited(body: bytes) -> Iterator[bytes]:
    """The messages of ``body``, each behind its uvarint length (the data file's layout)."""
    pos = 0
    while pos < len(body):
        length, pos = read_uvarint(body, pos)
        if length > len(body) - pos:
            raise ValueError(f"a message of {length:,} bytes at byte {pos} runs past the end")
        yield body[pos : pos + length]
        pos += length
