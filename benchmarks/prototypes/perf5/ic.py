"""python ic.py VARIANT REPS: single appends (W2) for callgrind; run with REPS=0 and REPS=k.

single: REPS x 200 calls of Stream.append(100 bytes), one commit each.
raw:    the same commits as raw apsw on a rowid table (BEGIN IMMEDIATE, INSERT, COMMIT).
"""
import os, sys, shutil, tempfile
variant, reps = sys.argv[1], int(sys.argv[2])
import sqlstream
rows = [(b"%08d" % i) * 12 + b"abcd" for i in range(200)]  # 100 bytes
d = tempfile.mkdtemp()
try:
    # single-ext: no background checkpointer (checkpoints="external"), so the WAL's state
    # and with it every count is the same from run to run (for levers in Python).
    db = sqlstream.open(os.path.join(d, "b.db"), checkpoints="external" if variant.endswith("-ext") else None)
    s = db.create_stream("s")
    if variant in ("single", "single-ext"):
        s.append(rows[0])
        # Inside all(): ic.sh counts only instructions run within builtin_all
        # (--toggle-collect), i.e. the appends and what they call (offsets are > 0: all
        # of them run).
        all(map(s.append, rows * reps))
    elif variant == "raw":
        import apsw
        conn = apsw.Connection(os.path.join(d, "raw.db"))
        conn.execute("pragma journal_mode=wal"); conn.execute("pragma synchronous=normal")
        conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        ex = conn.execute
        def commit(r):
            ex("BEGIN IMMEDIATE"); ex("INSERT INTO records (data) VALUES (?)", (r,)); ex("COMMIT")
            return True
        all(map(commit, rows * reps))
        conn.close()
    db.close()
finally:
    shutil.rmtree(d)
