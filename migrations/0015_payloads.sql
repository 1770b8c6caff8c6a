-- sqlstream schema, version 15: large payloads out of the row.
--
-- A record's row in the WITHOUT ROWID `chunks` b-tree is an index cell: once the whole
-- row exceeds about a quarter of a page (1,002 bytes at SQLite's 4,096-byte page) the
-- rest of it spills to overflow pages, and every seek or scan that passes such a cell
-- reads all of them (a b-tree comparison loads the whole stored row). A 64 KiB record
-- made range reads, appends and scans of offsets and times 1.2-70x slower than needed
-- (benchmarks/findings.md, issue 23). Since this version a payload larger than
-- `sqlstream_inline_max()` bytes (sqlstream.records.inline_max: what still fits in the
-- cell beside a typical key and headers) is stored as a BLOB in `payloads`, a rowid table
-- (its integer key is compared without reading the payload), and its `chunks` row keeps
-- `data` NULL and the payload's id in `payload`. Smaller payloads stay in `data`, as
-- before. A trigger deletes a record's payload row with the record, in the same
-- statement, whoever deletes it (retention, a deleted stream's cascade, plain SQL), so no
-- payload outlives its record. The view `records` shows every record with its value in
-- `data` wherever it is stored: query it, not `chunks`, to see values in SQL.

CREATE TABLE payloads (
    id    INTEGER PRIMARY KEY,
    data  BLOB NOT NULL                             -- the stored bytes (UTF-8 for text and json)
);

-- The rebuilt chunks table: as in version 1, with `data` nullable and `payload` added.
CREATE TABLE chunks_v15 (
    stream_id     INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    offset        INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    timestamp     INTEGER NOT NULL,
    txn           INTEGER NOT NULL,
    key           TEXT,
    headers       TEXT,
    content_type  TEXT    NOT NULL CHECK (content_type = 'bytes' OR content_type = 'text' OR content_type = 'json'),
    data          BLOB,                            -- the payload when stored in the row, else NULL
    payload       INTEGER,                         -- payloads.id when stored out of the row, else NULL
    CHECK ((data IS NULL) <> (payload IS NULL)),
    PRIMARY KEY (stream_id, offset)
) WITHOUT ROWID;

-- Payloads above the limit move out, numbered in (stream_id, offset) order; both
-- statements number the same rows the same way.
INSERT INTO payloads (id, data)
SELECT row_number() OVER (ORDER BY stream_id, offset), CAST(data AS BLOB)
  FROM chunks WHERE length(CAST(data AS BLOB)) > sqlstream_inline_max();

INSERT INTO chunks_v15 (stream_id, offset, position, timestamp, txn, key, headers, content_type, data, payload)
SELECT c.stream_id, c.offset, c.position, c.timestamp, c.txn, c.key, c.headers, c.content_type,
       CASE WHEN m.n IS NULL THEN c.data END, m.n
  FROM chunks c
  LEFT JOIN (SELECT stream_id, offset, row_number() OVER (ORDER BY stream_id, offset) AS n
               FROM chunks WHERE length(CAST(data AS BLOB)) > sqlstream_inline_max()) m
         ON m.stream_id = c.stream_id AND m.offset = c.offset;

-- SQLite's procedure for a changed table (https://sqlite.org/lang_altertable.html, "other
-- kinds of table schema changes"): the views that name `chunks` keep naming it, and
-- legacy_alter_table keeps the rename from checking them while `chunks` is missing.
DROP TABLE chunks;
PRAGMA legacy_alter_table = ON;
ALTER TABLE chunks_v15 RENAME TO chunks;
PRAGMA legacy_alter_table = OFF;

-- One record per payload (the trigger below deletes a payload with its record), and the
-- way `check` finds a payload no record names. Partial: small records add no entry.
CREATE UNIQUE INDEX chunks_by_payload ON chunks (payload) WHERE payload IS NOT NULL;

CREATE TRIGGER chunks_payload_delete AFTER DELETE ON chunks WHEN old.payload IS NOT NULL
BEGIN
    DELETE FROM payloads WHERE id = old.payload;
END;

-- One row per record with its value in `data`, wherever it is stored (the columns of
-- `chunks` without `payload`, plus `size`, the value's length in bytes). SQLite flattens
-- the view into a query on `chunks`, and leaves `payloads` out of a query that selects
-- neither `data` nor `size`. A join rather than a correlated subquery: the value goes
-- to the result without being copied between registers on the way (measured: 64 KiB
-- reads 1.1-1.2x faster).
CREATE VIEW records AS
SELECT c.stream_id, c.offset, c.position, c.timestamp, c.txn, c.key, c.headers, c.content_type,
       coalesce(c.data, CASE c.content_type WHEN 'bytes' THEN p.data ELSE CAST(p.data AS TEXT) END) AS data,
       coalesce(length(CAST(c.data AS BLOB)), length(p.data))                                     AS size
  FROM chunks c LEFT JOIN payloads p ON p.id = c.payload;

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
