-- sqlstream schema: every commit that appends writes its commit number to counters.txn
-- again, so the last one given out is one row, whatever the number of streams.
--
-- Since version 9 an append wrote only its chunk rows and the last txn was derived:
-- max(counters.txn as a floor, the txn of each stream's last record), one primary-key
-- seek per stream, which a writer paid whenever another connection had committed since
-- its own last commit (and on its first append after opening): ~1 ms per 10,000 streams
-- on every contended append. Measured against an index on chunks(txn) (the other way to
-- find max(txn) in one seek), the counter costs a single-record commit as much (one more
-- page) and a batch almost nothing, where the index costs an entry per record
-- (benchmarks/findings.md, issue 23). counters.txn becomes exact here, from the view of
-- version 9, and stays exact: sqlstream.txn.next_txn increments it in the appending
-- transaction, so a rollback takes the increment back with the records.
UPDATE counters SET value = (SELECT txn FROM last_txn) WHERE name = 'txn';
INSERT INTO counters (name, value) SELECT 'txn', (SELECT txn FROM last_txn)
 WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'txn');

-- As in version 9, from the counter alone.
DROP VIEW last_txn;
CREATE VIEW last_txn AS
SELECT coalesce((SELECT value FROM counters WHERE name = 'txn'), 0) AS txn;
