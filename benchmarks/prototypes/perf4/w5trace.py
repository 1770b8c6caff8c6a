"""W5 stage trace for the sleeper path: writer t0 (before append), tc (after COMMIT, before ring: patched
notifier.committed), t1 (append returned); reader: s = select returned in the sleeper, c = check start, r = held."""
import multiprocessing as mp, os, random, sys, tempfile, time, statistics as st, bisect
import select as _select
import sqlstream
from sqlstream import wakeup
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300

def reader(path, n, ready, q):
    marks = {"s": [], "c": []}
    clock = time.perf_counter
    real_select = _select.select
    class Sel:
        @staticmethod
        def select(*a):
            r = real_select(*a); marks["s"].append(clock()); return r
    wakeup.select = Sel
    got = []
    with sqlstream.open(path, wakeup="notify") as db:
        s = db.stream("w5")
        from sqlstream import streams as S
        orig_once = S.Stream._read_once
        def once(self, o, l):
            marks["c"].append(clock()); return orig_once(self, o, l)
        S.Stream._read_once = once
        ready.set()
        for i in range(n):
            recs = s.read(i, 1, timeout=10)
            got.append(clock())
    q.put((got, marks))

def main():
    d = tempfile.mkdtemp(); path = os.path.join(d, "w5.db")
    rng = random.Random(5)
    with sqlstream.open(path, wakeup="notify") as db:
        s = db.create_stream("w5")
        tcs = []
        orig = wakeup.FileNotifier.committed
        def committed(self):
            tcs.append(time.perf_counter()); orig(self)
        wakeup.FileNotifier.committed = committed
        ctx = mp.get_context("spawn")
        ready, q = ctx.Event(), ctx.Queue()
        p = ctx.Process(target=reader, args=(path, N, ready, q)); p.start()
        ready.wait(30); time.sleep(0.05)
        t0s, t1s = [], []
        clock = time.perf_counter
        for i in range(N):
            time.sleep(rng.uniform(0.001, 0.004))
            t0s.append(clock()); s.append(b"x" * 100); t1s.append(clock())
        got, marks = q.get(60); p.join()
    def last_before(arr, lo, hi):
        j = bisect.bisect_right(arr, hi) - 1
        return arr[j] if j >= 0 and arr[j] >= lo else None
    rows = []
    for i in range(N):
        t0, tc, t1, g = t0s[i], tcs[i], t1s[i], got[i]
        sl = last_before(marks["s"], t0, g); c = last_before(marks["c"], t0, g)
        if None in (sl, c): continue
        rows.append((tc - t0, sl - tc, c - sl, g - c, g - t0))
    names = ["append to commit", "commit->select ret", "select->check", "check->held", "total"]
    print(f"n={len(rows)} of {N}, load {os.getloadavg()[0]:.1f}")
    for k, name in enumerate(names):
        v = sorted(r[k] * 1e6 for r in rows)
        print(f"{name:22s} p50 {st.median(v):8.1f} us  p90 {v[int(len(v)*.9)]:8.1f}")

if __name__ == "__main__":
    main()
