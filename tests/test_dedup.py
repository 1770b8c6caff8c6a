"""Idempotent appends: dedup_id in append, extend, the producer and transactions, and its window.

The multi-process test races several processes appending the same dedup ids (append,
extend and producer mixed) and checks that each id ended as exactly one record, and
that every process was told that record's offset.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers_subscriptions import Clock, spawn

import sqlstream
from sqlstream import errors


@pytest.fixture
def clock(db: sqlstream.Database) -> Clock:
    c = Clock(time.time())
    db.engine.clock = c
    return c


def values(stream: sqlstream.Stream) -> list[object]:
    info = stream.info()
    return [r.value for r in stream.read(info.first_offset, 10_000)]


def test_a_repeated_dedup_id_returns_the_original_offset(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    assert stream.append("a", dedup_id="k1") == 0
    assert stream.append("b") == 1
    assert stream.append("a again", dedup_id="k1") == 0
    assert stream.append("c", dedup_id="k2") == 2
    assert values(stream) == ["a", "b", "c"]
    assert db.query("SELECT dedup_ids FROM stream_stats").rows == [(2,)]


def test_extend_with_dedup_ids(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    stream.append(0, dedup_id="x")
    got = stream.extend([1, 2, 3, 4, 5], dedup_ids=["a", None, "x", "a", "b"])
    # "x" is the earlier record; the second "a" is the batch's own first "a".
    assert got == [1, 2, 0, 1, 3]
    assert values(stream) == [0, 1, 2, 5]
    assert stream.extend([9, 9], dedup_ids=["a", "b"]) == [1, 3]  # all duplicates: nothing stored
    assert stream.info().next_offset == 4
    assert stream.extend([], dedup_ids=[]) == []
    with pytest.raises(errors.InvalidValue, match="one per value"):
        stream.extend([1, 2], dedup_ids=["a"])
    with pytest.raises(errors.InvalidValue):
        stream.append(1, dedup_id="")
    with pytest.raises(errors.InvalidValue):
        stream.append(1, dedup_id=5)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidValue):
        stream.append(1, dedup_id="\ud800")


def test_the_count_window(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", dedup_records=3)
    assert stream.append("a", dedup_id="k") == 0
    stream.extend(["b", "c"])
    assert stream.append("a", dedup_id="k") == 0  # offset 0 is among the last 3 (0, 1, 2)
    stream.append("d")
    assert stream.append("a", dedup_id="k") == 4  # out of the window: a new record
    assert stream.append("a", dedup_id="k") == 4  # which the id now names


def test_the_time_window(db: sqlstream.Database, clock: Clock) -> None:
    stream = db.create_stream("s", dedup_seconds=60)
    assert stream.append("a", dedup_id="k") == 0
    clock.advance(59)
    assert stream.append("a", dedup_id="k") == 0
    clock.advance(2)
    assert stream.append("a", dedup_id="k") == 1
    db.set_retention("s", dedup_seconds=3600)
    clock.advance(1000)
    assert stream.append("a", dedup_id="k") == 1


def test_a_trimmed_original_still_deduplicates(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", max_count=1)
    assert stream.append("a", dedup_id="k") == 0
    stream.extend(["b", "c"])
    assert stream.info().first_offset == 2
    assert stream.append("a", dedup_id="k") == 0  # the original, although trimmed
    with pytest.raises(errors.OffsetOutOfRange):
        stream.read(0)
    assert stream.info().next_offset == 3


def test_dedup_inside_transactions(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    with db.transaction():
        assert stream.append("a", dedup_id="k") == 0
        assert stream.append("a", dedup_id="k") == 0  # the transaction sees its own ids
    with pytest.raises(RuntimeError):
        with db.transaction():
            assert stream.append("b", dedup_id="rolled") == 1
            raise RuntimeError
    assert stream.append("b", dedup_id="rolled") == 1  # the rollback took the id with it
    assert values(stream) == ["a", "b"]


def test_dedup_checks_the_secret_first_and_answers_duplicates_on_sealed_streams(db: sqlstream.Database) -> None:
    log = db.create_stream("log", secret=True)
    assert log.append("x", dedup_id="k") == 0
    with pytest.raises(errors.AccessDenied):
        db.stream("log").append("x", dedup_id="k")
    log.seal()
    assert log.append("x", dedup_id="k") == 0  # the retry of an append that succeeded
    with pytest.raises(errors.StreamSealed):
        log.append("y", dedup_id="new")
    with pytest.raises(errors.StreamNotFound):
        sqlstream.Stream(db, "nope").append("x", dedup_id="k")


def test_a_duplicate_ignores_a_stale_expect_offset(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    assert stream.append("a", dedup_id="k", expect_offset=0) == 0
    assert stream.append("a", dedup_id="k", expect_offset=0) == 0
    with pytest.raises(errors.ConcurrencyError):
        stream.append("b", dedup_id="new", expect_offset=0)


def test_producer_dedup(db: sqlstream.Database) -> None:
    db.create_stream("s")
    seen: list[tuple[list[str | None], list[int]]] = []
    with db.producer(max_delay=0.05, on_success=lambda s, recs, offs: seen.append(([r.dedup_id for r in recs], offs))) as p:
        futures = [p.append("s", i, dedup_id=f"id{i % 3}") for i in range(6)]
        futures.append(p.append("s", "plain"))
        p.flush()
    assert [f.result() for f in futures] == [0, 1, 2, 0, 1, 2, 3]
    assert values(db.stream("s")) == [0, 1, 2, "plain"]
    with db.producer() as p:
        with pytest.raises(errors.InvalidValue):
            p.append("s", 1, dedup_id="")
    assert seen and seen[0][0][:3] == ["id0", "id1", "id2"]


def test_maintain_prunes_ids_outside_the_window(db: sqlstream.Database, clock: Clock) -> None:
    stream = db.create_stream("s", dedup_seconds=10, dedup_records=1000)
    stream.extend(list(range(5)), dedup_ids=[f"a{i}" for i in range(5)])
    clock.advance(11)
    stream.extend(list(range(3)), dedup_ids=[f"b{i}" for i in range(3)])
    report = db.maintain(vacuum=False, checkpoint=False, optimize=False)
    assert report.dedup_pruned == 5
    assert db.query("SELECT count(*) FROM dedup").rows == [(3,)]


def test_appends_prune_as_they_pass_every_64th_offset(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", dedup_records=10)
    for i in range(200):
        stream.append(i, dedup_id=f"k{i}")
    remembered = db.query("SELECT count(*) FROM dedup").rows[0][0]
    assert remembered < 10 + 64


# --------------------------------------------------------------------------- processes

WRITER = r"""
import json, os, random, sys, time, sqlstream
path, seed, n, gate, writers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rng = random.Random(seed)
# Start together: a process that starts first (spawning and importing take a while)
# would otherwise store every id before the others open the file, and nothing races.
open(os.path.join(gate, f"ready-{seed}"), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(gate)) < writers and time.monotonic() < deadline:
    time.sleep(0.005)
