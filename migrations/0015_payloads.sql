-- sqlstream schema, version 15: large payloads out of the row.
--
-- A record's row in the WITHOUT ROWID `chunks` b-tree is an index cell: once the whole
-- row exceeds about a quarter of a page (1,002 bytes at SQLite's 4,096-byte page) the
-- rest of it spills to overflow pages, and every seek or scan that passes such a cell
-- reads all of them (a b-tree comparison loads the whole stored row). A 64 KiB record
-- made range reads, appends and scans of offsets and times 1.2-70x slower than needed
-- (benchmarks/findings.md, issue 23). Since this version a payload larger than
-- sqlstream.records.inline_max(page_size) bytes (what still fits in the cell beside a
-- typical key and headers; spelled out in SQL below, as of this version) is stored as a BLOB in `payloads`, a rowid table
-- (its integer key is compared without reading the payload) found by the record's
-- (stream_id, offset) through a small index, and the record's `chunks` row keeps `data`
-- NULL. Smaller payloads stay in `data`, as before, and their rows are exactly as before:
-- no column or constraint is added to `chunks`, so a small record costs what it did (an
-- extra `payload` column with a CHECK and a partial index, measured first, cost batched
-- 100-byte appends 5-7% more instructions). A trigger deletes a record's payload row
-- with the record, in the same statement, whoever deletes it (retention, a deleted
-- stream's cascade, plain SQL), so no payload outlives its record. The view `records`
-- shows every record with its value in `data` wherever it is stored: query it, not
-- `chunks`, to see values in SQL.

CREATE TABLE payloads (
    id         INTEGER PRIMARY KEY,
    stream_id  INTEGER NOT NULL,                   -- the record whose value this is
    offset     INTEGER NOT NULL,
    data       BLOB    NOT NULL                    -- the stored bytes (UTF-8 for text and json)
);
CREATE UNIQUE INDEX payloads_by_record ON payloads (stream_id, offset);

-- The rebuilt chunks table: as in version 1, with `data` nullable.
CREATE TABLE chunks_v15 (
    stream_id     INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    offset        INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    timestamp     INTEGER NOT NULL,
    txn           INTEGER NOT NULL,
    key           TEXT,
    headers       TEXT,
    content_type  TEXT    NOT NULL CHECK (content_type = 'bytes' OR content_type = 'text' OR content_type = 'json'),
    data          BLOB,                            -- the payload; NULL when it is in `payloads`
    PRIMARY KEY (stream_id, offset)
) WITHOUT ROWID;

-- Payloads above the limit move out; their records keep `data` NULL. The limit is
-- records.inline_max at the file's page size: SQLite keeps at most (U - 12) * 64 / 255 - 23
-- bytes of an index-b-tree cell on its page (U: the usable page size), less 96 for the
-- other columns (the same expression in both statements).

INSERT INTO payloads (stream_id, offset, data)
SELECT stream_id, offset, CAST(data AS BLOB)
  FROM chunks WHERE length(CAST(data AS BLOB)) > (SELECT (page_size - 12) * 64 / 255 - 23 - 96 FROM pragma_page_size()) ORDER BY stream_id, offset;

INSERT INTO chunks_v15 (stream_id, offset, position, timestamp, txn, key, headers, content_type, data)
SELECT stream_id, offset, position, timestamp, txn, key, headers, content_type,
       CASE WHEN length(CAST(data AS BLOB)) <= (SELECT (page_size - 12) * 64 / 255 - 23 - 96 FROM pragma_page_size()) THEN data END
  FROM chunks;

-- SQLite's procedure for a changed table (https://sqlite.org/lang_altertable.html, "other
-- kinds of table schema changes"): the views that name `chunks` keep naming it, and
-- legacy_alter_table keeps the rename from checking them while `chunks` is missing.
DROP TABLE chunks;
PRAGMA legacy_alter_table = ON;
ALTER TABLE chunks_v15 RENAME TO chunks;
PRAGMA legacy_alter_table = OFF;

CREATE TRIGGER chunks_payload_delete AFTER DELETE ON chunks WHEN old.data IS NULL
BEGIN
    DELETE FROM payloads WHERE stream_id = old.stream_id AND offset = old.offset;
END;

-- One row per record with its value in `data`, wherever it is stored (the columns of
-- `chunks`, plus `size`, the value's length in bytes). A view of one table: SQLite
-- flattens it into any query on it, also on the right of a LEFT JOIN. The payload is a
-- subquery that coalesce() runs only when `data` is NULL, so a record stored in its row
-- costs one more test, not a join step (a LEFT JOIN on `payloads` cost 100-byte page
-- reads 9% more CPU in the statement, this 1-4%; a 64 KiB value is copied once more on
-- its way to the result: benchmarks/findings.md, issue 23).
CREATE VIEW records AS
SELECT c.stream_id, c.offset, c.position, c.timestamp, c.txn, c.key, c.headers, c.content_type,
       coalesce(c.data, (SELECT CASE c.content_type WHEN 'bytes' THEN p.data ELSE CAST(p.data AS TEXT) END
                           FROM payloads p WHERE p.stream_id = c.stream_id AND p.offset = c.offset)) AS data,
       coalesce(length(CAST(c.data AS BLOB)),
                (SELECT length(p.data) FROM payloads p WHERE p.stream_id = c.stream_id AND p.offset = c.offset)) AS size
  FROM chunks c;

-- As in version 10, with the last record's size from `records`.
DROP VIEW streams_now;
CREATE VIEW streams_now AS
SELECT
    s.id,
    s.name,
    s.created_at,
    s.sealed_at,
    s.write_secret_sha256 IS NOT NULL                                        AS secret,
    s.first_offset,
    max(s.next_offset, coalesce((SELECT l.offset + 1 FROM chunks l WHERE l.stream_id = s.id
                                  ORDER BY l.offset DESC LIMIT 1), 0))       AS next_offset,
    s.first_position,
    max(s.byte_length, coalesce((SELECT l.position + l.size FROM records l WHERE l.stream_id = s.id
                                  ORDER BY l.offset DESC LIMIT 1), 0))       AS byte_length,
    coalesce((SELECT max(coalesce(s.last_append_at, l.timestamp), l.timestamp) FROM chunks l
               WHERE l.stream_id = s.id ORDER BY l.offset DESC LIMIT 1),
             s.last_append_at)                                               AS last_append_at,
    s.max_count,
    s.max_age,
    s.max_bytes,
    s.metadata,
    s.keep_unacked,
    s.dedup_seconds,
    s.dedup_records,
    s.trim_offset,
    s.trim_bytes,
    s.trim_time
FROM streams s;
