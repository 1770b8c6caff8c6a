"""python w2cpu.py SRC N: N single appends of 100 bytes (W2) with sqlstream from SRC;
prints CPU per append in µs (time.process_time: every thread of the process; then
time.thread_time: the appending thread alone; then that thread's user time alone, which
leaves out the WAL writes' system time the levers do not touch) and the load."""
import os, sys, time, tempfile, shutil, resource
src, n = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, src)
import sqlstream
assert sqlstream.__file__.startswith(src), sqlstream.__file__
d = tempfile.mkdtemp(prefix="p5w2-")
try:
    db = sqlstream.open(os.path.join(d, "x.db")); s = db.create_stream("s")
    data = [b"%08d" % i * 12 + b"abcd" for i in range(n)]
    for x in data[:200]: s.append(x)
    app = s.append
    u0 = resource.getrusage(resource.RUSAGE_THREAD).ru_utime
    c0, t0 = time.process_time(), time.thread_time()
    for x in data: app(x)
    c1, t1 = time.process_time(), time.thread_time()
    u1 = resource.getrusage(resource.RUSAGE_THREAD).ru_utime
    db.close()
    print(f"{(c1 - c0) / n * 1e6:.2f} {(t1 - t0) / n * 1e6:.2f} {(u1 - u0) / n * 1e6:.2f} {os.getloadavg()[0]:.2f}")
finally:
    shutil.rmtree(d)
