"""Budgeted consumers in 4 processes, SIGKILLed at random, restarted: every record is
acked in the end, the acks table (a side stream written in the same transaction as the
ack) never holds an offset twice from overlapping holds... (at-least-once: duplicates
allowed only after a kill)."""
import os, random, signal, subprocess, sys, time, tempfile
import sqlstream
N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
SECS = float(sys.argv[2]) if len(sys.argv) > 2 else 20
WORKER = r'''
import sys, random, os, sqlstream
path, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
db = sqlstream.open(path)
sub = db.subscription("sub")
out = db.stream("done")
ordering = sub.ordering
while True:
    with db.transaction():
        b = sub.fetch(name, rng.randint(1, 50), 0, max_bytes=rng.choice([1, 500, 3000, 20000, None]))
        if b:
            out.extend([{"o": o, "a": b.attempts[o], "w": name} for o in b.offsets])
            if rng.random() < 0.9:
                sub.ack(*b.offsets)
            else:
                sub.nack(*b.offsets)
    if not b:
        sub.wait(0.5)
'''
d = tempfile.mkdtemp(); path = os.path.join(d, "mp.db")
rng = random.Random(1)
ordering = sys.argv[3] if len(sys.argv) > 3 else "none"
with sqlstream.open(path) as db:
    s = db.create_stream("s"); db.create_stream("done")
    db.create_subscription("sub", "s", ack_timeout=1.0, max_unacked=500, ordering=ordering)
    for i in range(0, N, 100):
        for j in range(100):
            s.append(b"x" * rng.choice([10, 900, 2000, 9000]), key=f"k{(i + j) % 7}")
procs = {}
kills = 0
env = dict(os.environ)
def start(i):
    procs[i] = subprocess.Popen([sys.executable, "-c", WORKER, path, f"w{i}", str(rng.randrange(1 << 30))], env=env)
for i in range(4): start(i)
t0 = time.time()
while time.time() - t0 < SECS:
    time.sleep(rng.uniform(0.2, 1.0))
    i = rng.randrange(4)
    procs[i].send_signal(signal.SIGKILL); procs[i].wait(); kills += 1
    start(i)
# let them drain
deadline = time.time() + 60
with sqlstream.open(path) as db:
    sub = db.subscription("sub")
    while time.time() < deadline:
        info = sub.info()
        if info.lag == 0 and info.pending == 0: break
        time.sleep(0.5)
    for p in procs.values(): p.send_signal(signal.SIGKILL); p.wait()
    info = sub.info()
    done = [r.value["o"] for r in db.stream("done").read(0, 10**7)]
    missing = set(range(N)) - set(done)
    print(f"ordering={ordering} kills={kills} records={N} deliveries_committed={len(done)} distinct={len(set(done))} missing={len(missing)} lag={info.lag} pending={info.pending} acked={info.acked}")
    # key order: within a key, committed deliveries of first attempts in order
    assert not missing, sorted(missing)[:10]
