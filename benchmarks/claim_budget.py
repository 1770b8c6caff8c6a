"""A/B: CPU per claim (a fetch of 100 and its ack, 20,000 records) with fetch's byte budget.

    PYTHONPATH=<tree> python benchmarks/claim_budget.py <default|none> <keyed: 0|1> <record bytes>

``default``: fetch's default budget (64 MiB); ``none``: ``max_bytes=None``. The tree
before the budget existed runs with ``default`` (it takes no ``max_bytes``):
``git archive f202e78 sqlstream migrations | tar -x -C /tmp/base``, then
``PYTHONPATH=/tmp/base``. Alternate the variants round by round in fresh processes and
compare medians (benchmarks/findings.md, "attack7").
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import sqlstream

RECORDS = 20_000


def main() -> None:
    variant, keyed, size = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    with tempfile.TemporaryDirectory() as tmp, sqlstream.open(os.path.join(tmp, "b.db")) as db:
        stream = db.create_stream("s")
        for _ in range(0, RECORDS, 1000):
            stream.extend([b"x" * size] * 1000)
        sub = db.create_subscription("sub", "s", max_unacked=10_000, ordering="key" if keyed else None)
        options: dict[str, Any] = {} if variant == "default" else {"max_bytes": None}
        started = time.process_time()
        got = 0
        while batch := sub.fetch("c", 100, **options):
            got += len(batch)
            sub.ack(*batch.offsets)
        cpu = time.process_time() - started
        assert got == RECORDS, got
    print(f"{variant} keyed={int(keyed)} size={size} cpu={cpu * 1e6 / (RECORDS / 100):.0f}us/claim")


if __name__ == "__main__":
    main()