ids = list(range(n))
rng.shuffle(ids)
got = {}
with sqlstream.open(path) as db:
    stream = db.stream("events")
    with db.producer(max_batch=20, max_delay=0.001) as producer:
        futures = {}
        i = 0
        mid = False
        while i < len(ids):
            if not mid and i >= 100:
                # A second meeting point once each has stored its first ~100 ids: on a
                # loaded machine a process can still be descheduled after the gate while
                # another stores every id; past this point all are writing at once.
                mid = True
                open(os.path.join(gate, f"mid-{seed}"), "w").close()
                deadline = time.monotonic() + 60
                while (sum(f.startswith("mid-") for f in os.listdir(gate)) < writers
                       and time.monotonic() < deadline):
                    time.sleep(0.005)
            how = rng.choice(["append", "extend", "producer"])
            if how == "append":
                got[ids[i]] = stream.append({"id": ids[i], "p": seed}, dedup_id=f"id-{ids[i]}")
                i += 1
            elif how == "extend":
                chunk = ids[i:i + rng.randint(1, 8)]
                offs = stream.extend([{"id": x, "p": seed} for x in chunk], dedup_ids=[f"id-{x}" for x in chunk])
                got.update(zip(chunk, offs))
                i += len(chunk)
            else:
                futures[ids[i]] = producer.append("events", {"id": ids[i], "p": seed}, dedup_id=f"id-{ids[i]}")
                i += 1
        producer.flush()
        got.update({k: f.result() for k, f in futures.items()})
print(json.dumps(got))
"""


@pytest.mark.multiprocess
@pytest.mark.slow
def test_concurrent_producers_in_several_processes_store_each_id_once(tmp_path: Path) -> None:
    path = str(tmp_path / "dedup.db")
    ids = 1500
    with sqlstream.open(path) as db:
        db.create_stream("events")
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [spawn(WRITER, path, str(seed), str(ids), str(gate), "4", stdout=-1, stderr=-1) for seed in range(4)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        answers.append({int(k): v for k, v in json.loads(out).items()})
    with sqlstream.open(path) as db:
        records = db.stream("events").read(0, 10_000)
        assert db.check().ok
    counts = Counter(r.value["id"] for r in records)
    assert len(records) == ids and set(counts) == set(range(ids)) and set(counts.values()) == {1}
    assert len({r.value["p"] for r in records}) > 1  # the processes did race: several won ids
    where = {r.value["id"]: r.offset for r in records}
    for answer in answers:
        assert answer == where  # every process was told the one record's offset
