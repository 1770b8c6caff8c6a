"""Durability guarantees under process crashes (SIGKILL at a random moment).

A child process appends in a loop (batches via ``extend``, single ``append`` calls, and
transactions across two streams) and, only after each call has returned, writes what it
got to a report file with one unbuffered ``write``. The parent kills it with SIGKILL at a
random moment, reopens the same file and checks that everything reported is there, that
nothing is partial and that offsets have no gaps; then it starts the next round on the
same file. ``synchronous="normal"`` is the setting that promises survival of a process
crash (not of power loss), so that is what the child uses.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

import sqlstream
from sqlstream.records import Record

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 12
PAGE = 5000

# The child. argv: database path, report path, round number, random seed.
# Value format: "<round>:<seq>:<index>:<count>:" + padding (see expected_value).
CHILD = r"""
import os, random, sys
import sqlstream

path, report, rnd, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def value(seq, index, count):
    return f"{rnd}:{seq}:{index}:{count}:" + "x" * pad(seq, index)

def pad(seq, index):
    # Mostly small records, now and then one that spills onto overflow pages.
    return 20_000 if seq % 17 == 0 and index == 0 else (seq * 7 + index * 13) % 200

rng = random.Random(seed)
db = sqlstream.open(path, synchronous="normal")
s, a, b = db.stream("s"), db.stream("a"), db.stream("b")
fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
sys.stdout.write("ready\n")
sys.stdout.flush()
seq = 0
while True:
    roll = rng.random()
    if roll < 0.45:
        count = rng.randint(2, 50)
        got = s.extend([value(seq, i, count) for i in range(count)])
        line = f"E {rnd} {seq} {got.start} {got.stop}\n"
    elif roll < 0.85:
        off = s.append(value(seq, 0, 1))
        line = f"A {rnd} {seq} {off} {off + 1}\n"
    else:
        count = rng.randint(1, 20)
        with db.transaction():
            got = a.extend([value(seq, i, count) for i in range(count)])
            off = b.append(value(seq, 0, 1))
        line = f"T {rnd} {seq} {got.start} {got.stop} {off}\n"
    os.write(fd, line.encode())  # only after the call returned
    seq += 1
