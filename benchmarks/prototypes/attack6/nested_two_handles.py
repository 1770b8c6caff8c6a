"""Random nested transactions on two Database handles of one file (one thread), with
exceptions at every level, trims, retention, stream deletion/recreation, plain-SQL deletes
of the newest records, reads inside blocks; every committed record copied by a trigger in
commit order; checks: one txn per commit, strictly increasing, offsets contiguous vs model."""
import os, random, sys, apsw, sqlstream
from sqlstream import errors
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
rnd = random.Random(seed)
p = f"/tmp/nested{seed}.db"
for f in (p, p+"-wal", p+"-shm"):
    if os.path.exists(f): os.remove(f)
A = sqlstream.open(p); B = sqlstream.open(p)
raw = apsw.Connection(p); raw.set_busy_timeout(5000)
raw.execute("CREATE TABLE seen (n INTEGER PRIMARY KEY, stream_id, off, txn)")
raw.execute("CREATE TRIGGER copy_rec AFTER INSERT ON chunks BEGIN INSERT INTO seen (stream_id, off, txn) VALUES (new.stream_id, new.offset, new.txn); END")
NAMES = ["a", "b", "c"]
for n in NAMES: A.create_stream(n)
class Boom(Exception): pass
def op(db, depth):
    r = rnd.random()
    name = rnd.choice(NAMES)
    try:
        if r < 0.35:
            db.stream(name).append(rnd.randbytes(rnd.choice([1, 10, 5000])))
        elif r < 0.5:
            db.stream(name).extend([b"x"] * rnd.randint(1, 5))
        elif r < 0.55:
            db.stream(name).trim(db.stream(name).info().next_offset - rnd.randint(0, 2))
        elif r < 0.6:
            db.set_retention(name, max_count=rnd.choice([None, 2, 5]))
        elif r < 0.63 and depth == 0:
            db.delete_stream(name, force=True); db.create_stream(name)
        elif r < 0.68:
            db.stream(name).read(0, 5)
        elif r < 0.72 and depth == 0:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("DELETE FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?) AND offset >= (SELECT max(offset) FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?))", (name, name))
            raw.execute("COMMIT")
        elif r < 0.9 and depth < 4:
            try:
                with db.transaction():
                    for _ in range(rnd.randint(0, 4)):
                        op(db, depth + 1)
                    if rnd.random() < 0.3:
                        raise Boom()
            except Boom:
                pass
        else:
            pass
    except (errors.StreamNotFound, errors.OffsetOutOfRange, errors.InvalidArgument, errors.CorruptDatabase, errors.WritePending) as e:
        pass
for i in range(int(os.environ.get("OPS", "3000"))):
    db = A if rnd.random() < 0.5 else B
    try:
        op(db, 0)
    except errors.SqlstreamError as e:
        print("op error", type(e).__name__, e); break
rows = raw.execute("SELECT n, stream_id, off, txn FROM seen ORDER BY n").fetchall()
# commits: maximal runs of equal txn in insertion order must be increasing & unique
last = 0; seen_txn = set(); bad = 0; prev = None
for n, sid, off, txn in rows:
    if txn != prev:
        if txn in seen_txn or txn <= last:
            bad += 1
            if bad < 5: print("txn problem at", n, sid, off, txn, "last", last)
        seen_txn.add(txn); last = max(last, txn); prev = txn
print("seed", seed, "records", len(rows), "commits", len(seen_txn), "bad", bad, A.check().ok if hasattr(A.check(), "ok") else A.check())
