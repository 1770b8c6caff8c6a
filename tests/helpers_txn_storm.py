"""A storm of SIGKILLed writers of every kind on one file (tests/test_txn_attack.py).

``run(path, seconds, writers, seed)`` creates the file with streams s0..s3 and the side
table ``copied`` (every stored record's txn and value, copied by a trigger in commit
order), starts ``writers`` processes running :func:`worker`, SIGKILLs one at random every
50-400 ms and starts it again, and returns the figures. Each record's value names its
transaction (``writer:seed:op``), so the test can check the numbering from ``copied``.
Run as a script, this file is one worker: ``python helpers_txn_storm.py PATH WRITER SEED``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apsw

STREAMS = ("s0", "s1", "s2", "s3")
ROOT = Path(__file__).resolve().parent.parent


def copy_commits(path: str) -> None:
    """Add the side table ``copied`` and the trigger that copies every stored record into it."""
    conn = apsw.Connection(path)
    try:
        conn.execute("CREATE TABLE copied (seq INTEGER PRIMARY KEY AUTOINCREMENT, txn INTEGER NOT NULL, tag TEXT)")
        conn.execute("CREATE TRIGGER copy_commits AFTER INSERT ON chunks BEGIN "
                     "INSERT INTO copied (txn, tag) VALUES (new.txn, CAST(new.data AS TEXT)); END")
    finally:
        conn.close()


def setup(path: str) -> None:
    import sqlstream

    with sqlstream.open(path) as db:
        for name in STREAMS:
            db.create_stream(name)
    copy_commits(path)


def worker(path: str, wid: int, seed: int) -> None:  # noqa: C901 - one loop of many kinds of write
    import sqlstream
    from sqlstream import errors

    rnd = random.Random(seed)
    db = sqlstream.open(path, busy_timeout=30)
    sa: Any = None
    if wid % 2:
        from sqlstream import sqlalchemy as ss

        sa = ss.create_engine(path)
    plain = apsw.Connection(path)
    plain.set_busy_timeout(30_000)
    n = 0
    while True:
        n += 1
        tag = f"{wid}:{seed}:{n}"
        op = rnd.random()
        try:
            if op < 0.30:  # a single append, to its own stream or any
                db.stream(rnd.choice(STREAMS) if rnd.random() < 0.5 else STREAMS[wid % 4]).append(tag)
            elif op < 0.55:  # several streams, savepoints rolled back around (first) appends
                with db.transaction():
                    for _ in range(rnd.randint(1, 4)):
                        name = rnd.choice(STREAMS)
                        if rnd.random() < 0.35:
                            try:
                                with db.transaction():
                                    db.stream(name).append(tag + ":rolled back")
                                    if rnd.random() < 0.5:
                                        with db.transaction():
                                            db.stream(rnd.choice(STREAMS)).extend([tag + ":rolled back"] * 3)
                                    raise KeyError
                            except KeyError:
                                pass
                        else:
                            db.stream(name).append(tag)
            elif op < 0.68 and sa is not None:  # the outbox, a rolled-back savepoint first
                from sqlstream import sqlalchemy as ss

                with sa.begin() as conn:
                    if rnd.random() < 0.3:
                        nested = conn.begin_nested()
                        ss.append(conn, rnd.choice(STREAMS), tag + ":rolled back")
                        nested.rollback()
                    ss.append(conn, rnd.choice(STREAMS), tag)
                    ss.append(conn, rnd.choice(STREAMS), tag)
            elif op < 0.78:  # plain SQL deletes a stream's newest records
                name, k = rnd.choice(STREAMS), rnd.randint(1, 3)
                plain.execute(
                    "DELETE FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?1) AND offset >= "
                    "(SELECT coalesce(max(offset), 0) - ?2 + 1 FROM chunks "
                    " WHERE stream_id = (SELECT id FROM streams WHERE name = ?1))", (name, k))
            elif op < 0.84:
                stream = db.stream(rnd.choice(STREAMS))
                end = stream.info().next_offset
                stream.trim(end if rnd.random() < 0.5 else max(0, end - 1))
            elif op < 0.89:  # deleted and created again (the id may be reused)
                name = rnd.choice(STREAMS)
                db.delete_stream(name, force=True)
                db.create_stream(name, max_count=rnd.choice([None, 1, 2, 5]))
            elif op < 0.93:
                db.set_retention(rnd.choice(STREAMS), max_count=rnd.choice([None, 1, 3]),
                                 max_bytes=rnd.choice([None, 30, 200]))
            elif op < 0.96:  # retention firing inside an appending transaction
                with db.transaction():
                    db.stream(rnd.choice(STREAMS)).extend([tag] * rnd.randint(1, 5))
                    db.stream(rnd.choice(STREAMS)).append(tag)
            else:  # the tail's newest record deleted in the write transaction, then an append
                name = rnd.choice(STREAMS)
                with db.transaction():
                    with db.engine.write() as conn:
                        conn.execute(
                            "DELETE FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?1) AND offset = "
                            "(SELECT max(offset) FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?1))",
                            (name,))
                    db.stream(rnd.choice(STREAMS)).append(tag)
        except errors.StreamNotFound:  # killed between a delete and its create
            for name in STREAMS:
                try:
                    db.create_stream(name, exist_ok=True)
                except errors.SqlstreamError:
                    pass
        except errors.CorruptDatabase as exc:
            # A plain-SQL delete of records below a stream's written floor leaves a gap
            # that sqlstream refuses to append past: start that stream again.
            name = str(exc).split("'")[1] if "'" in str(exc) else ""
            if name not in STREAMS:
                print("ERROR", type(exc).__name__, exc, flush=True)
                continue
            try:
                db.delete_stream(name, force=True)
                db.create_stream(name, exist_ok=True)
            except errors.SqlstreamError:
                pass
        except (errors.StreamExists, errors.LockTimeout):
            pass
        except errors.SqlstreamError as exc:
            print("ERROR", type(exc).__name__, exc, flush=True)


def run(path: str, seconds: float, writers: int, seed: int) -> dict[str, Any]:
    setup(path)
    rnd = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = Path(path + ".out")
    procs: dict[int, subprocess.Popen[bytes]] = {}
    started = 0
    with out.open("wb") as sink:
        def start(w: int) -> None:
            nonlocal started
            started += 1
            procs[w] = subprocess.Popen([sys.executable, __file__, path, str(w), str(seed * 1000 + started)],
                                        stdout=sink, stderr=sink, env=env)

        for w in range(writers):
            start(w)
        kills = 0
        end = time.monotonic() + seconds  # how long the storm lasts, not a bound on anything
        try:
            while time.monotonic() < end:
                time.sleep(rnd.uniform(0.05, 0.4))
                w = rnd.randrange(writers)
                if procs[w].poll() is None:
                    procs[w].send_signal(signal.SIGKILL)
                    kills += 1
                procs[w].wait()
                start(w)
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    text = out.read_text(errors="replace")
    errors = [line for line in text.splitlines() if line.startswith("ERROR") or "Traceback" in line]
    conn = apsw.Connection(path)
    try:
        records = conn.execute("SELECT count(*) FROM copied").fetchall()[0][0]
    finally:
        conn.close()
    return {"kills": kills, "records": records, "errors": errors}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
