"""W4: consuming a subscription (consumer group / ack queue) in fetches of 100, acking each batch.

Each round first fills the queue with fresh records (not timed), then times draining them.
sqlstream's contender runs once ``Database.create_subscription`` exists; until then it is
reported as skipped.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlstream

from .appends import BATCH
from .harness import Contender, Env, Outcome, Sample, Skip, alternate, payload, workdir
from .peers import need

FETCH = 100


class SqlstreamFetchAck(Contender):
    name = "sqlstream"

    def __init__(self, records: int) -> None:
        self.records = records

    def open(self, workdir: str) -> None:
        if not hasattr(sqlstream.Database, "create_subscription"):
            raise Skip("subscriptions are not implemented in sqlstream yet")
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.stream = self.db.create_stream("w4")
        self.sub = self.db.create_subscription("w4-sub", "w4", start="earliest", max_unacked=10 * FETCH)

    def round(self) -> Sample:
        rows = [payload(i) for i in range(min(BATCH, self.records))]
        for start in range(0, self.records, len(rows)):
            self.stream.extend(rows[: self.records - start])
        fetch, ack, clock = self.sub.fetch, self.sub.ack, time.perf_counter
        seen = 0
        start_t = clock()
        while seen < self.records:
            batch = fetch(consumer="c1", max_records=FETCH, timeout=0)
            if not batch:
                raise RuntimeError(f"subscription ran dry after {seen} of {self.records} records")
            ack(*(r.offset for r in batch))
            seen += len(batch)
        return Sample(seen, clock() - start_t)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


class RedisGroup(Contender):
    name = "Redis XREADGROUP+XACK"

    def __init__(self, env: Env, records: int) -> None:
        self.env = env
        self.records = records

    def open(self, workdir: str) -> None:
        client = self.client = self.env.redis_or_skip().client()
        client.delete("w4")
        client.xgroup_create("w4", "g", id="0", mkstream=True)

    def round(self) -> Sample:
        client = self.client
        rows = [payload(i) for i in range(self.records)]
        for start in range(0, self.records, BATCH):
            pipe = client.pipeline(transaction=False)
            for data in rows[start:start + BATCH]:
                pipe.xadd("w4", {"d": data})
            pipe.execute()
        xreadgroup, xack, clock = client.xreadgroup, client.xack, time.perf_counter
        seen = 0
        start_t = clock()
        while seen < self.records:
            got = xreadgroup("g", "c1", {"w4": ">"}, count=FETCH)
            if not got:
                raise RuntimeError(f"group ran dry after {seen} of {self.records} records")
            entries = got[0][1]
            xack("w4", "g", *(e[0] for e in entries))
            seen += len(entries)
        return Sample(seen, clock() - start_t)

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.delete("w4")
            self.client.close()


class PersistQueueAck(Contender):
    name = "persist-queue SQLiteAckQueue"

    def __init__(self, records: int) -> None:
        self.records = records

    def open(self, workdir: str) -> None:
        persistqueue = need("persistqueue", "persist-queue")
        self.q = persistqueue.SQLiteAckQueue(os.path.join(workdir, "pq"), auto_commit=True)

    def round(self) -> Sample:
        q = self.q
        for i in range(self.records):
            q.put(payload(i))
        get, ack, clock = q.get, q.ack, time.perf_counter
        seen = 0
        start_t = clock()
        while seen < self.records:
            batch: list[Any] = []
            for _ in range(FETCH):
                item = get(block=False, raw=True)
                batch.append(item)
            for item in batch:
                ack(id=item["pqid"])
            seen += len(batch)
        return Sample(seen, clock() - start_t)

    def close(self) -> None:
        if hasattr(self, "q"):
            self.q.close()


class LitequeuePopDone(Contender):
    name = "litequeue pop+done"

    def __init__(self, records: int) -> None:
        self.records = records

    def open(self, workdir: str) -> None:
        litequeue = need("litequeue", "litequeue")
        self.q = litequeue.LiteQueue(os.path.join(workdir, "lq.db"))

    def round(self) -> Sample:
        q = self.q
        for i in range(self.records):
            q.put(payload(i).decode())
        pop, done, clock = q.pop, q.done, time.perf_counter
        seen = 0
        start_t = clock()
        while seen < self.records:
            batch = []
            for _ in range(FETCH):
                msg = pop()
                if msg is None:
                    raise RuntimeError(f"litequeue ran dry after {seen + len(batch)} records")
                batch.append(msg)
            for msg in batch:
                done(msg.message_id)
            seen += len(batch)
        return Sample(seen, clock() - start_t)

    def close(self) -> None:
        if hasattr(self, "q"):
            self.q.close()


def w4(env: Env) -> Outcome:
    out = Outcome("W4", "subscription fetch 100 + ack")
    n = env.sizes.w4_records - env.sizes.w4_records % FETCH
    contenders = [SqlstreamFetchAck(n), RedisGroup(env, n), PersistQueueAck(n), LitequeuePopDone(n)]
    with workdir() as tmp:
        out.series = alternate("W4", contenders, env.sizes.rounds, tmp, env.log)
    out.notes.append(
        "persist-queue and litequeue have no batch fetch: 100 get/pop calls then 100 ack/done calls, "
        "each its own transaction; Redis acks the 100 ids in one XACK"
    )
    targets = {"Redis XREADGROUP+XACK": 0.5, "persist-queue SQLiteAckQueue": 20.0}
    for c in contenders[1:]:
        out.compare(f"vs {c.name}", "sqlstream", c.name, targets.get(c.name))
    return out