"""


def expected_value(rnd: int, seq: int, index: int, count: int) -> str:
    if seq % 17 == 0 and index == 0:
        pad = 20_000
    else:
        pad = (seq * 7 + index * 13) % 200
    return f"{rnd}:{seq}:{index}:{count}:" + "x" * pad


def read_all(stream: sqlstream.Stream) -> list[Record]:
    records: list[Record] = []
    while True:
        page = stream.read(len(records), PAGE)
        records.extend(page)
        if len(page) < PAGE:
            return records


def groups(records: list[Record]) -> Iterator[tuple[int, int, int, int, int]]:
    """Split a stream into its write groups: (round, seq, first offset, stop, count).

    Asserts that offsets are gap-free from 0, that each group is contiguous and whole
    (indexes 0..count-1 in order) and that every value is exactly what was written."""
    i = 0
    while i < len(records):
        rnd, seq, index, count = (int(x) for x in str(records[i].value).split(":")[:4])
        assert index == 0, f"offset {records[i].offset}: a write group starts at index {index} (partial batch)"
        chunk = records[i : i + count]
        assert len(chunk) == count, f"offset {records[i].offset}: batch {rnd}/{seq} has {len(chunk)} of {count} records"
        for j, rec in enumerate(chunk):
            assert rec.offset == i + j, f"gap: record {i + j} has offset {rec.offset}"
            assert rec.value == expected_value(rnd, seq, j, count), f"offset {rec.offset}: wrong content"
        yield rnd, seq, i, i + count, count
        i += count


def parse_report(path: Path) -> list[list[int | str]]:
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    # Only complete lines count: the last one may have been cut by the kill.
    return [[int(x) if x.lstrip("-").isdigit() else x for x in line.split()] for line in lines[:-1]]


def verify(db: sqlstream.Database, reported: list[list[int | str]]) -> dict[str, int]:
    """Check the whole file against everything the children reported as returned."""
    assert db.query("PRAGMA integrity_check").rows == [("ok",)]
    s, a, b = db.stream("s"), db.stream("a"), db.stream("b")
    s_records, a_records, b_records = read_all(s), read_all(a), read_all(b)
    s_groups = {(g[0], g[1]): g for g in groups(s_records)}
    a_groups = {(g[0], g[1]): g for g in groups(a_records)}
    b_groups = {(g[0], g[1]): g for g in groups(b_records)}
    for stream, records in ((s, s_records), (a, a_records), (b, b_records)):
        info = stream.info()
        assert info.next_offset == len(records)
        assert info.byte_length == sum(len(str(r.value).encode()) for r in records)
        assert [r.position for r in records[:1]] in ([], [0])
        for prev, rec in zip(records, records[1:]):
            assert rec.position == prev.position + len(str(prev.value).encode())
    # A transaction across streams 'a' and 'b' is in both or in neither.
    assert set(a_groups) == set(b_groups), "a transaction survived in one stream only"
    for line in reported:
        kind, rnd, seq, start, stop = line[:5]
        key = (int(rnd), int(seq))
        if kind in ("E", "A"):
            assert s_groups.get(key) == (rnd, seq, start, stop, int(stop) - int(start)), (
                f"reported {line} but the stream holds {s_groups.get(key)}"
            )
        else:
            assert kind == "T"
            assert a_groups.get(key) == (rnd, seq, start, stop, int(stop) - int(start)), line
            assert b_groups.get(key) == (rnd, seq, line[5], int(line[5]) + 1, 1), line
    return {"s": len(s_records), "a": len(a_records), "b": len(b_records)}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_returned_appends_survive_sigkill(tmp_path: Path) -> None:
    """Guarantee: an append that returned is durable across a process crash
    (synchronous=normal), batches and multi-stream transactions are never partial,
    offsets stay gap-free and are never reused, and the file always reopens cleanly
    (integrity_check ok) — over repeated SIGKILLs at random moments on the same file.
    Also: a Database kept open through every crash reads the same data, and a reader
    blocked on it (timeout=None) keeps being woken by each new child's commits."""
    path = tmp_path / "crash.db"
    with sqlstream.open(path) as db:
        for name in ("s", "a", "b"):
            db.create_stream(name)
    # A Database kept open across every crash: a survivor's connections must cope too,
    # and a reader blocked on it (timeout=None) must keep being woken by later writers.
    survivor = sqlstream.open(path)
    followed = {"next": 0}
    follower_errors: list[BaseException] = []

    def follow() -> None:
        stream = survivor.stream("s")
        try:
            while True:
                records = stream.read(followed["next"], PAGE, timeout=None)
                if not records:
                    return  # sealed at the end of the test
                followed["next"] = records[-1].offset + 1
        except BaseException as exc:
            follower_errors.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    rng = random.Random(20240607)
    reported: list[list[int | str]] = []
    killed_while_writing = 0
    try:
        for rnd in range(ROUNDS):
            report = tmp_path / f"report-{rnd}.txt"
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path), str(report), str(rnd), str(rng.randrange(2**32))],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                assert child.stdout is not None
                ready = child.stdout.readline()
                assert ready == b"ready\n", (ready, child.stderr.read() if child.stderr else b"")
                time.sleep(rng.uniform(0.01, 0.3))
                assert child.poll() is None, child.stderr.read() if child.stderr else b""
                child.send_signal(signal.SIGKILL)
                child.wait(30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(30)
                if child.stdout:
                    child.stdout.close()
                stderr = child.stderr.read() if child.stderr else b""
                if child.stderr:
                    child.stderr.close()
            assert child.returncode == -signal.SIGKILL, (child.returncode, stderr.decode(errors="replace"))
            this_round = parse_report(report)
            reported.extend(this_round)
            killed_while_writing += bool(this_round)

            with sqlstream.open(path) as db:  # reopening after the crash works...
                counts = verify(db, reported)  # ...and holds everything reported
                tail = db.stream("s").read(max(0, counts["s"] - 50), 50)
            # A handle that stayed open across the crash sees the same end of the stream.
            assert survivor.stream("s").read(max(0, counts["s"] - 50), 50) == tail
            assert {name: survivor.stream(name).info().next_offset for name in counts} == counts
            # The blocked follower was woken for the dead child's commits (the doorbell,
            # or the fallback check when the child died between commit and doorbell).
            deadline = time.monotonic() + 30.0  # a hang guard: no speed is asserted
            while followed["next"] < counts["s"] and time.monotonic() < deadline and not follower_errors:
                time.sleep(0.005)
            assert not follower_errors, follower_errors
            assert followed["next"] == counts["s"], f"the blocked reader is stuck at {followed['next']}"
        # ...and, finally, the whole of it.
        assert verify(survivor, reported) == counts
    finally:
        with contextlib.suppress(sqlstream.errors.SqlstreamError):
            survivor.stream("s").seal()  # ends the follower
        follower.join(10)
        survivor.close()
    assert not follower.is_alive()

    # The test is only meaningful if the child really was writing when it died.
    assert killed_while_writing >= ROUNDS // 2, killed_while_writing
    assert len(reported) > 50, len(reported)
    print(f"\n{ROUNDS} kills; {len(reported)} reported writes; final counts {counts}")


# --------------------------------------------------------------------------- synchronous


@pytest.mark.parametrize(("level", "code"), [("normal", 1), ("full", 2)])
def test_synchronous_option_is_applied_to_write_and_read_connections(tmp_path: Path, level: str, code: int) -> None:
    """Guarantee behind "survives power loss with synchronous='full'": the option is
    really in force on the connection that commits appends (read back with PRAGMA
    synchronous) and on the read connection behind db.query.

    The write connection is not reachable through the API; apsw's public
    ``connection_hooks`` hands the test every connection opened meanwhile, and the one
    that made the changes is the write connection."""
    path = str(tmp_path / f"sync-{level}.db")
    opened: list[apsw.Connection] = []
    apsw.connection_hooks.append(opened.append)
    try:
        with sqlstream.open(path, synchronous=level) as db:
            stream = db.create_stream("s")
            stream.append(b"x")
            stream.extend([b"y", b"z"])
            assert len(stream.read(0)) == 3
            assert db.query("PRAGMA synchronous").rows == [(code,)]
            writers = []
            for conn in opened:
                with contextlib.suppress(apsw.ConnectionClosedError):
                    if os.path.realpath(conn.filename) == os.path.realpath(path) and conn.total_changes() > 0:
                        writers.append(conn)
            assert writers, "no write connection seen"
            for conn in writers:
                assert conn.execute("PRAGMA synchronous").fetchall() == [(code,)], f"synchronous={level} not applied"
    finally:
        apsw.connection_hooks.remove(opened.append)
        opened.clear()
