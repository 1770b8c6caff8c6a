-- sqlstream schema, version 18: a writer that keeps appending to one stream no longer
-- writes the counters row at every commit.
--
-- Since version 13 every appending transaction wrote `counters.txn`: one b-tree page more
-- per commit, which made a one-record commit cost ~1.4x what the record alone costs
-- (benchmarks/findings.md, issue 23, "the counter's page"). Now the last number given out
-- is the larger of `counters.txn` and the txn of the last record of ONE stream, the one
-- the row `txn_stream` names (its id; 0 names none), the tail stream. A transaction whose
-- first append goes to the tail stream writes no counter: its records there carry the new
-- highest number. One whose first append goes elsewhere first names that stream the tail,
-- with `txn` set to the last number given out before it (one write, the same page as
-- before). So every record outside the tail stream has a txn no higher than the larger of
-- the two, which is exact: two seeks, whatever the number of streams (sqlstream.txn holds
-- the rule; writers without it take a number by writing it into `txn`).
INSERT INTO counters (name, value) SELECT 'txn_stream', 0
 WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'txn_stream');

-- Deleting the named stream's newest records (trim, retention, a deleted stream, plain
-- SQL) must not take their numbers out of the maximum, or a later commit would get one of
-- them again: a deleted record whose txn is above the row raises the row to it (the WHEN
-- is evaluated for every deleted record: ~0.4 us a row, measured on a bulk delete).
CREATE TRIGGER chunks_txn_floor AFTER DELETE ON chunks
WHEN old.txn > (SELECT value FROM counters WHERE name = 'txn')
BEGIN
    UPDATE counters SET value = old.txn WHERE name = 'txn';
END;

DROP VIEW last_txn;
CREATE VIEW last_txn AS
SELECT max(
    coalesce((SELECT value FROM counters WHERE name = 'txn'), 0),
    coalesce((SELECT c.txn FROM chunks c
               WHERE c.stream_id = (SELECT value FROM counters WHERE name = 'txn_stream')
               ORDER BY c.offset DESC LIMIT 1), 0)
) AS txn;
