-- sqlstream schema, version 1: streams and their chunks (records).
-- Applied under BEGIN IMMEDIATE together with `PRAGMA user_version = 1`.
-- Timestamps are integer microseconds since the Unix epoch (UTC); views render them.

CREATE TABLE streams (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL,
    sealed_at       INTEGER,                       -- NULL while the stream takes appends
    write_secret    TEXT    UNIQUE,                -- NULL: anyone may append
    first_offset    INTEGER NOT NULL DEFAULT 0,    -- oldest retained offset
    next_offset     INTEGER NOT NULL DEFAULT 0,    -- offset the next append gets
    first_position  INTEGER NOT NULL DEFAULT 0,    -- byte position of first_offset
    byte_length     INTEGER NOT NULL DEFAULT 0,    -- bytes ever appended (= next position)
    last_append_at  INTEGER,                       -- timestamp of the newest record
    max_count       INTEGER CHECK (max_count IS NULL OR max_count > 0),
    max_age         REAL    CHECK (max_age IS NULL OR max_age > 0),      -- seconds
    max_bytes       INTEGER CHECK (max_bytes IS NULL OR max_bytes > 0),
    metadata        TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    CHECK (first_offset <= next_offset),
    CHECK (first_position <= byte_length)
);

-- One row per record. WITHOUT ROWID clusters a stream's records by offset so range
-- reads touch consecutive pages; the payload is the last column so that reading the
-- small columns of a large record does not walk its overflow pages.
-- (docs/architecture.md records the measurement behind this choice.)
CREATE TABLE chunks (
    stream_id     INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    offset        INTEGER NOT NULL,
    position      INTEGER NOT NULL,                -- byte offset of the first byte in the stream
    timestamp     INTEGER NOT NULL,                -- µs since epoch; never decreases in a stream
    txn           INTEGER NOT NULL,                -- commit sequence number (counters.txn)
    key           TEXT,
    headers       TEXT,                            -- JSON object of str -> str, NULL when empty
    -- Spelled with OR, not IN (...): SQLite builds a temporary b-tree for an IN list in
    -- a CHECK for every inserted row (~0.4 µs, a third of a batched append's cost).
    content_type  TEXT    NOT NULL CHECK (content_type = 'bytes' OR content_type = 'text' OR content_type = 'json'),
    data          BLOB    NOT NULL,                -- BLOB for bytes, TEXT for text and json
                                                   -- (declared BLOB: no type affinity, so TEXT
                                                   -- such as '007' is never turned into a number)
    PRIMARY KEY (stream_id, offset)
) WITHOUT ROWID;

-- Database-wide counters; 'txn' numbers the transactions that appended, in commit order.
CREATE TABLE counters (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('txn', 0);

CREATE VIEW stream_stats AS
SELECT
    name,
    first_offset,
    next_offset,
    next_offset - first_offset                                     AS records,
    byte_length - first_position                                   AS bytes,
    byte_length                                                    AS total_bytes,
    sealed_at IS NOT NULL                                          AS sealed,
    write_secret IS NOT NULL                                       AS secret,
    strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1e6, 'unixepoch')     AS created,
    strftime('%Y-%m-%dT%H:%M:%fZ', last_append_at / 1e6, 'unixepoch') AS last_append,
    strftime('%Y-%m-%dT%H:%M:%fZ', sealed_at / 1e6, 'unixepoch')      AS sealed_time
FROM streams;
