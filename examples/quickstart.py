"""sqlstream end to end on a local file: the README's first quickstart command runs this.

Creates a new database file -- ``quickstart.db`` in a new temporary directory, or the
path given as the first argument, which must not exist yet -- and prints where, then:
two streams written atomically in one transaction, a reader blocked in another thread
woken by an append, an optimistic-concurrency append, a byte log written through its
secret and read back as bytes, and a look at the file with plain SQL. Every run starts
from a new file, so it writes nothing into the current directory and prints the same
story each time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

import sqlstream
from sqlstream import errors


def main(path: str | None = None) -> None:
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="sqlstream-quickstart-"), "quickstart.db")
    elif os.path.exists(path):
        sys.exit(f"{path} exists: the quickstart makes a new file; name another path or remove it")
    print(f"database: {path}")
    with sqlstream.open(path) as db:
        orders = db.create_stream("orders", exist_ok=True)
        audit = db.create_stream("audit", exist_ok=True)

        # Both appends commit together, or neither does.
        with db.transaction():
            offset = orders.append({"id": 1, "item": "tea", "qty": 2}, key="customer-7")
            audit.append(f"order at offset {offset} placed", headers={"by": "quickstart"})
        print(f"orders: appended offset {offset}; audit has {audit.info().count} record(s)")

        # A reader blocked on the stream wakes as soon as the next append commits.
        start = orders.info().next_offset
        woke: list[sqlstream.Record] = []
        reader = threading.Thread(target=lambda: woke.extend(orders.read(start, timeout=10)))
        reader.start()
        time.sleep(0.1)
        t0 = time.perf_counter()
        orders.append({"id": 2, "item": "cake", "qty": 1}, key="customer-9")
        reader.join()
        print(f"blocked reader woke with offset {woke[0].offset} after {(time.perf_counter() - t0) * 1e3:.2f} ms")

        # Optimistic concurrency: this append only happens at the offset we expect.
        try:
            orders.append({"id": 3}, expect_offset=0)
        except errors.ConcurrencyError as exc:
            print(f"expect_offset refused a stale write: {exc.args[0]}")

        # A byte log (BuildGrid semantics): written through its secret, read as bytes.
        log = db.create_stream("build-log", secret=True)
        writer = db.writer(log.write_secret or "")
        writer.extend([b"compiling...\n", b"linking...\n", b"done\n"])
        writer.seal()
        chunk = db.stream(log.name).read_bytes(0)
        print(f"byte log {log.name}: {chunk.length} bytes, finished={chunk.finished}")

        for rec in orders.read(0, limit=5):
            print(f"  {rec.offset}: key={rec.key} value={rec.value}")
        result = db.query(
            "SELECT json_extract(data, '$.item'), count(*) FROM chunks "
            "JOIN streams ON streams.id = chunks.stream_id WHERE streams.name = 'orders' "
            "GROUP BY 1 ORDER BY 1"
        )
        print("items by SQL:", result.rows)
        print(f"done: open {path} with `sqlite3 {path} 'select * from stream_stats'` to look inside")


if __name__ == "__main__":
    main(*sys.argv[1:2])
