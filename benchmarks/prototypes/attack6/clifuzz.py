"""Hostile arguments to every subcommand: no traceback, no 'internal error', exit in {0,1,2}, and
the file's content unchanged when the command refused (exit != 0)."""
import signal, argparse, hashlib, io, os, subprocess, sys, random, itertools, contextlib, shutil
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from sqlstream.cli.main import build_parser, main
import sqlstream, apsw
BASE = "/tmp/clifuzz_base.db"
if os.path.exists(BASE):
    os.remove(BASE)
with sqlstream.open(BASE) as db:
    s = db.create_stream("s"); s.extend([b"a", "b", {"c": 1}])
    db.create_subscription("sub", "s")
    db.create_stream("log", secret=True)
def dump(path):
    c = apsw.Connection(path)
    h = hashlib.sha256()
    for (name,) in c.execute("select name from sqlite_master where type='table' and name not like 'sqlite_%' order by name").fetchall():
        for row in c.execute(f'select * from "{name}"').fetchall():
            h.update(repr(row).encode())
    c.close()
    return h.hexdigest()
parser = build_parser()
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
HOSTILE = ["", "-1", "0", "nan", "inf", "-inf", "1e309", "9" * 30, str(2**63), str(-2**63 - 1), "1.5", "abc", "s", "nosuch",
           "\x00", "a\x00b", "x" * 5000, "../../etc/passwd", "/", "/dev/null", "sub", "earliest", "latest", "-", "{", "[1,", "null", "2026-13-45", "@", "1e-400", "0x10", "١٢"]
problems = []
runs = 0
rnd = random.Random(int(os.environ.get("SEED", "1")))
for cmd, sp in sub.choices.items():
    if cmd in ("serve",):
        continue
    opts = [a for a in sp._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]
    pos = [a for a in sp._actions if not a.option_strings]
    flags = [a for a in sp._actions if a.option_strings and a.nargs == 0 and a.dest != "help"]
    for trial in range(int(os.environ.get("TRIALS", "40"))):
        args = []
        for a in pos:
            n = 1 if a.nargs in (None,) else (rnd.choice([0, 1, 2]) if a.nargs in ("*", "?") else 1)
            if a.nargs == "+": n = rnd.choice([1, 2])
            args += [rnd.choice(HOSTILE + ["s", "sub", "0", "1"]) for _ in range(n)]
        for a in rnd.sample(opts, min(len(opts), rnd.choice([0, 1, 2, 3]))):
            args += [a.option_strings[-1], rnd.choice(HOSTILE)]
        for a in rnd.sample(flags, min(len(flags), rnd.choice([0, 1]))):
            args += [a.option_strings[-1]]
        if any("\x00" in x for x in args):
            args = [x.replace("\x00", "") for x in args] if rnd.random() < 0.5 else args
        db = f"/tmp/clifuzz.db"
        for f in (db, db + "-wal", db + "-shm"):
            if os.path.exists(f): os.remove(f)
        shutil.copy(BASE, db)
        sqlstream.open(db).close()  # a copied file settles its identity at its first open
        before = dump(db)
        full = ["--db", db, cmd] + args
        out, err = io.StringIO(), io.StringIO()
        runs += 1
        class Hang(BaseException): pass
        def on_alarm(*_): raise Hang()
        signal.signal(signal.SIGALRM, on_alarm); signal.alarm(int(os.environ.get("ALARM", "8")))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), open(os.devnull) as nul:
                sys.stdin = nul
                code = main(full)
            signal.alarm(0)
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            signal.alarm(0)
            problems.append((full, "RAISED", repr(e)[:200])); continue
        e = err.getvalue()
        if "Traceback" in e or "internal error" in e:
            problems.append((full, code, e[-400:]))
        elif code not in (0, 1, 2):
            problems.append((full, code, e[-200:]))
        elif code != 0 and os.path.exists(db):
            try:
                after = dump(db)
            except Exception as ex:
                problems.append((full, code, "dump failed " + repr(ex))); continue
            if after != before:
                problems.append((full, code, "CHANGED on refusal: " + e[-200:]))
print("runs", runs, "problems", len(problems))
seen = set()
for pr in problems:
    key = (pr[0][2], str(pr[2])[:60])
    if key in seen: continue
    seen.add(key)
    print(repr(pr)[:600])
