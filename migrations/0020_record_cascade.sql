-- sqlstream schema, version 20: a record no longer checks its stream's row when it is
-- stored; a deleted stream's records are deleted by a trigger instead of by a foreign key;
-- a stream id is never given twice.
--
-- `chunks.stream_id REFERENCES streams (id) ON DELETE CASCADE` made SQLite look the stream
-- up in `streams` for every record inserted (a cursor opened and a seek, per row: ~8% of
-- the instructions of a batched 100-byte append, benchmarks/findings.md, issue 23).
-- sqlstream stores a record only in the transaction that has just read its stream's row,
-- so the check never refused anything sqlstream wrote. And the cascade only ran where
-- foreign keys were on: the sqlite3 shell has them off, so `DELETE FROM streams WHERE
-- name = 'x'` there left the stream's records behind, and the next stream created took the
-- same id (the largest id plus one) and showed them as its own. A trigger fires whatever
-- the connection's settings: `streams_delete_records` deletes a stream's records (and so,
-- through `chunks_payload_delete`, their out-of-row payloads) in the statement that
-- deletes the stream, everywhere.
--
-- The foreign key goes by SQLite's procedure for removing a constraint
-- (https://sqlite.org/lang_altertable.html, "other kinds of table schema changes"): the
-- table's text in sqlite_schema is edited; no row is read or rewritten. writable_schema = RESET reloads the schema on this
-- connection, and the CREATE TRIGGER below changes the schema cookie, so every other
-- connection reloads it before its next statement.

-- Records of streams that no longer exist (left by a stream deleted where foreign keys
-- were off), deleted now as the cascade would have; one seek per stream id present.
WITH RECURSIVE ids (id) AS (
    SELECT (SELECT stream_id FROM chunks ORDER BY stream_id LIMIT 1)
    UNION ALL
    SELECT (SELECT stream_id FROM chunks WHERE stream_id > ids.id ORDER BY stream_id LIMIT 1)
      FROM ids WHERE ids.id IS NOT NULL
)
DELETE FROM chunks WHERE stream_id IN (
    SELECT id FROM ids WHERE id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.id = ids.id)
);

PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, 'stream_id     INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,',
                          'stream_id     INTEGER NOT NULL,')
 WHERE type = 'table' AND name = 'chunks';
PRAGMA writable_schema = RESET;

-- A stream id is never given twice. Rows of a deleted stream that a connection with
-- foreign keys off left behind (its subscriptions, dedup ids, lifetime, idempotent
-- producers, ...) would otherwise belong to the next stream created with the freed id: a
-- subscription past offsets the new stream has not written, appends dropped as
-- duplicates of the old stream's dedup ids, an expiry that deletes the new stream. The
-- row `stream_id_floor` holds the largest id ever used; sqlstream gives a new stream an
-- id above both it and every id in use (Database.create_stream). It starts at the
-- largest stream id found in any table, orphans included.
INSERT INTO counters (name, value) SELECT 'stream_id_floor', max(
    coalesce((SELECT max(id) FROM streams), 0),
    coalesce((SELECT max(stream_id) FROM chunks), 0),
    coalesce((SELECT max(stream_id) FROM payloads), 0),
    coalesce((SELECT max(stream_id) FROM subscriptions), 0),
    coalesce((SELECT max(stream_id) FROM cursors), 0),
    coalesce((SELECT max(stream_id) FROM export_streams), 0),
    coalesce((SELECT max(stream_id) FROM export_ranges), 0),
    coalesce((SELECT max(stream_id) FROM storage_segments), 0),
    coalesce((SELECT max(stream_id) FROM dedup), 0),
    coalesce((SELECT max(stream_id) FROM kafka_batches), 0),
    coalesce((SELECT max(stream_id) FROM producers), 0),
    coalesce((SELECT max(stream_id) FROM writer_seqs), 0),
    coalesce((SELECT max(stream_id) FROM stream_lifetimes), 0)
) WHERE true  -- (the parser's rule for an upsert on INSERT ... SELECT)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
 WHERE typeof(value) != 'integer' OR value < excluded.value;

CREATE TRIGGER streams_delete_records AFTER DELETE ON streams
BEGIN
    DELETE FROM chunks WHERE stream_id = old.id;
    UPDATE counters SET value = old.id
     WHERE name = 'stream_id_floor' AND (typeof(value) != 'integer' OR value < old.id);
END;

-- A stream's id no longer changes under its records: with the foreign key, an UPDATE of
-- `streams.id` was refused while records referred to it (where foreign keys were on).
CREATE TRIGGER streams_id_keep BEFORE UPDATE OF id ON streams
WHEN new.id IS NOT old.id AND EXISTS (SELECT 1 FROM chunks WHERE stream_id = old.id)
BEGIN
    SELECT RAISE(ABORT, 'sqlstream: a stream''s id cannot change while it has records');
END;
