"""Random/mutated Kafka frames at a live listener: it must stay up; count 'internal error' logs."""
import logging, os, random, socket, struct, sys, io
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests"))
import sqlstream
from sqlstream.kafka import Settings, start
from helpers_kafka import frame, produce_v3
import helpers_kafka
logbuf = io.StringIO()
h = logging.StreamHandler(logbuf); logging.getLogger("sqlstream").addHandler(h); logging.getLogger("sqlstream").setLevel(logging.ERROR)
p = "/tmp/kfuzz.db"
for f in (p, p+"-wal", p+"-shm"):
    if os.path.exists(f): os.remove(f)
sqlstream.open(p).close()
rnd = random.Random(int(os.environ.get("SEED", "1")))
valid = produce_v3({"t": [(0, b"hello")]})
with start(p, Settings(port=0)) as k:
    host, port = k.bootstrap_servers.split(":")
    n = int(os.environ.get("N", "400"))
    for i in range(n):
        s = socket.create_connection((host, int(port)))
        try:
            kind = rnd.random()
            if kind < 0.5:
                body = bytearray(valid)
                for _ in range(rnd.randint(1, 6)):
                    j = rnd.randrange(len(body)); body[j] = rnd.randrange(256)
                data = frame(0, 3, i, bytes(body))
            elif kind < 0.8:
                api = rnd.choice([0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 19, 20, 22, 32, 36, 37, 60])
                ver = rnd.randint(0, 12)
                data = frame(api, ver, i, rnd.randbytes(rnd.randint(0, 200)))
            else:
                data = struct.pack(">i", rnd.choice([0, 1, 5, 100])) + rnd.randbytes(rnd.randint(0, 100))
            s.sendall(data)
            s.settimeout(3)
            try:
                head = s.recv(4)
            except (socket.timeout, ConnectionResetError, OSError):
                pass
        finally:
            s.close()
    # still alive?
    s = socket.create_connection((host, int(port))); s.sendall(frame(18, 0, 999)); ok = bool(helpers_kafka.recv(s)); s.close()
print("alive", ok)
txt = logbuf.getvalue()
errs = [l for l in txt.splitlines() if "internal error" in l]
print("internal errors", len(errs))
import re
kinds = {}
for m in re.finditer(r"\n(\w+(?:Error|Exception)[^\n]*)", txt):
    kinds[m.group(1)[:100]] = kinds.get(m.group(1)[:100], 0) + 1
for k2, v in sorted(kinds.items(), key=lambda x: -x[1])[:10]: print(v, k2)
