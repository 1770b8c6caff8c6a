"""Idempotent producers (Producer-Id/Epoch/Seq) with JSON-array bodies across SIGKILL + restart:
each client retries its current batch until answered; at the end each producer's batches must be
stored exactly once, in seq order, each batch contiguous."""
import os, sys, subprocess, threading, time, json, signal, random
import httpx, sqlstream
from sqlstream.http import protocol as p
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
path = "/tmp/httpkill.db"
for f in (path, path+"-wal", path+"-shm"):
    if os.path.exists(f): os.remove(f)
url_box = {}
def start():
    proc = subprocess.Popen([sys.executable, "-m", "sqlstream", "--db", path, "serve", "--http", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    line = proc.stderr.readline()
    url_box["u"] = line.split(" at ")[1].split("/v1/stream")[0] + "/v1/stream/k"
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
    return proc
proc = start()
r = httpx.put(url_box["u"], headers={"content-type": "application/json"}); print("PUT", r.status_code)
NC = 6; stop = threading.Event(); answered = {n: 0 for n in range(NC)}; problems = []
def client(n):
    seq = 0
    with httpx.Client(timeout=10) as c:
        while not stop.is_set():
            body = json.dumps([{"c": n, "s": seq, "i": i} for i in range(1 + seq % 4)]).encode()
            try:
                r = c.post(url_box["u"], content=body, headers={"content-type": "application/json",
                    "producer-id": f"p{n}", "producer-epoch": "0", "producer-seq": str(seq), "stream-seq": f"{n:02d}-{seq:08d}" if False else None} if False else
                    {"content-type": "application/json", "producer-id": f"p{n}", "producer-epoch": "0", "producer-seq": str(seq)})
            except httpx.TransportError:
                time.sleep(0.05); continue
            if r.status_code in (200, 204):
                answered[n] = seq + 1; seq += 1
            else:
                problems.append((n, seq, r.status_code, r.text, dict(r.headers))); return
threads = [threading.Thread(target=client, args=(n,)) for n in range(NC)]
for t in threads: t.start()
kills = 0
t_end = time.time() + float(os.environ.get("SECS", "20"))
while time.time() < t_end and not problems:
    time.sleep(random.uniform(0.2, 1.0))
    proc.send_signal(signal.SIGKILL); proc.wait(); kills += 1
    proc = start()
time.sleep(0.5); stop.set()
for t in threads: t.join(30)
proc.send_signal(signal.SIGTERM); proc.wait(10)
print("kills", kills, "answered", answered, "problems", problems[:3])
with sqlstream.open(path) as db:
    recs = db.stream("k").read(0, limit=10**7)
per = {}
ok = True
for r in recs:
    v = r.value; per.setdefault(v["c"], []).append((v["s"], v["i"]))
for n in range(NC):
    got = per.get(n, [])
    exp = [(s, i) for s in range(len(set(s for s, _ in got))) for i in range(1 + s % 4)]
    if got != exp: ok = False; print("client", n, "mismatch; first diff", next(((a, b) for a, b in zip(got, exp) if a != b), (len(got), len(exp))))
    batches = len(set(s for s, _ in got))
    if batches < answered[n]: ok = False; print("client", n, "answered", answered[n], "stored batches", batches)
print("records", len(recs), "OK" if ok else "FAIL")
