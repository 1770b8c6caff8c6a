"""python w5one.py sqlstream|redis N: one W5 other-process notify series; prints p50/p90 ms and CPU."""
import os, sys, tempfile, statistics, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..'))  # the repository (benchmarks)
from benchmarks import wakeups
from benchmarks.harness import Env
import sqlstream
def main():
    what, n = sys.argv[1], int(sys.argv[2])
    if what == "sqlstream":
        d = tempfile.mkdtemp(); path = os.path.join(d, "a.db")
        with sqlstream.open(path, wakeup="notify") as db:
            s = db.create_stream("w5"); db.create_stream("idle")
            lat, bad, cpu = wakeups._measure(wakeups._sqlstream_reader, (path, "notify"), n, s.append, True, 5)
    else:
        import redis, subprocess, socket
        port = 16399
        srv = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        import atexit
        atexit.register(lambda: (srv.terminate(), srv.wait()))
        c = redis.Redis(port=port); c.delete("w5")
        lat, bad, cpu = wakeups._measure(wakeups._redis_reader, ("127.0.0.1", port), n, lambda d: c.xadd("w5", {"d": d}), True, 5)
        c.close()
    v = sorted(x * 1000 for x in lat)
    print(f"{what} p50 {statistics.median(v):.3f} p90 {v[int(len(v)*0.9)]:.3f} bad {bad}")

if __name__ == '__main__':
    main()
