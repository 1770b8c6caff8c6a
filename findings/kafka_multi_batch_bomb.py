"""Kafka listener (branch `kafka`): the inflation bound is per batch, not per request.

decode_batches() bounds each batch's decompressed size by max_batch_bytes
(= max_request_bytes) but keeps every decoded batch of a partition's record set in
memory, so N small compressed batches in one Produce inflate to N x the bound.
Also shown at the listener: one Produce request of a few KB makes the server hold
many times max_request_bytes (run with PYTHONPATH=<kafka worktree>).
"""
import os, resource, socket, struct, sys, tempfile

from sqlstream.kafka import records as R

LIMIT = 1 << 20                      # max_request_bytes for the demo: 1 MiB
value = b"\0" * (LIMIT // 4 - 200)   # under max_record_bytes
batch = R.encode_batch(0, [R.KafkaRecord(0, None, value, ())] * 4, codec=4)  # ~1 MiB inflated, zstd
N = 200
record_set = batch * N
decoded = R.decode_batches(record_set, max_record_bytes=16 << 20, max_batch_bytes=LIMIT)
inflated = sum(len(r.value or b"") for b in decoded for r in b.records)
print(f"request record set: {len(record_set):,} bytes; bound per batch {LIMIT:,}; "
      f"decoded and held at once: {inflated:,} bytes ({inflated / LIMIT:.0f}x the bound)")
print("peak RSS MiB:", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
