"""python ic.py VARIANT REPS: run under callgrind with REPS=0 and REPS=k; per-record = difference / records."""
import os, sys, shutil, tempfile
variant, reps = sys.argv[1], int(sys.argv[2])
import sqlstream
if os.environ.get("NOMUTEX_WRITE"):
    import apsw
    from sqlstream import connection as _cx
    _orig = apsw.Connection
    class _C(_orig):
        def __init__(self, path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE, **kw):
            if not flags & apsw.SQLITE_OPEN_READONLY:
                flags |= apsw.SQLITE_OPEN_NOMUTEX
            super().__init__(path, flags=flags, **kw)
    _cx.apsw = type("M", (), {k: getattr(apsw, k) for k in dir(apsw) if not k.startswith("__")})
    _cx.apsw.Connection = _C
rows = [(b"%08d" % i) * 12 + b"abcd" for i in range(1000)]  # 100 bytes
d = tempfile.mkdtemp()
try:
    db = sqlstream.open(os.path.join(d, "b.db"))
    s = db.create_stream("s")
    if variant == "read":       # W3: 20,000 records in pages of 1,000
        for _ in range(20): s.extend(rows)
        s.read(0, 1000)
        for _ in range(reps):
            off = 0
            while off < 20000:
                p = s.read(off, 1000); off = p[-1].offset + 1
    elif variant == "read1":    # one record at a time (W5's reader)
        for _ in range(2): s.extend(rows)
        s.read(0, 1)
        for _ in range(reps):
            for off in range(200):
                s.read(off, 1)
    elif variant == "single":   # W2: 2,000 one-record commits
        s.append(rows[0])
        for _ in range(reps):
            for r in rows + rows: s.append(r)
    elif variant == "turns":    # W7/W8's hand-over: two connections alternate, each on its own stream
        other = sqlstream.open(os.path.join(d, "b.db"))
        t = other.create_stream("t")
        s.append(rows[0]); t.append(rows[0])
        for _ in range(reps):
            for r in rows: s.append(r); t.append(r)
        other.close()
    elif variant == "batch":    # W1
        s.extend(rows)
        for _ in range(reps):
            for _ in range(20): s.extend(rows)
    db.close()
finally:
    shutil.rmtree(d)
