"""The protobuf wire format of the file service's messages, encoded by hand.

Only what the two messages need: varint (wire type 0) and length-delimited (wire type 2)
fields, proto3 style (a field holding its default value -- 0, false, empty -- is omitted).
Output is deterministic: fields in field-number order, so equal inputs give equal bytes.
The messages are documented in docs/format.md.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["uvarint", "store_kv_pair", "block_metadata", "frame"]


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
