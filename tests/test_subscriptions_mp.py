"""Subscriptions across processes: producers and consumers on one file, consumers SIGKILLed.

The consumers process a batch, then ack it and record the acked offsets in a ``done``
stream in one transaction (only offsets the ack actually applied to), so ``done`` holds
exactly what was acked, once each. Poison records are always nacked and must end in the
dead-letter stream after ``max_deliveries`` attempts; nothing else may.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers_subscriptions import spawn

import sqlstream

PRODUCERS = 2
PER_PRODUCER = 2000
CONSUMERS = 4
MAX_DELIVERIES = 4
KILLS = 8
POISON_EVERY = 397  # value i of a producer is poison when i % POISON_EVERY == 5

PRODUCER = r"""
import sys, time, sqlstream
path, who = sys.argv[1], int(sys.argv[2])
count, every = int(sys.argv[3]), int(sys.argv[4])
with sqlstream.open(path) as db, db.producer(max_batch=100, max_delay=0.002) as producer:
    futures = []
    for i in range(count):
        futures.append(producer.append("jobs", {"p": who, "i": i, "poison": i % every == 5}))
        if i % 50 == 49:
            time.sleep(0.04)  # spread the appends over the run, so kills land mid-stream
    producer.flush()
    assert all(f.exception() is None for f in futures)
"""

CONSUMER = r"""
import random, sys, time, sqlstream
path, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
db = sqlstream.open(path)
sub, done = db.subscription("work"), db.stream("done")
while True:
    batch = sub.fetch(name, rng.randint(1, 25), timeout=1.0)
    if not batch:
        continue
    time.sleep(rng.random() * 0.03)  # the work: long enough that kills often find records held
    bad = [r.offset for r in batch if r.value["poison"]]
    if bad:
        sub.nack(*bad, error="poison")
    good = [r.offset for r in batch if not r.value["poison"]]
    if good:
        with db.transaction():
            applied = sub.ack(*good).applied
            if applied:
                done.extend([{"offset": o, "attempts": batch.attempts[o]} for o in applied])
"""


@pytest.mark.multiprocess
@pytest.mark.slow
def test_consumers_killed_at_random_lose_nothing(db: sqlstream.Database, tmp_path: Path) -> None:
    rng = random.Random(20240611)
    db.create_stream("jobs")
    db.create_stream("done")
    sub = db.create_subscription(
        "work", "jobs", ack_timeout=1.0, max_unacked=300, max_deliveries=MAX_DELIVERIES, dead_letter="dead"
    )
    logs: list[Path] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        log = tmp_path / f"child-{len(logs)}.log"
        logs.append(log)
        return spawn(code, *args, stdout=subprocess.DEVNULL, stderr=log.open("w"))

    producers = [start(PRODUCER, db.path, str(p), str(PER_PRODUCER), str(POISON_EVERY)) for p in range(PRODUCERS)]
    consumers = [start(CONSUMER, db.path, f"c{i}", str(i)) for i in range(CONSUMERS)]
    names_of = {proc.pid: f"c{i}" for i, proc in enumerate(consumers)}
    names = CONSUMERS
    kills = 0
    try:
        deadline = time.monotonic() + 50
        while True:
            assert time.monotonic() < deadline, f"not drained in time: {sub.info()}"
            for proc in consumers:
                assert proc.poll() is None, f"a consumer died by itself: {logs[-1].read_text()[-2000:]}"
            if all(p.poll() is not None for p in producers):
                assert [p.returncode for p in producers] == [0] * PRODUCERS, [log.read_text() for log in logs[:2]]
                info = sub.info()
                if info.lag == 0 and info.pending == 0:
                    break
            # Kill only consumers that hold records right now: a kill of an idle consumer
            # (on a loaded machine, often one still starting) proves nothing.
            holders = {e.consumer for e in sub.pending() if e.consumer is not None}
            candidates = [proc for proc in consumers if names_of[proc.pid] in holders]
            if kills < KILLS and candidates:
                victim = rng.choice(candidates)
                consumers.remove(victim)
                victim.send_signal(signal.SIGKILL)
                victim.wait(30)
                kills += 1
                fresh = start(CONSUMER, db.path, f"c{names}", str(names))
                names_of[fresh.pid] = f"c{names}"
                consumers.append(fresh)
                names += 1
            time.sleep(rng.uniform(0.1, 0.3))
    finally:
        for proc in consumers + producers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)

    jobs = db.stream("jobs").read(0, 100_000)
    assert len(jobs) == PRODUCERS * PER_PRODUCER
    poison = {r.offset for r in jobs if r.value["poison"]}
    wanted = {r.offset for r in jobs} - poison
    done_records = db.stream("done").read(0, 100_000)
    done = Counter(r.value["offset"] for r in done_records)
    redelivered = sum(1 for r in done_records if r.value["attempts"] > 1)
    assert set(done) == wanted, "lost or extra records"
    assert set(done.values()) == {1}, "a record was acked twice"
    letters = db.stream("dead").read(0, 10_000)
    assert sorted(int(r.headers["sqlstream.source_offset"]) for r in letters) == sorted(poison)
    assert {r.headers["sqlstream.attempts"] for r in letters} == {str(MAX_DELIVERIES)}
    assert {r.headers["sqlstream.last_error"] for r in letters} == {"poison"}
    info = sub.info()
    assert (info.acked, info.dead_lettered, info.pending, info.lag) == (len(wanted), len(poison), 0, 0)
    print(f"{kills} consumers killed, {len(done)} records acked ({redelivered} after a redelivery), "
          f"{len(poison)} dead-lettered")
    assert kills >= 3, f"only {kills} kills landed on consumers holding records: the test proved little"
    assert redelivered > 0, "no kill hit a consumer holding records: the test proved little"



GRABBER = r"""
import sys, sqlstream
path, name = sys.argv[1], sys.argv[2]
with sqlstream.open(path) as db:
    sub = db.subscription("sub")
    got = []
    open(path + "." + name + ".ready", "w").close()  # started: the test appends once all are
    while True:
        batch = sub.fetch(name, 7, timeout=2.0)
        if not batch:
            break
        got += batch.offsets
print(" ".join(map(str, got)))
"""


@pytest.mark.multiprocess
def test_consumers_in_different_processes_never_get_the_same_record(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    db.create_subscription("sub", "s", ack_timeout=600, max_unacked=100_000)
    procs = [spawn(GRABBER, db.path, f"p{i}", stdout=subprocess.PIPE) for i in range(3)]
    # Append only once every grabber runs: on a fast machine the first one started could
    # otherwise claim all 3,000 records before the others had imported sqlstream.
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{db.path}.p{i}.ready") for i in range(3)):
        assert time.monotonic() < deadline, "grabbers did not start"
        time.sleep(0.01)
    time.sleep(0.1)  # and are blocked in fetch
    for i in range(0, 3000, 100):
        stream.extend(list(range(i, i + 100)))
        time.sleep(0.005)
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    got = [[int(o) for o in out.split()] for out in outputs]
    assert sorted(o for part in got for o in part) == list(range(3000))
    assert sum(1 for part in got if part) >= 2
