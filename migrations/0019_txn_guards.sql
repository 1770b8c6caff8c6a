-- sqlstream schema, version 19: plain SQL can no longer make a commit number be given out
-- twice, nor leave the counters rows in a state the writers cannot read.
--
-- Version 18 keeps the last number given out as the larger of `counters.txn` and the txn
-- of the tail stream's last record (the row `txn_stream` names), and covers deletes of
-- that stream's newest records (`chunks_txn_floor`). Edits by SQL outside sqlstream (the
-- sqlite3 shell, another program) still took numbers out of that maximum, and the next
-- commit got one of them again (tests/test_txn_guards.py):
--
-- * `txn_stream` changed (to another stream, a missing one, 0, -1, text): the old tail's
--   newest numbers were no longer counted;
-- * a record's txn lowered, or the tail's last record moved to another stream or offset:
--   the same; a record's txn raised above the maximum: that number was given out again;
-- * `counters.txn` lowered, or set to text or a real: repeated numbers, or raw TypeError /
--   ValueError from every append and from `check()`;
-- * a counters row deleted, renamed or replaced (INSERT OR REPLACE, which fires no delete
--   trigger).
--
-- sqlstream itself never does any of these: it only raises `txn` (the hand-over below,
-- next_txn and hold_txn raise it, chunks_txn_floor raises it) and
-- never updates a record. So the triggers below refuse what would lower the maximum or
-- break the rows' types, and heal what can be healed (a moved tail, an updated record).
-- An append that goes to the tail stream fires none of them (it writes no counters row
-- and updates no record); the hand-over (move_tail) is one statement instead of two and
-- costs about what it did (benchmarks/findings.md, "attack5").

-- Under version 18 such an edit (a renamed tail) could already have left a number given
-- out above the maximum, in the last record of some stream: take the largest stream end
-- into txn once (one seek per stream, as versions 9 and 10 read it).
WITH ends (txn) AS (
    SELECT max((SELECT c.txn FROM chunks c WHERE c.stream_id = s.id ORDER BY c.offset DESC LIMIT 1)) FROM streams s
)
UPDATE counters SET value = (SELECT txn FROM ends)
 WHERE name = 'txn' AND typeof(value) = 'integer' AND (SELECT typeof(txn) FROM ends) = 'integer'
   AND value < (SELECT txn FROM ends);

-- The two rows stay, under their names, with integer values; `txn` never goes down (a
-- value that is not an integer, left by an earlier version, may be replaced by any integer:
-- the repair CorruptDatabase's hint gives).
-- (Spelled with OR, not IN (...): see the CHECK on chunks.content_type in version 1.)
CREATE TRIGGER counters_txn_guard BEFORE UPDATE ON counters
WHEN (old.name = 'txn' OR old.name = 'txn_stream' OR new.name = 'txn' OR new.name = 'txn_stream')
 AND (new.name IS NOT old.name OR typeof(new.value) != 'integer'
      OR (old.name = 'txn' AND typeof(old.value) = 'integer' AND new.value < old.value))
BEGIN
    SELECT RAISE(ABORT, 'sqlstream: the counters rows txn and txn_stream keep their names and integer values, and txn never decreases (it is the last commit number given out: lowering it would give numbers out twice)');
END;

CREATE TRIGGER counters_txn_keep BEFORE DELETE ON counters
WHEN old.name = 'txn' OR old.name = 'txn_stream'
BEGIN
    SELECT RAISE(ABORT, 'sqlstream: the counters rows txn and txn_stream cannot be deleted (without them no commit number can be taken)');
END;

-- An INSERT of either name can only replace the row (INSERT OR REPLACE, REPLACE INTO),
-- which fires no delete trigger: refused as the delete would be.
CREATE TRIGGER counters_txn_insert BEFORE INSERT ON counters
WHEN new.name = 'txn' OR new.name = 'txn_stream'
BEGIN
    SELECT RAISE(ABORT, 'sqlstream: the counters rows txn and txn_stream cannot be inserted or replaced; update txn upwards if you must');
END;

-- Naming another tail stream raises txn to the old tail's last number: the old tail's
-- newest numbers stay given out, whoever renames it. This is also how sqlstream's own
-- hand-over writes txn from now on (sqlstream.txn.move_tail updates txn_stream only: one
-- statement where version 18 ran two; txn is the last number given out either way).
-- Both rows are on one page, so the commit writes it once.
CREATE TRIGGER counters_tail_moved AFTER UPDATE OF value ON counters
WHEN old.name = 'txn_stream' AND new.value IS NOT old.value
BEGIN
    UPDATE counters
       SET value = max(value, coalesce((SELECT c.txn FROM chunks c WHERE c.stream_id = old.value
                                        ORDER BY c.offset DESC LIMIT 1), value))
     WHERE name = 'txn';
END;

-- A record changed by UPDATE (sqlstream never updates one): its txn must stay an
-- integer, and both its old and its new number stay given out, wherever it now is.
CREATE TRIGGER chunks_txn_update AFTER UPDATE OF stream_id, offset, txn ON chunks
BEGIN
    SELECT RAISE(ABORT, 'sqlstream: a record''s txn must be an integer')
     WHERE typeof(new.txn) != 'integer';
    UPDATE counters SET value = max(old.txn, new.txn)
     WHERE name = 'txn' AND value < max(old.txn, new.txn);
END;
