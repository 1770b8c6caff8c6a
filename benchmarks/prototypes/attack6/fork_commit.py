import sqlstream, os, sys, apsw, time
p = "/tmp/fork3.db"
for f in (p, p+"-wal", p+"-shm"):
    if os.path.exists(f): os.remove(f)
db = sqlstream.open(p)
s = db.create_stream("s")
s.append("before")
child = None
with db.transaction():
    s.append("parent-1")
    child = os.fork()
    if child == 0:
        time.sleep(0.5)
if child == 0:
    print("child: committed?", flush=True)
    os._exit(0)
for i in range(5):
    s.append(f"parent-acked-{i}")
os.waitpid(child, 0)
for i in range(5, 8):
    try: s.append(f"parent-acked-{i}")
    except BaseException as e: print("append after", type(e).__name__, e)
try: print("parent read", [r.value for r in s.read(0, 100)])
except BaseException as e: print("read", type(e).__name__, e)
db.close()
c = apsw.Connection(p)
print(c.execute("pragma integrity_check").fetchall())
print(c.execute("select offset, data, txn from chunks").fetchall())
