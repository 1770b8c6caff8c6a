"""Mutate exported archives (flip bytes, truncate, splice) and import them: every
failure must be a SqlstreamError; the database must stay consistent (check())."""
import os, random, shutil, sys, tempfile, traceback, glob
import sqlstream
from sqlstream import errors
from sqlstream.archive import import_archives
seed = int(sys.argv[1]); n = int(sys.argv[2])
rng = random.Random(seed)
base = tempfile.mkdtemp()
src = os.path.join(base, "src.db")
with sqlstream.open(src) as db:
    s = db.create_stream("s")
    s.extend([{"i": i, "t": "x" * rng.randint(0, 50)} for i in range(50)], key="k")
    s.extend([b"\x00\xff" * rng.randint(0, 600) for i in range(10)])
    s.extend(["text é %d" % i for i in range(10)], headers={"h": "v"})
    t = db.create_stream("t"); t.extend([b"a"] * 5)
    outs = {}
    for comp in (None, "gzip", "zstd"):
        d = os.path.join(base, f"out-{comp}"); os.mkdir(d)
        db.export(["s", "t"], d, compress=comp, roll_size_mb=0.002, name=f"e{comp}")
        outs[comp] = sorted(glob.glob(os.path.join(d, "*")))
print({k: [os.path.basename(x) for x in v[:2]] for k, v in outs.items()})
counts = {}
for it in range(n):
    comp = rng.choice(list(outs))
    files = outs[comp]
    work = os.path.join(base, f"w{it}"); os.mkdir(work)
    for f in files:
        shutil.copy(f, work)
    victim = os.path.join(work, os.path.basename(rng.choice(files)))
    data = bytearray(open(victim, "rb").read())
    op = rng.choice(["flip", "trunc", "zero", "dup", "huge_len"])
    if op == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data)); data[i] ^= 1 << rng.randrange(8)
    elif op == "trunc":
        data = data[:rng.randrange(len(data))]
    elif op == "zero":
        i = rng.randrange(len(data)); data[i:i + rng.randint(1, 64)] = bytes(min(64, len(data) - i))
    elif op == "dup":
        i = rng.randrange(len(data)); data = data[:i] + data[i:i + 100] + data[i:]
    elif op == "huge_len":
        i = rng.randrange(max(1, len(data) - 4)); data[i:i + 4] = rng.choice([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00"])
    open(victim, "wb").write(bytes(data))
    dst = os.path.join(base, f"dst{it}.db")
    try:
        with sqlstream.open(dst) as db:
            r = import_archives(db, "*", work)
            res = "ok"
    except errors.SqlstreamError as e:
        res = type(e).__name__
    except Exception as e:
        res = "RAW " + type(e).__name__
        print(op, comp, "RAW", repr(e)[:300]); traceback.print_exc(limit=3)
    try:
        with sqlstream.open(dst) as db:
            problems = db.check()
            bad = [p for p in getattr(problems, "problems", problems) or []] if problems else []
    except Exception as e:
        bad = [repr(e)]
    if bad and res == "ok":
        print("CHECK", op, comp, bad[:3])
    counts[(op, res)] = counts.get((op, res), 0) + 1
    shutil.rmtree(work)
print(sorted(counts.items()))
