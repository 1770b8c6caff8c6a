-- sqlstream schema, version 11: identities that are never given twice, for the JetStream relay.
--
-- A record's relay message id must name that record and no other (issue 19). Two things
-- made ids repeat: a stream deleted and created again under its name starts at offset 0,
-- and a copy of the file made by backup() carried the file id of its original, so both
-- files went on to write different records at the same offsets.

-- Each stream, when it is created, gets the next number of a counter that only grows:
-- two streams of one name (one deleted, one created later) never share it. The trigger
-- gives it to every row inserted into `streams`, by sqlstream or any other tool. Streams
-- created before this version keep NULL (their message ids keep the old form, so a relay
-- that resends after the upgrade still sends the ids the server has seen).
ALTER TABLE streams ADD COLUMN incarnation INTEGER;
INSERT INTO counters (name, value) VALUES ('stream_incarnation', 0) ON CONFLICT (name) DO NOTHING;
CREATE TRIGGER streams_incarnation AFTER INSERT ON streams WHEN new.incarnation IS NULL
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'stream_incarnation';
    UPDATE streams SET incarnation = (SELECT value FROM counters WHERE name = 'stream_incarnation')
     WHERE id = new.id;
END;

-- The identities this file had before it became a copy. backup() gives the copy a new
-- `file_id` and records here the one it had, with the last commit (txn) the copy shares
-- with its original: records up to that commit are the original's records and keep its
-- identity in message ids (a resend of them is the same message, dropped by the server's
-- duplicate window); records after it are the copy's own, under its new id. A copy of a
-- copy adds a row: a record's identity is that of the row with the smallest `upto_txn` at
-- or above its txn, else the current `file_id`.
CREATE TABLE file_lineage (
    file_id   INTEGER PRIMARY KEY,
    upto_txn  INTEGER NOT NULL
);

-- Poison messages of a jetstream-source: messages it could not store (a damaged header,
-- a value the stream refuses), set aside and counted; the last one named by JetStream
-- stream and sequence with the reason. Written in the transaction that stores the batch
-- (and moves `sequence` past them), so a message is set aside once.
ALTER TABLE jetstream_sources ADD COLUMN poisoned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jetstream_sources ADD COLUMN last_poison TEXT;
