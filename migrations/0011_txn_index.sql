-- sqlstream schema: the last commit number is found with one index seek, whatever the
-- number of streams.
--
-- Until now the last_txn view took the txn of every stream's last record (one
-- primary-key seek per stream), and a writer re-derived its commit number through it
-- whenever another connection had committed since its own last commit (and on its first
-- append after opening): ~1 ms per 10,000 streams on every contended append. The index
-- chunks_by_txn makes max(txn) one seek down its right edge. Every insert pays a second,
-- small b-tree entry (txn, stream_id, offset), always written at the index's right end
-- (txn only grows); benchmarks/findings.md has the A/B figures. counters.txn stays the
-- floor kept before records are deleted (sqlstream.txn.keep_txn_floor), so the number
-- never goes back once the records holding it are gone.
CREATE INDEX chunks_by_txn ON chunks (txn);

-- As in version 9, with max(txn) read from chunks_by_txn.
DROP VIEW last_txn;
CREATE VIEW last_txn AS
SELECT max(
    coalesce((SELECT value FROM counters WHERE name = 'txn'), 0),
    coalesce((SELECT max(txn) FROM chunks), 0)
) AS txn;
