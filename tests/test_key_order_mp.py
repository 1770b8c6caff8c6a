"""Key-ordered delivery across processes, with consumers SIGKILLed mid-work.

Consumers ack a batch and record the offsets the ack applied to in a ``done`` stream in one
transaction, so ``done`` is the commit order of acks, each record once. Per key, that order
must be strictly the offset order; no record may be lost.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers_subscriptions import spawn

import sqlstream

RECORDS = 600
KEYS = 12
CONSUMERS = 3
KILLS = 4

CONSUMER = r"""
import random, sys, time, sqlstream
path, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
db = sqlstream.open(path)
sub, done = db.subscription("work"), db.stream("done")
while True:
    batch = sub.fetch(name, rng.randint(1, 8), timeout=1.0)
    if not batch:
        continue
    time.sleep(rng.random() * 0.02)  # the work: kills often find records held
    with db.transaction():
        applied = sub.ack(*batch.offsets).applied
        if applied:
            keys = {r.offset: r.key for r in batch}
            done.extend([{"offset": o, "key": keys[o]} for o in applied])
"""


@pytest.mark.multiprocess
@pytest.mark.slow
def test_key_order_holds_per_key_with_consumers_killed(db: sqlstream.Database, tmp_path: Path) -> None:
    rng = random.Random(13)
    jobs = db.create_stream("jobs")
    db.create_stream("done")
    keys: list[str | None] = [None if i % 10 == 9 else f"k{rng.randrange(KEYS)}" for i in range(RECORDS)]
    with db.transaction():
        for i, key in enumerate(keys):
            jobs.append({"i": i}, key=key)
    sub = db.create_subscription("work", "jobs", ack_timeout=0.5, max_unacked=200, ordering="key")
    procs: list[subprocess.Popen[str]] = []
    logs: list[Path] = []

    def start_consumer() -> subprocess.Popen[str]:
        log = tmp_path / f"consumer-{len(logs)}.log"
        logs.append(log)
        with log.open("w") as out:
            return spawn(CONSUMER, db.path, f"c{len(logs)}", str(rng.randrange(1 << 30)), stdout=out, stderr=out)

    try:
        procs = [start_consumer() for _ in range(CONSUMERS)]
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 0.5))
            victim = rng.randrange(len(procs))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            procs[victim] = start_consumer()
        deadline = time.monotonic() + 60
        while sub.info().acked < RECORDS and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    done = [r.value for r in db.stream("done").read(0, 10 * RECORDS)]
    crashed = [log.read_text() for log in logs if "Traceback" in log.read_text()]
    assert not crashed, crashed[0]
    offsets = [d["offset"] for d in done]
    assert sorted(offsets) == list(range(RECORDS)), "records lost or acked twice"
    per_key: dict[str, list[int]] = {}
    for d in done:
        assert d["key"] == keys[d["offset"]]
        if d["key"] is not None:
            per_key.setdefault(d["key"], []).append(d["offset"])
    for key, acked in per_key.items():
        assert acked == sorted(acked), f"key {key} acked out of offset order"
    assert sub.info().pending == 0 and sub.info().waiting == 0
