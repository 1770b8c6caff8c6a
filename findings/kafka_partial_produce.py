"""Kafka listener (branch `kafka`): a Produce whose record set is [good batch, refused batch]
stores the good batch and answers an error for the partition, so the client's retry
stores it again (Kafka validates a partition's whole record set before appending any).
Also: a failed SASL/PLAIN authentication leaves the connection open for the next guess
(Kafka closes it).
Run: PYTHONPATH=<kafka worktree> python kafka_partial_produce.py
"""
import os, socket, struct, tempfile

import sqlstream
from sqlstream.kafka import listener as L, records as R
from sqlstream.kafka.handlers import Settings


def produce(port: int, topic: str, record_set: bytes) -> None:
    name = topic.encode()
    body = (struct.pack(">hhih", 0, 3, 9, 3) + b"cli" + struct.pack(">hhi", -1, 1, 30000)
            + struct.pack(">ih", 1, len(name)) + name + struct.pack(">iii", 1, 0, len(record_set)) + record_set)
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4))[0]
    reply = b""
    while len(reply) < size:
        reply += s.recv(size - len(reply))
    s.close()
    # v3 response: corr id, [topic name, [index, error_code, ...]]
    pos = 4 + 4
    (n,) = struct.unpack_from(">h", reply, pos); pos += 2 + n + 4
    index, code = struct.unpack_from(">ih", reply, pos)
    print(f"   partition {index}: error_code {code}")


d = tempfile.mkdtemp()
path = os.path.join(d, "k.db")
sqlstream.open(path).close()
good = R.encode_batch(0, [R.KafkaRecord(0, None, b"order-1", ())])
bad = bytearray(R.encode_batch(0, [R.KafkaRecord(0, None, b"x", ())]))
# set the transactional bit (attributes, int16 at byte 21) and fix the CRC
struct.pack_into(">h", bad, 21, 0x10)
from crc32c import crc32c
struct.pack_into(">I", bad, 17, crc32c(bytes(bad[21:])))
with L.start(path, Settings(host="127.0.0.1", port=0)) as lst:
    for attempt in (1, 2):
        print(f"attempt {attempt}: Produce [good, transactional] to 't'")
        produce(lst.port, "t", good + bytes(bad))
db = sqlstream.open(path)
print("records stored in t/0:", [r.value for r in db.stream(db.streams()[0].name).read(0, 10)],
      "(expected: none: the request was refused)")
db.close()

with L.start(path, Settings(host="127.0.0.1", port=0, sasl_password="pw")) as lst:
    s = socket.create_connection(("127.0.0.1", lst.port), timeout=5)

    def call(api: int, version: int, body: bytes) -> bytes:
        frame = struct.pack(">hhih", api, version, 1, 3) + b"cli" + body
        s.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", s.recv(4))[0]
        out = b""
        while len(out) < size:
            out += s.recv(size - len(out))
        return out

    call(17, 1, struct.pack(">h", 5) + b"PLAIN")
    tried = 0
    for guess in (b"a", b"b", b"c", b"d", b"e"):
        token = b"\0user\0" + guess
        call(36, 1, struct.pack(">i", len(token)) + token)
        tried += 1
    print(f"SASL: {tried} wrong passwords tried on one connection; still open: "
          f"{call(18, 0, b'')[:4] != b''}")
    s.close()
