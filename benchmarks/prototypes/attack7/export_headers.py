"""CPU per exported record (100,000 records of 100 bytes with a key and two headers).

    PYTHONPATH=<tree> python benchmarks/prototypes/attack7/export_headers.py <label>
"""
import sys, time, tempfile, os, shutil
import sqlstream
d = tempfile.mkdtemp(); path = os.path.join(d, "e.db")
with sqlstream.open(path) as db:
    s = db.create_stream("s")
    for i in range(0, 100000, 5000):
        s.extend([b"x" * 100] * 5000, key="k", headers={"a": "1", "b": "2"})
with sqlstream.open(path) as db:
    t = time.process_time()
    db.export("s", os.path.join(d, "out"))
    print(sys.argv[1], f"{(time.process_time() - t) * 1e6 / 100000:.2f} us/record")
shutil.rmtree(d)
