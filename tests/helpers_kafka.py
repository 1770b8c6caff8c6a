"""Raw Kafka frames for tests that need a case no client produces (shared by the Kafka tests)."""

from __future__ import annotations

import socket
import struct


def frame(api_key: int, version: int, correlation: int, body: bytes = b"") -> bytes:
    """A size-prefixed request with a v1 header (client id null) and ``body``."""
    payload = struct.pack(">hhih", api_key, version, correlation, -1) + body
    return struct.pack(">i", len(payload)) + payload


def recv(sock: socket.socket) -> bytes:
    """One response frame, or b"" when the listener closed the connection."""
    sock.settimeout(60)  # a listener that neither answers nor closes fails, not hangs
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return b""
        head += chunk
    (n,) = struct.unpack(">i", head)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def closed(sock: socket.socket, data: bytes = b"") -> bool:
    """Whether the listener closes the connection (after ``data``, if any) instead of answering."""
    try:
        if data:
            sock.sendall(data)
        return recv(sock) == b""
    except ConnectionResetError:  # it closed before or while this was sent
        return True


def produce_v3(partitions: dict[str, list[tuple[int, bytes]]], acks: int = 1) -> bytes:
    """A Produce v3 body: topic -> [(partition, record set bytes)]."""
    out = struct.pack(">hhi", -1, acks, 30000) + struct.pack(">i", len(partitions))
    for topic, parts in partitions.items():
        name = topic.encode()
        out += struct.pack(">h", len(name)) + name + struct.pack(">i", len(parts))
        for index, record_set in parts:
            out += struct.pack(">ii", index, len(record_set)) + record_set
    return out


def produce_errors(reply: bytes) -> dict[tuple[str, int], tuple[int, int]]:
    """A Produce v3 response (after the size): (topic, partition) -> (error code, base offset)."""
    pos = 4
    (topics,) = struct.unpack_from(">i", reply, pos)
    pos += 4
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for _ in range(topics):
        (n,) = struct.unpack_from(">h", reply, pos)
        name = reply[pos + 2:pos + 2 + n].decode()
        pos += 2 + n
        (parts,) = struct.unpack_from(">i", reply, pos)
        pos += 4
        for _ in range(parts):
            index, code, base = struct.unpack_from(">ihq", reply, pos)
            pos += 4 + 2 + 8 + 8  # index, error, base offset, log append time
            out[(name, index)] = (code, base)
    return out
