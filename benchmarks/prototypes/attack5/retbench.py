"""python retbench.py SRC: CPU per single append to a stream with max_count=100 (SRC: a source tree)."""
import sys, os, time, tempfile
sys.path.insert(0, sys.argv[1])
import sqlstream
d = tempfile.mkdtemp(); p = os.path.join(d, "b.db")
db = sqlstream.open(p); s = db.create_stream("s", max_count=100)
for i in range(200): s.append(b"x" * 100)
t = time.process_time()
for i in range(10000): s.append(b"x" * 100)
print(sys.argv[1], round((time.process_time() - t) / 10000 * 1e6, 2), "us/append")
